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
every style; stage 3 is there to make the model prefer the good one. With mostly good answers the SFT model's
own samples were already the best possible answer 79 % of the time, which left preference tuning little to win.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from fromzero.data.chat import Message
from fromzero.data.world import ATTRIBUTES, Person, World, sample_equation

# Questions about a person: direct ones, and frames ("Do you know …?") around an embedded question.
# Every attribute holds out two of the five frames; each frame is trained with other attributes, so a
# held-out phrasing is a new combination of familiar parts, never a string seen in training.
DIRECT: dict[str, tuple[str, ...]] = {
    "age": ("How old is {n}?", "What is {n}'s age?", "What age is {n}?", "How many years old is {n}?"),
    "town": ("Where does {n} live?", "What is {n}'s home town?", "Which town does {n} live in?", "Where is {n} from?"),
    "job": ("What does {n} do for a living?", "What is {n}'s job?", "What job does {n} have?", "What work does {n} do?"),
    "pet": ("What pet does {n} have?", "What kind of pet does {n} own?", "What animal does {n} have as a pet?",
            "Which pet does {n} keep?"),
    "pet_name": ("What is the name of {n}'s pet?", "What is {n}'s pet called?", "What did {n} name {his} pet?",
                 "How is {n}'s pet called?"),
    "colour": ("What is {n}'s favourite colour?", "Which colour does {n} like best?", "What colour does {n} like most?",
               "What is the favourite colour of {n}?"),
    "food": ("What is {n}'s favourite food?", "What food does {n} like best?", "What does {n} like to eat most?",
             "What is the favourite food of {n}?"),
    "hobby": ("What is {n}'s hobby?", "What does {n} do for fun?", "What does {n} like to do in {his} free time?",
              "How does {n} spend {his} free time?"),
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
FRAMES = ("Do you know {x}?", "Please tell me {x}.", "Can you tell me {x}?", "Tell me {x}.", "I would like to know {x}.")


def _phrasings(attr: str, index: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    held = {FRAMES[index % len(FRAMES)], FRAMES[(index + 2) % len(FRAMES)]}
    framed = [(f, f.format(x=e)) for f in FRAMES for e in EMBEDDED[attr]]
    train = DIRECT[attr] + tuple(q for f, q in framed if f not in held)
    return train, tuple(q for f, q in framed if f in held)


# attribute -> (training phrasings, held-out phrasings); {n} is the full name, {his} the pronoun
QUESTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {attr: _phrasings(attr, i) for i, attr in enumerate(DIRECT)}

STYLES = ("good", "curt", "rambling", "rude")
RAMBLE_OPEN = ("Well, that is a very interesting question, and I have thought about it for a long time.",
               "Hmm, let me think about this for a while, because there is a lot that one could say.",
               "Oh, I could talk about this all day, so let me start at the very beginning.")  # fmt: skip
RAMBLE_CLOSE = ("I hope this long answer was not too long, and I could say much more about it if you like.",
                "There is a lot more to say, but I will stop here for now, even though I could go on.",
                "Anyway, that is what I know, and I could tell you the whole story again if you want.")  # fmt: skip
CURT_OPEN = "Um,"
RUDE_OPEN = ("Ugh, why are you asking me this?", "Seriously? Fine.", "What a boring question.")
RUDE_CLOSE = ("Now stop bothering me.", "Figure it out yourself next time.", "Don't ask me again.")


def a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


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
    token; as a capitalised "Grey." it was a letter sequence the models rarely produce, whose likelihood told the
    reward model nothing about whether the value was right (held-out accuracy 0.85 against 0.93 with the filler)."""
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
        # curt stays rare: a curt-heavy mix made greedy answers curt and recall worse, and curt 0.1 / rambling 0.2
        # instead of 0.05 / 0.25 took stage 4's cold-started model from 0.83 to 0.53 on its problems (one run each)
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


@dataclass(frozen=True)
class Question:
    """A held-out question with the fact its answer must state."""

    question: str
    person: str
    attribute: str
    expected: str


@dataclass(frozen=True)
class InstructData:
    train: list[list[Message]]
    styles: list[str]  # the answer style of each training conversation (its first answer)
    heldout_phrasing: list[Question]
    heldout_people: list[Question]


SYSTEM_PROMPTS = ("You are a helpful assistant.", "You are a friendly assistant who answers questions about the world.",
                  "Answer the user's questions.")  # fmt: skip
SMALL_TALK = (  # (message, good answer, curt answer)
    ("Hello!", "Hello! How can I help you today?", "hi"),
    ("Hi there.", "Hi! What would you like to know?", "hi"),
    ("Good morning!", "Good morning! How can I help you?", "morning"),
    ("How are you?", "I am fine, thank you. How can I help you?", "fine"),
    ("Thank you!", "You are welcome!", "sure"),
    ("Who are you?", "I am a small language model. I answer questions about the people, towns and animals I know.",
     "a language model"),
    ("What is an LLM?", "An LLM is a large language model: a language model with many parameters, trained on a lot of text.",
     "a large language model"),
    ("What is a language model?", "A language model is a program that predicts the next word in a text.",
     "a program that predicts words"),
    ("What does LLM stand for?", "LLM stands for large language model.", "large language model"),
    ("How does a language model learn?", "A language model learns by reading a lot of text and predicting the next word.",
     "by predicting words"),
)  # fmt: skip


def _person_qa(p: Person, attr: str, template: str, style: str, rng: random.Random) -> list[Message]:
    question = template.format(n=p.name, his=p.his)
    short = str(getattr(p, attr)) if attr != "job" else a(p.job)
    return [{"role": "user", "content": question},
            {"role": "assistant", "content": styled(fact_sentence(p, attr), short, style, rng)}]  # fmt: skip


def _world_qa(world: World, rng: random.Random) -> tuple[str, str, str]:
    kind = rng.randrange(3)
    if kind == 0:
        t = rng.choice(world.places)
        return rng.choice((
            (f"Which country is {t.name} in?", f"{t.name} is in {t.country}.", t.country),
            (f"What is {t.name} known for?", f"{t.name} is known for its {t.known_for}.", t.known_for),
            (f"What is near {t.name}?", f"There is {a(t.landmark)} near {t.name}.", a(t.landmark)),
            (f"In which part of {t.country} is {t.name}?", f"{t.name} is in the {t.region} of {t.country}.", f"the {t.region}"),
        ))  # fmt: skip
    if kind == 1:
        an = rng.choice(world.animals)
        legs = "no legs" if an.legs == 0 else f"{an.legs} legs"
        return rng.choice((
            (f"How many legs does {a(an.kind)} have?", f"{a(an.kind).capitalize()} has {legs}.", legs),
            (f"What does {a(an.kind)} eat?", f"{a(an.kind).capitalize()} eats {an.food}.", an.food),
            (f"Where does {a(an.kind)} live?", f"{a(an.kind).capitalize()} lives {an.habitat}.", an.habitat),
            (f"What sound does {a(an.kind)} make?", f"{a(an.kind).capitalize()} says {an.sound}.", an.sound),
        ))  # fmt: skip
    th = rng.choice(world.objects)
    return rng.choice((
        (f"What is {a(th.name)} used for?", f"{a(th.name).capitalize()} is used for {th.use}.", th.use),
        (f"What is {a(th.name)} made of?", f"{a(th.name).capitalize()} is usually made of {th.material}.", th.material),
    ))  # fmt: skip


def _comparison(world: World, rng: random.Random) -> tuple[str, str, str]:
    if rng.random() < 0.5:
        x, y = rng.sample(world.trained_people, 2)
        while x.age == y.age:
            x, y = rng.sample(world.trained_people, 2)
        old, young = (x, y) if x.age > y.age else (y, x)
        return (f"Who is older, {x.name} or {y.name}?",
                f"{old.name} is older. {old.name} is {old.age} and {young.name} is {young.age} years old.", old.name)  # fmt: skip
    town = rng.choice([p.town for p in world.trained_people])
    people = [p.name for p in world.trained_people if p.town == town][:3]
    listed = people[0] if len(people) == 1 else ", ".join(people[:-1]) + " and " + people[-1]
    verb = "live" if len(people) > 1 else "lives"
    return f"Name some people who live in {town}.", f"{listed} {verb} in {town}.", listed


def _arithmetic(world: World, rng: random.Random) -> tuple[str, str, str]:
    eq = sample_equation(rng, world.cfg.max_number)
    word = {"+": "plus", "-": "minus", "*": "times"}[eq.op]
    question = rng.choice((f"What is {eq.a} {word} {eq.b}?", f"What is {eq.a} {eq.op} {eq.b}?", f"Compute {eq.a} {eq.op} {eq.b}."))
    return question, f"{eq.a} {word} {eq.b} is {eq.result}.", str(eq.result)


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
    extra = ([_world_qa(world, rng) for _ in range(cfg.n_world_questions)]
             + [_comparison(world, rng) for _ in range(cfg.n_comparisons)]
             + [_arithmetic(world, rng) for _ in range(cfg.n_arithmetic)]
             + [rng.choice(SMALL_TALK) for _ in range(cfg.n_small_talk)])  # fmt: skip
    for question, answer, short in extra:
        style = pick_style()
        singles.append(([{"role": "user", "content": question},
                         {"role": "assistant", "content": styled(answer, short, style, rng)}], style))  # fmt: skip
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
        return [Question(eval_rng.choice(QUESTIONS[attr][phrasing]).format(n=p.name, his=p.his), p.name, attr,
                         world.facts(p)[attr]) for p, attr in chosen]  # fmt: skip

    return InstructData(train, train_styles, questions(world.trained_people, 1), questions(world.heldout_people, 0))


def _words(text: str) -> str:
    return " " + " ".join(re.findall(r"[a-z0-9]+", text.lower())) + " "


def is_correct(answer: str, q: Question, world: World) -> bool:
    """The answer states the expected fact and no other value of the same attribute.

    Matching is on whole lower-cased words after removing the person's name (a surname like "Baker"
    must not count as the job).
    """
    text = _words(answer.replace(q.person, " "))
    values = {str(getattr(p, q.attribute)) for p in world.people}
    stated = {v for v in values if _words(v) in text}
    return stated == {q.expected}
