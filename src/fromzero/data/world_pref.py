"""Preference data written from the built-in world, and the gold preference function that labels it.

A prompt asks for a fact about a *trained* person (held-out people stay out of every stage's training
data). Its candidate answers differ in what people care about: the content (the right fact, a wrong
one, an evasive "I don't know", or an off-topic true fact about the person that does not answer the
question, which the gold function scores as evasive) and the style (good, curt, rambling, rude; the styles of
`world_chat`). The gold preference function stands in for human labellers: it scores any
(question, answer) from the world's facts and the answer's text,

    score = content (right 2, evasive 0, wrong -2) - style penalty (good 0, curt 0.5, rambling 1, rude 1.5)

so a right fact beats everything without one, and among equal content good > curt > rambling > rude.
Simulated labellers pick between two answers the Bradley–Terry way, P(a over b) = sigmoid((s_a - s_b) /
temperature) (temperature 0: always the better one), then flip a `label_noise` share of their labels.

The gold function belongs to evaluation: it labels the held-out pairs without noise, and judges the
answers of a tuned policy against the reference's (gold win rate). No training objective ever calls it.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from fromzero.data.preference import PreferencePair, PreferenceSources, PreferenceStats, load_pairs, split_pairs
from fromzero.data.tasks import Task
from fromzero.data.vocab import a
from fromzero.data.world import ATTRIBUTES, Person, World
from fromzero.data.world_chat import (
    CURT_OPEN,
    FIELDS,
    KINDS,
    QUESTIONS,
    RAMBLE_CLOSE,
    RAMBLE_OPEN,
    RUDE_CLOSE,
    RUDE_OPEN,
    SMALL_TALK,
    STYLES,
    Ask,
    Judge,
    Question,
    _arithmetic,
    _chat_ask,
    _comparison,
    _field_ask,
    fact_sentence,
    field_values,
    styled,
    word_text,
)

CONTENTS = ("right", "evasive", "wrong")  # what the gold function reads in an answer
# the candidate answers written for preference pairs: an off-topic one states another of the person's facts
# ("He is 33 years old." to a question about his job), which the gold function reads as evasive; the reward model
# must see such answers lose, or PPO finds that a true fact of the person pays. An off-subject one states the
# asked fact of another town, animal, object or town's residents, which the gold function grades wrong
# (to a question about a person it is a wrong value).
CANDIDATES = (*CONTENTS, "off_topic", "off_subject")
CONTENT_SCORE = {"right": 2.0, "evasive": 0.0, "wrong": -2.0}
STYLE_PENALTY = {"good": 0.0, "curt": 0.5, "rambling": 1.0, "rude": 1.5}
EVASIVE = ("Sorry, I don't know that.", "no idea")  # (good sentence, curt form), as for a fact
# A good answer is one full sentence: fewer words is curt, many more is rambling.
MIN_WORDS, MAX_WORDS = 4, 20


class PreferenceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, description="seed for phrasings, candidate answers and labels")
    questions_per_fact: int = Field(
        2,
        ge=1,
        description="training phrasings per (trained person, attribute), at most "
        "the number of training phrasings an attribute has (10)",
    )
    pairs_per_question: int = Field(1, ge=1, description="pairs of candidate answers per training phrasing")
    content_weights: dict[str, float] = Field(
        default_factory=lambda: {"right": 0.45, "evasive": 0.2, "wrong": 0.2, "off_topic": 0.15},
        description="how often a candidate answer states the right fact, none, a wrong one, another fact of "
        "the person than the one asked for (off_topic), or the asked fact of another subject (off_subject)",
    )
    style_weights: dict[str, float] = Field(
        default_factory=lambda: dict.fromkeys(STYLES, 0.25), description="how often a candidate is in each style"
    )
    temperature: float = Field(
        0.5,
        ge=0,
        description="Bradley–Terry temperature of the simulated labellers; 0: they always pick the better answer",
    )
    label_noise: float = Field(0.0, ge=0, le=0.5, description="share of labels flipped after that (careless labellers)")
    eval_questions: int = Field(200, description="held-out prompts (trained people, held-out phrasings) for evaluation")
    questions_per_kind: int = Field(
        200,
        ge=0,
        description="training questions of every other kind the instruction "
        "data teaches (towns, animals, objects, comparisons, arithmetic, language models, "
        "small talk, word problems), each with pairs_per_question pairs: stage 3 tunes "
        "on every kind, not only on questions about people",
    )
    ppo_people_share: float = Field(
        1.0,
        gt=0,
        le=1,
        description="share of questions about people among PPO's "
        "prompts, the rest the other kinds' evenly (their questions repeated); 1: every "
        "distinct question once",
    )
    sampled_questions: int = Field(
        0,
        ge=0,
        description="training questions the model being tuned (SFT) answers "
        "twice by sampling, each two answers labelled by the simulated labellers like the "
        "written pairs (as people vote between two answers on the arena page of `fromzero serve`) and added to them: "
        "pairs of the answers PPO and DPO start from",
    )


RUDE = tuple(word_text(s, apostrophes=True) for s in RUDE_OPEN + RUDE_CLOSE)
RAMBLE = tuple(word_text(s, apostrophes=True) for s in RAMBLE_OPEN + RAMBLE_CLOSE)
CURT = word_text(CURT_OPEN, apostrophes=True)


def answer_style(answer: str) -> str:
    """The style of any answer text, judged the way a reader would: rudeness first, then length."""
    text, n_words = word_text(answer, apostrophes=True), len(re.findall(r"[\w']+", answer))
    n_words -= text.startswith(CURT)  # a filler is not a word of the answer
    if any(phrase in text for phrase in RUDE):
        return "rude"
    if n_words > MAX_WORDS or any(phrase in text for phrase in RAMBLE):
        return "rambling"
    return "curt" if n_words < MIN_WORDS else "good"


class GoldPreference:
    """The gold preference function of a world (see the module docstring)."""

    best = CONTENT_SCORE["right"] - STYLE_PENALTY["good"]  # the score of the best possible answer

    def __init__(self, world: World):
        self.judge = Judge(world)
        self.values = self.judge.values

    def content(self, q: Question, answer: str) -> str:
        """right, wrong or evasive, as `world_chat.Judge` reads any kind of question (for a person's fact: the
        expected value and no other value of the attribute; none: evasive)."""
        return self.judge.content(q, answer)

    def score(self, q: Question, answer: str) -> float:
        return CONTENT_SCORE[self.content(q, answer)] - STYLE_PENALTY[answer_style(answer)]

    def win_rate(self, questions: Sequence[Question], answers: Sequence[str], reference: Sequence[str]) -> float:
        """(wins + ties / 2) / prompts of `answers` against `reference`, the same questions answered."""
        if not len(questions) == len(answers) == len(reference):
            raise ValueError(f"{len(questions)} questions, {len(answers)} answers, {len(reference)} reference answers")
        points = 0.0
        for q, ans, ref in zip(questions, answers, reference):
            s, r = self.score(q, ans), self.score(q, ref)
            points += 1.0 if s > r else 0.5 if s == r else 0.0
        return points / max(1, len(questions))

    def win_rate_ceiling(self, questions: Sequence[Question], reference: Sequence[str]) -> float:
        """The win rate against `reference` of a policy whose every answer scores `best` (the right fact, said
        well): it wins wherever the reference falls short and ties elsewhere. The better the reference's own
        answers, the lower this ceiling on any policy's win rate."""
        return sum(1.0 if self.score(q, ref) < self.best else 0.5 for q, ref in zip(questions, reference)) / max(
            1, len(questions)
        )


