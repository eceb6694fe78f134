"""The general evaluation: held-out questions of every kind the instruction data teaches, each graded by the rule
that fits it (`world_chat.Judge`), reported per kind for every stage from SFT on. A stage that trains on one kind
of question (PPO on questions about people, GRPO on word problems) must not forget the others; this is where it
shows."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from fromzero.data.tasks import Task
from fromzero.data.world_chat import KINDS, Judge, Question
from fromzero.eval import qa
from fromzero.model import Transformer
from fromzero.tokenizer import Tokenizer


def task_questions(tasks: Sequence[Task], n: int) -> list[Question]:
    """Up to n held-out reasoning tasks as word-problem questions (Countdown games have no number to state)."""
    return [Question(t.prompt, "", "task", t.answer, "word_problems") for t in tasks if t.kind == "math"][:n]


def evaluate(
    model: Transformer, tok: Tokenizer, questions: Sequence[Question], judge: Judge, *, max_new_tokens: int
) -> tuple[dict[str, float], list[dict]]:
    """({kind: accuracy}, each graded answer): greedy answers, asked after each question's system prompt."""
    by_system: dict[str | None, list[int]] = defaultdict(list)
    for i, q in enumerate(questions):
        by_system[q.system].append(i)
    answers: list[str] = [""] * len(questions)
    for system, index in by_system.items():
        texts = qa.answer(
            model, tok, [questions[i].question for i in index], max_new_tokens=max_new_tokens, system=system
        )
        for i, text in zip(index, texts):
            answers[i] = text
    graded, right = [], defaultdict(list)
    for q, answer in zip(questions, answers):
        content, why = judge.check(q, answer)
        right[q.kind].append(content == "right")
        graded.append(
            {
                "kind": q.kind,
                "question": q.question,
                "system": q.system,
                "expected": q.expected,
                "answer": answer,
                "verdict": content,
                "why": why,
            }
        )
    return {k: sum(right[k]) / len(right[k]) for k in KINDS if right[k]}, graded


def mean(per_kind: dict[str, float]) -> float:
    """general_acc: every kind counts the same, however many questions it has."""
    return sum(per_kind.values()) / max(1, len(per_kind))
