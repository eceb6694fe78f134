"""`fromzero run`: every stage in order, each reading the previous stage's checkpoint.

A run directory holds `data/` (tokenizer and shards), one directory per stage (its checkpoints,
metrics.jsonl and `result.json`), `summary.json` and the report. A stage with a `result.json` is
finished and skipped on the next run unless it is redone (`--redo STAGE` redoes it and every stage
after it).
"""

from __future__ import annotations

import functools
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
from fromzero.data.world_chat import InstructData, build_instructions
from fromzero.eval import qa
from fromzero.eval.report import write_report
from fromzero.eval.samples import complete
from fromzero.tokenizer import Tokenizer
from fromzero.train import pretrain, sft


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

    @functools.cached_property
    def instructions(self) -> InstructData:
        return build_instructions(self.world, self.cfg.instruct)

    def answers(self, ckpt: Path, chat: bool) -> dict[str, str]:
        """The fixed prompts answered by a checkpoint (rank 0 only: sampling is cheap): continued as raw
        text before instruction tuning, in the chat template after it."""
        model = checkpoint.load_model(ckpt, self.info.device)
        prompts, e = self.prompts(), self.cfg.eval
        if chat:
            texts = qa.answer(model, self.tokenizer, prompts, max_new_tokens=e.max_new_tokens, temperature=e.temperature,
                              seed=self.cfg.seed)  # fmt: skip
        else:
            texts = complete(model, self.tokenizer, prompts, max_new_tokens=e.max_new_tokens, temperature=e.temperature,
                             seed=self.cfg.seed)  # fmt: skip
        return dict(zip(prompts, texts))

    def qa_accuracy(self, ckpt: Path, *, chat: bool, log_to: Path | None = None) -> dict[str, float]:
        """Held-out question accuracy (phrasing, people) of a checkpoint; graded answers go to log_to."""
        model = checkpoint.load_model(ckpt, self.info.device)
        data, out = self.instructions, {}
        graded_all = []
        for name, questions in (("heldout_phrasing_acc", data.heldout_phrasing), ("heldout_people_acc", data.heldout_people)):
            out[name], graded = qa.accuracy(model, self.tokenizer, questions, self.world, chat=chat,
                                            max_new_tokens=self.cfg.eval.qa_max_new_tokens)  # fmt: skip
            graded_all += [{"set": name, "question": q.question, "expected": q.expected, "answer": a, "correct": ok}
                           for q, a, ok in graded]  # fmt: skip
        if log_to is not None:
            log_to.write_text("".join(json.dumps(g) + "\n" for g in graded_all))
        return out

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


def stage_sft(ctx: RunContext) -> dict[str, Any]:
    """Stage 2: instruction tuning, graded on held-out phrasings and held-out people against stage 1."""
    out = ctx.out / "sft"
    if ctx.cfg.sft.data:
        conversations, _ = sft.load_conversations(ctx.cfg.sft)
    else:
        conversations = ctx.instructions.train
    ckpt = sft.train(ctx.cfg.sft, conversations, ctx.out / "pretrain", out, resume=True)
    metrics: dict[str, float] = {}
    if ctx.info.is_main:
        metrics = ctx.qa_accuracy(ckpt, chat=True, log_to=out / "heldout_answers.jsonl")
        base = ctx.qa_accuracy(checkpoint.resolve(ctx.out / "pretrain"), chat=False, log_to=out / "base_heldout_answers.jsonl")
        metrics.update({f"base_{k}": v for k, v in base.items()})
    return {"metrics": metrics, "checkpoint": ckpt, "chat": True}


# Each stage returns {"metrics", "checkpoint", and "chat": True once the model speaks the chat template}.
STAGES: list[tuple[str, Callable[[RunContext], dict[str, Any]]]] = [
    ("init", stage_init),
    ("pretrain", stage_pretrain),
    ("sft", stage_sft),
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
            answers = ctx.answers(result["checkpoint"], chat=result.get("chat", False))
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