def candidate(
    world: World, gold: GoldPreference, p: Person, attr: str, content: str, style: str, rng: random.Random
) -> str:
    """One answer to a question about p's attribute with the given content (a CANDIDATES kind) and style."""
    if content == "evasive":
        return styled(*EVASIVE, style, rng)
    if content == "off_topic":
        attr = rng.choice([other for other in ATTRIBUTES if other != attr])
    if content in ("wrong", "off_subject"):  # another person's value, said of this one by pronoun, is a wrong one
        expected = world.facts(p)[attr]
        value = rng.choice(sorted(gold.values[attr] - {expected}))
        p = dataclasses.replace(p, **{attr: int(value) if attr == "age" else value})
    short = a(p.job) if attr == "job" else str(getattr(p, attr))
    return styled(fact_sentence(p, attr), short, style, rng)


def task_ask(task: Task) -> Ask:
    """A word problem asked with its worked solution: any final answer is written after the same working."""
    working = task.metadata["solution"].rpartition("The answer is")[0]

    def write(v: str) -> tuple[str, str]:
        return f"{working}The answer is {v}.", v

    n = int(task.answer)
    q = Question(task.prompt, "", "task", task.answer, "word_problems")
    return Ask(q, write, tuple(str(v) for v in range(max(0, n - 3), n + 4) if v != n))


