"""The one training loop every stage runs on.

An algorithm hands it a model, a resumable batch source and a loss function; the loop owns the rest:
AdamW, warmup + cosine/WSD schedule, gradient accumulation to a token batch size, clipping, precision
(fp32 or bf16 autocast), optional torch.compile, periodic evaluation, metrics JSONL, a progress bar,
atomic checkpoints with exact resume, a NaN guard, and DDP under torchrun.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn as nn
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
)
from tqdm.auto import tqdm

from fromzero import checkpoint, lora
from fromzero.dist import DistInfo, all_reduce_mean, all_reduce_sum, barrier
from fromzero.model import Transformer

DONE = "DONE"
_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(value: float | str) -> float:
    """Seconds from 90, "90s", "2m" or "1.5h"."""
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip().lower()
        unit = _UNITS.get(text[-1:], None)
        try:
            seconds = float(text[:-1] if unit else text) * (unit or 1)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a duration; write seconds or a number with s, m or h (90s, 2m, 1.5h)"
            ) from None
    if not seconds > 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    return seconds


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # subclasses that change a default keep the constraint by repeating the type: `steps: PositiveInt = 200`
    steps: PositiveInt = Field(1000, description="optimizer steps")
    batch_tokens: int = Field(
        16384, ge=1, description="tokens per optimizer step over all ranks (accumulation fills it)"
    )
    micro_batch_size: int = Field(16, ge=1, description="sequences per forward pass on one rank")
    seq_len: int = Field(256, ge=2, description="tokens per training sequence")
    lr: PositiveFloat = Field(3e-3, description="peak learning rate")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final learning rate as a fraction of lr")
    warmup_steps: NonNegativeInt = Field(50, description="linear warmup steps")
    schedule: Literal["cosine", "wsd", "constant"] = Field("cosine", description="decay after warmup")
    decay_fraction: float = Field(0.2, ge=0, le=1, description="wsd: fraction of steps spent decaying at the end")
    weight_decay: NonNegativeFloat = Field(0.1, description="AdamW weight decay on matrices (not norms)")
    dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="residual and embedding dropout while training (against overfitting a small corpus)",
    )
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0, description="max global gradient norm; 0 disables clipping")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="bf16 autocast (weights stay fp32) or fp32; auto: bf16 where the hardware has it (CUDA with "
        "bf16, CPUs with AVX512-BF16 or AMX), else fp32 (emulated bf16 matmuls ran ~100x slower on an AVX2 CPU)",
    )
    compile: bool = Field(False, description="torch.compile the model")
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="under torchrun: ddp (a whole copy per rank, gradients all-reduced) or fsdp (FSDP2 "
        "fully_shard per decoder block: parameters, gradients and optimizer state sharded over ranks, for models that "
        "do not fit one device; checkpoints are the same full weights either way)",
    )
    report_to: Literal["none", "tensorboard", "wandb"] = Field(
        "none",
        description="also log the metrics to TensorBoard (STAGE/tensorboard/) or Weights & Biases (WANDB_PROJECT, "
        "WANDB_MODE=offline work); metrics.jsonl is written either way",
    )
    device: str = Field("auto", description="auto | cpu | cuda | mps")
    eval_every: PositiveInt = Field(200, description="evaluate every N steps (and at the end)")
    checkpoint_every: PositiveInt = Field(200, description="write a checkpoint every N steps (and at the end)")
    seed: int = Field(0, description="seed for data order and sampling")
    time_budget: float | None = Field(
        None,
        description="train for this long instead of `steps` (90s, 2m, 1.5h): the first steps (probe_steps, and "
        "probe_fraction of the budget) measure the speed, which fixes the steps (kept in the checkpoint, so resume "
        "is exact) and the schedule's decay; counted as the log's `time`, training steps only, not evaluation or "
        "checkpoints",
    )
    probe_steps: int = Field(10, ge=2, description="time_budget: the fewest steps timed before the steps are fixed")
    probe_fraction: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="time_budget: the share of the budget timed before the steps are fixed (the first few steps run "
        "faster than the rest); the learning rate holds at its peak after warmup until then, so with wsd up to "
        "1 - decay_fraction, with cosine a few percent (its value jumps to the fitted curve's)",
    )

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float | None:
        return None if value is None else parse_duration(value)

    def micro_batch(self, world_size: int) -> int:
        """Sequences per forward pass on one rank: micro_batch_size, or where that does not divide this rank's share of
        the step, the largest size below it that does (the step stays batch_tokens: accumulation makes up the rest)."""
        rows, rest = divmod(self.batch_tokens, self.seq_len * world_size)
        if rest or not rows:
            raise ValueError(self._split_error(world_size))
        return max(d for d in range(1, min(rows, self.micro_batch_size) + 1) if rows % d == 0)

    def accumulation(self, world_size: int) -> int:
        return self.batch_tokens // (self.micro_batch(world_size) * self.seq_len * world_size)

    def _split_error(self, world_size: int) -> str:
        per = self.seq_len * world_size
        return (
            f"batch_tokens={self.batch_tokens} is not a multiple of seq_len × ranks = {self.seq_len} × "
            f"{world_size} = {per}: no micro-batch size splits it evenly; "
            f"set batch_tokens to a multiple of {per}"
        )

    def lr_at(self, step: int) -> float:
        """Learning rate for optimizer step `step` (1-based)."""
        if step <= self.warmup_steps:
            return self.lr * step / max(1, self.warmup_steps)
        floor = self.lr * self.min_lr_ratio
        if self.schedule == "constant":
            return self.lr
        if self.schedule == "wsd":
            decay_start = self.steps - int(self.decay_fraction * self.steps)
            if step <= decay_start:
                return self.lr
            return self.lr - (self.lr - floor) * (step - decay_start) / max(1, self.steps - decay_start)
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return floor + (self.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class BatchSource(Protocol):
    """Yields this rank's micro-batches: tuples led by the input ids (which the loop counts as tokens), and its
    state is the data position saved in checkpoints.

    How a step's micro-batches weigh: a micro-batch may carry a `weight` attribute, its share of the optimizer
    step's objective over all accumulation steps and ranks (a step's shares sum to 1). Without one every micro-batch
    has the same share, 1 / (accumulation steps × ranks). The step's objective, what is logged as its loss, is the
    sum of each micro-batch's loss times its share; its metrics are weighted the same way.

    A source whose step costs more than the model's passes over the batch's input ids (RL: sampling answers, a
    frozen reference's log-probs, a reward model's scores, PPO's ptx rows) has `extra_flops()`: the FLOPs this rank
    spent so since the last call, which the step's MFU counts beside the training FLOPs of those passes.
    """

    def next_batch(self) -> Any: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


LossFn = Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, float]]]
EvalFn = Callable[[Transformer], dict[str, float]]


def next_token_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict[str, float]]:
    """The mean cross-entropy of (inputs, targets) micro-batches over the targets that count (not -100): packed
    pretraining text and SFT's conversations alike."""
    x, y = batch[0], batch[1]  # (inputs, targets) first; SFT's batches carry a weight after them
    device = next(model.parameters()).device
    return model(x.to(device), y.to(device)), {}


class TrainingDiverged(RuntimeError):
    pass


@dataclass
class Stage:
    """What a stage hands the loop besides its config."""

    name: str
    out_dir: Path
    tokenizer_file: Path
    dist: DistInfo


_PEAK: dict[tuple[str, torch.dtype], float] = {}


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, n: int = 1024, seconds: float = 0.3) -> float:
    """Measured dense-matmul FLOP/s of this device: the denominator of MFU."""
    key = (str(device), dtype)
    if key not in _PEAK:
        # a private generator: measuring must not move the global RNG that sampling and data order depend on
        generator = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(n, n, device=device, generator=generator).to(dtype)
        b = torch.randn(n, n, device=device, generator=generator).to(dtype)
        for _ in range(3):
            a @ b
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        sync()
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(4):
                a @ b
            reps += 4
            sync()
        _PEAK[key] = 2 * n**3 * reps / (time.perf_counter() - start)
    return _PEAK[key]


