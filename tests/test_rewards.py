"""Rewards: answer extraction, value equivalence, Countdown checking, and that odd output never crashes."""

import math

import pytest

from fromzero.data.tasks import Task
from fromzero.rewards import (
    RewardStats,
    accuracy,
    answer_is,
    answer_tag,
    boxed,
    countdown_correct,
    countdown_expression,
    evaluate_arithmetic,
    extract_answer,
    hash_mark,
    is_equivalent,
    last_number,
    load_reward,
    overlong_penalty,
    safe_reward,
    think_answer_format,
    true_equations,
    weighted_rewards,
)


def test_each_extractor():
    assert answer_tag("<think>hmm</think> <answer> 42 </answer>") == "42"
    assert answer_tag("<answer>1</answer> then <answer>2</answer>") == "2"
    assert answer_tag("no tags") is None
    assert boxed(r"so $\boxed{\frac{3}{4}}$ and done") == r"\frac{3}{4}"
    assert boxed(r"\boxed{1} or \boxed{\left( 3, \frac{\pi}{2} \right)}") == r"\left( 3, \frac{\pi}{2} \right)"
    assert boxed(r"cut off \boxed{\frac{1}{2") is None
    assert hash_mark("She makes 9 * 2 = $18.\n#### 18") == "18"
    assert answer_is("15 + 7 = 22. 22 - 21 = 1. The answer is 1.") == "1"
    assert answer_is("The answer is 0.75.") == "0.75"
    assert answer_is("the answer is: -3") == "-3"
    assert last_number("7 plus 5 is 12.") == "12"
    assert last_number("I owe -5 and then 1,000 apples") == "1,000"
    assert last_number("15-7") == "7"  # a minus between numbers is subtraction, not a sign
    assert last_number("half is 3/4 of it") == "3/4"
    assert last_number("no digits here") is None


def test_extract_answer_prefers_the_explicit_forms():
    assert extract_answer("Maybe 3. <answer>5</answer> or 7") == "5"
    assert extract_answer(r"We get 2 and then \boxed{4}, not 6") == "4"
    assert extract_answer("5 + 5 = 10\n#### 10\nextra 3") == "10"
    assert extract_answer("15 + 7 = 22. 22 - 21 = 1. The answer is 1.") == "1"
    assert extract_answer("7 plus 5 is 12.") == "12"
    for nothing in ("", "I do not know.", "<answer></answer>"):
        assert extract_answer(nothing) is None


@pytest.mark.parametrize(
    "predicted, reference",
    [
        ("1,000", "1000"),
        ("1,234,567", "1234567"),
        ("-5", "-5"),
        ("- 5", "-5"),
        ("3/4", "0.75"),
        (r"\frac{3}{4}", "0.75"),
        (r"\dfrac{3}{4}", "3/4"),
        (r"-\frac{1}{2}", "-0.5"),
        ("3.0", "3"),
        ("$12", "12"),
        (r"\$1,000", "1000"),
        ("12 dollars", "12"),
        (r"12\text{ cm}", "12"),
        ("50%", "50"),
        (r"50\%", "0.5"),
        ("x = 3", "3"),
        (r"\boxed{7}", "7"),
        ("42.", "42"),
        ("therefore 7", "7"),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\pi/2)"),
        (r"\sqrt{2}/2", r"\frac{1}{\sqrt{2}}"),
        ("x^2+2x+1", "(x+1)^2"),
    ],
)
def test_equivalent(predicted, reference):
    assert is_equivalent(predicted, reference)


@pytest.mark.parametrize(
    "predicted, reference",
    [
        ("5", "-5"),
        ("0.3333", "1/3"),
        ("1,001", "1000"),
        ("3/4", "4/3"),
        ("12", "120"),
        ("x + 1", "x - 1"),
        ("banana", "12"),
        ("", "3"),
        ("9" * 500, "9"),
        ("3 + 4", "7"),
        ("2^3", "8"),
        ("36 + 6 - 36 - 5", "1"),
    ],
)
def test_not_equivalent(predicted, reference):
    assert not is_equivalent(predicted, reference)


def test_accuracy_on_math_tasks():
    task = Task("Tom had 15 apples...", "1")
    assert accuracy("15 + 7 = 22. 22 - 21 = 1. The answer is 1.", task) == 1.0
    assert accuracy("15 + 7 = 22. 22 - 21 = 2. The answer is 2.", task) == 0.0
    assert accuracy("I have no idea", task) == 0.0
    assert accuracy("The answer is 15 + 7 - 21.", task) == 0.0  # copying the numbers is not computing
    assert accuracy(r"so it is $\boxed{0.75}$", Task("?", r"\frac{3}{4}")) == 1.0


