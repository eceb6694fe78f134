"""Question answering about the built-in world: how stage 2 (and later stages) are graded."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fromzero.data.world import World
from fromzero.data.world_chat import Question, is_correct
from fromzero.generate import Engine, SamplingConfig
from fromzero.model import Transformer
from fromzero.tokenizer import Tokenizer


@torch.no_grad()
def answer(
    model: Transformer,
    tok: Tokenizer,
    questions: list[str],
    *,
    chat: bool = True,
    max_new_tokens: int = 40,
    temperature: float = 0.0,
    batch_size: int = 64,
    seed: int = 0,
    system: str | None = None,
) -> list[str]:
    """Answers to questions: in the chat template, or (chat=False) as raw text to continue, the only way
    a pretrained model that has never seen the template can be asked."""
    engine = Engine(model, tok)
    stop = (tok.end_id,) if chat else (tok.bos_id,)
    cfg = SamplingConfig(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=50 if temperature else None, stop_tokens=stop
    )
    prompts = [engine.encode(q, system=system) if chat else engine.encode(q + " ", chat=False) for q in questions]
    return engine.texts(prompts, cfg, seed=seed, batch_size=batch_size)


def sampler(model: Transformer, tok: Tokenizer, *, max_new_tokens: int, temperature: float):
    """(questions, seed) -> one sampled answer to each: a model answering as people would see it on the chat page
    (the settings come from `EvalConfig.preference_sampling()`)."""
    return lambda questions, seed: answer(
        model, tok, questions, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed
    )


def accuracy(
    model: Transformer,
    tok: Tokenizer,
    questions: list[Question],
    world: World,
    *,
    chat: bool = True,
    max_new_tokens: int = 40,
) -> tuple[float, list[tuple[Question, str, bool]]]:
    """Fraction answered correctly, and each (question, answer, correct) for inspection."""
    answers = answer(model, tok, [q.question for q in questions], chat=chat, max_new_tokens=max_new_tokens)
    graded = [(q, a, is_correct(a, q, world)) for q, a in zip(questions, answers)]
    return sum(ok for *_, ok in graded) / max(1, len(graded)), graded


def rows(graded: Sequence[tuple[Question, str, bool]], **extra: str) -> list[dict]:
    """`accuracy`'s graded answers as the rows of an answers log."""
    return [
        {**extra, "question": q.question, "expected": q.expected, "answer": a, "correct": ok} for q, a, ok in graded
    ]


def heldout_accuracy(
    model: Transformer,
    tok: Tokenizer,
    sets: Mapping[str, list[Question]],
    world: World,
    *,
    chat: bool,
    max_new_tokens: int,
) -> tuple[dict[str, float], list[dict]]:
    """({set name: accuracy}, the graded answers of every set, each row naming its set)."""
    metrics, logged = {}, []
    for name, questions in sets.items():
        metrics[name], graded = accuracy(model, tok, questions, world, chat=chat, max_new_tokens=max_new_tokens)
        logged += rows(graded, set=name)
    return metrics, logged
