"""A Llama-style decoder: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU.

Parameter names match Hugging Face `LlamaForCausalLM` one to one (`model.layers.0.self_attn.q_proj.weight`,
...), so export and import are a rename-free copy of the state dict. What imported models add (interop/hf.py) is
config: Qwen2's q/k/v biases, an explicit head size, linear and llama3 rope scaling.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field


class RopeScaling(BaseModel):
    """Rotary frequency scaling for a context longer than the one trained on, as HF's `rope_scaling`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["linear", "llama3"] = Field(
        description="linear: every frequency divided by factor (positions "
        "interpolated); llama3: low frequencies divided, high ones kept, smooth between"
    )
    factor: float = Field(gt=0, description="how much longer the context is than the one trained on")
    low_freq_factor: float = Field(
        1.0, gt=0, description="llama3: wavelengths above original/low_freq_factor are scaled"
    )
    high_freq_factor: float = Field(
        4.0, gt=0, description="llama3: wavelengths below original/high_freq_factor are kept"
    )
    original_max_position_embeddings: int = Field(8192, ge=1, description="llama3: the context trained on")


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vocab_size: int | None = Field(None, ge=1, description="vocabulary size; taken from the tokenizer when None")
    dim: int = Field(256, ge=2, description="hidden size")
    n_layers: int = Field(4, ge=1, description="number of transformer blocks")
    n_heads: int = Field(4, ge=1, description="attention (query) heads")
    n_kv_heads: int = Field(2, ge=1, description="key/value heads (grouped-query attention); equal to n_heads for MHA")
    hidden_dim: int | None = Field(None, ge=1, description="SwiGLU hidden size; None: 8/3 * dim rounded up to 64")
    max_seq_len: int = Field(256, ge=2, description="longest sequence (rotary table and KV cache size)")
    rope_theta: float = Field(10000.0, gt=0, description="rotary embedding base")
    rope_scaling: RopeScaling | None = Field(None, description="rotary frequency scaling (imported models); None: none")
    head_size: int | None = Field(None, ge=2, description="attention head size; None: dim / n_heads")
    qkv_bias: bool = Field(False, description="biases on the q, k and v projections (Qwen2)")
    norm_eps: float = Field(1e-5, gt=0, description="RMSNorm epsilon")
    tie_embeddings: bool = Field(True, description="share the input embedding with the output projection")
    init_std: float = Field(0.02, gt=0, description="std of the normal init of linear and embedding weights")

    @property
    def head_dim(self) -> int:
        return self.head_size or self.dim // self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.hidden_dim is not None:
            return self.hidden_dim
        return 64 * math.ceil(8 * self.dim / 3 / 64)

    def validate_shape(self) -> None:
        if self.head_size is None and self.dim % self.n_heads:
            raise ValueError(f"model.dim ({self.dim}) must be divisible by model.n_heads ({self.n_heads})")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"model.n_heads ({self.n_heads}) must be divisible by model.n_kv_heads ({self.n_kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head dim {self.head_dim} must be even for rotary embeddings")
        if not self.vocab_size:
            raise ValueError("model.vocab_size is not set (it comes from the tokenizer)")

    def num_params(self, embeddings: bool = True) -> int:
        """Parameter count (tied embeddings counted once)."""
        d, L, f, V = self.dim, self.n_layers, self.ffn_dim, self.vocab_size or 0
        q, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        per_layer = d * q * 2 + 2 * d * kv + 3 * d * f + 2 * d + (q + 2 * kv) * self.qkv_bias
        n = L * per_layer + d
        if embeddings:
            n += V * d * (1 if self.tie_embeddings else 2)
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward), as in the PaLM appendix: 6N + 12·L·d·T."""
        n = self.num_params(embeddings=False) + (self.vocab_size or 0) * self.dim  # the lm_head matmul counts
        return 6 * n + 12 * self.n_layers * self.dim * seq_len


class KVCache:
    """Preallocated keys and values for every layer: [layers, batch, kv_heads, max_len, head_dim]."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, dtype: torch.dtype, device: torch.device):
        shape = (cfg.n_layers, batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.length = 0  # positions filled so far (same for every row: prompts are left-padded)

        # per-layer views, made once: indexing the 5-d tensors anew at every layer and step costs more
        # framework time than the copy itself when decoding one token
        self.k_layers, self.v_layers = self.k.unbind(0), self.v.unbind(0)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v [batch, kv_heads, T, head_dim] at position `length`; return the keys and values so far."""
        k_all, v_all = self.k_layers[layer], self.v_layers[layer]
        k_all.narrow(2, self.length, k.size(2)).copy_(k)
        v_all.narrow(2, self.length, v.size(2)).copy_(v)
        end = self.length + k.size(2)
        return k_all.narrow(2, 0, end), v_all.narrow(2, 0, end)

    def advance(self, n: int) -> None:
        self.length += n


class SlotCache:
    """Keys and values for continuous batching: a fixed number of slots, each a sequence at its own length.

    The running sequences sit in slots 0..rows-1, so a decode step reads one contiguous view; a sequence that
    finishes is replaced by the last one (`move`). Rows write their new token at their own position
    (`lengths`), so the model is called with per-row positions and a key mask (`key_mask`). `length` is the
    widest row's, which is what the model checks against max_seq_len.
    """

    def __init__(self, cfg: ModelConfig, slots: int, dtype: torch.dtype, device: torch.device):
        shape = (cfg.n_layers, slots, cfg.n_kv_heads, cfg.max_seq_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.k_layers, self.v_layers = self.k.unbind(0), self.v.unbind(0)
        self.lengths = torch.zeros(slots, dtype=torch.long, device=device)
        self.rows = 0
        self.length = 0

    def load(self, slot: int, prefilled: KVCache) -> None:
        """Put a sequence prefilled on its own (a one-row KVCache) into `slot`."""
        n = prefilled.length
        self.k[:, slot, :, :n] = prefilled.k[:, 0, :, :n]
        self.v[:, slot, :, :n] = prefilled.v[:, 0, :, :n]
        self.lengths[slot] = n

    def move(self, src: int, dst: int) -> None:
        n = int(self.lengths[src])
        self.k[:, dst, :, :n] = self.k[:, src, :, :n]
        self.v[:, dst, :, :n] = self.v[:, src, :, :n]
        self.lengths[dst] = n

    def positions(self) -> torch.Tensor:
        """[rows, 1]: where each running row's next token goes."""
        return self.lengths[: self.rows, None]

    def key_mask(self) -> torch.Tensor:
        """[rows, 1, 1, width] boolean: the keys each row's next token attends to (its own and itself)."""
        self.length = int(self.lengths[: self.rows].max()) if self.rows else 0
        width = torch.arange(self.length + 1, device=self.lengths.device)
        return (width[None, :] <= self.lengths[: self.rows, None])[:, None, None, :]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one new token per row ([rows, kv_heads, 1, head_dim]) at that row's position."""
        if k.size(2) != 1:
            raise ValueError("a SlotCache takes one token per row at a time (prefill with a KVCache, then load)")
        rows = torch.arange(self.rows, device=k.device)
        at = self.lengths[: self.rows]
        k_all, v_all = self.k_layers[layer].narrow(0, 0, self.rows), self.v_layers[layer].narrow(0, 0, self.rows)
        k_all[rows, :, at] = k[:, :, 0]
        v_all[rows, :, at] = v[:, :, 0]
        return k_all.narrow(2, 0, self.length + 1), v_all.narrow(2, 0, self.length + 1)

    def advance(self, n: int) -> None:
        self.lengths[: self.rows] += n


def rotary_tables(cfg: ModelConfig, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [max_seq_len, head_dim] in HF's "rotate half" layout (exported weights give identical
    logits), the sign of rotate-half folded into sin: its first half is negated (see apply_rotary)."""
    inv_freq = 1.0 / cfg.rope_theta ** (
        torch.arange(0, cfg.head_dim, 2, dtype=torch.float32, device=device) / cfg.head_dim
    )
    if cfg.rope_scaling is not None:
        inv_freq = scaled_frequencies(inv_freq, cfg.rope_scaling)
    freqs = torch.outer(torch.arange(cfg.max_seq_len, dtype=torch.float32, device=device), inv_freq)
    return torch.cat([freqs, freqs], dim=-1).cos(), torch.cat([-freqs.sin(), freqs.sin()], dim=-1)


def scaled_frequencies(inv_freq: torch.Tensor, scaling: RopeScaling) -> torch.Tensor:
    """HF's linear and llama3 rope scaling of the inverse frequencies (positions stay integers)."""
    if scaling.type == "linear":
        return inv_freq / scaling.factor
    original, low, high = scaling.original_max_position_embeddings, scaling.low_freq_factor, scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = ((original / wavelen - low) / (high - low)) if high != low else torch.zeros_like(inv_freq)
    smoothed = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
    scaled = torch.where(wavelen > original / low, inv_freq / scaling.factor, inv_freq)
    medium = (wavelen >= original / high) & (wavelen <= original / low)
    return torch.where(medium, smoothed, scaled)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's x * cos + rotate_half(x) * sin, where rotate_half(x) = [-x2, x1]: with the sign in `sin`, the
    rotation is a roll by half the head dim (one op instead of slice, slice, neg, cat)."""
    return torch.addcmul(x * cos, x.roll(x.size(-1) // 2, dims=-1), sin)


LOSS_CHUNK_BYTES = 16 << 20


def chunked_cross_entropy(h: torch.Tensor, lm_head: nn.Linear, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of lm_head(h) [..., vocab] against targets (-100: ignored), over chunks of rows.

    The same value as one F.cross_entropy over all the fp32 logits, but every [rows, vocab] buffer (logits,
    their fp32 copy, log-softmax, gradients) stays under LOSS_CHUNK_BYTES: glibc hands out blocks of 32 MiB
    and more as fresh pages from the kernel every time, and the page faults cost more than the softmax.
    """
    h, targets = h.reshape(-1, h.size(-1)), targets.reshape(-1)
    rows = max(1, LOSS_CHUNK_BYTES // (4 * lm_head.out_features))
    total = sum(
        F.cross_entropy(lm_head(h_rows).float(), t_rows, ignore_index=-100, reduction="sum")
        for h_rows, t_rows in zip(h.split(rows), targets.split(rows))
    )
    return total / (targets != -100).sum()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


# torch >= 2.5: SDPA shares each key/value head among its query heads itself (enable_gqa), without copies
SDPA_GQA = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 5)


def explicit_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ/√d + causal mask) v with the [T, T] scores materialised. On CPU in bf16 this beats SDPA's
    flash kernel 2-4x (forward + backward) up to 256 positions, and loses from 512 on (BENCHMARKS.md)."""
    T = q.size(-2)
    if k.size(1) != q.size(1):
        k, v = k.repeat_interleave(q.size(1) // k.size(1), dim=1), v.repeat_interleave(q.size(1) // v.size(1), dim=1)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # the batched matmuls run faster on whole heads
    future = torch.full((T, T), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
    scores = (q * (1.0 / math.sqrt(q.size(-1)))) @ k.transpose(-2, -1) + future  # scaling q: T/d times fewer mults
    return scores.softmax(-1) @ v


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x, cos, sin, mask, cache: KVCache | None, layer: int) -> torch.Tensor:
        B, T, _ = x.shape
        H, KV, D = self.n_heads, self.n_kv_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, D)
        k = self.k_proj(x).view(B, T, KV, D)
        v = self.v_proj(x).view(B, T, KV, D).transpose(1, 2)
        # rotate q and k together ([B, T, heads, D] against cos/sin [T or B×T, 1, D]), then heads first
        qk = apply_rotary(torch.cat([q, k], dim=2), cos, sin)
        q, k = qk[:, :, :H].transpose(1, 2), qk[:, :, H:].transpose(1, 2)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        # no mask and a square score matrix: plain causal attention (the fast path for training)
        causal = mask is None and T > 1 and T == k.size(2)
        if causal and q.dtype == torch.bfloat16 and q.device.type == "cpu" and T <= 256:
            y = explicit_causal_attention(q, k, v)
        elif KV != H and SDPA_GQA:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True)
        else:
            if KV != H:
                k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, cache, layer, p: float = 0.0):
        x = x + F.dropout(self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer), p, self.training)
        return x + F.dropout(self.mlp(self.post_attention_layernorm(x)), p, self.training)


class Backbone(nn.Module):
    """Named `model` inside `Transformer`, as in HF's LlamaForCausalLM."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate_shape()
        self.cfg = cfg
        # residual and embedding dropout while training (as nanoGPT); set from TrainConfig.dropout, not saved
        self.dropout = 0.0
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        cos, sin = rotary_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # scale the residual-stream writers by depth (GPT-2), so the residual variance stays bounded
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=cfg.init_std / math.sqrt(2 * cfg.n_layers))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def hidden_states(
        self,
        idx: torch.Tensor,
        *,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: KVCache | SlotCache | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states [B, T, dim].

        positions: [B, T] rotary positions (default: cache.length + arange(T)); mask: an SDPA boolean mask
        broadcastable to [B, 1, T, keys] (True = attend), needed for padded or packed batches; cache: the
        KV cache to read from and append to.
        """
        T = idx.size(1)
        start = cache.length if cache is not None else 0
        if start + T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds model.max_seq_len={self.cfg.max_seq_len}")
        if positions is None:
            cos, sin = self.rope_cos[start : start + T, None], self.rope_sin[start : start + T, None]
        else:
            cos, sin = self.rope_cos[positions].unsqueeze(2), self.rope_sin[positions].unsqueeze(2)
        # rotate q and k in the dtype they come in (bf16 under autocast): no fp32 round trip
        dtype = torch.get_autocast_dtype(idx.device.type) if torch.is_autocast_enabled(idx.device.type) else cos.dtype
        cos, sin = cos.to(dtype), sin.to(dtype)
        p = self.dropout if self.training else 0.0
        x = F.dropout(self.model.embed_tokens(idx), p, self.training)
        for i, block in enumerate(self.model.layers):
            x = block(x, cos, sin, mask, cache, i, p)
        if cache is not None:
            cache.advance(T)
        return self.model.norm(x)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: KVCache | SlotCache | None = None,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, T, vocab]; with `keep` (bool [B, T]) only the logits of those positions, [N, vocab] in
        row-major order (HF's logits_to_keep, for a loss that reads a few positions, as RL reads the completion
        tokens: the LM head skips the rest); or with targets the mean cross-entropy over targets != -100."""
        h = self.hidden_states(idx, positions=positions, mask=mask, cache=cache)
        if targets is None:
            return self.lm_head(h if keep is None else h[keep])
        return chunked_cross_entropy(h, self.lm_head, targets)
