import random
import re

import pydantic
import pytest

from fromzero.data.world import (
    ATTRIBUTES,
    BIO_TEMPLATES,
    World,
    WorldConfig,
    build_world,
    sample_equation,
    sample_word_problem,
)

SMALL = WorldConfig(
    n_people=60,
    n_places=8,
    bios_per_person=6,
    n_stories=200,
    encyclopedia_per_entity=2,
    n_arithmetic=300,
    n_llm_passages=10,
)


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(SMALL)


def _bios(world: World) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {p.name: [] for p in world.people}
    for doc in world.documents:
        if doc.kind == "bio":
            out[doc.subject].append(doc.text)
    return out


def _states(text: str, value: str) -> bool:
    return re.search(rf"\b{re.escape(value)}\b", text) is not None


def test_deterministic():
    a = list(build_world(SMALL).pretrain_documents())
    b = list(build_world(SMALL).pretrain_documents())
    c = list(build_world(SMALL.model_copy(update={"seed": 1})).pretrain_documents())
    assert a == b
    assert a != c
    assert build_world(SMALL).people == build_world(SMALL).people


def test_default_world_size_and_kinds():
    stats = build_world(WorldConfig()).stats()
    assert 3e6 < stats["total"]["chars"] < 6e6
    assert all(stats[k]["docs"] > 0 for k in ("bio", "story", "encyclopedia", "arithmetic", "llm"))


def test_people_split(world: World):
    names = [p.name for p in world.people]
    assert len(set(names)) == len(names) == SMALL.n_people
    trained = {p.name for p in world.trained_people}
    heldout = {p.name for p in world.heldout_people}
    assert not trained & heldout
    assert trained | heldout == set(names)
    assert len(heldout) == round(SMALL.heldout_fraction * SMALL.n_people)
    assert world.person(names[0]) == world.people[0]
    assert world.place(world.people[0].town) in world.places


def test_facts(world: World):
    p = world.people[0]
    facts = world.facts(p)
    assert set(facts) == set(ATTRIBUTES) == set(World.ATTRIBUTES)
    assert all(isinstance(v, str) and v for v in facts.values())
    assert facts["age"] == str(p.age) and facts["pet_name"] == p.pet_name


def test_heldout_facts_are_in_the_corpus(world: World):
    corpus = "\n".join(world.pretrain_documents())
    bios = _bios(world)
    for p in world.heldout_people:
        assert p.name in corpus
        for value in world.facts(p).values():
            assert any(_states(bio, value) for bio in bios[p.name])


def test_every_bio_states_every_attribute(world: World):
    for name, bios in _bios(world).items():
        p = world.person(name)
        assert len(bios) == SMALL.bios_per_person
        assert len(set(bios)) == len(bios), "paraphrases must differ"
        for bio in bios:
            assert bio.startswith(name) or name in bio.split(".")[0]
            assert bio.count(".") == len(BIO_TEMPLATES)
            for value in world.facts(p).values():
                assert _states(bio, value), (value, bio)


def test_bios_use_enough_templates():
    assert all(len(templates) >= 4 for templates in BIO_TEMPLATES.values())
    assert {a for a in ATTRIBUTES if a != "pet_name"} == set(BIO_TEMPLATES)


def test_stories_are_consistent_with_facts(world: World):
    checked = 0
    for doc in world.documents:
        if doc.kind != "story":
            continue
        p, text = world.person(doc.subject), doc.text
        assert p.name in text
        claims = [
            (r"(?:his|her) (\w+), ([A-Z]\w+)", (p.pet, p.pet_name)),
            (r"turned (\d+)\.", (str(p.age),)),
            (r"is an? (\w+) in (\w+)\.", (p.job, p.town)),
            (r"(\w+) is (?:his|her) favourite colour", (p.colour,)),
            (r"spent the whole day ([\w ]+)\.", (p.hobby,)),
            (r"had some ([\w ]+), (?:his|her) favourite food", (p.food,)),
        ]
        for pattern, expected in claims:
            for m in re.finditer(pattern, text):
                assert m.groups() == expected, (pattern, text)
                checked += 1
        for m in re.finditer(r"ate ([\w ]+), which is (\w+ \w+)'s favourite food", text):
            assert world.person(m.group(2)).food == m.group(1)
    assert checked > SMALL.n_stories


OPS = {
    "+": int.__add__,
    "plus": int.__add__,
    "-": int.__sub__,
    "minus": int.__sub__,
    "*": int.__mul__,
    "times": int.__mul__,
}
CHECKS = (  # pattern -> how its groups must relate
    (r"(\d+) ([-+*]) (\d+) = (\d+)", lambda a, op, b, c: OPS[op](int(a), int(b)) == int(c)),
    (r"(\d+) (plus|minus|times) (\d+) (?:is|equals) (\d+)\.", lambda a, op, b, c: OPS[op](int(a), int(b)) == int(c)),
    (
        r"had (\d+) \w+ and (?:bought|found|was given) (\d+) more, so (?:he|she) had (\d+) ",
        lambda a, b, c: int(a) + int(b) == int(c),
    ),
    (r"had (\d+) \w+ and gave (\d+) to a friend, so (?:he|she) had (\d+) ", lambda a, b, c: int(a) - int(b) == int(c)),
    (r"has (\d+) \w+ with (\d+) \w+ in each \w+, so (?:he|she) has (\d+) ", lambda a, b, c: int(a) * int(b) == int(c)),
    (
        r"had (\d+) \w+, (?:bought|found|was given) (\d+) more and then gave (\d+) away, "
        r"so (?:he|she) had (\d+) ",
        lambda a, b, c, d: int(a) + int(b) - int(c) == int(d),
    ),
)


