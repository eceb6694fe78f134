"""Question answering about the built-in world: how stage 2 (and later stages) are graded."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist

from fromzero.data.world import World
from fromzero.data.world_chat import Judge, Question
from fromzero.dist import all_gather_objects
from fromzero.generate import Engine, SamplingConfig, row_seed
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
    row_seeds: Sequence[int] | None = None,
) -> list[str]:
    """Answers to questions: in the chat template, or (chat=False) as raw text to continue, the only way
    a pretrained model that has never seen the template can be asked. With row_seeds, each answer is drawn from its
    own seed (whatever else is in its batch), else all from one stream seeded by seed."""
    engine = Engine(model, tok)
    stop = (tok.end_id,) if chat else (tok.bos_id,)
    cfg = SamplingConfig(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=50 if temperature else None, stop_tokens=stop
    )
    prompts = [engine.encode(q, system=system) if chat else engine.encode(q + " ", chat=False) for q in questions]
    if row_seeds is not None:
        return engine.texts(prompts, cfg, row_seeds=row_seeds, batch_size=batch_size)
    return engine.texts(prompts, cfg, seed=seed, batch_size=batch_size)


def sampler(model: Transformer, tok: Tokenizer, *, max_new_tokens: int, temperature: float):
    """(questions, seed) -> one sampled answer to each: a model answering as people would see it in `fromzero serve`
    (the settings come from `EvalConfig.preference_sampling()`). Under torchrun the ranks split the questions and
    gather the answers; each answer is drawn from a seed of its own (the call's and the question's index), so
    they are the answers one process draws."""

    def sample(questions: list[str], seed: int) -> list[str]:
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        mine = list(range(rank, len(questions), world))
        texts = answer(
            model,
            tok,
            [questions[i] for i in mine],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            row_seeds=[row_seed(seed, i) for i in mine],
        )
        out = [""] * len(questions)
        for part in all_gather_objects(list(zip(mine, texts))):
            for i, text in part:
                out[i] = text
        return out

    return sample


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
    judge = Judge(world)  # once: it indexes every value and subject of the world
    graded = [(q, a, judge.content(q, a) == "right") for q, a in zip(questions, answers)]
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
