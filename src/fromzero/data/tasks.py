"""Tasks with verifiable answers, the prompts of reasoning RL.

A `Task` is a prompt, its reference answer, and a `kind` that picks how an answer is checked: "math"
(the final answer must equal the reference in value) or "countdown" (the answer is an expression over
the given numbers that makes the target). Tasks come from

- the built-in world: arithmetic word problems about its people and objects, on a ladder from one step
  (one equation) to `max_steps`, in the style of the pretraining corpus's problems ("15 + 7 = 22. 22 - 21 = 1.
  The answer is 1."), or Countdown numbers games (TinyZero); the held-out set shares no computation with
  the training set (no word problem with the same equations, no Countdown game with the same numbers and
  target);
- files, the format detected per file from its first record:
  GSM8K (`question`, `answer` ending in `#### N`), SVAMP (`Body`, `Question`, `Answer`), Countdown
  (`target` and `nums` or `numbers`, as in TinyZero's parquet files, or `input` "30,100,93" and `output`
  "23", as in d1's), and any `{prompt, answer}` records (also `problem` or `question` for the prompt, as in
  MATH). A reference answer is a final answer: a worked solution (a line break, GSM8K's `<<48/2=24>>`, a
  sentence) is refused, since a model's sentence could then match it.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fromzero.data.arithmetic import CONTAINERS, ITEMS, ladder_word_problem
from fromzero.data.arithmetic import GAINS as GAINS  # GAINS and Equation stay importable from here
from fromzero.data.arithmetic import Equation as Equation
from fromzero.data.chat import Message, prompt_ids
from fromzero.data.sources import Source, SourceStats, iter_detected, iter_records
from fromzero.data.world import World
from fromzero.tokenizer import Tokenizer

TaskKind = Literal["math", "countdown"]


@dataclass(frozen=True)
class Task:
    prompt: str  # the user message
    answer: str  # the reference final answer (for Countdown, the target)
    kind: TaskKind = "math"
    metadata: dict[str, Any] = field(default_factory=dict)  # steps, worked solution, Countdown numbers, ...


def encode_prompt(tok: Tokenizer, task: Task, system: str | None = None) -> list[int]:
    """The tokens a model sees before answering the task: the chat template, the problem as the user message."""
    return prompt_ids(tok, task.prompt, system)


def solution_conversations(tasks: Sequence[Task], direct_fraction: float = 0.0, seed: int = 0) -> list[list[Message]]:
    """The tasks that come with a worked solution, as conversations to fine-tune on before RL (DeepSeek-R1's
    "cold start"): RL only strengthens what the model already samples sometimes, so it must first see the
    answer format and a few right answers.

    A `direct_fraction` of them answer with the final line alone ("The answer is 7."), as much real data does.
    The model then sometimes works a problem out and sometimes guesses; which one pays is for RL to find.
    """
    rng = random.Random(f"{seed}:cold-start")
    conversations = []
    for t in tasks:
        if "solution" not in t.metadata:
            continue
        direct = rng.random() < direct_fraction and t.kind == "math"
        answer = f"The answer is {t.answer}." if direct else t.metadata["solution"]
        conversations.append([{"role": "user", "content": t.prompt}, {"role": "assistant", "content": answer}])
    return conversations


class ReasoningConfig(BaseModel):
    """The built-in tasks of the reasoning stage."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, description="seed for the problems and the held-out split")
    task: Literal["word_problems", "countdown"] = Field("word_problems", description="which built-in task")
    min_steps: int = Field(1, ge=1, description="word problems: fewest equations in a solution")
    max_steps: int = Field(3, ge=1, description="word problems: most equations in a solution")
    max_number: int = Field(
        50, ge=10, description="largest number in a problem (operands and every result; Countdown: the numbers given)"
    )
    countdown_numbers: int = Field(3, ge=2, description="Countdown: numbers given per game")
    countdown_max_target: int = Field(100, ge=2, description="Countdown: largest target")
    n_train: int = Field(5000, ge=1, description="training problems")
    n_sft: int = Field(
        2000,
        ge=0,
        description="training problems (the first n_sft) whose worked solutions join the SFT "
        "data: the cold start that makes RL's first rewards non-zero",
    )
    cold_start_min_steps: int | None = Field(
        None,
        ge=1,
        description="built-in word problems: the cold start's "
        "problems take cold_start_min_steps to max_steps steps, a wider ladder "
        "than RL's; None (and tasks from files): the first n_sft training "
        "problems",
    )
    n_eval: int = Field(200, ge=1, description="held-out problems, spread evenly over the step counts")
    direct_fraction: float = Field(
        0.0, ge=0, le=1, description="share of the cold-start solutions that state the answer without working it out"
    )

    @model_validator(mode="after")
    def _consistent(self) -> ReasoningConfig:
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps ({self.min_steps}) is larger than max_steps ({self.max_steps})")
        if self.cold_start_min_steps is not None and self.task != "word_problems":
            raise ValueError("cold_start_min_steps sets a ladder of word problems; the countdown task has none")
        if self.cold_start_min_steps is not None and self.cold_start_min_steps > self.min_steps:
            raise ValueError(
                f"cold_start_min_steps ({self.cold_start_min_steps}) is larger than min_steps "
                f"({self.min_steps}): the cold start's ladder only widens RL's"
            )
        return self