def test_countdown():
    assert countdown_expression("<answer> (25 - 5) * 4 </answer>") == "(25 - 5) * 4"
    assert countdown_expression("I try (25 - 5) * 4 = 80") == "(25 - 5) * 4"
    assert countdown_expression("25 - 5 = 20, 20 * 4 = 80") == "20 * 4"  # an intermediate result is not a number given
    assert countdown_expression("no numbers") is None
    assert evaluate_arithmetic("(1 + 2) / 3") == (1, [1, 2, 3])
    assert countdown_correct("<answer>(25 - 5) * 4</answer>", [4, 25, 5], 80)
    assert countdown_correct("25 * 4 - 20", [25, 4, 20, 7], 80)  # not every number has to be used
    assert not countdown_correct("(25 - 5) * 4", [25, 4], 80)  # 5 is not among the numbers
    assert not countdown_correct("25 * 4 - 25", [25, 4], 75)  # 25 given once, used twice
    assert not countdown_correct("25 + 4", [25, 4], 30)  # wrong result
    assert countdown_correct("6 / 4 * 2", [6, 4, 2], 3)  # exact fractions on the way
    for odd in (
        "1 / 0",
        "__import__('os').system('echo hi')",
        "2 ** 99999",
        "(" * 300 + "1",
        "1e9 + 1",
        "-3 + 4",
        "abs(-3)",
        "3 % 2",
    ):
        assert not countdown_correct(f"<answer>{odd}</answer>", [1, 0, 2, 3, 4, 99999], 1)
    task = Task("Using the numbers ...", "80", "countdown", {"numbers": [25, 5, 4], "target": 80})
    assert accuracy("<answer>4 * (25 - 5)</answer>", task) == 1.0 and accuracy("80", task) == 0.0


def test_format_and_length_penalty():
    assert think_answer_format("<think>3 + 4 is 7</think>\n<answer>7</answer>", Task("?", "7")) == 1.0
    assert think_answer_format("<answer>7</answer>", Task("?", "7")) == 0.0
    assert think_answer_format("<think>a</think><answer>7</answer> trailing words", Task("?", "7")) == 0.0
    assert [overlong_penalty(n, 100, 20) for n in (50, 80, 90, 100, 120)] == [0.0, 0.0, -0.5, -1.0, -1.0]
    assert overlong_penalty(100, 100, 0) == 0.0


def test_true_equations_checks_each_step_of_the_working():
    task = Task("?", "9")
    assert true_equations("3 + 37 = 40. 40 - 31 = 9. The answer is 9.", task) == 1.0
    assert true_equations("3 + 37 = 43. 43 - 34 = 9. The answer is 9.", task) == 0.5  # the first step slipped
    assert true_equations("2 × 3 = 6, 12 ÷ 4 = 3 and 2 + 3 * 4 = 14", task) == 1.0  # precedence as written
    assert true_equations("The answer is 9.", task) == 0.0  # no working, no credit
    assert true_equations("7 / 0 = 1. 1 + 1 = 2.", task) == 0.5  # a division by zero is a false step, not a crash
    assert true_equations("1.5 + 2 = 3.5", task) == 0.0  # decimals are not read as "5 + 2 = 3"
    assert load_reward("equations")[1] is true_equations


def broken_reward(completion: str, task: Task) -> float:
    if "nan" in completion:
        return math.nan
    if "none" in completion:
        return None  # type: ignore[return-value]
    raise RuntimeError("this reward function has a bug")


def test_odd_output_and_broken_rewards_score_zero_and_are_counted():
    stats = RewardStats()
    task = Task("?", "12")
    odd = ["", "\x00\uffff", "<answer>", "\\boxed{", "1" * 10_000, "9^9^9^9^9", "}}}{{{", "12" * 50 + "/0", "nan"]
    for text in odd:
        assert safe_reward("accuracy", accuracy, text, task, stats) in (0.0, 1.0)
    assert stats.failures == 0
    for text in ("nan", "none", "boom"):
        assert safe_reward("broken", broken_reward, text, task, stats) == 0.0
    assert stats.failures == 3 and stats.errors[0].startswith("broken: returned nan")
    assert "RuntimeError: this reward function has a bug" in stats.errors[2]


def test_weighted_sum_and_rewards_by_import_path():
    name, fn = load_reward(f"{__name__}:broken_reward")
    assert name == "broken_reward" and fn is broken_reward
    funcs = dict([load_reward("accuracy"), load_reward("format")])
    stats = RewardStats()
    completions = ["<think>7 + 5</think><answer>12</answer>", "The answer is 12.", "13"]
    total, scores = weighted_rewards(completions, [Task("?", "12")] * 3, funcs, {"accuracy": 1.0, "format": 0.5}, stats)
    assert scores == {"accuracy": [1.0, 1.0, 0.0], "format": [1.0, 0.0, 0.0]}
    assert total == [1.5, 1.0, 0.0] and stats.calls == 6
    for bad in (
        "no_such_reward",
        "fromzero.rewards:nothing_here",
        "no.such.module:fn",
        "fromzero.rewards:MAX_ANSWER_CHARS",
    ):
        with pytest.raises(ValueError, match="reward"):
            load_reward(bad)
