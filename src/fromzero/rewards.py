"""Verifiable rewards: find the final answer in a completion and check it against the reference.

A reward function scores one completion of one task: `fn(completion: str, task: Task) -> float`. The
built-in ones are `accuracy` (the final answer is right: numeric/symbolic equivalence, or a valid
Countdown expression) and `format` (DeepSeek-R1's `<think>…</think><answer>…</answer>` layout); any
other is named by import path, `package.module:function`. `weighted_rewards` sums several with
weights. Model output is arbitrary text, so every call goes through `safe_reward`: whatever a reward
function raises or returns that is not a finite number scores 0 and is counted in `RewardStats`,
never stopping a run.

Answers are compared as values, not strings: "1,000" == "1000", "3/4" == "0.75" == "\\frac{3}{4}",
"50%" == "50" == "0.5", "$12" == "12 dollars" == "12". Plain numbers are compared exactly as fractions;
anything else (LaTeX expressions, intervals, roots) goes to math-verify, which parses LaTeX into sympy.
"""

from __future__ import annotations

import ast
import importlib
import math
import operator
import re
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import Any

from fromzero.data.tasks import Task

RewardFn = Callable[[str, Task], float]

# Model output can be anything; answers longer than this are not answers, and parsing them could be slow.
MAX_ANSWER_CHARS = 200
MAX_EXAMPLE_ERRORS = 5
SYMBOLIC_TIMEOUT_S = 5

# ---------------------------------------------------------------------------
# Answer extraction, most explicit first

ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
HASH_MARK = re.compile(r"####\s*([^\n]+)")
ANSWER_IS = re.compile(r"answer is\s*:?\s*(.+?)(?:\.(?=\s|$)|\n|$)", re.I)
# a number not glued to a word or a decimal point before it: -12, 1,000, 3.5, 3/4
NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?")


def answer_tag(text: str) -> str | None:
    """The content of the last `<answer>…</answer>`."""
    found = ANSWER_TAG.findall(text)
    return found[-1].strip() if found else None


def boxed(text: str) -> str | None:
    """The content of the last `\\boxed{…}` (or `\\fbox{…}`), nested braces included."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None  # unbalanced: the completion was cut off inside the box


def hash_mark(text: str) -> str | None:
    """GSM8K's final answer line, `#### 42`."""
    found = HASH_MARK.findall(text)
    return found[-1].strip() if found else None


def answer_is(text: str) -> str | None:
    """What follows the last "the answer is", up to the end of its sentence."""
    found = ANSWER_IS.findall(text)
    return found[-1].strip() if found else None


def last_number(text: str) -> str | None:
    found = NUMBER.findall(text)
    return found[-1] if found else None


EXTRACTORS: tuple[Callable[[str], str | None], ...] = (answer_tag, boxed, hash_mark, answer_is, last_number)


def extract_answer(text: str) -> str | None:
    """The final answer of a completion: the first of <answer> tags, \\boxed{}, `#### N`, "the answer is N"
    and the last number that finds one; None when there is no answer at all."""
    for extract in EXTRACTORS:
        found = extract(text)
        if found:
            return found
    return None


# ---------------------------------------------------------------------------
# Equivalence

LATEX_NOISE = (
    "\\left",
    "\\right",
    "\\!",
    "\\,",
    "\\;",
    "\\:",
    "\\displaystyle",
    "^\\circ",
    "^{\\circ}",
    "°",
    "\\$",
    "$",
)
FRAC = re.compile(r"^(-?)\\frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}$")
DECIMAL = re.compile(r"^-?(?:\d+\.?\d*|\.\d+)$")
SLASH_FRACTION = re.compile(r"^-?\d+/\d+$")


def normalize(answer: str) -> str:
    """An answer without what doesn't change its value: dollar signs, units, thousands separators,
    LaTeX spacing and sizing, `\\dfrac`, a trailing period, a leading "x =", a surrounding \\boxed{}."""
    s = boxed(answer) or answer
    s = re.sub(r"\\text\{([^{}]*)\}", r" \1", s)
    for noise in LATEX_NOISE:
        s = s.replace(noise, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.strip().rstrip(".").strip()
    s = re.sub(r"^[a-zA-Z]\s*=\s*", "", s)
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)
    # words after a number are units ("12 apples", "5 cm"); words glued to it are not ("2x")
    s = re.sub(r"(?<=[\d%])\s+[a-zA-Z][a-zA-Z\s]*$", "", s)
    return s.strip()