class TaskSources(BaseModel):
    """Where the reasoning stage's tasks come from."""

    model_config = ConfigDict(extra="forbid")

    data: list[str] = Field(
        default_factory=list,
        description="task files (jsonl/json/parquet/datasets: GSM8K, SVAMP, "
        "Countdown, prompt/answer); empty: the built-in tasks (the `reasoning` section)",
    )
    eval_data: list[str] = Field(
        default_factory=list, description="held-out task files; empty: hold out eval_fraction of `data`"
    )
    on_error: Literal["raise", "skip"] = Field("raise", description="malformed records: stop, or skip and count")
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="share of `data` held out when eval_data is empty")


# ---------------------------------------------------------------------------
# Built-in word problems


def word_problem(rng: random.Random, world: World, steps: int, max_number: int) -> Task:
    """A story about one of the world's trained people whose solution is exactly `steps` equations, every number in
    it between 1 and max_number (`arithmetic.ladder_word_problem`), about an item or one of the world's objects."""
    person, friend = rng.sample(world.trained_people, 2)
    other = friend.first_name if friend.first_name != person.first_name else "a friend"
    noun = rng.choice(ITEMS + tuple((t.name, t.plural) for t in world.objects))
    container = rng.choice(CONTAINERS)
    problem = ladder_word_problem(
        rng, steps, max_number, person.first_name, person.he, person.him, other, noun, container
    )
    return Task(
        problem.question,
        str(problem.answer),
        "math",
        {"steps": steps, "solution": problem.solution, "equations": [str(e) for e in problem.steps]},
    )


# ---------------------------------------------------------------------------
# Countdown


def countdown_prompt(numbers: list[int], target: int) -> str:
    listed = ", ".join(map(str, numbers[:-1])) + f" and {numbers[-1]}"
    return (
        f"Using the numbers {listed}, make {target}. You may use +, -, * and /, and each number at most once. "
        "Write the expression."
    )


def countdown_task(rng: random.Random, n_numbers: int, max_number: int, max_target: int) -> Task:
    """A solvable game: numbers drawn at random, the target made by combining some of them with whole,
    positive intermediate results; the target is never one of the numbers."""
    while True:
        numbers = [rng.randint(1, max_number) for _ in range(n_numbers)]
        pool = [(Fraction(x), str(x)) for x in rng.sample(numbers, rng.randint(2, n_numbers))]
        while len(pool) > 1:
            (a, ea), (b, eb) = pool.pop(rng.randrange(len(pool))), pool.pop(rng.randrange(len(pool)))
            if a < b:
                (a, ea), (b, eb) = (b, eb), (a, ea)
            op = rng.choice([o for o, ok in (("+", True), ("-", a > b), ("*", True), ("/", a % b == 0)) if ok])
            value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op]
            pool.append((value, f"({ea} {op} {eb})"))
        target, expression = int(pool[0][0]), pool[0][1][1:-1]
        if target <= max_target and target not in numbers:
            break
    return Task(
        countdown_prompt(numbers, target),
        str(target),
        "countdown",
        {"numbers": numbers, "target": target, "solution": expression},
    )


# ---------------------------------------------------------------------------
# Built-in train / held-out sets


def _key(task: Task) -> Hashable:
    """What two tasks share when one gives away the other: the same computation."""
    if task.kind == "countdown":
        return tuple(sorted(task.metadata["numbers"])), task.metadata["target"]
    return tuple(task.metadata["equations"])


