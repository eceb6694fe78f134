"""Reasoning accuracy on held-out tasks: pass@1 from greedy answers, pass@k from sampled ones.

pass@k is the chance that at least one of k answers is right. Sampling exactly k answers per problem
gives a noisy estimate; sampling n >= k and counting the c right ones gives the unbiased estimator
1 - C(n-c, k) / C(n, k) of Chen et al. (2021, the Codex paper), used here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fromzero.data.tasks import Task, encode_prompt
from fromzero.generate import Engine, SamplingConfig
from fromzero.model import Transformer
from fromzero.rewards import RewardStats, accuracy, safe_reward
from fromzero.tokenizer import Tokenizer

if TYPE_CHECKING:
    from fromzero.config import Config


def options(cfg: Config) -> dict[str, Any]:
    """`evaluate`'s options for a run's config, the same for the pipeline's GRPO stage and `fromzero grpo`:
    pass@k with eval.pass_k samples, at GRPO's rollout temperature, length and system prompt."""
    g = cfg.grpo
    return {
        "k": cfg.eval.pass_k,
        "temperature": g.temperature,
        "max_new_tokens": g.max_new_tokens,
        "system": g.system_prompt,
        "seed": cfg.seed,
    }


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are right: 1 - C(n-c, k) / C(n, k), as a stable product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


@torch.no_grad()
def sample_completions(
    model: Transformer,
    tok: Tokenizer,
    tasks: Sequence[Task],
    *,
    n: int = 1,
    temperature: float = 0.0,
    max_new_tokens: int = 64,
    system: str | None = None,
    batch_size: int = 64,
    seed: int = 0,
) -> list[list[str]]:
    """n completions of each task in the chat template (greedy when temperature is 0), as text."""
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, stop_tokens=(tok.end_id,))
    prompts = [encode_prompt(tok, task, system) for task in tasks for _ in range(n)]
    texts = Engine(model, tok).texts(prompts, sampling, seed=seed, batch_size=batch_size)
    return [texts[i * n : (i + 1) * n] for i in range(len(tasks))]


def grade(
    completions: Sequence[Sequence[str]], tasks: Sequence[Task], stats: RewardStats | None = None
) -> list[list[bool]]:
    """Whether each completion of each task is right (the `accuracy` reward; odd output counts as wrong)."""
    stats = stats if stats is not None else RewardStats()
    return [
        [safe_reward("accuracy", accuracy, c, task, stats) == 1.0 for c in cs] for cs, task in zip(completions, tasks)
    ]


def evaluate(
    model: Transformer,
    tok: Tokenizer,
    tasks: Sequence[Task],
    *,
    k: int = 1,
    n: int | None = None,
    temperature: float = 1.0,
    max_new_tokens: int = 64,
    system: str | None = None,
    batch_size: int = 64,
    seed: int = 0,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """pass@1 of greedy answers (overall and per step count for tasks that have one) and, for k > 1, pass@k
    and the mean accuracy of n >= k answers sampled at `temperature`; plus each graded greedy answer."""
    if not tasks:
        raise ValueError("no held-out tasks to evaluate")
    options = {"max_new_tokens": max_new_tokens, "system": system, "batch_size": batch_size, "seed": seed}
    greedy = sample_completions(model, tok, tasks, **options)
    right = [ok[0] for ok in grade(greedy, tasks)]
    metrics = {"pass@1": sum(right) / len(tasks)}
    for steps in sorted({t.metadata["steps"] for t in tasks if "steps" in t.metadata}):
        rung = [ok for ok, t in zip(right, tasks) if t.metadata.get("steps") == steps]
        metrics[f"pass@1/steps={steps}"] = sum(rung) / len(rung)
    if k > 1:
        n = n or k
        sampled = grade(sample_completions(model, tok, tasks, n=n, temperature=temperature, **options), tasks)
        metrics[f"pass@{k}"] = float(np.mean([pass_at_k(n, sum(oks), k) for oks in sampled]))
        metrics["sampled_accuracy"] = float(np.mean([sum(oks) / n for oks in sampled]))
    graded = [
        {"prompt": t.prompt, "reference": t.answer, "completion": c[0], "correct": ok}
        for t, c, ok in zip(tasks, greedy, right)
    ]
    return metrics, graded
