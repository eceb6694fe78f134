"""LoRA (Hu et al. 2021): train a low-rank update B·A beside each frozen projection instead of the projection itself.

A targeted `nn.Linear` becomes a `LoRALinear` that keeps the base weight (frozen, under its own name, so the state
dict still reads `…q_proj.weight`) and adds `lora_A` [r, in] (Kaiming-uniform, as PEFT) and `lora_B` [out, r]
(zeros, so the adapted model starts equal to the base), with the update scaled by alpha / r and dropout on the
update's input. Only the adapters (and a stage's own fresh heads, such as the reward model's `score`) train, so the
optimizer holds a few percent of the parameters and no gradients or AdamW moments exist for the rest.

The stage's checkpoint stays a plain merged model (`merged_copy`), so every later stage, eval, chat, serve and export
read it unchanged; the adapter is also written in PEFT's format (`save_adapter`: `adapter_config.json` +
`adapter_model.safetensors`, keys `base_model.model.<our name>.lora_A.weight`), which `peft` loads onto the base.
Exact resume keeps the trainable tensors themselves in the trainer state: a merged weight cannot be split back
into the base and the update bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, field_validator
from safetensors.torch import save_file

# the projections of a Llama block; the embedding and LM head stay frozen (tied, and HF/PEFT target them rarely)
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_DIR = "adapter"


class LoRAConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: NonNegativeInt = Field(0, description="rank of the update; 0: LoRA off (full fine-tuning)")
    alpha: PositiveFloat = Field(16.0, description="the update is scaled by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the input of the update")
    target_modules: list[str] = Field(
        default_factory=lambda: list(TARGETS), description=f"projections that get an adapter, of {', '.join(TARGETS)}"
    )

    @field_validator("target_modules")
    @classmethod
    def _known_targets(cls, names: list[str]) -> list[str]:
        unknown = [n for n in names if n not in TARGETS]
        if unknown:
            raise ValueError(f"unknown target module {unknown[0]!r}; valid: {', '.join(TARGETS)}")
        if not names:
            raise ValueError(f"no target module; pick from {', '.join(TARGETS)}")
        return names

    @property
    def enabled(self) -> bool:
        return self.r > 0


class LoRALinear(nn.Module):
    """y = x Wᵀ + b + (alpha/r) · dropout(x) Aᵀ Bᵀ, with W and b the frozen base's own parameters."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float, generator: torch.Generator):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight.requires_grad_(False)
        self.bias = base.bias.requires_grad_(False) if base.bias is not None else None
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Linear(self.in_features, r, bias=False, **kw)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, **kw)
        # PEFT's init: A as nn.Linear's default, B zero, so B·A = 0 and the model starts as the base
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5), generator=generator)
        nn.init.zeros_(self.lora_B.weight)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False  # B·A added into weight (inference); the adapter path is then skipped
        self.disabled = False  # the base alone (the frozen reference for a KL term)

    def delta(self) -> torch.Tensor:
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.merged or self.disabled:
            return y
        return y + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling


class Adapter:
    """What a LoRA model carries for writing its adapter: the config, the base it adapts, and the fresh modules
    that train in full beside it (PEFT's modules_to_save)."""

    def __init__(self, cfg: LoRAConfig, base: str, modules_to_save: Sequence[str]):
        self.cfg, self.base, self.modules_to_save = cfg, base, list(modules_to_save)


def inject(
    model: nn.Module, cfg: LoRAConfig, *, base: str | Path, seed: int = 0, modules_to_save: Sequence[str] = ()
) -> nn.Module:
    """Freeze `model` and give every targeted projection an adapter, in place; the modules named in
    `modules_to_save` (direct children, e.g. a reward model's `score`) stay trainable. Returns `model`."""
    # a private generator: every rank draws the same A, and the global RNG (data order, dropout) does not move
    generator = torch.Generator().manual_seed(seed)
    model.requires_grad_(False)
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in cfg.target_modules and isinstance(module, nn.Linear)
    ]
    if not targets:
        raise ValueError(f"lora.target_modules {cfg.target_modules} match no linear layer of the model")
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        layer = LoRALinear(module, cfg.r, cfg.alpha, cfg.dropout, generator)
        setattr(model.get_submodule(parent_name), child, layer)
    for name in modules_to_save:
        getattr(model, name).requires_grad_(True)
    model.lora_adapter = Adapter(cfg, str(base), modules_to_save)
    return model


def layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def is_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def describe(model: nn.Module) -> str:
    adapter: Adapter = model.lora_adapter
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return (
        f"LoRA r={adapter.cfg.r} alpha={adapter.cfg.alpha:g} on {', '.join(adapter.cfg.target_modules)}: "
        f"{trainable:,} of {total:,} parameters train ({trainable / total:.2%})"
    )


@torch.no_grad()
def merge(model: nn.Module) -> None:
    """Add each B·A into its base weight, in place (faster inference; training is off until `unmerge`)."""
    for layer in layers(model).values():
        if not layer.merged:
            layer.weight += layer.delta()
            layer.merged = True


@torch.no_grad()
def unmerge(model: nn.Module) -> None:
    """Undo `merge` (up to rounding: training resumes from the merged weights minus the update)."""
    for layer in layers(model).values():
        if layer.merged:
            layer.weight -= layer.delta()
            layer.merged = False


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """The base model inside the block: every adapter skipped."""
    lora_layers = layers(model).values()
    for layer in lora_layers:
        layer.disabled = True
    try:
        yield
    finally:
        for layer in lora_layers:
            layer.disabled = False


class WithoutAdapters:
    """Calls the model with its adapters off: the frozen starting model for a KL term, without a second copy."""

    def __init__(self, model: nn.Module):
        self.model, self.cfg = model, model.cfg

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        with adapters_disabled(self.model):
            return self.model(*args, **kwargs)


@torch.no_grad()
def merged_copy(model: nn.Module) -> nn.Module:
    """The model as a plain one (nn.Linear projections holding W + B·A), what a checkpoint stores. Every other
    tensor is shared with `model`, so this costs the merged projections' memory only, and `model` is untouched."""
    shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    plain = copy.deepcopy(model, memo=shared)
    for name, layer in layers(plain).items():
        linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
        linear.weight = nn.Parameter(
            layer.weight if layer.merged else layer.weight + layer.delta(), requires_grad=False
        )
        if layer.bias is not None:
            linear.bias = layer.bias
        parent_name, _, child = name.rpartition(".")
        setattr(plain.get_submodule(parent_name), child, linear)
    del plain.lora_adapter
    return plain


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors that train (adapters and modules_to_save), for the trainer state of an exact resume."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if sorted(params) != sorted(state) or any(params[k].shape != v.shape for k, v in state.items()):
        raise ValueError(
            "the checkpoint's adapters do not match this LoRA config (r, target_modules); resume "
            "with the settings it was trained with"
        )
    for name, value in state.items():
        params[name].copy_(value)


def peft_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter under PEFT's names: base_model.model.<name>.lora_A.weight, and modules_to_save in full."""
    adapter: Adapter = model.lora_adapter
    out = {}
    for name, layer in layers(model).items():
        out[f"base_model.model.{name}.lora_A.weight"] = layer.lora_A.weight
        out[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B.weight
    for module in adapter.modules_to_save:
        for name, p in getattr(model, module).named_parameters():
            out[f"base_model.model.{module}.{name}"] = p
    return {k: v.detach().float().cpu().contiguous() for k, v in out.items()}


def peft_config(model: nn.Module) -> dict[str, Any]:
    adapter: Adapter = model.lora_adapter
    return {
        "peft_type": "LORA",
        # the reward model's score head is LlamaForSequenceClassification's
        "task_type": "SEQ_CLS" if hasattr(model, "score") else "CAUSAL_LM",
        "base_model_name_or_path": adapter.base,
        "r": adapter.cfg.r,
        "lora_alpha": adapter.cfg.alpha,
        "lora_dropout": adapter.cfg.dropout,
        "target_modules": sorted(adapter.cfg.target_modules),
        "modules_to_save": adapter.modules_to_save or None,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
    }


def save_adapter(model: nn.Module, directory: Path) -> Path:
    """Write the adapter as PEFT does (adapter_config.json, adapter_model.safetensors), replacing any earlier one
    whole: it is written beside `directory` and renamed into place."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        save_file(peft_state_dict(model), str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(peft_config(model), indent=2) + "\n")
        old = None
        if directory.exists():
            old = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.old."))
            os.replace(directory, old / directory.name)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return directory
