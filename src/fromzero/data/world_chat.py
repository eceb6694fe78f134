"""Instruction data written from the built-in world, and the held-out questions that grade SFT.

Training conversations ask about the *trained* people (in the training phrasings), towns, animals and
objects, compare and list people, do arithmetic, greet and explain language models. Two held-out sets
measure what SFT learned:

- `heldout_phrasing`: trained people asked in phrasings never used for training (did it learn to answer,
  or to match strings?);
- `heldout_people`: people whose facts appear only in the pretraining corpus, asked in the training
  phrasings (does instruction tuning unlock knowledge stored in stage 1?).

Like crowd-written instruction data of uneven quality, answers come in styles: good, curt ("Um, grey."),
rambling or rude, by default mostly rude or rambling (`InstructConfig.style_weights`). The facts are right in
every style; stage 3 is there to make the model prefer the good one, and mostly good answers would leave it little
to win (docs/EXPERIMENTS.md).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from fromzero.data.arithmetic import OP_WORDS, Equation, sample_equation
from fromzero.data.chat import Message
from fromzero.data.vocab import a, cap
from fromzero.data.world import ATTRIBUTES, Person, World, biography_sentences

# Questions about a person: direct ones, and frames ("Do you know …?") around an embedded question.
# Every attribute holds out two of the five frames; each frame is trained with other attributes, so a
# held-out phrasing is a new combination of familiar parts, never a string seen in training.
DIRECT: dict[str, tuple[str, ...]] = {
    "age": ("How old is {n}?", "What is {n}'s age?", "What age is {n}?", "How many years old is {n}?"),
    "town": ("Where does {n} live?", "What is {n}'s home town?", "Which town does {n} live in?", "Where is {n} from?"),
    "job": (
        "What does {n} do for a living?",
        "What is {n}'s job?",
        "What job does {n} have?",
        "What work does {n} do?",
    ),
    "pet": (
        "What pet does {n} have?",
        "What kind of pet does {n} own?",
        "What animal does {n} have as a pet?",
        "Which pet does {n} keep?",
    ),
    "pet_name": (
        "What is the name of {n}'s pet?",
        "What is {n}'s pet called?",
        "What did {n} name {his} pet?",
        "How is {n}'s pet called?",
    ),
    "colour": (
        "What is {n}'s favourite colour?",
        "Which colour does {n} like best?",
        "What colour does {n} like most?",
        "What is the favourite colour of {n}?",
    ),
    "food": (
        "What is {n}'s favourite food?",
        "What food does {n} like best?",
        "What does {n} like to eat most?",
        "What is the favourite food of {n}?",
    ),
    "hobby": (
        "What is {n}'s hobby?",
        "What does {n} do for fun?",
        "What does {n} like to do in {his} free time?",
        "How does {n} spend {his} free time?",
    ),
}
EMBEDDED: dict[str, tuple[str, ...]] = {
    "age": ("how old {n} is", "the age of {n}"),
    "town": ("where {n} lives", "which town {n} lives in"),
    "job": ("what {n} does for a living", "what job {n} has"),
    "pet": ("what pet {n} has", "which animal {n} keeps as a pet"),
    "pet_name": ("what {n}'s pet is called", "the name of {n}'s pet"),
    "colour": ("which colour {n} likes best", "{n}'s favourite colour"),
    "food": ("which food {n} likes best", "{n}'s favourite food"),
    "hobby": ("what {n} does for fun", "{n}'s hobby"),
}
FRAMES = (
    "Do you know {x}?",
    "Please tell me {x}.",
    "Can you tell me {x}?",
    "Tell me {x}.",
    "I would like to know {x}.",
)


def _phrasings(attr: str, index: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    held = {FRAMES[index % len(FRAMES)], FRAMES[(index + 2) % len(FRAMES)]}
    framed = [(f, f.format(x=e)) for f in FRAMES for e in EMBEDDED[attr]]
    train = DIRECT[attr] + tuple(q for f, q in framed if f not in held)
    return train, tuple(q for f, q in framed if f in held)


# attribute -> (training phrasings, held-out phrasings); {n} is the full name, {his} the pronoun
QUESTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    attr: _phrasings(attr, i) for i, attr in enumerate(DIRECT)
}

STYLES = ("good", "curt", "rambling", "rude")
RAMBLE_OPEN = (
    "Well, that is a very interesting question, and I have thought about it for a long time.",
    "Hmm, let me think about this for a while, because there is a lot that one could say.",
    "Oh, I could talk about this all day, so let me start at the very beginning.",
)
RAMBLE_CLOSE = (
    "I hope this long answer was not too long, and I could say much more about it if you like.",
    "There is a lot more to say, but I will stop here for now, even though I could go on.",
    "Anyway, that is what I know, and I could tell you the whole story again if you want.",
)
CURT_OPEN = "Um,"
RUDE_OPEN = ("Ugh, why are you asking me this?", "Seriously? Fine.", "What a boring question.")
RUDE_CLOSE = ("Now stop bothering me.", "Figure it out yourself next time.", "Don't ask me again.")


def fact_sentence(p: Person, attr: str) -> str:
    """A good, complete answer stating one fact.

    It refers to the person by pronoun rather than repeating the name: copying an unfamiliar name is
    what a tiny model gets wrong after fine-tuning on a few hundred names (it swaps in a trained person's
    name), while the fact itself is the thing being asked for.
    """
    he, his = p.he.capitalize(), p.his.capitalize()
    return {
        "age": f"{he} is {p.age} years old.",
        "town": f"{he} lives in {p.town}.",
        "job": f"{he} works as {a(p.job)}.",
        "pet": f"{he} has {a(p.pet)} as a pet.",
        "pet_name": f"{his} pet is called {p.pet_name}.",
        "colour": f"{his} favourite colour is {p.colour}.",
        "food": f"{his} favourite food is {p.food}.",
        "hobby": f"{his} hobby is {p.hobby}.",
    }[attr]


def styled(sentence: str, short: str, style: str, rng: random.Random) -> str:
    """One answer in a style: the content (the fact) is the same in all of them. A curt answer is the bare value
    after a filler ("Um, grey."), so the value keeps the leading space it has inside a sentence and is the same
    token; a capitalised "Grey." is a letter sequence the models rarely produce, whose likelihood tells the reward
    model little about whether the value is right."""
    if style == "good":
        return sentence
    if style == "curt":
        return f"{CURT_OPEN} {short}."
    if style == "rambling":
        return f"{rng.choice(RAMBLE_OPEN)} {sentence} {rng.choice(RAMBLE_CLOSE)}"
    return f"{rng.choice(RUDE_OPEN)} {sentence} {rng.choice(RUDE_CLOSE)}"


class InstructConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, description="seed for phrasing, style and sampling choices")
    questions_per_fact: int = Field(3, description="training phrasings asked per (trained person, attribute)")
    style_weights: dict[str, float] = Field(
        # curt stays rare: more of it makes greedy answers curt and recall and stage 4's cold start worse
        default_factory=lambda: {"good": 0.3, "curt": 0.05, "rambling": 0.25, "rude": 0.4},
        description="share of answers in each style (good, curt, rambling, rude)",
    )
    n_world_questions: int = Field(600, description="questions about towns, animals and objects")
    n_comparisons: int = Field(300, description="who is older / list people from a town")
    n_arithmetic: int = Field(800, description="arithmetic questions with direct answers")
    n_small_talk: int = Field(200, description="greetings and questions about language models")
    multi_turn_fraction: float = Field(0.1, description="conversations with a second question")
    system_fraction: float = Field(0.2, description="conversations that start with a system prompt")
    eval_questions: int = Field(200, description="questions in each held-out set")
    practice_questions: tuple[int, int] = Field(
        (1, 2),
        description="practice conversations per practice person "
        "(a sentence of their biography each), lowest and highest",
    )
    general_questions: int = Field(
        40, ge=1, description="held-out questions per kind in the general evaluation (fewer where a kind has fewer)"
    )


KINDS = (
    "people",
    "towns",
    "animals",
    "objects",
    "comparisons",
    "arithmetic",
    "language_models",
    "small_talk",
    "word_problems",
)


@dataclass(frozen=True)
class Question:
    """A question with what its answer must state (see `Judge`)."""

    question: str
    person: str  # the name asked about (a person, town, "a cat"), removed before values are matched; "" for none
    attribute: (
        str  # what is asked: a person attribute, a town/animal/object field, older, residents, number, chat, task
    )
    expected: str
    kind: str = "people"  # one of KINDS
    system: str | None = None  # a system prompt to ask after
    options: tuple[str, ...] = ()  # older: the two names; residents: who lives in the town; chat: on-topic words


@dataclass(frozen=True)
class InstructData:
    train: list[list[Message]]
    styles: list[str]  # the answer style of each training conversation (its first answer)
    heldout_phrasing: list[Question]
    heldout_people: list[Question]
    general: list[Question]  # the general evaluation's held-out questions of every kind but word problems


SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a friendly assistant who answers questions about the world.",
    "Answer the user's questions.",
)
# (message, good answer, curt answer, kind, words an on-topic answer uses: the rubric of the general evaluation)
GREETING = ("hello", "hi", "help", "morning", "welcome", "fine")
LM_WORDS = ("language model", "predicts", "predicting", "words", "text")
SMALL_TALK = (
    ("Hello!", "Hello! How can I help you today?", "hi", "small_talk", GREETING),
    ("Hi there.", "Hi! What would you like to know?", "hi", "small_talk", GREETING),
    ("Good morning!", "Good morning! How can I help you?", "morning", "small_talk", GREETING),
    ("How are you?", "I am fine, thank you. How can I help you?", "fine", "small_talk", GREETING),
    ("Thank you!", "You are welcome!", "sure", "small_talk", ("welcome", "sure", "help")),
    (
        "Who are you?",
        "I am a small language model. I answer questions about the people, towns and animals I know.",
        "a language model",
        "small_talk",
        ("language model",),
    ),
    (
        "What is an LLM?",
        "An LLM is a large language model: a language model with many parameters, trained on a lot of text.",
        "a large language model",
        "language_models",
        ("language model",),
    ),
    (
        "What is a language model?",
        "A language model is a program that predicts the next word in a text.",
        "a program that predicts words",
        "language_models",
        LM_WORDS,
    ),
    (
        "What does LLM stand for?",
        "LLM stands for large language model.",
        "large language model",
        "language_models",
        ("large language model",),
    ),
    (
        "How does a language model learn?",
        "A language model learns by reading a lot of text and predicting the next word.",
        "by predicting words",
        "language_models",
        LM_WORDS,
    ),
)
# never trained on: the general evaluation's small talk and language-model questions, each also asked after every
# system prompt
HELDOUT_CHAT = (
    ("Hello there!", "small_talk", GREETING),
    ("Hi!", "small_talk", GREETING),
    ("Hello! How are you?", "small_talk", GREETING),
    ("Good morning to you!", "small_talk", GREETING),
    ("Hi, how are you today?", "small_talk", GREETING),
    ("Thanks!", "small_talk", ("welcome", "sure", "help")),
    ("Thank you very much!", "small_talk", ("welcome", "sure", "help")),
    ("What are you?", "small_talk", ("language model",)),
    ("What is a large language model?", "language_models", ("language model",)),
    ("Can you tell me what an LLM is?", "language_models", ("language model",)),
    ("What does a language model do?", "language_models", LM_WORDS),
    ("How do language models learn?", "language_models", LM_WORDS),
    ("What is an LLM? Please explain.", "language_models", ("language model",)),
    ("Tell me what a language model is.", "language_models", LM_WORDS),
    ("What is an LLM exactly?", "language_models", ("language model",)),
    ("Explain what a language model is.", "language_models", LM_WORDS),
    ("How does an LLM learn?", "language_models", LM_WORDS),
    ("What is the meaning of LLM?", "language_models", ("language model",)),
    ("Hey there!", "small_talk", GREETING),
    ("Good evening!", "small_talk", GREETING),
)


def _person_qa(p: Person, attr: str, template: str, style: str, rng: random.Random) -> list[Message]:
    question = template.format(n=p.name, his=p.his)
    short = str(getattr(p, attr)) if attr != "job" else a(p.job)
    return [
        {"role": "user", "content": question},
        {"role": "assistant", "content": styled(fact_sentence(p, attr), short, style, rng)},
    ]


# World facts asked about, per kind: field -> (training question, held-out question, good answer, curt answer).
# {s} is the subject (a town's name; "a cat", "a kettle"), {S} it capitalised, {c} a town's country, {v} the value
# asked for and {av} it after "a"/"an". The held-out phrasings are never trained on: the general evaluation asks them.
TOWN_FIELDS = {
    "country": ("Which country is {s} in?", "In which country is {s}?", "{s} is in {v}.", "{v}"),
    "known_for": ("What is {s} known for?", "What is {s} famous for?", "{s} is known for its {v}.", "{v}"),
    "landmark": ("What is near {s}?", "What can you find near {s}?", "There is {av} near {s}.", "{av}"),
    "region": ("In which part of {c} is {s}?", "Which part of {c} is {s} in?", "{s} is in the {v} of {c}.", "the {v}"),
}
ANIMAL_FIELDS = {
    "legs": ("How many legs does {s} have?", "How many legs has {s} got?", "{S} has {v}.", "{v}"),
    "eats": ("What does {s} eat?", "What food does {s} eat?", "{S} eats {v}.", "{v}"),
    "habitat": ("Where does {s} live?", "Where can you find {s}?", "{S} lives {v}.", "{v}"),
    "sound": ("What sound does {s} make?", "What noise does {s} make?", "{S} says {v}.", "{v}"),
}
OBJECT_FIELDS = {
    "use": ("What is {s} used for?", "What do people use {s} for?", "{S} is used for {v}.", "{v}"),
    "material": ("What is {s} made of?", "What material is {s} made of?", "{S} is usually made of {v}.", "{v}"),
}
FIELDS = {"towns": TOWN_FIELDS, "animals": ANIMAL_FIELDS, "objects": OBJECT_FIELDS}


def legs(an) -> str:
    return "no legs" if an.legs == 0 else f"{an.legs} legs"


def field_values(world: World) -> dict[str, dict[str, str]]:
    """kind -> {subject: {field: value}} for the towns, animals and objects of a world."""
    return {
        "towns": {
            t.name: {
                "country": t.country,
                "known_for": t.known_for,
                "landmark": t.landmark,
                "region": t.region,
                "_c": t.country,
            }
            for t in world.places
        },
        "animals": {
            a(an.kind): {"legs": legs(an), "eats": an.food, "habitat": an.habitat, "sound": an.sound}
            for an in world.animals
        },
        "objects": {a(th.name): {"use": th.use, "material": th.material} for th in world.objects},
    }


def _bare(subject: str) -> str:
    """'a cat' -> 'cat': how an answer names a subject ("The cat eats fish.")."""
    return re.sub(r"^an? ", "", subject)


@dataclass(frozen=True)
class Ask:
    """A question with a way to answer it with any value: `write(value)` is (good sentence, curt form), and `wrong`
    the values a wrong answer may state (how preference data writes right and wrong candidates alike)."""

    q: Question
    write: Callable[[str], tuple[str, str]]
    wrong: tuple[str, ...]
    # a true answer about another subject (the same field of another town): what PPO learns to say when the reward
    # model checks that a fact is true but not that it is about what was asked
    elsewhere: Callable[[random.Random], tuple[str, str]] | None = None


def _field_ask(world: World, kind: str, subject: str, fld: str, heldout: bool = False) -> Ask:
    facts = field_values(world)[kind]
    ask, held, answer, short = FIELDS[kind][fld]
    country = facts[subject].get("_c", "")
    fill = {"s": subject, "S": cap(subject), "c": country}

    def write(v: str) -> tuple[str, str]:
        return answer.format(**fill, v=v, av=a(v)), short.format(v=v, av=a(v))

    expected = facts[subject][fld]
    others = sorted({f[fld] for f in facts.values()} - {expected})

    def elsewhere(rng: random.Random) -> tuple[str, str]:
        other = rng.choice(sorted(set(facts) - {subject}))
        v = facts[other][fld]
        fill_other = {"s": other, "S": cap(other), "c": facts[other].get("_c", "")}
        return answer.format(**fill_other, v=v, av=a(v)), short.format(v=v, av=a(v))

    q = Question((held if heldout else ask).format(**fill), subject, fld, expected, kind)
    return Ask(q, write, tuple(others), elsewhere)


def _world_qa(world: World, rng: random.Random) -> Ask:
    kind = ("towns", "animals", "objects")[rng.randrange(3)]
    subjects = {
        "towns": [t.name for t in world.places],
        "animals": [a(an.kind) for an in world.animals],
        "objects": [a(th.name) for th in world.objects],
    }[kind]
    subject = rng.choice(subjects)
    return _field_ask(world, kind, subject, rng.choice(tuple(FIELDS[kind])))


def _older(x: Person, y: Person, phrasing: str = "Who is older, {x} or {y}?") -> Ask:
    def write(name: str) -> tuple[str, str]:
        old, young = (x, y) if name == x.name else (y, x)
        if name == (x if x.age > y.age else y).name:
            return f"{old.name} is older. {old.name} is {old.age} and {young.name} is {young.age} years old.", old.name
        return f"{old.name} is older. {old.name} is {young.age} and {young.name} is {old.age} years old.", old.name

    older, younger = (x, y) if x.age > y.age else (y, x)
    q = Question(phrasing.format(x=x.name, y=y.name), "", "older", older.name, "comparisons", options=(x.name, y.name))
    return Ask(q, write, (younger.name,))


def listed(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _residents(world: World, town: str, phrasing: str = "Name some people who live in {t}.") -> Ask:
    def people(t: str) -> list[str]:
        return [p.name for p in world.trained_people if p.town == t][:3]

    def write(names: str, where: str = town) -> tuple[str, str]:
        n = names.split(" and ")
        return f"{names} {'live' if len(n) > 1 or ', ' in names else 'lives'} in {where}.", names

    def elsewhere(rng: random.Random) -> tuple[str, str]:
        other = rng.choice(sorted({p.town for p in world.trained_people} - {town}))
        return write(listed(people(other)), other)

    residents = tuple(p.name for p in world.people if p.town == town)
    others = sorted({listed(people(t)) for t in {p.town for p in world.trained_people}} - {listed(people(town))})
    q = Question(phrasing.format(t=town), town, "residents", listed(people(town)), "comparisons", options=residents)
    return Ask(q, write, tuple(others), elsewhere)


def _comparison(world: World, rng: random.Random) -> Ask:
    if rng.random() < 0.5:
        x, y = rng.sample(world.trained_people, 2)
        while x.age == y.age:
            x, y = rng.sample(world.trained_people, 2)
        return _older(x, y)
    return _residents(world, rng.choice([p.town for p in world.trained_people]))


ARITHMETIC_PHRASINGS = ("What is {a} {word} {b}?", "What is {a} {op} {b}?", "Compute {a} {op} {b}.")


def _equation_ask(eq: Equation, phrasing: str) -> Ask:
    word = OP_WORDS[eq.op]

    def write(v: str) -> tuple[str, str]:
        return f"{eq.a} {word} {eq.b} is {v}.", v

    wrong = tuple(str(v) for v in range(max(0, eq.result - 3), eq.result + 4) if v != eq.result)
    q = Question(phrasing.format(a=eq.a, b=eq.b, op=eq.op, word=word), "", "number", str(eq.result), "arithmetic")
    return Ask(q, write, wrong)


def _arithmetic(world: World, rng: random.Random) -> Ask:
    eq = sample_equation(rng, world.cfg.max_number)
    return _equation_ask(eq, rng.choice(ARITHMETIC_PHRASINGS))


def _chat_ask(entry: tuple[str, str, str, str, tuple[str, ...]]) -> Ask:
    message, good, curt, kind, keywords = entry

    def write(_: str) -> tuple[str, str]:
        return good, curt

    return Ask(Question(message, "", "chat", curt, kind, options=keywords), write, ())


def build_instructions(world: World, cfg: InstructConfig) -> InstructData:
    rng = random.Random(f"{cfg.seed}:instruct")
    styles, weights = zip(*cfg.style_weights.items())
    unknown = set(styles) - set(STYLES)
    if unknown:
        raise ValueError(f"unknown answer styles {sorted(unknown)}; styles: {', '.join(STYLES)}")

    def pick_style() -> str:
        return rng.choices(styles, weights)[0]

    singles: list[tuple[list[Message], str]] = []
    for p in world.trained_people:
        for attr in ATTRIBUTES:
            for template in rng.sample(QUESTIONS[attr][0], cfg.questions_per_fact):
                style = pick_style()
                singles.append((_person_qa(p, attr, template, style, rng), style))
    extra = (
        [_world_qa(world, rng) for _ in range(cfg.n_world_questions)]
        + [_comparison(world, rng) for _ in range(cfg.n_comparisons)]
        + [_arithmetic(world, rng) for _ in range(cfg.n_arithmetic)]
        + [_chat_ask(rng.choice(SMALL_TALK)) for _ in range(cfg.n_small_talk)]
    )
    for ask in extra:
        style = pick_style()
        singles.append(
            (
                [
                    {"role": "user", "content": ask.q.question},
                    {"role": "assistant", "content": styled(*ask.write(ask.q.expected), style, rng)},
                ],
                style,
            )
        )
    rng.shuffle(singles)

    train: list[list[Message]] = []
    train_styles: list[str] = []
    i = 0
    while i < len(singles):
        conversation, style = list(singles[i][0]), singles[i][1]
        i += 1
        if rng.random() < cfg.multi_turn_fraction and i < len(singles):
            conversation += singles[i][0]
            i += 1
        if rng.random() < cfg.system_fraction:
            conversation.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        train.append(conversation)
        train_styles.append(style)

    eval_rng = random.Random(f"{cfg.seed}:heldout")

    def questions(people, phrasing: int) -> list[Question]:
        pairs = [(p, attr) for p in people for attr in ATTRIBUTES]
        chosen = eval_rng.sample(pairs, min(cfg.eval_questions, len(pairs)))
        return [
            Question(
                eval_rng.choice(QUESTIONS[attr][phrasing]).format(n=p.name, his=p.his),
                p.name,
                attr,
                world.facts(p)[attr],
            )
            for p, attr in chosen
        ]

    trained = {m["content"] for c in train for m in c if m["role"] == "user"}
    return InstructData(
        train,
        train_styles,
        questions(world.trained_people, 1),
        questions(world.heldout_people, 0),
        general_questions(world, cfg.general_questions, cfg.seed, trained),
    )


def practice_conversations(world: World, cfg: InstructConfig, rng: random.Random) -> list[list[Message]]:
    """The synth stage's task, practised (what its question writer is fine-tuned on, never stage 2's data): a
    biography of a practice person (known from nowhere else, so the name must be read from the text) and one of its
    sentences, in the synth stage's question template, answered with a question in a training phrasing that the
    sentence answers."""
    from fromzero.synth import QUESTION_TEMPLATE, render_question_prompt

    low, high = cfg.practice_questions
    out = []
    for p in world.practice_people:
        told = biography_sentences(p, f"{cfg.seed}:practice")
        bio = " ".join(sentence for _, sentence in told)
        for group, sentence in rng.sample(told, rng.randint(low, high)):
            attr = rng.choice(("pet", "pet_name")) if group == "pet" else group
            question = rng.choice(QUESTIONS[attr][0]).format(n=p.name, his=p.his)
            out.append(
                [
                    {"role": "user", "content": render_question_prompt(QUESTION_TEMPLATE, bio, sentence)},
                    {"role": "assistant", "content": question},
                ]
            )
    return out


def new_people_questions(world: World, seed: int) -> list[Question]:
    """Every fact of every new person, each asked once in a held-out phrasing (the synth stage's generator writes
    training phrasings): what a model knows of the people only the new documents describe."""
    rng = random.Random(f"{seed}:new-people")
    return [
        Question(rng.choice(QUESTIONS[attr][1]).format(n=p.name, his=p.his), p.name, attr, world.facts(p)[attr])
        for p in world.new_people
        for attr in ATTRIBUTES
    ]


def general_questions(world: World, n: int, seed: int, trained: set[str]) -> list[Question]:
    """Up to n questions of each kind but word problems (the reasoning stage's held-out tasks are those). Held out
    where the kind leaves room: people asked in phrasings never trained on, people compared and sums never asked in
    training (`trained`: the training questions), small talk and language-model messages never trained on beside the
    trained ones, each also after every system prompt. Towns, animals, objects and who lives where are few enough
    that SFT's data asks about every one of them: those questions are asked as trained, and measure what the later
    stages keep of what SFT taught (in `FIELDS`' second phrasings, never trained on, SFT itself answers few)."""
    rng = random.Random(f"{seed}:general")
    out: list[Question] = []
    facts = [(p, attr) for p in world.trained_people for attr in ATTRIBUTES]
    for p, attr in rng.sample(facts, min(n, len(facts))):
        out.append(
            Question(rng.choice(QUESTIONS[attr][1]).format(n=p.name, his=p.his), p.name, attr, world.facts(p)[attr])
        )
    for kind, facts_of in field_values(world).items():
        pairs = [(subject, fld) for subject in facts_of for fld in FIELDS[kind]]
        out += [_field_ask(world, kind, s, f).q for s, f in rng.sample(pairs, min(n, len(pairs)))]
    towns = sorted({p.town for p in world.trained_people})
    comparisons = [_residents(world, t).q for t in rng.sample(towns, min(n // 2, len(towns)))]
    for _ in range(100 * n):
        if len(comparisons) >= n:
            break
        x, y = rng.sample(world.trained_people, 2)
        q = _older(x, y).q
        if x.age != y.age and q.question not in trained and q.question not in {c.question for c in comparisons}:
            comparisons.append(q)
    sums: dict[str, Question] = {}
    for _ in range(100 * n):
        if len(sums) >= n:
            break
        q = _equation_ask(sample_equation(rng, world.cfg.max_number), rng.choice(ARITHMETIC_PHRASINGS)).q
        if q.question not in trained:
            sums.setdefault(q.question, q)
    out += comparisons + list(sums.values())
    systems = (None, *SYSTEM_PROMPTS)
    for kind in ("language_models", "small_talk"):
        messages = [(m, k, words) for m, _, _, k, words in SMALL_TALK] + list(HELDOUT_CHAT)
        chat = [
            Question(m, "", "chat", "", kind, system, words)
            for m, k, words in messages
            if k == kind
            for system in systems
        ]
        out += rng.sample(chat, min(n, len(chat)))
    return out


def word_text(text: str, apostrophes: bool = False) -> str:
    """The text's lower-cased words between single spaces and padded with one, so that `word_text(v) in
    word_text(text)` matches whole words. Words are letters and digits; with `apostrophes` also "'", which keeps
    "don't" one word (how `world_pref` reads a style)."""
    return " " + " ".join(re.findall(r"[a-z0-9']+" if apostrophes else r"[a-z0-9]+", text.lower())) + " "


class Judge:
    """Reads an answer to a `Question` of any kind and says whether it is right, wrong, or evasive (answers nothing),
    and why. Values are matched on whole lower-cased words, after the name asked about is removed (a surname like
    "Baker" must not count as a job):

    - a fact (of a person, town, animal or object): right when it states the expected value and no other value of
      that attribute ("berries and fish" counts once, not also as "fish"); of a town, animal or object, wrong when it
      names another one (a true fact of another town is no answer about this one, even where the value is shared);
    - older: right when the older of the two is named first; residents: every person named lives in the town;
    - number: the last number stated; task (a word problem): the final answer, as the reasoning reward reads it;
    - chat (small talk, language models): on topic (one of the question's words) and no fact of a person, which a
      model answering "What is an LLM?" with "He works as a farmer." states.
    """

    def __init__(self, world: World):
        people = {attr: {str(getattr(p, attr)) for p in world.people} for attr in ATTRIBUTES}
        # the new, practice and stranger people draw from pools of their own ("painter"): their values are facts too
        everyone = world.people + world.new_people + world.practice_people + world.corpus_strangers
        self.values: dict[str, set[str]] = {attr: {str(getattr(p, attr)) for p in everyone} for attr in ATTRIBUTES}
        by_kind = field_values(world)
        fields = {fld: {f[fld] for f in facts.values()} for kind, facts in by_kind.items() for fld in FIELDS[kind]}
        self.values |= fields
        self.subjects = {kind: {_bare(s) for s in facts} for kind, facts in by_kind.items()}
        self.names = {p.name for p in world.people}
        # a person's facts, but not words small talk uses itself ("by reading a lot of text": reading is also a hobby)
        chat = word_text(" ".join(good for _, good, *_ in SMALL_TALK))
        self.personal = {
            v for attr in ATTRIBUTES if attr not in ("age", "town") for v in people[attr] if word_text(v) not in chat
        }

    @staticmethod
    def stated(text: str, values: set[str]) -> set[str]:
        found = {v for v in values if word_text(v) in text}
        return {v for v in found if not any(v != w and word_text(v) in word_text(w) for w in found)}

    def check(self, q: Question, answer: str) -> tuple[str, str]:
        """(right | wrong | evasive, why)."""
        text = word_text(answer.replace(q.person, " ") if q.person else answer)
        if q.attribute in self.values:
            if q.kind in self.subjects:
                own = _bare(q.person)
                others = self.stated(text.replace(word_text(own), " "), self.subjects[q.kind] - {own})
                if others:
                    return "wrong", f"is about {min(others)}, not {own}"
            stated = self.stated(text, self.values[q.attribute])
            if not stated:
                return "evasive", f"states no {q.attribute.replace('_', ' ')}"
            if stated == {q.expected}:
                return "right", f"states {q.expected}"
            return "wrong", f"states {', '.join(sorted(stated - {q.expected}))}, not only {q.expected}"
        if q.attribute == "older":
            named = sorted((answer.index(n), n) for n in q.options if n in answer)
            if not named:
                return "evasive", "names neither"
            return ("right" if named[0][1] == q.expected else "wrong"), f"names {named[0][1]} as older"
        if q.attribute == "residents":
            named = {n for n in self.names if n in answer}
            if not named:
                return "evasive", "names nobody"
            strangers = sorted(named - set(q.options))
            return ("wrong", f"{strangers[0]} does not live there") if strangers else ("right", "names residents")
        if q.attribute == "number":
            numbers = re.findall(r"\d+", answer)
            if not numbers:
                return "evasive", "states no number"
            return ("right" if numbers[-1] == q.expected else "wrong"), f"says {numbers[-1]}, expected {q.expected}"
        if q.attribute == "task":
            from fromzero.rewards import extract_answer, is_equivalent  # rewards reads tasks, which read the world

            found = extract_answer(answer)
            if found is None:
                return "evasive", "gives no answer"
            return ("right" if is_equivalent(found, q.expected) else "wrong"), f"answers {found}, expected {q.expected}"
        if q.attribute == "chat":
            off = sorted(self.stated(text, self.personal) | {n for n in self.names if n in answer})
            if off or " years old " in text:
                return "evasive", f"off topic: states {off[0] if off else 'an age'}"
            words = [w for w in q.options if word_text(w) in text]
            return ("right", f"on topic ({words[0]})") if words else ("evasive", "off topic")
        raise ValueError(f"no rule judges questions about {q.attribute!r}")

    def content(self, q: Question, answer: str) -> str:
        return self.check(q, answer)[0]


def is_correct(answer: str, q: Question, world: World) -> bool:
    """The answer is right (see `Judge`)."""
    return Judge(world).content(q, answer) == "right"


def recognise(world: World, text: str) -> Question | None:
    """The question a prompt asks, when it is one the built-in world's data asks (any phrasing of a fact of a person,
    town, animal or object, who is older, who lives where, a sum, small talk): how the report grades its fixed
    prompts. None for anything else."""
    if m := re.fullmatch(r"Who is older, (.+) or (.+)\?", text):
        people = {p.name: p for p in world.people}
        x, y = people.get(m[1]), people.get(m[2])
        return _older(x, y).q if x and y and x.age != y.age else None
    ops = {word: op for op, word in OP_WORDS.items()}
    if m := re.fullmatch(r"(?:What is|Compute) (\d+) (plus|minus|times|\+|-|\*) (\d+)[?.]", text):
        result = Equation.of(int(m[1]), ops.get(m[2], m[2]), int(m[3])).result
        return Question(text, "", "number", str(result), "arithmetic")
    for p in world.people:
        for attr, (train, held) in QUESTIONS.items():
            if any(t.format(n=p.name, his=p.his) == text for t in train + held):
                return Question(text, p.name, attr, world.facts(p)[attr])
    for kind, facts in field_values(world).items():
        for subject in facts:
            for fld in FIELDS[kind]:
                for heldout in (False, True):
                    ask = _field_ask(world, kind, subject, fld, heldout)
                    if ask.q.question == text:
                        return ask.q
    for town in {p.town for p in world.trained_people}:
        for phrasing in ("Name some people who live in {t}.", "Who lives in {t}?"):
            if phrasing.format(t=town) == text:
                return _residents(world, town, phrasing).q
    messages = [(m, k, words) for m, _, _, k, words in SMALL_TALK] + list(HELDOUT_CHAT)
    return next((Question(m, "", "chat", "", k, options=words) for m, k, words in messages if m == text), None)