def builtin_tasks(cfg: ReasoningConfig, world: World) -> tuple[list[Task], list[Task]]:
    """(train, held out); no held-out task shares its computation with a training task."""
    ladder = range(cfg.min_steps, cfg.max_steps + 1)

    def sample(rng: random.Random, rung: int | None) -> Task:
        if cfg.task == "countdown":
            return countdown_task(rng, cfg.countdown_numbers, cfg.max_number, cfg.countdown_max_target)
        # held-out problems take the rungs of the ladder in turn, so every step count is measured
        steps = rng.choice(ladder) if rung is None else ladder[rung % len(ladder)]
        return word_problem(rng, world, steps, cfg.max_number)

    rng = random.Random(f"{cfg.seed}:reasoning-heldout")
    heldout: dict[Hashable, Task] = {}
    for _ in range(100 * cfg.n_eval):
        if len(heldout) == cfg.n_eval:
            break
        task = sample(rng, len(heldout))
        heldout.setdefault(_key(task), task)
    rng = random.Random(f"{cfg.seed}:reasoning-train")
    train: list[Task] = []
    for _ in range(100 * cfg.n_train):
        if len(train) == cfg.n_train:
            break
        task = sample(rng, None)
        if _key(task) not in heldout:
            train.append(task)
    if len(heldout) < cfg.n_eval or len(train) < cfg.n_train:
        raise ValueError(
            f"could not make {cfg.n_eval} distinct held-out and {cfg.n_train} training problems with "
            f"max_number={cfg.max_number}: raise max_number or ask for fewer"
        )
    return train, list(heldout.values())


def cold_start_tasks(cfg: ReasoningConfig, world: World, train: Sequence[Task], heldout: Sequence[Task]) -> list[Task]:
    """The problems whose worked solutions join the SFT data (the cold start): the first n_sft training problems,
    or with `cold_start_min_steps` (built-in word problems), n_sft problems of the wider ladder
    cold_start_min_steps..max_steps. RL then trains and is graded on the hard end of the ladder alone, where the
    cold-started model is right only part of the time, while its cold start also saw the easier problems. No
    cold-start problem shares its computation with a held-out one."""
    if cfg.cold_start_min_steps is None:
        return list(train[: cfg.n_sft])
    wide, _ = builtin_tasks(cfg.model_copy(update={"min_steps": cfg.cold_start_min_steps}), world)
    held = {_key(t) for t in heldout}
    return [t for t in wide if _key(t) not in held][: cfg.n_sft]


# ---------------------------------------------------------------------------
# Task files


