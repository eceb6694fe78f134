"""Hugging Face transformers checkpoints in and out.

In: a local directory that transformers wrote for a Llama, Qwen2 or Mistral model (config.json with its
`model_type`, safetensors weights in one file or sharded with an index, tokenizer.json + tokenizer_config.json) is a checkpoint every stage's `--init`,
chat, serve and export read (`checkpoint.load_model` comes here for it). model.py uses HF Llama's parameter names,
so the weights are a copy; what maps is the config: grouped-query heads, rope theta and scaling (linear, llama3),
tied or untied embeddings, Qwen2's q/k/v biases, RMSNorm eps, an explicit head_dim. The tokenizer and its chat
template are used as they are (tokenizer.py, data/chat.py).

Out: `export` writes a directory that `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`
load without custom code: config.json (LlamaForCausalLM, or Qwen2ForCausalLM for a model with q/k/v biases),
model.safetensors, tokenizer.json, tokenizer_config.json with a Jinja chat template that gives exactly the ids
fromzero's template gives, and generation_config.json (eos = the token that ends a turn).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from fromzero.model import ModelConfig, RopeScaling, Transformer
from fromzero.tokenizer import SIDECAR_FILES, TOKENIZER_FILE, Tokenizer

HF_PREFIX = "hf:"
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")

# fromzero's template as Jinja: <|bos|>, then <|role|>content<|end|> per message, then <|assistant|> to answer
BUILTIN_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('roles are system, user and assistant') }}{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def strip_prefix(path: str | Path) -> tuple[Path, bool]:
    """(the directory, whether it was named with hf:)."""
    text = str(path)
    return (Path(text[len(HF_PREFIX) :]), True) if text.startswith(HF_PREFIX) else (Path(path), False)


def read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not a Hugging Face model directory (no config.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path / 'config.json'}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ValueError(f"{path / 'config.json'}: no model_type, so not a transformers model config")
    return config


def is_hf_checkpoint(path: Path) -> bool:
    """A directory transformers wrote: config.json with a model_type and no fromzero meta.json."""
    if (path / "meta.json").exists() or not (path / "config.json").is_file():
        return False
    try:
        read_config(path)
    except ValueError:
        return False
    return True


def check_dir(path: Path) -> None:
    """Raise one line when `path` (named with hf:) is not a model directory transformers wrote."""
    if not path.is_dir():
        raise FileNotFoundError(f"{HF_PREFIX}{path}: no such directory")
    model_config(read_config(path), path)
    weight_files(path)  # raises one line: no weights, a broken index, a missing shard


def rope_scaling(config: dict[str, Any], where: Path) -> RopeScaling | None:
    """HF's rope_scaling (transformers 4) or rope_parameters (5) as ModelConfig's, refusing what model.py lacks."""
    params = config.get("rope_scaling") or config.get("rope_parameters") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind in ("default", None):
        return None
    if kind not in ("linear", "llama3"):
        raise ValueError(
            f"{where}: rope_scaling type {kind!r} is not supported (fromzero has default, linear and llama3)"
        )
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    return RopeScaling(type=kind, **{k: params[k] for k in keys if k in params and (kind == "llama3" or k == "factor")})


def model_config(config: dict[str, Any], where: Path) -> ModelConfig:
    """A transformers config.json as a ModelConfig; what fromzero's model cannot compute exactly is refused."""
    family = config["model_type"]
    if family not in ARCHITECTURES:
        raise ValueError(
            f"{where}: model_type {family!r} is not supported; fromzero imports {', '.join(ARCHITECTURES)}"
        )
    if (arch := (config.get("architectures") or [ARCHITECTURES[family]])[0]) != ARCHITECTURES[family]:
        raise ValueError(f"{where}: a {arch}; fromzero imports language models ({ARCHITECTURES[family]})")
    refused = {
        "hidden_act": config.get("hidden_act", "silu") not in ("silu", "swish"),
        "attention_bias": bool(config.get("attention_bias")),
        "mlp_bias": bool(config.get("mlp_bias")),
        "partial_rotary_factor": config.get("partial_rotary_factor", 1.0) != 1.0,
    }
    if bad := [k for k, v in refused.items() if v]:
        raise ValueError(f"{where}: {bad[0]}={config.get(bad[0])!r} is not supported by fromzero's model")
    params = config.get("rope_parameters") or {}
    heads, dim = config["num_attention_heads"], config["hidden_size"]
    head_dim = config.get("head_dim") or dim // heads
    max_len = config.get("max_position_embeddings", 2048)
    window = config.get("sliding_window") if family == "mistral" or config.get("use_sliding_window") else None
    if window and window < max_len:  # beyond the window HF attends locally, which model.py does not: stop there
        max_len = window
    try:
        return ModelConfig(
            vocab_size=config["vocab_size"],
            dim=dim,
            n_layers=config["num_hidden_layers"],
            n_heads=heads,
            n_kv_heads=config.get("num_key_value_heads") or heads,
            hidden_dim=config["intermediate_size"],
            max_seq_len=max_len,
            rope_theta=config.get("rope_theta", params.get("rope_theta", 10000.0)),
            rope_scaling=rope_scaling(config, where),
            head_size=None if head_dim * heads == dim else head_dim,
            qkv_bias=family == "qwen2",
            norm_eps=config.get("rms_norm_eps", 1e-6),
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        )
    except KeyError as e:
        raise ValueError(f"{where / 'config.json'}: no {e.args[0]}") from None
    except ValidationError as e:
        error = e.errors()[0]
        raise ValueError(f"{where / 'config.json'}: {'.'.join(map(str, error['loc']))}: {error['msg']}") from None


