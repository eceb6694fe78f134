"""`fromzero run`: every stage in order, each reading the previous stage's checkpoint.

A run directory holds `data/` (tokenizer and shards), one directory per stage (its checkpoints,
metrics.jsonl and `result.json`), `summary.json` and the report. A stage with a `result.json` is
finished and skipped on the next run unless it is redone (`--redo STAGE` redoes it and every stage
after it).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fromzero import checkpoint, dist
from fromzero.config import Config
from fromzero.data import build as data_build
from fromzero.data.world import World, build_world
from fromzero.eval.report import write_report
from fromzero.eval.samples import complete
from fromzero.tokenizer import Tokenizer
from fromzero.train import pretrain


@dataclass
class RunContext:
    cfg: Config
    out: Path
    info: dist.DistInfo
    world: World

    @property
    def data_dir(self) -> Path:
        return self.out / "data"

    @property
    def tokenizer(self) -> Tokenizer:
        return Tokenizer.load(self.data_dir)

    def prompts(self) -> list[str]:
        fill = {"trained_person": self.world.trained_people[0].name, "heldout_person": self.world.heldout_people[0].name}
        return [p.format(**fill) for p in self.cfg.eval.prompts]

    def answers(self, ckpt: Path) -> dict[str, str]:
        """The fixed prompts answered by a checkpoint (rank 0 only: sampling is cheap)."""
        model = checkpoint.load_model(ckpt, self.info.device)
        prompts = self.prompts()
        texts = complete(model, self.tokenizer, prompts, max_new_tokens=self.cfg.eval.max_new_tokens,
                         temperature=self.cfg.eval.temperature, seed=self.cfg.seed)  # fmt: skip
        return dict(zip(prompts, texts))

    def lm_metrics(self, ckpt: Path) -> dict[str, float]:
        model = checkpoint.load_model(ckpt, self.info.device)
        evaluate = pretrain.lm_evaluator(self.data_dir, self.tokenizer, self.cfg.pretrain, self.cfg.eval.val_batches,
                                         self.info.rank, self.info.world_size)  # fmt: skip
        with torch.no_grad():
            return evaluate(model.eval())


def stage_init(ctx: RunContext) -> dict[str, Any]:
    """Stage 0: random weights. Its val loss should sit near ln(vocab) and its answers be gibberish."""
    out = ctx.out / "init"
    if ctx.info.is_main and not checkpoint.exists(out):
        model = pretrain.init_model(ctx.cfg.model, ctx.tokenizer, ctx.cfg.seed)
        checkpoint.save(out, 0, model, tokenizer_file=ctx.data_dir / "tokenizer.json", meta={"stage": "init"})
    dist.barrier()
    metrics = ctx.lm_metrics(out)
    vocab = ctx.tokenizer.vocab_size
    return {"metrics": {**metrics, "ln_vocab": float(torch.log(torch.tensor(float(vocab))))}, "checkpoint": out}


def stage_pretrain(ctx: RunContext) -> dict[str, Any]:
    """Stage 1: next-token prediction on the corpus."""
    out = ctx.out / "pretrain"
    ckpt = pretrain.train(ctx.cfg.pretrain, ctx.data_dir, out, init=ctx.out / "init",
                          val_batches=ctx.cfg.eval.val_batches, resume=True)  # fmt: skip
    return {"metrics": ctx.lm_metrics(ckpt), "checkpoint": ckpt}


# Later stages append themselves here: (name, function returning {"metrics", "checkpoint"}).
STAGES: list[tuple[str, Callable[[RunContext], dict[str, Any]]]] = [
    ("init", stage_init),
    ("pretrain", stage_pretrain),
]


def result_path(out: Path, stage: str) -> Path:
    return out / stage / "result.json"


def summarize(cfg: Config, out: Path) -> dict[str, Any]:
    stages = {}
    for name, _ in STAGES:
        path = result_path(out, name)
        if path.exists():
            result = json.loads(path.read_text())
            stages[name] = {**result["metrics"], "seconds": result["seconds"]}
    return {"preset": cfg.preset, "stages": stages, "seconds": sum(s["seconds"] for s in stages.values())}


def run(cfg: Config, out: Path, *, redo: str | None = None, report: bool = True) -> dict[str, Any]:
    out = Path(out)
    info = dist.setup(cfg.pretrain.device)
    names = [name for name, _ in STAGES]
    if redo is not None and redo not in names:
        raise ValueError(f"unknown stage '{redo}'; stages: {', '.join(names)}")
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(cfg.model_dump_json(indent=2))
        if redo is not None:
            for name in names[names.index(redo) :]:
                shutil.rmtree(out / name, ignore_errors=True)
        data_build.build(cfg, out / "data")
    dist.barrier()
    ctx = RunContext(cfg, out, info, build_world(cfg.world))
    for name, fn in STAGES:
        path = result_path(out, name)
        if path.exists():
            if info.is_main:
                print(f"[{name}] finished earlier, skipped ({path})")
            continue
        start = time.perf_counter()
        result = fn(ctx)
        if info.is_main:
            answers = ctx.answers(result["checkpoint"])
            record = {"metrics": result["metrics"], "seconds": time.perf_counter() - start,
                      "checkpoint": str(result["checkpoint"]), "answers": answers}  # fmt: skip
            checkpoint.write_text_atomic(path, json.dumps(record, indent=2))
            print(f"[{name}] " + "  ".join(f"{k}={v:.4g}" for k, v in result["metrics"].items()))
        dist.barrier()
    summary = summarize(cfg, out)
    if info.is_main:
        checkpoint.write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
        if report:
            write_report(out, [name for name, _ in STAGES])
    return summary
