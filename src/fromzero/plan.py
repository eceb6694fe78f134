"""What a config will do, before it does it: model size, batch geometry, tokens, data."""

from __future__ import annotations

from typing import Any

from fromzero.config import Config


def describe(cfg: Config, world_size: int = 1) -> dict[str, Any]:
    model = cfg.model.model_copy(update={"vocab_size": cfg.model.vocab_size or cfg.data.vocab_size})
    model.validate_shape()
    t = cfg.pretrain
    if t.seq_len > model.max_seq_len:
        raise ValueError(f"pretrain.seq_len={t.seq_len} exceeds model.max_seq_len={model.max_seq_len}")
    if t.time_budget is not None:  # the steps are measured, not set: no token count to promise
        budget = {
            "pretrain_time_budget_s": t.time_budget,
            "pretrain_steps": "fixed by the probe (probe_steps, probe_fraction of the budget)",
        }
    else:
        budget = {
            "pretrain_tokens": t.batch_tokens * t.steps,
            "pretrain_flops": model.flops_per_token(t.seq_len) * t.batch_tokens * t.steps,
        }
    return {
        "params": model.num_params(),
        "params_non_embedding": model.num_params(embeddings=False),
        "flops_per_token": model.flops_per_token(t.seq_len),
        "ranks": world_size,
        "micro_batch": t.micro_batch(world_size),  # micro_batch_size, or the largest size below it that divides
        "accumulation_steps": t.accumulation(world_size),
        "tokens_per_step": t.batch_tokens,
        **budget,
        "data": cfg.data.sources or ["built-in world"],
    }
