"""The one generation engine: batched sampling with a KV cache (temperature, top-k, top-p, stop tokens,
ragged prompts, seeds, per-token log-probs, a streaming callback). Eval, RL rollouts, `fromzero chat` and
the server all go through `Engine`; the server's continuous batching (serve/batching.py) drives the same
model with `prefill` and `SlotCache` and samples with `sample_next` and `token_logprobs`.

Prompts of different lengths are left-padded so every row writes the cache at the same position; a
boolean mask hides the padding and per-row rotary positions start at 0 at each row's first real token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

from fromzero.model import KVCache, Transformer

if TYPE_CHECKING:
    from fromzero.data.chat import Message
    from fromzero.tokenizer import Tokenizer


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 means greedy
    top_k: int | None = None
    top_p: float | None = None
    stop_tokens: tuple[int, ...] = ()
    banned_tokens: tuple[int, ...] = ()  # never sampled (e.g. lone bytes of a character, which decode to U+FFFD)


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


def _int64(value: int) -> int:
    """A Python integer wrapped to a signed 64-bit one, as int64 arithmetic wraps."""
    return (value + 2**63) % 2**64 - 2**63


def _mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 tensors (products wrap; shifts masked to be logical): a counter-based hash."""
    x = x ^ ((x >> 30) & 0x3FFFFFFFF)
    x = x * -4658895280553007687  # 0xbf58476d1ce4e5b9
    x = x ^ ((x >> 27) & 0x1FFFFFFFFF)
    x = x * -7723592293110705685  # 0x94d049bb133111eb
    return x ^ ((x >> 31) & 0x1FFFFFFFF)


class RowSeeds:
    """One random stream per row, a function of the row's seed and the step alone: a row samples the same tokens
    whatever else is in its batch, on whichever rank it is (how RL rollouts split over ranks). Each draw is a
    24-bit uniform number, as fine as torch.rand's float32, from a hash of (seed, step) computed on the device."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        self.seeds = _mix64(torch.tensor([_int64(int(s)) for s in seeds], dtype=torch.long)).to(device)
        self.step = 0

    def uniform(self) -> torch.Tensor:
        """[B, 1] numbers in [0, 1), the next of each row's stream."""
        self.step += 1
        bits = _mix64(self.seeds + _int64(self.step * 0x9E3779B97F4A7C15))
        return ((bits >> 40) & 0xFFFFFF).float()[:, None] / 2**24


def row_seed(*parts: int) -> int:
    """A 63-bit seed from what a sample is (run seed, step, prompt, sample index): the same parts, the same seed."""
    x = torch.tensor(0x2545F4914F6CDD1D, dtype=torch.long)
    for part in parts:
        x = _mix64(x ^ _int64(int(part)))
    return int(x.item()) & (2**63 - 1)


def sample_next(
    logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | RowSeeds | None
) -> torch.Tensor:
    if cfg.banned_tokens:
        banned = torch.tensor(cfg.banned_tokens, dtype=torch.long, device=logits.device)
        logits = logits.index_fill(-1, banned, float("-inf"))
    if cfg.temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits.float() / cfg.temperature, cfg.top_k, cfg.top_p).softmax(-1)
    # inverse-CDF sampling: one uniform number per row, where torch.multinomial draws one per vocabulary entry (16x
    # slower on CPU for 16 rows of 2048); a token of probability 0 has no width in the CDF and is never drawn
    cdf = probs.cumsum(-1)
    if isinstance(generator, RowSeeds):
        u = generator.uniform().to(probs.device) * cdf[..., -1:]
    else:
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
    generator: torch.Generator | RowSeeds | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (tokens [B], active [B], logits [B, vocab]) per step; a row is inactive after it has produced a stop
    token. The logits are the model's, before temperature and filtering: what log-probs are read from."""
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
        yield token, active.clone(), logits
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


