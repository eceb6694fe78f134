"""GGUF export for llama.cpp and Ollama, written with the `gguf` package (pure Python, no compiled tools).

What llama.cpp's convert_hf_to_gguf.py writes for a Llama (or, with q/k/v biases, a Qwen2) model: the `llama.*`
(`qwen2.*`) hyperparameters, tensors under llama.cpp's names (token_embd, blk.N.attn_q, ..., output_norm, and
output when the LM head is untied), the byte-level BPE tokenizer as `gpt2` (tokens, token types, merges, special
ids) and the Jinja chat template. llama.cpp's llama architecture rotates pairs of adjacent dimensions while HF's
layout (model.py's) rotates the two halves of each head, so q and k rows are permuted as the converter permutes
them (`permute`); its qwen2 architecture uses the halves layout and takes them as they are. llama3 rope scaling
travels as the `rope_freqs` tensor of per-frequency divisors, linear scaling as its factor.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from fromzero.interop.hf import BUILTIN_CHAT_TEMPLATE, load_for_export
from fromzero.model import ModelConfig

FILE_TYPES = ("f32", "f16")
# HF name inside model.layers.N -> llama.cpp's inside blk.N
LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
TOP_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def permute(weights: torch.Tensor, n_heads: int) -> torch.Tensor:
    """q/k rows (or biases) from HF's rotate-half layout to llama.cpp's interleaved pairs, per head (its
    convert_hf_to_gguf.py LlamaModel.permute, called with the kv head count for k)."""
    return (
        weights.reshape(n_heads, 2, weights.shape[0] // n_heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def architecture(cfg: ModelConfig) -> str:
    return "qwen2" if cfg.qkv_bias else "llama"


def gguf_tensors(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """llama.cpp's tensor names and layouts for a fromzero state dict (tied: no `output`)."""
    out: dict[str, torch.Tensor] = {}
    rotate = architecture(cfg) == "llama"
    for name, tensor in state.items():
        if name in TOP_TENSORS:
            if name == "lm_head.weight" and cfg.tie_embeddings:
                continue
            out[TOP_TENSORS[name]] = tensor
            continue
        _, _, layer, rest = name.split(".", 3)  # model.layers.N.rest
        if rotate and rest.startswith(("self_attn.q_proj", "self_attn.k_proj")):
            tensor = permute(tensor, cfg.n_heads if "q_proj" in rest else cfg.n_kv_heads)
        out[f"blk.{layer}.{LAYER_TENSORS[rest]}"] = tensor
    if cfg.rope_scaling is not None and cfg.rope_scaling.type == "llama3":
        out["rope_freqs.weight"] = llama3_rope_factors(cfg)
    return out


def llama3_rope_factors(cfg: ModelConfig) -> torch.Tensor:
    """What llama.cpp divides each rotary frequency by to apply llama3 scaling (as its converter computes it)."""
    s = cfg.rope_scaling
    freqs = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim)
    low, high = (
        s.original_max_position_embeddings / s.low_freq_factor,
        s.original_max_position_embeddings / s.high_freq_factor,
    )
    factors = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < high:
            factors.append(1.0)
        elif wavelen > low:
            factors.append(s.factor)
        else:
            smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
                s.high_freq_factor - s.low_freq_factor
            )
            factors.append(1 / ((1 - smooth) / s.factor + smooth))
    return torch.tensor(factors, dtype=torch.float32)


def pre_tokenizer(tokenizer_json: dict) -> str:
    """llama.cpp's name for the pre-tokenizer's split regex: fromzero's (GPT-4's, with digits in threes) is Llama 3's
    `llama-bpe`, single digits are Qwen2's; anything else GPT-2's `default`."""
    text = json.dumps(tokenizer_json.get("pre_tokenizer"))
    if r"\\p{N}{1,3}" in text:
        return "llama-bpe"
    if r"\\p{N}|" in text:
        return "qwen2"
    return "default"


def vocabulary(tokenizer_json: dict, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) as llama.cpp's gpt2 vocabulary: one token per embedding row (rows the tokenizer
    never emits as [PADi], unused), special tokens as control, other added tokens as user-defined."""
    import gguf

    if tokenizer_json.get("model", {}).get("type") != "BPE" or "ByteLevel" not in json.dumps(
        tokenizer_json.get("pre_tokenizer")
    ):
        raise ValueError("gguf export needs a byte-level BPE tokenizer (llama.cpp's gpt2 vocabulary); this one is not")
    by_id = {i: t for t, i in tokenizer_json["model"]["vocab"].items()}
    added = {t["id"]: t for t in tokenizer_json.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        if i in added:
            tokens.append(added[i]["content"])
            types.append(gguf.TokenType.CONTROL if added[i]["special"] else gguf.TokenType.USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"].get("merges", [])]
    return tokens, [int(t) for t in types], merges


def export(ckpt_path: str | Path, out: Path, dtype: str = "f16") -> Path:
    """Write the checkpoint at `ckpt_path` as one GGUF file llama.cpp loads."""
    try:
        import gguf
    except ModuleNotFoundError:
        raise ValueError("gguf export needs the gguf package: pip install gguf (or fromzero[export])") from None

    if dtype not in FILE_TYPES:
        raise ValueError(f"--dtype {dtype!r}: use one of {', '.join(FILE_TYPES)} for gguf")
    out = Path(out)
    if out.suffix != ".gguf":
        raise ValueError(f"--out {out}: a gguf export is one file; name it NAME.gguf")
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or choose another --out")
    ckpt, model, tok_file, tok = load_for_export(ckpt_path)
    tokenizer_json = json.loads(tok_file.read_text())
    cfg = model.cfg
    arch = architecture(cfg)
    tokens, types, merges = vocabulary(tokenizer_json, cfg.vocab_size)
    tensors = gguf_tensors({k: v.detach().float() for k, v in model.state_dict().items()}, cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    os.close(fd)
    try:  # written under a temporary name and renamed, so a failed export leaves no half file
        w = gguf.GGUFWriter(tmp, arch)
        w.add_name(ckpt.parent.name if ckpt.name.startswith("ckpt-") else ckpt.name)
        w.add_context_length(cfg.max_seq_len)
        w.add_embedding_length(cfg.dim)
        w.add_block_count(cfg.n_layers)
        w.add_feed_forward_length(cfg.ffn_dim)
        w.add_head_count(cfg.n_heads)
        w.add_head_count_kv(cfg.n_kv_heads)
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_layer_norm_rms_eps(cfg.norm_eps)
        w.add_vocab_size(cfg.vocab_size)
        w.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
        if cfg.rope_scaling is not None and cfg.rope_scaling.type == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(cfg.rope_scaling.factor)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre_tokenizer(tokenizer_json))
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(tok.bos_id)
        w.add_eos_token_id(tok.end_id)
        w.add_pad_token_id(tok.pad_id)
        # fromzero starts every text with <|bos|>; an imported tokenizer only when it names a bos token
        w.add_add_bos_token(tok.system_id is not None or "bos_token" in tok.template_vars)
        template = BUILTIN_CHAT_TEMPLATE if tok.system_id is not None else tok.chat_template
        if template is not None:
            w.add_chat_template(template)
        for name, tensor in tensors.items():
            # norms, biases and rope factors stay f32, as llama.cpp's converter keeps 1-d tensors
            array = tensor.numpy().astype(np.float16 if dtype == "f16" and tensor.dim() > 1 else np.float32)
            w.add_tensor(name, array)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
