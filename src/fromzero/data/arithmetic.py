"""Arithmetic for the built-in world: equations, and word problems whose worked solution is a list of them.

The corpus states small equations and one- or two-step word problems (`sample_word_problem`); the reasoning
stage asks word problems of any number of steps about the world's people (`ladder_word_problem`). Both tell
their stories with the same nouns (`ITEMS`, `CONTAINERS`) and verbs (`GAINS`) and work them out in the same
equations ("15 + 7 = 22."), so that the problems RL asks read like the ones pretraining showed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from fromzero.data.vocab import FEMALE_NAMES, MALE_NAMES, PRONOUNS

OP_WORDS = {"+": "plus", "-": "minus", "*": "times"}  # how an operator is said
OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclass(frozen=True)
class Equation:
    a: int
    op: str  # "+", "-" or "*"
    b: int
    result: int

    @classmethod
    def of(cls, a: int, op: str, b: int) -> Equation:
        """The equation a op b = its result."""
        return cls(a, op, b, OPERATIONS[op](a, b))

    def __str__(self) -> str:
        return f"{self.a} {self.op} {self.b} = {self.result}"

    def prose(self, rng: random.Random) -> str:
        return f"{self.a} {OP_WORDS[self.op]} {self.b} {rng.choice(('is', 'equals'))} {self.result}."


def sample_equation(rng: random.Random, max_number: int, op: str | None = None) -> Equation:
    """A correct equation whose numbers all lie in [1, max_number]."""
    op = op or rng.choice("+-*")
    if op == "+":
        c = rng.randint(2, max_number)
        a = rng.randint(1, c - 1)
        return Equation(a, "+", c - a, c)
    if op == "-":
        a = rng.randint(2, max_number)
        b = rng.randint(1, a - 1)
        return Equation(a, "-", b, a - b)
    # Small multiplications only: factors up to 10.
    a = rng.randint(2, min(10, max_number // 2))
    b = rng.randint(2, min(10, max_number // a))
    return Equation(a, "*", b, a * b)


@dataclass(frozen=True)
class WordProblem:
    question: str  # the story ending in a question
    steps: tuple[Equation, ...]  # the worked solution, one equation per step
    answer: int
    statement: str = ""  # the same story told as a fact, answer included (the corpus's prose); "" when never told

    @property
    def solution(self) -> str:
        return " ".join(f"{s}." for s in self.steps) + f" The answer is {self.answer}."


Noun = tuple[str, str]  # (singular, plural)
ITEMS: tuple[Noun, ...] = (
    ("apple", "apples"),
    ("egg", "eggs"),
    ("marble", "marbles"),
    ("book", "books"),
    ("coin", "coins"),
    ("shell", "shells"),
    ("stamp", "stamps"),
    ("pencil", "pencils"),
    ("cookie", "cookies"),
    ("flower", "flowers"),
    ("cherry", "cherries"),
    ("sticker", "stickers"),
)
CONTAINERS: tuple[Noun, ...] = (("bag", "bags"), ("box", "boxes"), ("basket", "baskets"))
GAINS = ("bought", "found", "was given")


def count(k: int, noun: Noun) -> str:
    """k of a noun: "1 apple", "3 apples"."""
    return f"{k} {noun[0] if k == 1 else noun[1]}"


def sample_word_problem(rng: random.Random, max_number: int) -> WordProblem:
    """A one- or two-step problem about a nameless someone, for the corpus: told as a fact, or asked."""
    gender = rng.choice(("male", "female"))
    name = rng.choice(MALE_NAMES if gender == "male" else FEMALE_NAMES)
    he = PRONOUNS[gender][0]
    noun = rng.choice(ITEMS)
    items = noun[1]

    def n(k: int) -> str:
        return count(k, noun)

    kind = rng.choice(("add", "sub", "mul", "two"))
    if kind == "add":
        e = sample_equation(rng, max_number, "+")
        verb = rng.choice(GAINS)
        return WordProblem(
            f"{name} had {n(e.a)}. Then {he} {verb} {e.b} more. How many {items} does {name} have now?",
            (e,),
            e.result,
            f"{name} had {n(e.a)} and {verb} {e.b} more, so {he} had {n(e.result)}.",
        )
    if kind == "sub":
        e = sample_equation(rng, max_number, "-")
        return WordProblem(
            f"{name} had {n(e.a)}. Then {he} gave {e.b} to a friend. How many {items} does {name} have left?",
            (e,),
            e.result,
            f"{name} had {n(e.a)} and gave {e.b} to a friend, so {he} had {n(e.result)} left.",
        )
    if kind == "mul":
        e = sample_equation(rng, max_number, "*")
        box, boxes = rng.choice(CONTAINERS)
        setup = f"{name} has {e.a} {boxes} with {n(e.b)} in each {box}"
        return WordProblem(
            f"{setup}. How many {items} does {name} have in all?",
            (e,),
            e.result,
            f"{setup}, so {he} has {n(e.result)} in all.",
        )
    first = sample_equation(rng, max_number, "+")
    second = Equation.of(first.result, "-", rng.randint(1, first.result - 1))
    verb = rng.choice(GAINS)
    return WordProblem(
        f"{name} had {n(first.a)}. Then {he} {verb} {first.b} more and gave {second.b} away. "
        f"How many {items} does {name} have now?",
        (first, second),
        second.result,
        f"{name} had {n(first.a)}, {verb} {first.b} more and then gave {second.b} away, "
        f"so {he} had {n(second.result)} at the end.",
    )


def ladder_word_problem(
    rng: random.Random,
    steps: int,
    max_number: int,
    name: str,
    he: str,
    him: str,
    other: str,
    noun: Noun,
    container: Noun,
) -> WordProblem:
    """A story whose solution is exactly `steps` equations, every number in it between 1 and max_number: `name`
    starts with an amount of `noun` (or boxes of it), then gains and gives away some, singly or in boxes; `other`
    is who gives and takes. The reasoning stage's ladder of problems (one step to many)."""
    box, boxes = container
    items = noun[1]
    equations: list[Equation] = []
    if rng.random() < 0.3:
        e = sample_equation(rng, max_number, "*")
        equations.append(e)
        sentences = [f"{name} had {e.a} {boxes} with {count(e.b, noun)} in each {box}."]
        amount = e.result
    else:
        amount = rng.randint(1, max_number)
        sentences = [f"{name} had {count(amount, noun)}."]
    while len(equations) < steps:
        two_left = steps - len(equations) >= 2
        moves = [
            m
            for m, ok in (
                ("gain", amount < max_number),
                ("loss", amount >= 2),
                ("buy_boxes", two_left and max_number - amount >= 4),
                ("share", two_left and amount >= 5),
            )
            if ok
        ]
        move = rng.choice(moves)
        if move == "buy_boxes":
            e = sample_equation(rng, max_number - amount, "*")
            sentences.append(f"Then {he} bought {e.a} {boxes} with {e.b} in each {box}.")
        elif move == "share":
            e = sample_equation(rng, amount - 1, "*")
            sentences.append(f"Then {he} gave {e.b} to each of {e.a} friends.")
        elif move == "gain":
            b = rng.randint(1, max_number - amount)
            sentences.append(
                rng.choice((f"Then {he} {rng.choice(GAINS)} {b} more.", f"Then {other} gave {him} {b} more."))
            )
        else:
            b = rng.randint(1, amount - 1)
            sentences.append(rng.choice((f"Then {he} gave {b} to {other}.", f"Then {he} lost {b}.")))
        if move in ("buy_boxes", "share"):
            equations.append(e)
            b = e.result
        equations.append(Equation.of(amount, "+" if move in ("gain", "buy_boxes") else "-", b))
        amount = equations[-1].result
    sentences.append(f"How many {items} does {name} have now?")
    return WordProblem(" ".join(sentences), tuple(equations), amount)