def parse_number(answer: str) -> tuple[Fraction, bool] | None:
    """(exact value, written as a percentage) of a plain number, fraction or \\frac; None otherwise."""
    s = normalize(answer).replace(" ", "")
    percent = s.endswith("%")
    s = s.removesuffix("\\%").removesuffix("%")
    try:
        if DECIMAL.match(s) or SLASH_FRACTION.match(s):
            return Fraction(s), percent
        if m := FRAC.match(s):
            value = Fraction(m[2]) / Fraction(m[3])
            return (-value if m[1] else value), percent
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _values(parsed: tuple[Fraction, bool]) -> set[Fraction]:
    # "50%" may be meant as 50 or as 0.5; either counts
    value, percent = parsed
    return {value, value / 100} if percent else {value}


def lone_number(text: str) -> tuple[Fraction, bool] | None:
    """The value of the one number in a phrase ("therefore 7"); None when there are several or an operator.

    An expression such as "36 + 6 - 36 - 5" is never evaluated against a numeric reference: computing it is
    the task, and a model rewarded for copying the numbers of the question with operators between them
    would learn exactly that.
    """
    s = normalize(text)
    found = NUMBER.findall(s)
    if len(found) != 1 or re.search(r"[-+*/^=\\]", s.replace(found[0], "", 1)):
        return None
    return parse_number(found[0])


def is_equivalent(predicted: str, reference: str) -> bool:
    """Whether an answer has the reference's value: a number exactly, anything else symbolically."""
    if len(predicted) > MAX_ANSWER_CHARS:
        return False
    expected = parse_number(reference)
    if expected is None:  # an expression, interval, root, ...
        return _symbolic_equal(normalize(predicted), normalize(reference))
    got = parse_number(predicted) or lone_number(predicted)
    return got is not None and bool(_values(got) & _values(expected))


def _timeout() -> int | None:
    # math-verify's timeouts use SIGALRM, which exists in the main thread only
    return SYMBOLIC_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=4096)
def _parse_math(text: str) -> Any:
    import math_verify  # sympy and the LaTeX grammar take a while to import; numbers never need them

    return math_verify.parse(f"${text}$", parsing_timeout=_timeout())


def _symbolic_equal(predicted: str, reference: str) -> bool:
    import math_verify

    gold, guess = _parse_math(reference), _parse_math(predicted)
    return bool(gold and guess and math_verify.verify(gold, guess, timeout_seconds=_timeout()))


# ---------------------------------------------------------------------------
# Countdown: an arithmetic expression over the given numbers that makes the target