def ask_candidate(world: World, ask: Ask, content: str, style: str, rng: random.Random) -> str:
    """One answer to an `Ask` (a question of any kind but a person's fact) with the given content and style; an
    off-topic one states a person's fact, an off-subject one the asked fact of another subject (a person's fact
    where the question has none), and a chat question, which has no wrong value, gets one for its wrong."""
    if content == "evasive":
        return styled(*EVASIVE, style, rng)
    if content == "off_subject" and ask.elsewhere is not None:
        return styled(*ask.elsewhere(rng), style, rng)
    if content in ("off_topic", "off_subject") or (content == "wrong" and not ask.wrong):
        p, attr = rng.choice(world.trained_people), rng.choice(tuple(ATTRIBUTES))
        return styled(fact_sentence(p, attr), a(p.job) if attr == "job" else str(getattr(p, attr)), style, rng)
    value = rng.choice(ask.wrong) if content == "wrong" else ask.q.expected
    return styled(*ask.write(value), style, rng)


def kind_asks(world: World, kind: str, n: int, rng: random.Random, tasks: Sequence[Task]) -> list[Ask]:
    """n training questions of a kind (not people: those are asked per fact), as the instruction data asks them."""
    if kind in FIELDS:
        facts = field_values(world)[kind]
        return [_field_ask(world, kind, rng.choice(sorted(facts)), rng.choice(tuple(FIELDS[kind]))) for _ in range(n)]
    if kind == "comparisons":
        return [_comparison(world, rng) for _ in range(n)]
    if kind == "arithmetic":
        return [_arithmetic(world, rng) for _ in range(n)]
    if kind == "word_problems":
        worked = [t for t in tasks if t.kind == "math" and "The answer is" in t.metadata.get("solution", "")]
        return [task_ask(t) for t in rng.sample(worked, min(n, len(worked)))]
    chat = [e for e in SMALL_TALK if e[3] == kind]
    return [_chat_ask(rng.choice(chat)) for _ in range(n)]


def bradley_terry_label(
    score_a: float, score_b: float, temperature: float, label_noise: float, rng: random.Random
) -> bool:
    """Whether a simulated labeller prefers answer a."""
    if temperature == 0:
        prefers_a = score_a > score_b
    else:
        prefers_a = rng.random() < 1 / (1 + math.exp(-(score_a - score_b) / temperature))
    return prefers_a != (rng.random() < label_noise)


@dataclass(frozen=True)
class WorldPreferences:
    train: list[PreferencePair]  # training prompts, labelled by the simulated labellers
    train_questions: list[Question]  # what each training pair answers, for analysis (training sees only pairs)
    eval_pairs: list[PreferencePair]  # held-out prompts, chosen by the gold function without noise
    eval_questions: list[Question]  # the held-out prompts, for judging a policy's own answers