def weight_files(path: Path) -> list[Path]:
    """The files that hold a checkpoint's weights: model.safetensors, the shards its index names (in name order),
    or pytorch_model.bin."""
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    if (index := path / "model.safetensors.index.json").is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            raise ValueError(f"{index}: not a safetensors index (JSON with a weight_map of tensor -> file)") from None
        if missing := [s for s in shards if not (path / s).is_file()]:
            raise FileNotFoundError(f"{index} names {missing[0]}, which is not in {path}")
        return [path / s for s in shards]
    if (path / "pytorch_model.bin").is_file():
        return [path / "pytorch_model.bin"]
    raise FileNotFoundError(f"{path}: no weights ({', '.join(WEIGHT_FILES)})")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a transformers checkpoint: one safetensors file, sharded ones (index), or pytorch_model.bin."""
    state: dict[str, torch.Tensor] = {}
    for file in weight_files(path):
        if file.suffix == ".bin":
            state.update(torch.load(file, map_location="cpu", weights_only=True))
        else:
            state.update(load_file(str(file)))
    return state


def load_model(path: Path) -> Transformer:
    """A transformers checkpoint as a fromzero Transformer (fp32 weights, as fromzero's own checkpoints load)."""
    cfg = model_config(read_config(path), path)
    model = Transformer(cfg)
    # rotary tables are computed, not learned; a tied checkpoint may still store its LM head
    state = {
        k: v.float()
        for k, v in read_weights(path).items()
        if not k.endswith("rotary_emb.inv_freq") and not (cfg.tie_embeddings and k == "lm_head.weight")
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if m != "lm_head.weight" or not cfg.tie_embeddings]
    if missing or unexpected:
        raise ValueError(
            f"{path}: the weights do not match its config.json: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return model


def hf_config(cfg: ModelConfig, tok: Tokenizer, dtype: str) -> dict[str, Any]:
    """config.json for transformers: Llama, or Qwen2 when the model has q/k/v biases (Llama's attention_bias would
    put one on o_proj too)."""
    family = "qwen2" if cfg.qkv_bias else "llama"
    scaling = None
    if cfg.rope_scaling is not None:
        s = cfg.rope_scaling
        scaling = {"rope_type": s.type, "factor": s.factor}
        if s.type == "llama3":
            scaling.update(
                low_freq_factor=s.low_freq_factor,
                high_freq_factor=s.high_freq_factor,
                original_max_position_embeddings=s.original_max_position_embeddings,
            )
    config = {
        "architectures": [ARCHITECTURES[family]],
        "model_type": family,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": scaling,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.end_id,
        "pad_token_id": tok.pad_id,
        "torch_dtype": dtype,
        "use_cache": True,
    }
    if family == "llama":
        config.update(attention_bias=False, mlp_bias=False)
    else:
        config.update(use_sliding_window=False, sliding_window=None)
    return config


def write_tokenizer(tok: Tokenizer, tokenizer_file: Path, out: Path, max_len: int) -> None:
    """tokenizer.json as it is; an imported tokenizer's own config and template, or one for fromzero's."""
    shutil.copyfile(tokenizer_file, out / TOKENIZER_FILE)
    if tok.system_id is None:
        for name in SIDECAR_FILES:
            if (tokenizer_file.parent / name).is_file():
                shutil.copyfile(tokenizer_file.parent / name, out / name)
        return
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|bos|>",
        "eos_token": "<|end|>",
        "pad_token": "<|pad|>",
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
        "chat_template": BUILTIN_CHAT_TEMPLATE,
    }
    (out / SIDECAR_FILES[0]).write_text(json.dumps(config, indent=2) + "\n")


def refuse_reward_model(ckpt: Path) -> None:
    from fromzero import checkpoint

    if checkpoint.is_reward_model(ckpt):
        raise ValueError(
            f"{ckpt} is a reward model (a score head): export a language model (pretrain, SFT, DPO, PPO or "
            "GRPO checkpoint); its likelihood gate has no transformers class"
        )


def load_for_export(ckpt_path: str | Path):
    """(checkpoint dir, model, tokenizer file, tokenizer) of a language-model checkpoint, as every export reads it."""
    from fromzero import checkpoint

    ckpt = checkpoint.resolve(ckpt_path)
    refuse_reward_model(ckpt)
    tok_file = checkpoint.tokenizer_file(ckpt)
    return ckpt, checkpoint.load_model(ckpt), tok_file, Tokenizer.load(tok_file)


def write_atomic(out: Path, write) -> Path:
    """Run write(tmp) in a hidden temporary directory beside `out`, then rename it to `out` (as checkpoint.save)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists; remove it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        write(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def export(ckpt_path: str | Path, out: Path, dtype: str = "float32") -> Path:
    """Write the checkpoint at `ckpt_path` (fromzero's or an imported one) as a transformers model directory."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    _, model, tok_file, tok = load_for_export(ckpt_path)
    cfg = model.cfg
    state = {
        k: v.detach().to(DTYPES[dtype]).contiguous()
        for k, v in model.state_dict().items()
        if not (cfg.tie_embeddings and k == "lm_head.weight")
    }

    def write(tmp: Path) -> None:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config(cfg, tok, dtype), indent=2) + "\n")
        stop = [tok.end_id] + ([tok.eos_id] if tok.eos_id != tok.end_id else [])  # an imported eos stops too
        generation = {
            "bos_token_id": tok.bos_id,
            "eos_token_id": stop[0] if len(stop) == 1 else stop,
            "pad_token_id": tok.pad_id,
        }
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        write_tokenizer(tok, tok_file, tmp, cfg.max_seq_len)

    return write_atomic(out, write)