TopLogprobs = list[tuple[int, float]]


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, top: int = 0) -> tuple[list[float], list[TopLogprobs]]:
    """Log-probabilities of `tokens` [B] under `logits` [B, vocab] (the model's distribution, before temperature
    and filtering, as OpenAI and vLLM report them) and each row's `top` most likely (token, log-prob)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = logp.gather(-1, tokens[:, None]).squeeze(-1).tolist()
    if not top:
        return chosen, [[] for _ in chosen]
    values, ids = logp.topk(top, dim=-1)
    return chosen, [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]


def sample_rows(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    cfg: SamplingConfig,
    *,
    pad_id: int = 0,
    generator: torch.Generator | RowSeeds | None = None,
    logprobs: int | None = None,
    on_token: Callable[[int, int], None] | None = None,
) -> list[tuple[list[int], list[float] | None, list[TopLogprobs] | None]]:
    """(new tokens, their log-probs, top alternatives) per prompt, the tokens up to and including the first stop
    token; the log-probs only when `logprobs` is not None (it is then the number of alternatives per token)."""
    rows: list[list[int]] = [[] for _ in prompts]
    lps: list[list[float]] = [[] for _ in prompts]
    tops: list[list[TopLogprobs]] = [[] for _ in prompts]
    for token, active, logits in stream(model, prompts, cfg, pad_id=pad_id, generator=generator):
        chosen, top = token_logprobs(logits, token, logprobs) if logprobs is not None else (None, None)
        tokens, alive = token.tolist(), active.tolist()
        for i in range(len(rows)):
            if not alive[i]:
                continue
            rows[i].append(tokens[i])
            if chosen is not None:
                lps[i].append(chosen[i])
                tops[i].append(top[i])
            if on_token is not None:
                on_token(i, tokens[i])
    if logprobs is None:
        return [(r, None, None) for r in rows]
    return list(zip(rows, lps, tops))


def generate(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    cfg: SamplingConfig,
    *,
    pad_id: int = 0,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """New tokens for each prompt, up to and including its first stop token (`Engine.generate` adds text)."""
    return [tokens for tokens, _, _ in sample_rows(model, prompts, cfg, pad_id=pad_id, generator=generator)]


@dataclass
class Completion:
    tokens: list[int]  # the new tokens, ending with the stop token when one ended the answer
    text: str  # the new tokens decoded, stop and special tokens left out
    finish_reason: Literal["stop", "length"]
    logprobs: list[float] | None = None  # per token of `tokens`, when asked for
    top_logprobs: list[TopLogprobs] | None = field(default=None, repr=False)


class Engine:
    """A model and its tokenizer, and the one way text is generated from them.

    `generate` samples a batch of prompts (token ids; `encode` makes them from chat messages or text) in chunks
    of `batch_size`: every caller in eval and RL goes through it. With a `generator` (or a `seed`) the draws are
    reproducible; without either they come from torch's global RNG (as RL rollouts want: seeded by the run).
    `on_token(row, token)` is called for every new token of every row as it is sampled (how `fromzero chat`
    streams). The server's continuous batching starts each request with `prefill`.
    """

    def __init__(self, model: Transformer, tok: Tokenizer):
        self.model, self.tok = model, tok

    @property
    def device(self) -> torch.device:
        return self.model.rope_cos.device

    def encode(self, prompt: str | Sequence[Message], *, chat: bool = True, system: str | None = None) -> list[int]:
        """A prompt's token ids: chat messages (or one user message) in the chat template, ready for the assistant's
        turn, or (chat=False) raw text to continue, the only way a model that never saw the template is asked."""
        from fromzero.data.chat import prompt_ids, render

        if not isinstance(prompt, str):
            return render(self.tok, list(prompt), generation_prompt=True)[0]
        if not chat:
            return [self.tok.bos_id] + self.tok.encode(prompt)
        return prompt_ids(self.tok, prompt, system)

    def decode(self, tokens: Sequence[int], stop_tokens: Sequence[int] = ()) -> str:
        return self.tok.decode([t for t in tokens if t not in stop_tokens], skip_special=True)

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        sampling: SamplingConfig,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
        logprobs: int | None = None,
        on_token: Callable[[int, int], None] | None = None,
        row_seeds: Sequence[int] | None = None,
    ) -> list[Completion]:
        """One completion per prompt. logprobs: None for none, else the number of top alternatives per token.
        row_seeds: a seed per prompt (`RowSeeds`): each row's tokens then depend on its seed alone, not its batch."""
        if row_seeds is not None and len(row_seeds) != len(prompts):
            raise ValueError(f"{len(row_seeds)} row_seeds for {len(prompts)} prompts")
        if seed is not None and generator is None:
            generator = seeded_generator(self.model, seed)
        was_training = self.model.training
        self.model.eval()
        out: list[Completion] = []
        size = batch_size or max(1, len(prompts))
        stops = set(sampling.stop_tokens)
        try:
            for start in range(0, len(prompts), size):

                def row_token(row: int, token: int, start: int = start) -> None:
                    on_token(start + row, token)  # type: ignore[misc]

                draws = generator if row_seeds is None else RowSeeds(row_seeds[start : start + size], self.device)
                rows = sample_rows(
                    self.model,
                    prompts[start : start + size],
                    sampling,
                    pad_id=self.tok.pad_id,
                    generator=draws,
                    logprobs=logprobs,
                    on_token=row_token if on_token else None,
                )
                out += [
                    Completion(
                        r, self.decode(r, sampling.stop_tokens), "stop" if r and r[-1] in stops else "length", lp, top
                    )
                    for r, lp, top in rows
                ]
        finally:
            self.model.train(was_training)
        return out

    def texts(self, prompts: Sequence[Sequence[int]], sampling: SamplingConfig, **options) -> list[str]:
        """The completions' text, stripped of surrounding whitespace: what eval grades."""
        return [c.text.strip() for c in self.generate(prompts, sampling, **options)]

    @torch.inference_mode()
    def prefill(self, prompt: Sequence[int]) -> tuple[torch.Tensor, KVCache]:
        """The next-token logits [vocab] after one prompt, and the KV cache it filled (for continuous batching)."""
        if not 0 < len(prompt) < self.model.cfg.max_seq_len:
            raise ValueError(
                f"a prompt of {len(prompt)} tokens must be between 1 and model.max_seq_len - 1 "
                f"= {self.model.cfg.max_seq_len - 1} tokens"
            )
        ids = torch.tensor([list(prompt)], dtype=torch.long, device=self.device)
        cache = KVCache(self.model.cfg, 1, len(prompt), next(self.model.parameters()).dtype, self.device)
        h = self.model.hidden_states(ids, cache=cache)
        return self.model.lm_head(h[0, -1]), cache
