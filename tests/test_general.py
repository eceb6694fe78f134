"""The general evaluation and the gold function on every kind of question: each kind's rule, the questions it asks,
the fixed prompts it recognises, preference pairs of every kind, and stage 0's gibberish made of real tokens."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from fromzero.data.tasks import ReasoningConfig, builtin_tasks
from fromzero.data.world import WorldConfig, build_world
from fromzero.data.world_chat import (
    KINDS,
    SMALL_TALK,
    STYLES,
    InstructConfig,
    Judge,
    Question,
    _arithmetic,
    _chat_ask,
    _comparison,
    _field_ask,
    _world_qa,
    build_instructions,
    fact_sentence,
    field_values,
    new_people_questions,
    recognise,
    styled,
)
from fromzero.data.world_pref import GoldPreference, PreferenceConfig, build_preferences, task_ask
from fromzero.eval import general
from fromzero.eval.samples import complete
from fromzero.model import ModelConfig, Transformer
from fromzero.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def world():
    return build_world(
        WorldConfig(
            n_people=40,
            n_places=8,
            bios_per_person=1,
            n_stories=0,
            encyclopedia_per_entity=0,
            n_arithmetic=0,
            n_llm_passages=0,
            max_number=10,
        )
    )


def test_every_training_answer_is_right_and_every_wrong_value_wrong(world):
    """The rule of each kind reads the instruction data's own answers, in every style, as right, and the same
    answer with another value as wrong."""
    judge, rng = Judge(world), random.Random(0)
    seen = Counter()
    for _ in range(600):
        ask = rng.choice((_world_qa, _comparison, _arithmetic))(world, rng)
        seen[ask.q.kind] += 1
        for style in STYLES:
            assert judge.check(ask.q, styled(*ask.write(ask.q.expected), style, rng))[0] == "right", ask.q
            if ask.wrong:
                assert judge.check(ask.q, styled(*ask.write(rng.choice(ask.wrong)), style, rng))[0] == "wrong", ask.q
    assert set(seen) == {"towns", "animals", "objects", "comparisons", "arithmetic"}
    for entry in SMALL_TALK:
        ask = _chat_ask(entry)
        assert all(judge.check(ask.q, styled(*ask.write(""), s, rng))[0] == "right" for s in STYLES), entry


def test_a_true_fact_of_another_subject_is_wrong_even_with_the_asked_value(world):
    """PPO learnt to answer a question about one town with a true sentence about another ("Ashwenstead is in the south
    of Normark." to a question about Calriwick): wrong, also where both towns share the value."""
    judge, facts = Judge(world), field_values(world)["towns"]
    town, other = next((t, o) for t in facts for o in facts if t != o and facts[t]["country"] == facts[o]["country"])
    q = _field_ask(world, "towns", town, "country").q
    assert judge.check(q, f"{town} is in {facts[town]['country']}.")[0] == "right"
    assert judge.check(q, f"{other} is in {facts[town]['country']}.") == ("wrong", f"is about {other}, not {town}")
    animal, its = next(iter(field_values(world)["animals"].items()))  # "a cat", said "The cat" in an answer
    q = _field_ask(world, "animals", animal, "eats").q
    assert judge.check(q, f"The {animal.split(' ', 1)[1]} eats {its['eats']}.")[0] == "right"


def test_a_new_persons_value_that_no_person_of_the_cast_has_is_graded_right():
    """The synth stage's new people draw their facts from the same lists as everyone: a job none of the cast has
    ("painter") is still a job, so "He has a job as a painter." answers their question (it was graded "states no
    job", under-counting what the synth stage taught)."""
    world = build_world(WorldConfig(n_people=4, n_places=3, n_stories=0, n_arithmetic=0, n_new_people=30))
    judge, cast = Judge(world), {attr: {str(getattr(p, attr)) for p in world.people} for attr in ("job", "hobby")}
    p, attr = next((p, a) for p in world.new_people for a in ("job", "hobby") if str(getattr(p, a)) not in cast[a])
    q = next(q for q in new_people_questions(world, 0) if q.person == p.name and q.attribute == attr)
    assert judge.check(q, fact_sentence(p, attr)) == ("right", f"states {getattr(p, attr)}")


def test_off_topic_and_evasive_answers_fail_with_a_reason(world):
    judge = Judge(world)
    llm = recognise(world, "What is an LLM?")
    assert judge.check(llm, "He works as a farmer.") == ("evasive", "off topic: states farmer")
    assert judge.check(llm, "Um, 4.")[0] == "evasive"
    assert judge.check(llm, "An LLM is a large language model.")[0] == "right"
    sums = recognise(world, "What is 3 plus 4?")
    assert sums.expected == "7" and judge.check(sums, "3 plus 4 is 7.")[0] == "right"
    assert judge.check(sums, "He is 10.") == ("wrong", "says 10, expected 7")
    assert judge.check(sums, "Sorry, I don't know that.")[0] == "evasive"
    task = Question(
        "Tom had 3 cups. Then he lost 1. How many cups does Tom have now?", "", "task", "2", "word_problems"
    )
    assert judge.check(task, "3 - 1 = 2. The answer is 2.")[0] == "right"
    assert judge.check(task, "3 - 1 = 2. The answer is 4.") == ("wrong", "answers 4, expected 2")
    bear = recognise(world, "What does a bear eat?")
    assert judge.check(bear, "A bear eats berries and fish.")[0] == "right"  # "fish" inside the value counts once


def test_general_questions_cover_every_kind_and_hold_out_what_they_can(world):
    data = build_instructions(world, InstructConfig(general_questions=12))
    trained = {m["content"] for c in data.train for m in c if m["role"] == "user"}
    by_kind = Counter(q.kind for q in data.general)
    assert set(by_kind) == set(KINDS) - {"word_problems"} and max(by_kind.values()) <= 12
    for q in data.general:
        if q.kind in ("people", "arithmetic") or q.attribute == "older":
            assert q.question not in trained, q  # new phrasings, pairs and sums
    assert any(q.system for q in data.general if q.kind == "small_talk")
    tasks = general.task_questions(builtin_tasks(ReasoningConfig(n_train=20, n_eval=5, max_number=10), world)[1], 3)
    assert len(tasks) == 3 and all(q.kind == "word_problems" and q.attribute == "task" for q in tasks)
    assert general.mean({"a": 1.0, "b": 0.0}) == 0.5


def test_recognise_knows_the_worlds_questions_and_nothing_else(world):
    p = world.trained_people[0]
    assert recognise(world, f"Where does {p.name} live?").expected == p.town
    assert recognise(world, f"Which country is {p.town} in?").kind == "towns"
    assert recognise(world, "How many legs does a cat have?").expected == "4 legs"
    assert recognise(world, "Compute 7 * 2.").expected == "14"
    assert recognise(world, "Tell me a story about a cat.") is None


def test_preference_pairs_cover_every_kind_and_the_gold_function_judges_them(world):
    tasks = builtin_tasks(ReasoningConfig(n_train=40, n_eval=5, max_number=10), world)[0]
    data = build_preferences(
        world, PreferenceConfig(questions_per_fact=1, questions_per_kind=10, eval_questions=5), tasks
    )
    kinds = Counter(q.kind for q in data.train_questions)
    assert kinds["people"] == len(world.trained_people) * 8
    assert all(kinds[k] == 10 for k in KINDS[1:]), kinds
    gold = GoldPreference(world)
    assert all(gold.score(q, p.chosen) != gold.score(q, p.rejected) for q, p in zip(data.train_questions, data.train))
    ask = task_ask(tasks[0])
    assert (
        gold.content(ask.q, ask.write(ask.q.expected)[0])
        == "right"
        == gold.content(ask.q, tasks[0].metadata["solution"])
    )


def test_a_random_models_answers_are_words_and_pieces_never_replacement_characters():
    texts = ["the cat sat on the mat. " * 20, "héllo wörld ünïcode ✓ " * 20, "Tom has 3 apples. " * 20]
    tok = Tokenizer.train(texts, 300)
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, n_kv_heads=2, max_seq_len=64)
    ).eval()
    assert tok.partial_ids(), "the tokenizer has byte pieces of the non-ASCII characters"
    answers = complete(model, tok, ["What is an LLM?"] * 8, max_new_tokens=24, temperature=1.0, seed=0, text_only=True)
    assert all("\ufffd" not in a and "<|" not in a for a in answers), answers
    assert len(set(answers)) > 1 and all(a.strip() for a in answers)
