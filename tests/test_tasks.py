"""Reasoning tasks: built-in word problems and Countdown games, held-out sets, and task files good and bad."""

import gzip
import json
import random
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fromzero.data.sources import DataError, SourceStats
from fromzero.data.tasks import (
    ReasoningConfig,
    Task,
    TaskSources,
    builtin_tasks,
    cold_start_tasks,
    countdown_task,
    iter_tasks,
    load_tasks,
    solution_conversations,
    split_tasks,
    word_problem,
)
from fromzero.data.world import WorldConfig, build_world
from fromzero.rewards import accuracy, countdown_correct

WORLD = build_world(WorldConfig(n_people=24, n_places=6))


def solve(solution: str) -> int:
    """Check every equation of a worked solution and return its answer."""
    for a, op, b, result in re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)\.", solution):
        assert eval(f"{a} {op} {b}") == int(result)
    return int(re.search(r"The answer is (\d+)\.$", solution)[1])


def test_word_problems_climb_the_ladder_and_stay_in_range():
    rng = random.Random(0)
    for steps in range(1, 7):
        for _ in range(50):
            task = word_problem(rng, WORLD, steps, max_number=30)
            assert task.kind == "math" and task.metadata["steps"] == steps == len(task.metadata["equations"])
            assert solve(task.metadata["solution"]) == int(task.answer)
            numbers = [int(x) for x in re.findall(r"\d+", task.metadata["solution"])]
            assert all(1 <= x <= 30 for x in numbers)
            assert task.prompt.endswith("have now?")
            # the worked solution is a completion the reward accepts
            assert accuracy(task.metadata["solution"], task) == 1.0


def test_countdown_games_are_solvable_by_their_reference():
    rng = random.Random(0)
    for _ in range(200):
        task = countdown_task(rng, 4, 25, 100)
        numbers, target = task.metadata["numbers"], task.metadata["target"]
        assert len(numbers) == 4 and 1 <= target <= 100 and target not in numbers
        assert task.answer == str(target) and countdown_correct(task.metadata["solution"], numbers, target), task
        assert accuracy(f"<answer>{task.metadata['solution']}</answer>", task) == 1.0


@pytest.mark.parametrize("kind", ["word_problems", "countdown"])
def test_builtin_heldout_shares_no_computation_with_training(kind):
    cfg = ReasoningConfig(task=kind, min_steps=1, max_steps=3, n_train=800, n_eval=60)
    train, heldout = builtin_tasks(cfg, WORLD)
    assert len(train) == 800 and len(heldout) == 60
    if kind == "word_problems":
        key = lambda t: tuple(t.metadata["equations"])  # noqa: E731
        assert [t.metadata["steps"] for t in heldout[:6]] == [1, 2, 3, 1, 2, 3]  # every rung measured
        assert {t.metadata["steps"] for t in train} == {1, 2, 3}
    else:
        key = lambda t: (tuple(sorted(t.metadata["numbers"])), t.metadata["target"])  # noqa: E731
    assert len({key(t) for t in heldout}) == 60
    assert not {key(t) for t in heldout} & {key(t) for t in train}
    assert builtin_tasks(cfg, WORLD) == (train, heldout)  # seeded
    with pytest.raises(ValueError, match="min_steps"):
        ReasoningConfig(min_steps=4, max_steps=2)


def test_cold_start_spans_a_wider_ladder_than_rl_and_never_a_heldout_problem():
    cfg = ReasoningConfig(min_steps=3, max_steps=3, cold_start_min_steps=1, n_train=300, n_sft=200, n_eval=60)
    train, heldout = builtin_tasks(cfg, WORLD)
    assert {t.metadata["steps"] for t in train + heldout} == {3}  # RL trains and is graded on the hard rung
    cold = cold_start_tasks(cfg, WORLD, train, heldout)
    assert len(cold) == 200 and {t.metadata["steps"] for t in cold} == {1, 2, 3}
    key = lambda t: tuple(t.metadata["equations"])  # noqa: E731
    assert not {key(t) for t in cold} & {key(t) for t in heldout}
    plain = cfg.model_copy(update={"cold_start_min_steps": None})
    assert cold_start_tasks(plain, WORLD, train, heldout) == train[:200]  # default: the first n_sft training problems
    with pytest.raises(ValueError, match="cold_start_min_steps"):
        ReasoningConfig(min_steps=2, max_steps=3, cold_start_min_steps=3)
    with pytest.raises(ValueError, match="countdown"):
        ReasoningConfig(task="countdown", cold_start_min_steps=1)


