"""Batched sampling with a KV cache: temperature, top-k, top-p, stop tokens, ragged prompts.

Prompts of different lengths are left-padded so every row writes the cache at the same position; a
boolean mask hides the padding and per-row rotary positions start at 0 at each row's first real token.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from fromzero.model import KVCache, Transformer


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 means greedy
    top_k: int | None = None
    top_p: float | None = None
    stop_tokens: tuple[int, ...] = ()


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (top-p) to -inf. logits: [B, V]."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens ranked above it already reach top_p (the top token always stays)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def seeded_generator(model: Transformer, seed: int) -> torch.Generator:
    """A generator on the model's device (sampling draws there), seeded: the same seed, the same answers."""
    return torch.Generator(device=model.rope_cos.device).manual_seed(seed)


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    if cfg.temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits.float() / cfg.temperature, cfg.top_k, cfg.top_p).softmax(-1)
    # inverse-CDF sampling: one uniform number per row, where torch.multinomial draws one per vocabulary entry (16x
    # slower on CPU for 16 rows of 2048); a token of probability 0 has no width in the CDF and is never drawn
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[:-1] + (1,), generator=generator, device=probs.device) * cdf[..., -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] ids left-padded with pad_id, and the [B, T] boolean mask of real tokens."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    valid = torch.zeros((len(prompts), width), dtype=torch.bool)
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError("empty prompt: every prompt needs at least one token (e.g. <|bos|>)")
        ids[i, width - len(p) :] = torch.as_tensor(p, dtype=torch.long)
        valid[i, width - len(p) :] = True
    return ids.to(device), valid.to(device)


@torch.inference_mode()
def stream(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    cfg: SamplingConfig,
    *,
    pad_id: int = 0,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (tokens [B], active [B]) per step; a row is inactive after it has produced a stop token."""
    device = model.rope_cos.device
    ids, valid = left_pad(prompts, pad_id, device)
    B, T = ids.shape
    max_len = min(T + cfg.max_new_tokens, model.cfg.max_seq_len)
    if T >= model.cfg.max_seq_len:
        raise ValueError(f"prompt of {T} tokens leaves no room within model.max_seq_len={model.cfg.max_seq_len}")
    dtype = next(model.parameters()).dtype
    if torch.is_autocast_enabled(device.type):
        dtype = torch.get_autocast_dtype(device.type)
    cache = KVCache(model.cfg, B, max_len, dtype, device)
    padded = not bool(valid.all())
    if padded:
        positions = (valid.cumsum(-1) - 1).clamp(min=0)
        causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
        # a fully padded query row would attend to nothing (NaN); let pad queries see themselves
        mask = (causal & valid[:, None, :]) | torch.eye(T, dtype=torch.bool, device=device)
        logits = model.lm_head(model.hidden_states(ids, positions=positions, mask=mask[:, None], cache=cache)[:, -1])
        key_valid = torch.ones(B, max_len, dtype=torch.bool, device=device)
        key_valid[:, :T] = valid
        next_pos = positions[:, -1:] + 1
    else:
        # the prompt's logits are needed at its last position only
        logits = model.lm_head(model.hidden_states(ids, cache=cache)[:, -1])
    stops = torch.tensor(cfg.stop_tokens, dtype=torch.long, device=device)
    active = torch.ones(B, dtype=torch.bool, device=device)
    for step in range(max_len - T):
        token = sample_next(logits, cfg, generator)
        yield token, active.clone()
        if step == max_len - T - 1:
            return
        if cfg.stop_tokens:  # (without stop tokens every row stays active: no per-step checks)
            active &= ~torch.isin(token, stops)
            if not active.any():
                return
        if padded:
            mask = key_valid[:, None, None, : cache.length + 1]
            logits = model(token[:, None], positions=next_pos, mask=mask, cache=cache)[:, -1]
            next_pos = next_pos + 1
        else:
            logits = model(token[:, None], cache=cache)[:, -1]


def generate(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    cfg: SamplingConfig,
    *,
    pad_id: int = 0,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """New tokens for each prompt, up to and including its first stop token."""
    steps = list(stream(model, prompts, cfg, pad_id=pad_id, generator=generator))
    if not steps:
        return [[] for _ in prompts]
    tokens = torch.stack([t for t, _ in steps], dim=1).tolist()
    lengths = torch.stack([a for _, a in steps], dim=1).sum(1).tolist()
    return [row[:n] for row, n in zip(tokens, lengths)]
