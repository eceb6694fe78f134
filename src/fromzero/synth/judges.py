"""Scores of question/answer pairs: an LLM asked for a 1-10 rating (through any generator: an endpoint or a
checkpoint in process), or the project's reward model. A score that cannot be had is None, counted as judge_failed."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from fromzero.synth.generators import Generator
from fromzero.synth.prompts import load_template, render_judge

Item = tuple[str, str, str]  # (the chunk or other context, question, answer)


class Judge(Protocol):
    name: str

    def score(self, items: Sequence[Item]) -> list[float | None]: ...


class LLMJudge:
    """A 1-10 rating read from the first number of the judge model's reply (greedy, so a rating is repeatable)."""

    def __init__(self, generator: Generator, template: str | Path | None = None, default: str = "judge.txt"):
        self.generator = generator
        self.template, sha = load_template(template, default, ("{question}", "{answer}"))
        self.name = f"llm:{generator.name}:{sha}"

    def score(self, items: Sequence[Item]) -> list[float | None]:
        prompts = [render_judge(self.template, c, q, a) for c, q, a in items]
        replies = self.generator.complete(prompts, temperature=0.0, top_p=1.0, max_new_tokens=8, seeds=[0] * len(items))
        return [rating(r.text) if r.error is None else None for r in replies]


def rating(text: str) -> float | None:
    m = re.search(r"(?<![\d.])(10|[1-9])(?:\s*/\s*10)?(?![\d.])", text)
    return float(m[1]) if m else None


class RewardModelJudge:
    """The reward model's score of the answer to the question (it never sees the chunk: it judges answers as PPO's
    rollouts are judged)."""

    def __init__(self, ckpt: str | Path, device: str = "cpu", batch_size: int = 32):
        from fromzero import checkpoint
        from fromzero.tokenizer import Tokenizer
        from fromzero.train.reward import load_reward_model

        path = checkpoint.resolve(ckpt)
        if not checkpoint.is_reward_model(path):
            raise ValueError(
                f"judge checkpoint {ckpt}: a language model, not a reward model (train one with "
                "`fromzero reward`, or use the LLM judge)"
            )
        self.model = load_reward_model(path, device).eval()
        self.tok = Tokenizer.load(checkpoint.tokenizer_file(path))
        self.name, self.batch_size = f"reward:{path}", batch_size

    def score(self, items: Sequence[Item]) -> list[float | None]:
        from fromzero.data.chat import prompt_ids
        from fromzero.train.reward import score_responses

        limit = self.model.cfg.max_seq_len
        out: list[float | None] = []
        for start in range(0, len(items), self.batch_size):
            batch = items[start : start + self.batch_size]
            prompts = [prompt_ids(self.tok, q) for _, q, _ in batch]
            answers = [self.tok.encode(a) + [self.tok.end_id] for _, _, a in batch]
            fits = [i for i, (p, a) in enumerate(zip(prompts, answers)) if len(p) + len(a) <= limit]
            scores = (
                score_responses(
                    self.model, [prompts[i] for i in fits], [answers[i] for i in fits], self.tok.pad_id
                ).tolist()
                if fits
                else []
            )
            by_row = dict(zip(fits, scores))
            out += [by_row.get(i) for i in range(len(batch))]
        return out


def make_judge(
    kind: str,
    generator: Generator,
    *,
    ckpt: str | None = None,
    template: str | None = None,
    device: str = "cpu",
    default: str = "judge.txt",
) -> Judge | None:
    """The judge a config names: none, the generator itself rating pairs (llm), or a reward model (reward)."""
    if kind == "none":
        return None
    if kind == "llm":
        return LLMJudge(generator, template, default)
    if kind == "reward":
        if not ckpt:
            raise ValueError("judge=reward needs a reward model checkpoint (--judge-ckpt, synth.judge_ckpt)")
        return RewardModelJudge(ckpt, device)
    raise ValueError(f"judge {kind!r}: use none, llm or reward")