def test_solution_conversations_teach_the_answer_format():
    tasks = [word_problem(random.Random(i), WORLD, 2, 50) for i in range(3)] + [Task("What is 1 + 1?", "2")]
    conversations = solution_conversations(tasks)
    assert len(conversations) == 3  # the task without a worked solution has nothing to teach
    for (user, assistant), task in zip(conversations, tasks):
        assert user == {"role": "user", "content": task.prompt}
        assert assistant["role"] == "assistant" and accuracy(assistant["content"], task) == 1.0


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_task_files_in_every_format(tmp_path):
    write_jsonl(
        tmp_path / "gsm8k.jsonl",
        [
            {
                "question": "Janet has 16 eggs and eats 3. How many are left?",
                "answer": "16 - 3 = <<16-3=13>>13\n#### 13",
            },
            {"question": "How many?", "answer": "So 1,000 of them.\n#### 1,000"},
        ],
    )
    with gzip.open(tmp_path / "math.jsonl.gz", "wt") as f:
        f.write(json.dumps({"problem": "Compute $3/4$.", "answer": "\\frac{3}{4}", "level": 1}) + "\n")
        f.write(json.dumps({"prompt": "What is 2 + 2?", "answer": 4}) + "\n")
    (tmp_path / "svamp.json").write_text(
        json.dumps(
            [{"ID": "chal-1", "Body": "Each pack costs 76 dollars.", "Question": "How much for 2?", "Answer": 152.0}]
        )
    )
    pq.write_table(
        pa.Table.from_pylist([{"target": 98, "nums": [44, 19, 35], "data_source": "countdown"}]),
        tmp_path / "countdown.parquet",
    )
    tasks = list(iter_tasks(str(tmp_path)))
    by_prompt = {t.prompt: t for t in tasks}
    assert len(tasks) == 6
    assert by_prompt["Janet has 16 eggs and eats 3. How many are left?"].answer == "13"
    assert by_prompt["How many?"].answer == "1000"
    assert accuracy(by_prompt["How many?"].metadata["solution"], by_prompt["How many?"]) == 1.0  # "#### 1,000"
    assert by_prompt["Compute $3/4$."].answer == "\\frac{3}{4}" and by_prompt["What is 2 + 2?"].answer == "4"
    assert by_prompt["Each pack costs 76 dollars. How much for 2?"].answer == "152"
    (countdown,) = [t for t in tasks if t.kind == "countdown"]
    assert countdown.metadata == {"numbers": [44, 19, 35], "target": 98} and "44, 19 and 35" in countdown.prompt
    assert accuracy("<answer>44 + 19 + 35</answer>", countdown) == 1.0


@pytest.mark.parametrize(
    "records, message",
    [
        (
            [{"question": "Q?", "answer": "A\n#### 3"}, {"question": "Q2?", "answer": "no final line"}],
            r"2: bad gsm8k record: .*####",
        ),
        (
            [{"question": "Q?", "answer": "#### 3"}, {"answer": "#### 4"}],
            r"2: bad gsm8k record: missing field 'question'",
        ),
        (
            [{"prompt": "P?", "answer": "1"}, {"prompt": "", "answer": "1"}],
            r"2: bad prompt_answer record: 'prompt' must be",
        ),
        (
            [{"prompt": "P?", "answer": "1"}, {"prompt": "P?", "answer": None}],
            r"2: bad prompt_answer record: the answer must be",
        ),
        (
            [{"prompt": "P?", "answer": "1"}, {"prompt": "P?", "answer": [1]}],
            r"2: bad prompt_answer record: the answer must be",
        ),
        (
            [{"target": 5, "nums": [1, 4]}, {"target": 5, "nums": [1, "4"]}],
            r"2: bad countdown record: the numbers must be",
        ),
        (
            [{"target": 5, "nums": [1, 4]}, {"target": 5.5, "nums": [1, 4]}],
            r"2: bad countdown record: the target must be",
        ),
        ([{"text": "not a task"}], r"1: no task format fits the keys \['text'\]"),
        ([{"prompt": "P?", "answer": "1"}, "{not json"], r"2: invalid JSON"),
        ([{"prompt": "P?", "answer": "1"}, "[1, 2]"], r"2: expected a JSON object"),
    ],
)
def test_malformed_records_name_file_and_line(tmp_path, records, message):
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(DataError, match=f"{re.escape(str(path))}:{message}"):
        list(iter_tasks(path))
    stats = SourceStats()
    assert len(list(iter_tasks(path, on_error="skip", stats=stats))) == len(records) - 1
    assert stats.skipped == 1 and str(path) in stats.errors[0]


def test_load_tasks_from_files_and_builtin(tmp_path):
    train_file = write_jsonl(
        tmp_path / "train.jsonl", [{"prompt": f"What is {i} + 1?", "answer": i + 1} for i in range(40)]
    )
    test_file = write_jsonl(tmp_path / "test.jsonl", [{"prompt": "What is 100 + 1?", "answer": 101}])
    train, heldout = load_tasks(TaskSources(data=[str(train_file)], eval_fraction=0.25), ReasoningConfig(), WORLD)
    assert len(train) == 30 and len(heldout) == 10 and not {t.prompt for t in train} & {t.prompt for t in heldout}
    train, heldout = load_tasks(
        TaskSources(data=[str(train_file)], eval_data=[str(test_file)]), ReasoningConfig(), WORLD
    )
    assert len(train) == 40 and heldout == [Task("What is 100 + 1?", "101")]
    train, heldout = load_tasks(TaskSources(), ReasoningConfig(n_train=10, n_eval=5), WORLD)
    assert len(train) == 10 and len(heldout) == 5
    assert split_tasks(train, 0.0) == (train, [])