def _number_text(value: Any) -> str:
    """A JSON answer as text: whole floats lose their ".0" (SVAMP writes 51.0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"the answer must be a string or a number, got {json.dumps(value)}")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    if not text:
        raise ValueError("empty answer")
    return text


def _text(record: dict[str, Any], key: str) -> str:
    value = record[key]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key!r} must be a non-empty string, got {json.dumps(value)[:60]}")
    return value.strip()


def _from_gsm8k(r: dict[str, Any]) -> Task:
    solution = _text(r, "answer")
    final = solution.rpartition("####")[2].strip()
    if "####" not in solution or not final:
        raise ValueError("the answer has no final '#### N' line")
    return Task(_text(r, "question"), final.replace(",", ""), "math", {"solution": solution})


def _from_svamp(r: dict[str, Any]) -> Task:
    return Task(f"{_text(r, 'Body')} {_text(r, 'Question')}", _number_text(r["Answer"]), "math")


def _from_countdown(r: dict[str, Any]) -> Task:
    numbers, target = r["nums"] if "nums" in r else r["numbers"], r["target"]
    if not isinstance(numbers, list) or len(numbers) < 2 or not all(type(x) is int for x in numbers):
        raise ValueError(f"the numbers must be a list of at least two integers, got {json.dumps(numbers)[:60]}")
    if type(target) is not int:
        raise ValueError(f"the target must be an integer, got {json.dumps(target)}")
    return Task(countdown_prompt(numbers, target), str(target), "countdown", {"numbers": numbers, "target": target})


# words of two letters or more, outside LaTeX commands: "\\frac{\\pi}{2}" has none, "She makes 18 dollars." three
WORD = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}")
MAX_ANSWER_WORDS = 3


def _final_answer(text: str) -> str:
    """A reference answer, refused when it reads as a worked solution rather than the final answer."""
    if "\n" in text or "<<" in text or len(WORD.findall(re.sub(r"\\text\{[^{}]*\}", "", text))) > MAX_ANSWER_WORDS:
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise ValueError(
            f"the answer {json.dumps(shown)} is a worked solution, not a final answer: end a GSM8K solution "
            "with a line '#### N', or give the final answer alone"
        )
    return text


def _from_prompt_answer(r: dict[str, Any]) -> Task:
    key = next(k for k in ("prompt", "problem", "question") if k in r)
    return Task(_text(r, key), _final_answer(_number_text(r["answer"])), "math")


COUNTDOWN_NUMBERS = re.compile(r"\s*\d+(?:\s*,\s*\d+)+\s*")


def _from_countdown_text(r: dict[str, Any]) -> Task:
    numbers, target = str(r["input"]), str(r["output"]).strip()
    if not COUNTDOWN_NUMBERS.fullmatch(numbers) or not target.isdigit():
        raise ValueError(
            f'expected input like "30,100,93" and output like "23", got {json.dumps(numbers)[:40]} '
            f"and {json.dumps(target)[:20]}"
        )
    return _from_countdown({"nums": [int(x) for x in numbers.split(",")], "target": int(target)})


Format = Literal["countdown", "countdown_text", "gsm8k", "svamp", "prompt_answer"]
# (name, keys that identify it, converter); checked in this order
FORMATS: list[tuple[Format, Callable[[dict[str, Any]], bool], Callable[[dict[str, Any]], Task]]] = [
    ("countdown", lambda r: "target" in r and ("nums" in r or "numbers" in r), _from_countdown),
    (
        "countdown_text",
        lambda r: {"input", "output"} <= r.keys() and bool(COUNTDOWN_NUMBERS.fullmatch(str(r["input"]))),
        _from_countdown_text,
    ),
    ("gsm8k", lambda r: "question" in r and "####" in str(r.get("answer", "")), _from_gsm8k),
    ("svamp", lambda r: {"Body", "Question", "Answer"} <= r.keys(), _from_svamp),
    (
        "prompt_answer",
        lambda r: "answer" in r and any(k in r for k in ("prompt", "problem", "question")),
        _from_prompt_answer,
    ),
]
EXPECTED = (
    "target + nums/numbers or input \"3,5,7\" + output (Countdown), question + answer with '#### N' (GSM8K), "
    "Body + Question + Answer (SVAMP), prompt/problem/question + a final answer"
)


def detect_format(record: dict[str, Any]) -> Format | None:
    return next((name for name, matches, _ in FORMATS if matches(record)), None)


def iter_tasks(
    source: Source, on_error: Literal["raise", "skip"] = "raise", stats: SourceStats | None = None
) -> Iterator[Task]:
    """Tasks from files, the format detected per file from its first record."""
    stats = stats if stats is not None else SourceStats()
    converters = {name: convert for name, _, convert in FORMATS}
    yield from iter_detected(
        iter_records(source, on_error, stats),
        lambda _, r: detect_format(r),
        lambda r, fmt: converters[fmt](r),
        "task",
        EXPECTED,
        on_error,
        stats,
    )


def split_tasks(tasks: list[Task], eval_fraction: float, seed: int = 0) -> tuple[list[Task], list[Task]]:
    """(train, held out) split by prompt, so no held-out prompt is trained on."""
    prompts = list(dict.fromkeys(t.prompt for t in tasks))
    random.Random(seed).shuffle(prompts)
    n_eval = max(1, int(eval_fraction * len(prompts))) if eval_fraction > 0 else 0
    held = set(prompts[:n_eval])
    return [t for t in tasks if t.prompt not in held], [t for t in tasks if t.prompt in held]


def load_tasks(
    sources: TaskSources, builtin: ReasoningConfig, world: World, seed: int = 0, stats: SourceStats | None = None
) -> tuple[list[Task], list[Task]]:
    """(train, held out): from files when `sources.data` names any, else the built-in tasks."""
    if not sources.data:
        return builtin_tasks(builtin, world)
    stats = stats if stats is not None else SourceStats()
    tasks = list(iter_tasks(sources.data, sources.on_error, stats))
    files = ", ".join(sources.data)
    if not tasks:
        skipped = f" ({stats.skipped} malformed records skipped, e.g. {stats.errors[0]})" if stats.skipped else ""
        raise ValueError(f"{files}: no tasks{skipped}; expected {EXPECTED}")
    if sources.eval_data:
        return tasks, list(iter_tasks(sources.eval_data, sources.on_error, stats))
    train, heldout = split_tasks(tasks, sources.eval_fraction, seed)
    if not train:
        raise ValueError(
            f"{files}: holding out eval_fraction={sources.eval_fraction} of {len(tasks)} tasks leaves none "
            "to train on; add tasks, lower grpo.eval_fraction, or name held-out files in grpo.eval_data"
        )
    return train, heldout