def test_arithmetic_is_correct(world: World):
    lines = [line for doc in world.documents if doc.kind == "arithmetic" for line in doc.text.split("\n")]
    assert len(lines) > 500
    for line in lines:
        found = 0
        for pattern, check in CHECKS:
            for m in re.finditer(pattern, line):
                assert check(*m.groups()), line
                assert all(0 < int(x) <= SMALL.max_number for x in m.groups() if x.isdigit())
                found += 1
        assert found, f"unchecked arithmetic line: {line}"
        if "The answer is" in line:
            last = re.findall(r"= (\d+)\.", line)[-1]
            assert line.endswith(f"The answer is {last}.")


def test_word_problems():
    rng = random.Random(0)
    for _ in range(500):
        e = sample_equation(rng, 20)
        assert max(e.a, e.b, e.result) <= 20 and OPS[e.op](e.a, e.b) == e.result
        wp = sample_word_problem(rng, 20)
        assert wp.steps[-1].result == wp.answer
        assert wp.question.endswith("?")
        assert str(wp.answer) in wp.statement
        assert wp.solution.endswith(f"The answer is {wp.answer}.")


def test_bio_text_scales_with_people():
    def bio_chars(n_people: int) -> int:
        return build_world(SMALL.model_copy(update={"n_people": n_people})).stats()["bio"]["chars"]

    ratio = bio_chars(200) / bio_chars(100)
    assert 1.8 < ratio < 2.2


def test_corpus_scales_with_config():
    base = build_world(SMALL).stats()
    more = build_world(
        SMALL.model_copy(
            update={
                "n_stories": 400,
                "n_arithmetic": 600,
                "n_llm_passages": 20,
                "encyclopedia_per_entity": 4,
            }
        )
    ).stats()
    for kind in ("story", "arithmetic", "llm", "encyclopedia"):
        assert more[kind]["docs"] == 2 * base[kind]["docs"]


def test_unknown_config_key_rejected():
    with pytest.raises(pydantic.ValidationError):
        WorldConfig(n_peeple=10)
    with pytest.raises(pydantic.ValidationError):
        WorldConfig(heldout_fraction=1.5)


def test_new_practice_and_stranger_people_are_each_in_one_place_only():
    """The new people are in no corpus document and no instruction (what the synth stage must learn from their
    documents); the practice people are in the synth stage's practice conversations only; the strangers in one corpus document each;
    none shares a name with the people, and adding them leaves the rest of the corpus as it was."""
    from fromzero.data.world_chat import InstructConfig, build_instructions, new_people_questions

    cfg = SMALL.model_copy(update={"n_new_people": 4, "n_practice_people": 12, "n_stranger_docs": 30})
    world, plain = build_world(cfg), build_world(SMALL)
    assert world.people == plain.people
    assert sorted(d.text for d in world.documents if d.kind != "stranger") == sorted(d.text for d in plain.documents)
    groups = [world.people, world.new_people, world.practice_people, world.corpus_strangers]
    names = [p.name for g in groups for p in g]
    assert len(names) == len(set(names)) == SMALL.n_people + 4 + 12 + 30
    firsts, lasts = {p.first_name for p in world.people}, {p.last_name for p in world.people}
    assert not any(p.first_name in firsts or p.last_name in lasts for g in groups[1:] for p in g)
    corpus = " ".join(d.text for d in world.documents)
    assert not any(p.name in corpus for p in world.new_people + world.practice_people)
    stranger_docs = [d for d in world.documents if d.kind == "stranger"]
    assert sorted(d.subject for d in stranger_docs) == sorted(p.name for p in world.corpus_strangers)
    assert all(d.text.count(d.subject) >= 2 for d in stranger_docs)  # two biographies: the second reads the first
    import random

    from fromzero.data.world_chat import practice_conversations

    data = build_instructions(world, InstructConfig())
    text = " ".join(m["content"] for c in data.train for m in c)
    assert not any(p.name in text for p in world.new_people + world.practice_people)  # practice is the writer's only
    turns = [
        (c[0]["content"], c[1]["content"]) for c in practice_conversations(world, InstructConfig(), random.Random(0))
    ]
    assert 12 <= len(turns) <= 24 and all(t[0].startswith("Write a question") for t in turns)  # 1-2 sentences each
    for prompt, question in turns:  # a question about the person of the text, which the sentence answers
        person = next(p for p in world.practice_people if p.name in prompt)
        assert person.name in question and question.endswith(("?", "."))
        assert prompt.split("Sentence: ")[1].strip() in prompt.split("Text: ")[1].split("\n\nSentence: ")[0]
    questions = new_people_questions(world, 0)
    assert len(questions) == 4 * len(ATTRIBUTES) and {q.person for q in questions} == {p.name for p in world.new_people}
    with pytest.raises(ValueError, match="stranger names make only"):
        build_world(SMALL.model_copy(update={"n_stranger_docs": 5000}))