def build_preferences(world: World, cfg: PreferenceConfig, tasks: Sequence[Task] = ()) -> WorldPreferences:
    """Labelled pairs for questions about the trained people, then for `cfg.questions_per_kind` questions of every
    other kind (word problems from `tasks`, the reasoning stage's training problems, where they have worked
    solutions), and the held-out prompts about people."""
    for name, weights, known in (("content", cfg.content_weights, CANDIDATES), ("style", cfg.style_weights, STYLES)):
        if set(weights) - set(known):
            raise ValueError(f"unknown {name} kinds {sorted(set(weights) - set(known))}; kinds: {', '.join(known)}")
    gold = GoldPreference(world)
    rng = random.Random(f"{cfg.seed}:preference")
    contents, content_w = zip(*cfg.content_weights.items())
    styles, style_w = zip(*cfg.style_weights.items())

    def two_answers(q: Question) -> tuple[str, str, float, float]:
        """Two candidates the gold function tells apart (equal ones teach nothing)."""
        p = world.person(q.person)
        while True:
            answers = [
                candidate(
                    world,
                    gold,
                    p,
                    q.attribute,
                    rng.choices(contents, content_w)[0],
                    rng.choices(styles, style_w)[0],
                    rng,
                )
                for _ in range(2)
            ]
            scores = [gold.score(q, x) for x in answers]
            if scores[0] != scores[1]:
                return answers[0], answers[1], scores[0], scores[1]

    def question(p: Person, attr: str, template: str) -> Question:
        return Question(template.format(n=p.name, his=p.his), p.name, attr, world.facts(p)[attr])

    fewest = min(len(QUESTIONS[attr][0]) for attr in ATTRIBUTES)
    if cfg.questions_per_fact > fewest:
        raise ValueError(
            f"preference.questions_per_fact={cfg.questions_per_fact}, but an attribute has only {fewest} "
            "training phrasings; raise preference.pairs_per_question for more pairs"
        )
    train, train_questions = [], []
    for p in world.trained_people:
        for attr in ATTRIBUTES:
            for template in rng.sample(QUESTIONS[attr][0], cfg.questions_per_fact):
                q = question(p, attr, template)
                for _ in range(cfg.pairs_per_question):
                    x, y, sx, sy = two_answers(q)
                    label = bradley_terry_label(sx, sy, cfg.temperature, cfg.label_noise, rng)
                    chosen, rejected = (x, y) if label else (y, x)
                    train.append(PreferencePair([{"role": "user", "content": q.question}], chosen, rejected))
                    train_questions.append(q)

    kinds_rng = random.Random(f"{cfg.seed}:preference-kinds")  # its own stream: the people's pairs do not depend on it
    for kind in KINDS[1:]:
        for ask in kind_asks(world, kind, cfg.questions_per_kind, kinds_rng, tasks):
            for _ in range(cfg.pairs_per_question):
                for _attempt in range(100):
                    x, y = (
                        ask_candidate(
                            world,
                            ask,
                            kinds_rng.choices(contents, content_w)[0],
                            kinds_rng.choices(styles, style_w)[0],
                            kinds_rng,
                        )
                        for _ in range(2)
                    )
                    sx, sy = gold.score(ask.q, x), gold.score(ask.q, y)
                    if sx != sy:
                        break
                else:
                    continue
                label = bradley_terry_label(sx, sy, cfg.temperature, cfg.label_noise, kinds_rng)
                chosen, rejected = (x, y) if label else (y, x)
                train.append(PreferencePair([{"role": "user", "content": ask.q.question}], chosen, rejected))
                train_questions.append(ask.q)

    facts = [(p, attr) for p in world.trained_people for attr in ATTRIBUTES]
    eval_questions = [
        question(p, attr, rng.choice(QUESTIONS[attr][1]))
        for p, attr in rng.sample(facts, min(cfg.eval_questions, len(facts)))
    ]
    eval_pairs = []
    for q in eval_questions:
        x, y, sx, sy = two_answers(q)
        chosen, rejected = (x, y) if sx > sy else (y, x)
        eval_pairs.append(PreferencePair([{"role": "user", "content": q.question}], chosen, rejected))
    return WorldPreferences(train, train_questions, eval_pairs, eval_questions)