OPERATORS: dict[type, Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
EXPRESSION = re.compile(r"[\d(][\d\s+\-*/()]*")


def countdown_expression(text: str) -> str | None:
    """The expression of a Countdown answer: from <answer> tags if there are any, else the last
    expression in the text, with a trailing "= result" dropped ("(25 - 5) * 4 = 80")."""
    text = (answer_tag(text) or text).replace("×", "*").replace("÷", "/")
    for piece in reversed(re.split(r"[=\n]", text)):
        runs = [r.strip() for r in EXPRESSION.findall(piece) if re.search(r"\d\s*[-+*/]", r)]
        if runs:
            return runs[-1]
    return None


def evaluate_arithmetic(expression: str) -> tuple[Fraction, list[int]]:
    """The exact value of + - * / over non-negative integers and parentheses, and the numbers used.

    Parsed with `ast` and evaluated node by node: nothing but those operators and integer literals is
    accepted, so model output is never executed. Raises ValueError (or ZeroDivisionError).
    """
    if len(expression) > MAX_ANSWER_CHARS:
        raise ValueError(f"expression longer than {MAX_ANSWER_CHARS} characters")
    used: list[int] = []

    def value(node: ast.AST) -> Fraction:
        if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
            return OPERATORS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
            return Fraction(node.value)
        raise ValueError(f"only integers, + - * / and parentheses are allowed, got {ast.unparse(node)!r}")

    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from e
    return value(tree.body), used


def countdown_correct(completion: str, numbers: Sequence[int], target: int) -> bool:
    """The completion's expression makes `target` using each of `numbers` at most once."""
    expression = countdown_expression(completion)
    if expression is None:
        return False
    try:
        result, used = evaluate_arithmetic(expression)
    except (ValueError, ZeroDivisionError):
        return False
    return result == target and not Counter(used) - Counter(numbers)


# ---------------------------------------------------------------------------
# Reward functions


def accuracy(completion: str, task: Task) -> float:
    """1 when the final answer is right, else 0."""
    if task.kind == "countdown":
        return float(countdown_correct(completion, task.metadata["numbers"], int(task.metadata["target"])))
    predicted = extract_answer(completion)
    return float(predicted is not None and is_equivalent(predicted, task.answer))


THINK_ANSWER = re.compile(r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.S)


def think_answer_format(completion: str, task: Task) -> float:
    """1 when the completion is reasoning in <think> tags followed by the answer in <answer> tags."""
    return float(THINK_ANSWER.match(completion) is not None)


WORKED_EQUATION = re.compile(r"(?<![\d.])(\d+(?:\s*[-+*/×÷]\s*\d+)+)\s*=\s*(-?\d+)(?!\d)(?!\.\d)")


def true_equations(completion: str, task: Task) -> float:
    """The share of the equations in the working ("13 - 2 = 11") that are arithmetically true; 0 with none.

    A process reward that needs no reference: each step is checked on its own, so a completion whose last
    step slipped still earns for the steps it got right, and the policy gets a signal on every sum it writes
    rather than one per answer. On its own it is easily gamed (write only equations you are sure of: the
    tiny preset's model learned that in 40 GRPO steps while its accuracy fell); weight it below accuracy.
    """
    found = WORKED_EQUATION.findall(completion.replace("×", "*").replace("÷", "/"))
    if not found:
        return 0.0
    right = 0
    for left, result in found:
        try:
            right += evaluate_arithmetic(left)[0] == int(result)
        except (ValueError, ZeroDivisionError):
            pass
    return right / len(found)


BUILTIN: dict[str, RewardFn] = {"accuracy": accuracy, "format": think_answer_format, "equations": true_equations}


def overlong_penalty(length: int, max_length: int, buffer: int) -> float:
    """DAPO's soft overlong punishment: 0 up to max_length - buffer tokens, then falling linearly to -1
    at max_length, so a completion cut off at the limit is penalised and one nearing it a little."""
    if buffer <= 0 or length <= max_length - buffer:
        return 0.0
    return max(-1.0, (max_length - buffer - length) / buffer)


def load_reward(spec: str) -> tuple[str, RewardFn]:
    """(metric name, function) of a built-in reward name or a `package.module:function` path."""
    if spec in BUILTIN:
        return spec, BUILTIN[spec]
    if ":" not in spec:
        raise ValueError(f"unknown reward {spec!r}: use one of {sorted(BUILTIN)} or a 'package.module:function' path")
    module_name, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"reward {spec!r} cannot be loaded: {e}") from None
    if not callable(fn):
        raise ValueError(f"reward {spec!r} is not a function")
    return name, fn


@dataclass
class RewardStats:
    """Reward calls, and the ones that failed on odd output (raised, or returned no finite number)."""

    calls: int = 0
    failures: int = 0
    errors: list[str] = field(default_factory=list)  # the first few, as examples

    def record_failure(self, name: str, error: str) -> None:
        self.failures += 1
        if len(self.errors) < MAX_EXAMPLE_ERRORS:
            self.errors.append(f"{name}: {error}")


def safe_reward(name: str, fn: RewardFn, completion: str, task: Task, stats: RewardStats) -> float:
    stats.calls += 1
    try:
        value = float(fn(completion, task))
    except Exception as e:  # a reward function must never end a run; the failure is counted instead
        stats.record_failure(name, f"{type(e).__name__}: {e}")
        return 0.0
    if not math.isfinite(value):
        stats.record_failure(name, f"returned {value}")
        return 0.0
    return value


def weighted_rewards(
    completions: Sequence[str],
    tasks: Sequence[Task],
    funcs: Mapping[str, RewardFn],
    weights: Mapping[str, float],
    stats: RewardStats,
) -> tuple[list[float], dict[str, list[float]]]:
    """The weighted sum of the reward functions for each completion, and each function's own scores."""
    scores = {
        name: [safe_reward(name, fn, c, t, stats) for c, t in zip(completions, tasks)] for name, fn in funcs.items()
    }
    total = [sum(weights[name] * scores[name][i] for name in funcs) for i in range(len(completions))]
    return total, scores