def native_bf16(device: torch.device) -> bool:
    """Whether the device multiplies bf16 in hardware (elsewhere torch emulates it, far slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        caps = torch.cpu.get_capabilities()
        return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    return True  # mps and others: as asked


def resolved_precision(precision: str, device: torch.device) -> str:
    """fp32 or bf16: what `precision` (auto, fp32, bf16) means on this device; a bf16 asked for on a device without
    it is kept, with a one-line warning (once), since the user chose it."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16" and not native_bf16(device) and device.type not in _WARNED:
        _WARNED.add(device.type)
        tqdm.write(
            f"warning: precision=bf16 on a {device.type} without native bf16 runs far slower than fp32: set "
            f"precision=auto or fp32"
        )
    return precision


_WARNED: set[str] = set()


def autocast(cfg: TrainConfig, device: torch.device, precision: str | None = None):
    """bf16 autocast when `precision` (default: the config's) resolves to bf16 on this device, else nothing."""
    if resolved_precision(precision or cfg.precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel for all parameters, on CPU too (3-4x faster than the per-tensor loop torch picks there)
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params) or None
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


class MetricsLog:
    """metrics.jsonl of a stage, and with `report_to` the same scalars in TensorBoard or W&B; on resume, lines past
    the checkpoint's step are dropped (TensorBoard: events past it are purged). Only rank 0 writes (`enabled`)."""

    def __init__(
        self,
        path: Path,
        enabled: bool,
        resume_step: int,
        report_to: str = "none",
        name: str = "",
        config: dict[str, Any] | None = None,
    ):
        self.path, self.enabled = path, enabled
        self.tensorboard = self.wandb = None
        if enabled and path.exists():
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= resume_step]
            checkpoint.write_text_atomic(path, "".join(line + "\n" for line in kept))
        if enabled and report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(
                str(path.parent / "tensorboard"), purge_step=resume_step + 1 if resume_step else None
            )
        elif enabled and report_to == "wandb":
            import wandb

            # a run per (re)start of the stage, as HF's Trainer makes; WANDB_MODE=offline keeps it on disk
            self.wandb = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "fromzero"), name=name, dir=str(path.parent), config=config
            )

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        scalars = {
            k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if self.tensorboard is not None:
            for key, value in scalars.items():
                self.tensorboard.add_scalar(key, value, record["step"])
            self.tensorboard.flush()  # a crashed run keeps its curves up to the last step
        if self.wandb is not None:
            self.wandb.log(scalars, step=record["step"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(stage_dir: Path) -> list[dict[str, Any]]:
    path = Path(stage_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def is_done(stage_dir: Path) -> bool:
    return (Path(stage_dir) / DONE).exists()


def _budget_steps(cfg: TrainConfig, step: int, elapsed: float, probe: list[float], stage: Stage, info: DistInfo) -> int:
    """The number of steps that fits cfg.time_budget at the speed the probe measured (the same on every rank)."""
    # the mean of the probe's later half, the speed nearest the steps still to run (the budget is their sum); the
    # first step pays for allocations and cold caches
    recent = probe[1:][(len(probe) - 1) // 2 :]
    mean = sum(recent) / len(recent)
    per_step = all_reduce_sum(torch.tensor(mean, device=info.device)).item() / info.world_size
    steps = max(step, step + int((cfg.time_budget - elapsed) / per_step))
    if info.is_main:
        tqdm.write(f"[{stage.name}] time_budget {cfg.time_budget:g}s at {per_step * 1e3:.0f} ms a step: {steps} steps")
    return steps


def _load_weights(model: nn.Module, ckpt: Path, state: dict[str, Any]) -> None:
    """A LoRA model resumes from its trainable tensors in the trainer state: the checkpoint's merged weights
    cannot be split back into the base and the update bit for bit."""
    if lora.is_lora(model) != ("lora" in state):
        raise ValueError(
            f"{ckpt} was trained {'with' if 'lora' in state else 'without'} LoRA; resume it with the same "
            "lora settings or start a new --out"
        )
    if "lora" in state:
        lora.load_trainable_state(model, state["lora"])
    else:
        checkpoint.load_model_weights(model, ckpt)


def _save_checkpoint(
    out: Path, step: int, model: nn.Module, stage: Stage, meta: dict[str, Any], state: dict[str, Any]
) -> None:
    """A LoRA model is saved merged (what every later reader expects) with its adapter in PEFT's format beside it,
    and its trainable tensors in the trainer state."""
    if not lora.is_lora(model):
        checkpoint.save(out, step, model, tokenizer_file=stage.tokenizer_file, meta=meta, trainer_state=state)
        return
    checkpoint.save(
        out,
        step,
        lora.merged_copy(model),
        tokenizer_file=stage.tokenizer_file,
        meta=meta,
        trainer_state={**state, "lora": lora.trainable_state(model)},
    )
    lora.save_adapter(model, out / lora.ADAPTER_DIR)


def _fully_shard(model: nn.Module) -> None:
    """FSDP2: each decoder block its own unit (gathered for its forward and backward only), the rest at the root."""
    from torch.distributed.fsdp import fully_shard

    from fromzero.model import Block

    for block in [m for m in model.modules() if isinstance(m, Block)]:
        fully_shard(block)
    fully_shard(model)


def _full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """The full (unsharded) model and optimizer state of an FSDP model on rank 0's CPU; a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options), get_optimizer_state_dict(model, optimizer, options=options)


def _load_optimizer(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], fsdp: bool, out: Path
) -> None:
    """The optimizer's moments from a trainer state: by parameter index (DDP, one process) or by name (FSDP)."""
    written = state.get("optimizer_format", "param_id")
    if written != ("fqn" if fsdp else "param_id"):
        raise ValueError(
            f"{out} was trained with parallel={'fsdp' if written == 'fqn' else 'ddp'}; resume it the "
            "same way (the weights load either way: start a new --out from it with --init)"
        )
    if not fsdp:
        optimizer.load_state_dict(state["optimizer"])
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))


@contextlib.contextmanager
def _unsharded(model: nn.Module, fsdp: bool):
    """Under FSDP, the full parameters gathered once for an evaluation: each rank then runs its own share of the
    batches, as many as it has, without the per-forward collectives that would need every rank in step."""
    if not fsdp:
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)


def _weighted(x: Any, share: float | None, accum: int, world_size: int) -> Any:
    """A micro-batch's loss or metric times its share of the step (BatchSource), times the ranks: DDP averages
    gradients over ranks, and the log averages the step's sums over ranks."""
    return x / accum if share is None else x * (share * world_size)


def run(
    cfg: TrainConfig,
    stage: Stage,
    model: Transformer,
    batches: BatchSource,
    loss_fn: LossFn,
    *,
    evaluate: EvalFn | None = None,
    resume: bool = False,
) -> Path:
    """Train `model` for cfg.steps optimizer steps; returns the final checkpoint directory."""
    out, info = stage.out_dir, stage.dist
    if resume and is_done(out):
        return checkpoint.resolve(out)
    accum, micro_batch = cfg.accumulation(info.world_size), cfg.micro_batch(info.world_size)
    device = info.device
    fsdp = cfg.parallel == "fsdp" and info.world_size > 1
    if fsdp and lora.is_lora(model):
        raise ValueError(f"{stage.name}.parallel=fsdp does not shard LoRA adapters; use parallel=ddp with lora")
    model.to(device)
    for m in model.modules():  # a stage may train more than one Transformer (PPO's policy and value model)
        if isinstance(m, Transformer):
            m.dropout = cfg.dropout
    start_step, elapsed, resumed_from, state = 0, 0.0, None, None
    steps, budget_steps = cfg.steps, None
    if checkpoint.exists(out):
        if not resume:
            raise FileExistsError(
                f"{out} already holds a checkpoint; pass --resume to continue it or pick another --out"
            )
        ckpt = checkpoint.resolve(out)
        state = torch.load(ckpt / "trainer_state.pt", map_location=device, weights_only=False)
        _load_weights(model, ckpt, state)
        batches.load_state_dict(state["data"])
        _set_rng_state(state["rng"])
        start_step, elapsed, resumed_from = state["step"], state["elapsed"], ckpt
        budget_steps = state.get("budget_steps")  # a run under time_budget goes on with the steps it fixed
        steps = budget_steps or steps
    else:
        torch.manual_seed(cfg.seed + info.rank)
    barrier()

    # rank 0 keeps a full copy on the host under FSDP: what checkpoints are written from, as DDP's are
    host = copy.deepcopy(model).cpu() if fsdp and info.is_main else None
    train_model: nn.Module = model
    if fsdp:
        _fully_shard(model)
    if cfg.compile:
        train_model = torch.compile(model)
    if info.world_size > 1 and not fsdp:
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = make_optimizer(cfg, model)  # after sharding: FSDP's optimizer holds this rank's shards
    if state is not None:
        _load_optimizer(model, optimizer, state, fsdp, out)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(out / "metrics.jsonl", info.is_main, start_step, cfg.report_to, stage.name, cfg.model_dump())
    if info.is_main and lora.is_lora(model):
        tqdm.write(f"[{stage.name}] {lora.describe(model)}")
    if info.is_main and micro_batch != cfg.micro_batch_size:
        tqdm.write(
            f"[{stage.name}] micro-batches of {micro_batch} (micro_batch_size={cfg.micro_batch_size} does not "
            f"divide a rank's share of the step) × {accum} accumulation steps × "
            f"{info.world_size} ranks"
        )
    # a stage whose step runs more than the one model (PPO's policy and value model) says so
    flops_fn = getattr(model, "flops_per_token", None) or model.cfg.flops_per_token
    flops_per_token = flops_fn(cfg.seq_len)
    bf16 = resolved_precision(cfg.precision, device) == "bf16"
    peak = matmul_peak_flops(device, torch.bfloat16 if bf16 else torch.float32) * info.world_size
    if info.is_main and resumed_from:
        tqdm.write(f"[{stage.name}] resuming from {resumed_from} (step {start_step}/{steps})")
    # under a time budget the learning rate warms up and holds at its peak until the probe fixes the steps
    fixed = cfg.time_budget is None or budget_steps is not None
    schedule = cfg.model_copy(update={"steps": steps} if fixed else {"schedule": "constant"})
    probe: list[float] = []

    def save(step: int, metrics: dict[str, Any]) -> None:
        saved, optim = model, None
        if fsdp:  # collectives: every rank takes part, rank 0 receives the full tensors
            full, optim = _full_state(model, optimizer)
            if host is not None:
                host.load_state_dict(full)
                saved = host
        if info.is_main:
            state = {
                "step": step,
                "elapsed": elapsed,
                "optimizer": optim if fsdp else optimizer.state_dict(),
                "optimizer_format": "fqn" if fsdp else "param_id",
                "data": batches.state_dict(),
                "rng": _rng_state(),
                "budget_steps": steps if cfg.time_budget and fixed else None,
            }
            _save_checkpoint(out, step, saved, stage, {"stage": stage.name, **metrics}, state)
        barrier()

    def run_eval(step: int) -> dict[str, float]:
        if evaluate is None:
            return {}
        model.eval()
        with _unsharded(model, fsdp), torch.no_grad(), autocast(cfg, device):
            result = evaluate(model)
        model.train()
        log.write({"step": step, **result})
        return result

    bar = tqdm(total=steps, initial=start_step, desc=stage.name, disable=not info.is_main, dynamic_ncols=True)
    model.train()
    last: dict[str, Any] = {}
    step = start_step
    while step < steps or not fixed:
        step += 1
        t0 = time.perf_counter()
        lr = schedule.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        extra: dict[str, float] = {}
        tokens = 0
        for micro in range(accum):
            batch = batches.next_batch()
            tokens += batch[0].numel()  # batches are tuples led by the input ids
            sync = micro == accum - 1 or info.world_size == 1
            if fsdp:
                model.set_requires_gradient_sync(sync)  # type: ignore[operator]
            with contextlib.nullcontext() if sync or fsdp else train_model.no_sync(), autocast(cfg, device):
                loss, metrics = loss_fn(train_model, batch)
            share = getattr(batch, "weight", None)
            weighted = _weighted(loss, share, accum, info.world_size)
            weighted.backward()
            loss_sum += weighted.detach()
            for k, v in metrics.items():
                extra[k] = extra.get(k, 0.0) + _weighted(v, share, accum, info.world_size)
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
            grad_norm = grad_norm.full_tensor()
        # one collective for the step's loss, tokens and every metric: what is logged is the mean over ranks
        spent = batches.extra_flops() if hasattr(batches, "extra_flops") else 0.0
        totals = {"\0loss": loss_sum.item(), "\0tokens": float(tokens), "\0flops": spent}
        reduced = all_reduce_mean({**extra, **totals}, device)
        step_loss, tokens = reduced.pop("\0loss"), reduced.pop("\0tokens") * info.world_size
        flops = flops_per_token * tokens + reduced.pop("\0flops") * info.world_size
        extra = reduced
        if not (math.isfinite(step_loss) and math.isfinite(grad_norm.item())):
            bar.close()
            good = checkpoint.resolve(out) if checkpoint.exists(out) else None
            raise TrainingDiverged(
                f"[{stage.name}] loss={step_loss} grad_norm={grad_norm.item()} at step {step}: training stopped; "
                + (f"last good checkpoint kept at {good}" if good else "no checkpoint was written yet")
            )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        elapsed += dt
        last = {
            "step": step,
            "loss": step_loss,
            "lr": lr,
            "grad_norm": grad_norm.item(),
            "tokens_per_s": tokens / dt,
            "mfu": flops / dt / peak,
            "time": elapsed,
            **extra,
        }
        log.write(last)
        bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{last['tokens_per_s']:.0f}", mfu=f"{last['mfu']:.0%}")
        bar.update(1)
        if not fixed:
            probe.append(dt)
            probing = len(probe) < cfg.probe_steps or elapsed < cfg.probe_fraction * cfg.time_budget
            # the probe ends on every rank at once, when no rank's clock asks for more
            if all_reduce_sum(torch.tensor(float(probing), device=device)).item() == 0:
                steps = _budget_steps(cfg, step, elapsed, probe, stage, info)
                schedule, fixed, bar.total = cfg.model_copy(update={"steps": steps}), True, steps
                bar.refresh()
        end = fixed and step == steps
        if step % cfg.eval_every == 0 or end:
            last.update(run_eval(step))
        if step % cfg.checkpoint_every == 0 or end:
            save(step, {k: v for k, v in last.items() if k != "step"})
    bar.close()
    log.close()
    if start_step >= steps and info.is_main:
        tqdm.write(f"[{stage.name}] already at step {steps}")
    if info.is_main:
        checkpoint.write_text_atomic(out / DONE, json.dumps({"seconds": elapsed, **last}) + "\n")
    barrier()
    return checkpoint.resolve(out)
