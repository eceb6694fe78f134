"""Peak memory and step time of LoRA against full fine-tuning, at one shape (the `small` preset's model).

Each contender trains in a process of its own (a freed allocation is not always handed back to the OS, so
one process cannot measure two peaks): it builds the model, runs the shared loop's step (forward with the
loss, backward, gradient clipping, `make_optimizer`'s AdamW, zero_grad) and reports the median step time, the
peak bytes its tensors held at once (weights and AdamW moments, plus the peak of one step under torch's memory
profiler: activations, gradients, autocast's bf16 weight copies), and its peak resident memory above what the
process held before the model existed (VmHWM - VmRSS: what the allocator keeps after a free counts too). The parent runs the contenders alternately (full, LoRA, full, LoRA, ...) and reports medians.

    .venv/bin/python bench/lora_memory.py                       # d512 L8, batch 8×256, bf16, LoRA r=8 (~2 min)
    .venv/bin/python bench/lora_memory.py --rounds 3 --precision fp32 --rank 16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import OtherLoad, machine_info, median, print_table, warn_if_busy, write_json  # noqa: E402

from fromzero import lora  # noqa: E402
from fromzero.model import ModelConfig, Transformer  # noqa: E402
from fromzero.train.loop import TrainConfig, autocast, make_optimizer  # noqa: E402

# configs/small.yaml's model (its vocabulary too), at a sequence length and batch a CPU steps through in seconds
SHAPE = dict(vocab_size=8192, dim=512, n_layers=8, n_heads=8, n_kv_heads=4, max_seq_len=256)


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(args) -> dict:
    """One contender in this process: its peak memory above the process's baseline and its step times."""
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(precision=args.precision, micro_batch_size=args.batch, seq_len=args.seq_len, lr=1e-4)
    data = torch.randint(
        0, SHAPE["vocab_size"], (args.batch, args.seq_len + 1), generator=torch.Generator().manual_seed(0)
    )
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    baseline = status_kib("VmRSS")
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**SHAPE))
    if args.mode == "lora":
        lora.inject(model, lora.LoRAConfig(r=args.rank, alpha=2 * args.rank), base="random")
    model.train()
    optimizer = make_optimizer(cfg, model)
    device = torch.device("cpu")

    def step() -> float:
        with autocast(cfg, device):
            loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    rss_peak = (status_kib("VmHWM") - baseline) / 1024
    params = list({id(p): p for p in model.parameters()}.values())  # a tied embedding once
    trainable = [p for p in params if p.requires_grad]
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    moments = nbytes(t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim())
    # one more step under the profiler: the most bytes its tensors held at once, above the weights and AdamW's
    # moments that live across steps (RSS also counts what the allocator keeps after a free)
    return {
        "mode": args.mode,
        "tensor_peak_mib": (nbytes(params) + moments + step_peak_bytes(step)) / 2**20,
        "rss_peak_mib": rss_peak,
        "step_s": median(times),
        "state_mib": (nbytes(params) + nbytes(trainable) + moments) / 2**20,
        "params": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in trainable),
        "loss": loss,
    }


def step_peak_bytes(step) -> int:
    """Peak bytes of the tensors created during `step()` (torch's memory profiler timeline, a private API)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    created: dict = {}
    live = peak = 0
    for _, action, key, size in prof._memory_profile().timeline:
        if action == Action.CREATE:
            created[key] = size
            live += size
        elif action == Action.DESTROY and key in created:
            live -= created.pop(key)
        peak = max(peak, live)
    return peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rank", type=int, default=8, help="LoRA r (alpha = 2r, every projection targeted)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    p.add_argument("--rounds", type=int, default=2, help="processes per contender, run alternately (medians reported)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per process")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (AdamW allocates its state in the first)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    p.add_argument("--no-json", action="store_true", help="do not write bench/results/lora-memory-*.json")
    p.add_argument("--mode", choices=["full", "lora"], help=argparse.SUPPRESS)  # set in the child processes
    args = p.parse_args()
    if args.mode:
        print(json.dumps(child(args)))
        return

    info = machine_info(args.threads)
    warn_if_busy(info)
    runs: dict[str, list[dict]] = {"full": [], "lora": []}
    worst = 0.0
    for _ in range(args.rounds):
        for mode in runs:
            with OtherLoad() as load:
                out = subprocess.run(
                    [sys.executable, __file__, *sys.argv[1:], "--mode", mode],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
            runs[mode].append(json.loads(out.splitlines()[-1]))
            worst = max(worst, load.cpus)
            print(f"{mode}: {runs[mode][-1]}", file=sys.stderr)
    summary = {
        mode: {
            "tensor_peak_mib": median([r["tensor_peak_mib"] for r in rs]),
            "rss_peak_mib": median([r["rss_peak_mib"] for r in rs]),
            "step_s": median([r["step_s"] for r in rs]),
            "state_mib": rs[0]["state_mib"],
            "params": rs[0]["params"],
            "trainable": rs[0]["trainable"],
        }
        for mode, rs in runs.items()
    }
    full, low = summary["full"], summary["lora"]
    shape = (
        f"d{SHAPE['dim']} L{SHAPE['n_layers']} H{SHAPE['n_heads']}/{SHAPE['n_kv_heads']}, vocab "
        f"{SHAPE['vocab_size']}, {full['params'] / 1e6:.1f}M params, batch {args.batch}×{args.seq_len}, {args.precision}"
    )
    print(shape)
    rows = []
    for name, s in (("full fine-tuning", full), (f"LoRA r={args.rank}", low)):
        rows.append(
            [
                name,
                f"{s['trainable']:,}",
                f"{s['state_mib']:.0f}",
                f"{s['tensor_peak_mib']:.0f}",
                f"{s['rss_peak_mib']:.0f}",
                f"{s['step_s']:.3f}",
            ]
        )
    rows.append(
        ["LoRA / full"]
        + [
            f"{low[k] / full[k]:.{4 if k == 'trainable' else 2}f}"
            for k in ("trainable", "state_mib", "tensor_peak_mib", "rss_peak_mib", "step_s")
        ]
    )
    print_table(
        ["", "trainable params", "weights + grads + AdamW MiB", "peak tensor MiB", "peak RSS MiB", "step s"], rows
    )
    print(f"other processes used up to {worst:.2f} CPUs during a run")
    if not args.no_json:
        path = write_json(
            "lora-memory",
            {
                "machine": info,
                "args": vars(args),
                "shape": SHAPE,
                "runs": runs,
                "summary": summary,
                "other_cpus": worst,
            },
        )
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
