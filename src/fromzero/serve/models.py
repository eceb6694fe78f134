"""The models a server serves: checkpoints named by their stage directory, each with its engine and batcher."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fromzero import checkpoint
from fromzero.generate import Engine
from fromzero.interop import hf
from fromzero.serve.batching import Batcher
from fromzero.tokenizer import Tokenizer

# the pipeline's stage order, so a run's models are listed as the story goes
STAGE_ORDER = ("init", "pretrain", "sft", "dpo", "ppo", "grpo")


@dataclass
class ServedModel:
    name: str
    path: Path  # the checkpoint directory
    sha: str  # the first 16 hex digits of the weights' sha256 (all shards of a sharded checkpoint)
    stage: str
    engine: Engine
    batcher: Batcher

    @property
    def max_seq_len(self) -> int:
        return self.engine.model.cfg.max_seq_len


def is_policy(ckpt: Path) -> bool:
    """A language model's checkpoint, not a reward model's (which has a score head)."""
    return not checkpoint.is_reward_model(ckpt)


def _stage_name(ckpt: Path) -> str:
    return ckpt.parent.name if ckpt.name.startswith("ckpt-") else ckpt.name


def find_checkpoints(paths: Sequence[str | Path]) -> list[tuple[str, Path]]:
    """(name, checkpoint) for every model to serve. A path is a checkpoint, a stage directory, or a run directory
    (every stage in it that holds a language model). Names are stage directories; where two paths give the same
    name, the directory above tells them apart (`runA/sft`, `runB/sft`)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if checkpoint.exists(p):
            ckpt = checkpoint.resolve(p)
            if not is_policy(ckpt):
                raise ValueError(f"--ckpt {p}: a reward model, not a language model: it cannot answer")
            found.append(ckpt)
            continue
        if not p.is_dir():
            raise FileNotFoundError(f"--ckpt {p}: no such checkpoint, stage or run directory")
        stages = [c for c in p.iterdir() if c.is_dir() and checkpoint.exists(c)]
        stages.sort(key=lambda c: (STAGE_ORDER.index(c.name) if c.name in STAGE_ORDER else len(STAGE_ORDER), c.name))
        policies = [checkpoint.resolve(c) for c in stages if is_policy(checkpoint.resolve(c))]
        if not policies:
            raise FileNotFoundError(f"--ckpt {p}: no checkpoint in it or in its subdirectories")
        found += policies
    names = [_stage_name(c) for c in found]
    out = []
    for ckpt, name in zip(found, names):
        stage_dir = ckpt.parent if ckpt.name.startswith("ckpt-") else ckpt
        out.append((f"{stage_dir.parent.name}/{name}" if names.count(name) > 1 else name, ckpt))
    if len({n for n, _ in out}) < len(out):
        raise ValueError(f"two checkpoints have the same name: {[n for n, _ in out]}")
    return out


def weights_sha(ckpt: Path) -> str:
    """sha256 of the weights: model.safetensors, or an imported model's shards one after another."""
    digest = hashlib.sha256()
    for file in hf.weight_files(ckpt):
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def load(
    paths: Sequence[str | Path], *, device: str = "cpu", max_batch: int = 16, threads: int | None = None
) -> list[ServedModel]:
    served = []
    for name, ckpt in find_checkpoints(paths):
        model = checkpoint.load_model(ckpt, device).eval()
        engine = Engine(model, Tokenizer.load(checkpoint.tokenizer_file(ckpt)))
        stage = str(checkpoint.load_meta(ckpt).get("stage", name))
        served.append(ServedModel(name, ckpt, weights_sha(ckpt), stage, engine, Batcher(engine, max_batch, threads)))
    return served