Sampler = Callable[[list[str], int], list[str]]  # (questions, seed) -> one sampled answer to each


def sampled_pairs(
    world: World, prefs: WorldPreferences, cfg: PreferenceConfig, sample: Sampler
) -> list[PreferencePair]:
    """Pairs of a model's own answers: `cfg.sampled_questions` training questions, each answered twice by `sample`
    (two seeds), the two answers labelled by the simulated labellers as the written pairs are. Pairs the gold
    function scores equal are dropped (a labeller would call them a tie). Written candidates are the answers a
    model could give; these are the ones it does give, with its own plausible mistakes (InstructGPT's labellers
    ranked the SFT model's samples)."""
    if cfg.sampled_questions == 0:
        return []
    gold, rng = GoldPreference(world), random.Random(f"{cfg.seed}:sampled")
    questions = rng.sample(prefs.train_questions, min(cfg.sampled_questions, len(prefs.train_questions)))
    texts = [q.question for q in questions]
    pairs = []
    for q, x, y in zip(questions, sample(texts, cfg.seed + 11), sample(texts, cfg.seed + 12)):
        sx, sy = gold.score(q, x), gold.score(q, y)
        if sx != sy:
            label = bradley_terry_label(sx, sy, cfg.temperature, cfg.label_noise, rng)
            chosen, rejected = (x, y) if label else (y, x)
            pairs.append(PreferencePair([{"role": "user", "content": q.question}], chosen, rejected))
    return pairs


GoldFn = Callable[[int, str], float]  # (prompt index, decoded answer) -> gold score; metrics only


def prompts_and_gold(
    world: World, questions: Sequence[Question], people_share: float | None = None
) -> tuple[list[list[dict[str, str]]], GoldFn]:
    """The distinct questions as one-turn prompts (for PPO's rollouts or an evaluation), and gold(i, answer), the
    gold score of an answer to prompt i (for metrics only). With `people_share`, the questions of the other kinds
    are repeated, evenly per kind, until they make up the rest: the kinds with few distinct questions (six small-talk
    messages against thousands of questions about people) get a policy's attention all the same."""
    distinct = list({q.question: q for q in questions}.values())
    if people_share is not None:
        people = [q for q in distinct if q.kind == "people"]
        others: dict[str, list[Question]] = {}
        for q in distinct:
            if q.kind != "people":
                others.setdefault(q.kind, []).append(q)
        if others and people_share < 1:
            per_kind = round(len(people) * (1 - people_share) / people_share / len(others)) if people else 1
            distinct = people + [qs[i % len(qs)] for qs in others.values() for i in range(max(per_kind, len(qs)))]
    gold = GoldPreference(world)
    prompts = [[{"role": "user", "content": q.question}] for q in distinct]
    return prompts, lambda i, answer: gold.score(distinct[i], answer)


def preference_pairs(
    sources: PreferenceSources, builtin: Callable[[], WorldPreferences], seed: int = 0
) -> tuple[list[PreferencePair], list[PreferencePair], PreferenceStats | None]:
    """(train, held-out, stats of the files read): the stage's preference files split by prompt, or the built-in
    world's pairs (held-out ones labelled by the gold function without noise; stats None)."""
    if not sources.data:
        prefs = builtin()
        return prefs.train, prefs.eval_pairs, None
    pairs, stats = load_pairs(sources)
    train, heldout = split_pairs(pairs, sources.val_fraction, seed)
    return train, heldout, stats
