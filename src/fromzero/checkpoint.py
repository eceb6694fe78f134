"""Checkpoint directories: what every stage writes and the next one reads.

A checkpoint is a directory holding `model.safetensors`, `config.json` (the ModelConfig), `tokenizer.json`,
`meta.json` (stage, step, metrics) and, for a training checkpoint, `trainer_state.pt`
(optimizer, schedule, RNG and data position). A stage's output directory keeps its checkpoints as
`ckpt-STEP/` next to a one-line `LATEST` file naming the current one; both are replaced atomically
(written under a temporary name, then renamed), so a crash at any moment leaves the previous checkpoint
intact and loadable, and a failed write (a full disk) removes what it wrote and names the checkpoint kept.

A directory that Hugging Face transformers wrote (config.json with a model_type, no meta.json), or any directory
named as `hf:DIR`, is a checkpoint too: `load_model` imports it (interop/hf.py), and its tokenizer's
tokenizer_config.json and chat template travel beside tokenizer.json into every checkpoint made from it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model as load_safetensors
from safetensors.torch import save_model

from fromzero.interop import hf
from fromzero.model import ModelConfig, Transformer
from fromzero.tokenizer import SIDECAR_FILES

LATEST = "LATEST"


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    """One JSON object a line, written whole or not at all (the answers logs)."""
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def resolve(path: str | Path) -> Path:
    """A checkpoint directory, given it, a stage directory whose LATEST names one, or a transformers model
    directory (hf:DIR, or one found to be such)."""
    path, named_hf = hf.strip_prefix(path)
    if named_hf or hf.is_hf_checkpoint(path):
        hf.check_dir(path)
        return path
    if (path / "model.safetensors").exists():
        return path
    if (path / LATEST).exists():
        return path / (path / LATEST).read_text().strip()
    raise FileNotFoundError(f"no checkpoint at {path} (expected model.safetensors or a {LATEST} file)")


def exists(path: str | Path) -> bool:
    try:
        resolve(path)
    except FileNotFoundError:
        return False
    return True


def save(
    stage_dir: Path,
    step: int,
    model: Transformer,
    *,
    tokenizer_file: Path,
    meta: dict[str, Any],
    trainer_state: dict[str, Any] | None = None,
    keep_previous: bool = False,
) -> Path:
    """Write `stage_dir/ckpt-STEP` and point LATEST at it; returns the checkpoint path."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{step:07d}"
    final = stage_dir / name
    previous = stage_dir / (stage_dir / LATEST).read_text().strip() if (stage_dir / LATEST).exists() else None
    if final == previous:
        raise FileExistsError(f"{final} is the current checkpoint; a step is saved once")
    tmp = Path(tempfile.mkdtemp(dir=stage_dir, prefix=f".{name}."))
    try:
        save_model(model, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(model.cfg.model_dump_json(indent=2))
        shutil.copyfile(tokenizer_file, tmp / "tokenizer.json")
        for sidecar in SIDECAR_FILES:  # an imported tokenizer's special tokens and chat template
            if (tokenizer_file.parent / sidecar).is_file():
                shutil.copyfile(tokenizer_file.parent / sidecar, tmp / sidecar)
        (tmp / "meta.json").write_text(json.dumps({"step": step, **meta}, indent=2))
        if trainer_state is not None:
            torch.save(trainer_state, tmp / "trainer_state.pt")
        if final.exists():  # left by a run killed between writing it and updating LATEST: never current
            shutil.rmtree(final)
        os.replace(tmp, final)
        write_text_atomic(stage_dir / LATEST, name + "\n")
    except (OSError, SafetensorError, RuntimeError) as e:  # torch.save and safetensors wrap the OS's error
        shutil.rmtree(tmp, ignore_errors=True)
        kept = f"the previous checkpoint {previous} is kept" if previous else "no earlier checkpoint was written"
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        code = getattr(e, "errno", None) or errno.EIO
        if isinstance(e, FileNotFoundError) and e.filename:
            # a file the checkpoint copies (the tokenizer of the checkpoint the stage started from) removed meanwhile
            reason, fix = f"{reason}: {e.filename}", f"restore {e.filename}"
        elif code in (errno.ENOSPC, errno.EDQUOT):
            fix = "free disk space"
        else:
            fix = "fix that"
        raise OSError(
            code, f"writing checkpoint {final} failed ({reason}); {kept}; {fix} and run again with --resume"
        ) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if previous is not None and not keep_previous:
        shutil.rmtree(previous, ignore_errors=True)
    return final


def load_meta(path: str | Path) -> dict[str, Any]:
    ckpt = resolve(path)
    return {} if hf.is_hf_checkpoint(ckpt) else json.loads((ckpt / "meta.json").read_text())


def load_model(path: str | Path, device: str | torch.device = "cpu") -> Transformer:
    ckpt = resolve(path)
    if hf.is_hf_checkpoint(ckpt):
        return hf.load_model(ckpt).to(device)
    cfg = ModelConfig.model_validate_json((ckpt / "config.json").read_text())
    model = Transformer(cfg)
    load_model_weights(model, ckpt)
    return model.to(device)


def is_reward_model(path: str | Path) -> bool:
    """Whether a checkpoint holds a reward model (a `score` head on the backbone), not a language model."""
    ckpt = resolve(path)
    if hf.is_hf_checkpoint(ckpt):
        return False  # import takes *ForCausalLM models only
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        return "score.weight" in f.keys()


def load_model_weights(model: Transformer, path: str | Path) -> None:
    want_reward = hasattr(model, "score")
    if is_reward_model(path) != want_reward:
        kinds = ("a reward model (it has score.* weights)", "a language model (no score head)")
        has, expected = (kinds[0], kinds[1]) if not want_reward else (kinds[1], kinds[0])
        hint = (
            "pass a pretrain, SFT, DPO, PPO or GRPO checkpoint"
            if not want_reward
            else "pass the output of `fromzero reward`"
        )
        raise ValueError(f"checkpoint {path} is {has}, but {expected} is expected here; {hint}")
    missing, unexpected = load_safetensors(model, str(resolve(path) / "model.safetensors"), strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight" or not model.cfg.tie_embeddings]:
        raise ValueError(f"checkpoint {path} does not match the model: missing {missing}, unexpected {unexpected}")


def tokenizer_file(path: str | Path) -> Path:
    file = resolve(path) / "tokenizer.json"
    if not file.is_file():
        raise FileNotFoundError(
            f"{file.parent}: no tokenizer.json (save the model's tokenizer there with transformers' "
            "save_pretrained of a fast tokenizer)"
        )
    return file
