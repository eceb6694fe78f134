"""Judging a preference-tuned policy by the gold preference function: the built-in world's labellers without
their noise, asked which of two sampled answers to each held-out prompt is better."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fromzero import checkpoint
from fromzero.data.world import World
from fromzero.data.world_chat import Question
from fromzero.data.world_pref import GoldPreference
from fromzero.eval import qa
from fromzero.tokenizer import Tokenizer


class GoldJudge:
    """Each checkpoint's sampled answers to the held-out prompts, made once (SFT's, which PPO and DPO are both
    judged against, are reused), and the gold function's verdict on two checkpoints' answers."""

    def __init__(
        self,
        world: World,
        questions: Sequence[Question],
        tok: Tokenizer,
        device: torch.device,
        *,
        sampling: dict[str, Any],
        seed: int,
    ):
        self.questions, self.gold, self.tok, self.device = list(questions), GoldPreference(world), tok, device
        self.sampling, self.seed = sampling, seed
        self._answers: dict[Path, list[str]] = {}

    def answers(self, ckpt: Path) -> list[str]:
        if ckpt not in self._answers:
            model = checkpoint.load_model(ckpt, self.device)
            prompts = [q.question for q in self.questions]
            self._answers[ckpt] = qa.answer(model, self.tok, prompts, seed=self.seed, **self.sampling)
        return self._answers[ckpt]

    def win_rate(self, ckpt: Path, reference: Path) -> dict[str, float]:
        """How often the gold function prefers the answer of `ckpt` to that of `reference`, one answer each per
        held-out prompt ((wins + ties / 2) / prompts); the most any policy could win against the same reference
        answers (gold_win_rate_ceiling); and each model's mean gold score."""
        policy, ref = self.answers(ckpt), self.answers(reference)

        def mean(answers: list[str]) -> float:
            return sum(self.gold.score(q, a) for q, a in zip(self.questions, answers)) / len(self.questions)

        return {
            "gold_win_rate": self.gold.win_rate(self.questions, policy, ref),
            "gold_win_rate_ceiling": self.gold.win_rate_ceiling(self.questions, ref),
            "gold_score": mean(policy),
            "gold_score_before": mean(ref),
        }
