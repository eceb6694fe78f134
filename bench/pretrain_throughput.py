"""Training throughput and MFU: our `Transformer` against HF `LlamaForCausalLM` of identical shape.

One full training step is timed (forward, loss, backward, AdamW step, zero_grad) on both models with the
same weights, batch, threads and optimizer settings; timed windows alternate ours, HF, ours, HF, ... and
the median window is reported. MFU divides the model FLOPs (`ModelConfig.flops_per_token`: 6N + 12·L·d·T,
lm_head counted, the same count for both models) by the matmul peak this script measures for the dtype
the matmuls run in (fp32, or bf16 under autocast).

    .venv/bin/python bench/pretrain_throughput.py                        # all shapes, fp32 and bf16
    .venv/bin/python bench/pretrain_throughput.py --shape tiny --precision bf16 --windows 7
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    count_params,
    fmt_k,
    hf_llama,
    interleaved,
    load_notes,
    machine_info,
    matmul_peak,
    median,
    print_table,
    warn_if_busy,
    write_json,
)

from fromzero.model import ModelConfig, Transformer  # noqa: E402
from fromzero.train.loop import TrainConfig, make_optimizer  # noqa: E402

# name -> (model shape, micro-batch, sequence length)
SHAPES = {
    # the shape of the HF-reference figure (hidden 128, 4 layers, 4 heads, batch 12×64), with our vocab ...
    "ref": (dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=4, vocab_size=2048), 12, 64),
    # ... and with HF's default vocab of 32000 (the lm_head then dominates the FLOPs)
    "ref32k": (dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=4, vocab_size=32000), 12, 64),
    # configs/tiny.yaml: the laptop preset
    "tiny": (dict(dim=256, n_layers=6, n_heads=4, n_kv_heads=4, vocab_size=2048), 16, 256),
}


def make_step(model, optimizer, x, y, precision: str, hf: bool):
    amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext

    def step() -> None:
        with amp():
            if hf:
                # HF shifts the labels itself; use_cache=False: no KV cache object in training
                loss = model(input_ids=x, labels=x, use_cache=False).loss
            else:
                loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def bench_case(shape: str, precision: str, args, peaks: dict) -> dict:
    shape_kw, batch, seq = SHAPES[shape]
    cfg = ModelConfig(max_seq_len=seq, **shape_kw)
    torch.manual_seed(0)
    ours = Transformer(cfg).train()
    hf = hf_llama(cfg).train()
    hf.load_state_dict(ours.state_dict())  # identical names: both models start from the same weights
    assert count_params(ours) == count_params(hf) == cfg.num_params()

    tcfg = TrainConfig(precision=precision, micro_batch_size=batch, seq_len=seq)
    data = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=torch.Generator().manual_seed(0))
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    steps = {
        "ours": make_step(ours, make_optimizer(tcfg, ours), x, y, precision, hf=False),
        "hf": make_step(hf, make_optimizer(tcfg, hf), x, y, precision, hf=True),
    }

    # one untimed step each (allocator, oneDNN primitive caches), then size the windows
    slowest = 0.0
    for step in steps.values():
        step()
        t = time.perf_counter()
        step()
        slowest = max(slowest, time.perf_counter() - t)
    n_steps = args.steps or max(1, round(args.window_seconds / slowest))

    def window(step):
        def run() -> float:
            t = time.perf_counter()
            for _ in range(n_steps):
                step()
            return n_steps * batch * seq / (time.perf_counter() - t)

        return run

    tok_s, load = interleaved({name: window(s) for name, s in steps.items()}, windows=args.windows, warmup=0)
    flops_per_token = cfg.flops_per_token(seq)
    peak = peaks[precision]
    out = {
        "shape": shape,
        "precision": precision,
        "dim": cfg.dim,
        "n_layers": cfg.n_layers,
        "n_heads": cfg.n_heads,
        "n_kv_heads": cfg.n_kv_heads,
        "ffn_dim": cfg.ffn_dim,
        "vocab_size": cfg.vocab_size,
        "batch": batch,
        "seq_len": seq,
        "params": cfg.num_params(),
        "flops_per_token": flops_per_token,
        "steps_per_window": n_steps,
        "windows": args.windows,
        "other_cpus": load["other_cpus"],
        "rounds_dropped_for_load": load["dropped"],
    }
    for name, xs in tok_s.items():
        out[name] = {"tokens_per_s": median(xs), "mfu": median(xs) * flops_per_token / peak, "windows_tokens_per_s": xs}
    out["speedup"] = out["ours"]["tokens_per_s"] / out["hf"]["tokens_per_s"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", nargs="+", choices=sorted(SHAPES), default=["ref", "ref32k", "tiny"])
    p.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--windows", type=int, default=5, help="timed windows per model (median reported)")
    p.add_argument("--window-seconds", type=float, default=1.5, help="target length of one timed window")
    p.add_argument("--steps", type=int, default=0, help="training steps per window (0: from --window-seconds)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    p.add_argument("--no-json", action="store_true", help="do not write bench/results/pretrain-*.json")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    info = machine_info(args.threads)
    print(
        f"{info['cpu']} · {info['logical_cpus']} CPUs · {args.threads} threads · torch {info['torch']} · "
        f"transformers {info['transformers']}"
    )
    warn_if_busy(info)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peak_info = {prec: matmul_peak(dtypes[prec]) for prec in args.precision}
    peaks = {prec: v["flops"] for prec, v in peak_info.items()}
    for prec, v in peak_info.items():
        print(f"matmul peak {prec}: {v['flops'] / 1e9:.0f} GFLOP/s (best over sizes {v['per_size_gflops']})")

    cases = []
    for shape in args.shape:
        for prec in args.precision:
            t = time.perf_counter()
            case = bench_case(shape, prec, args, peaks)
            cases.append(case)
            print(
                f"  {shape:7s} {prec}: ours {fmt_k(case['ours']['tokens_per_s'])} tok/s, "
                f"HF {fmt_k(case['hf']['tokens_per_s'])} tok/s ({time.perf_counter() - t:.0f}s)" + load_notes(case),
                flush=True,
            )

    print()
    headers = ["shape", "batch", "vocab", "params", "prec", "ours tok/s", "HF tok/s", "ours/HF", "ours MFU", "HF MFU"]
    rows = [
        [
            f"d{c['dim']} L{c['n_layers']} H{c['n_heads']}/{c['n_kv_heads']}",
            f"{c['batch']}×{c['seq_len']}",
            c["vocab_size"],
            f"{c['params'] / 1e6:.2f}M",
            c["precision"],
            fmt_k(c["ours"]["tokens_per_s"]),
            fmt_k(c["hf"]["tokens_per_s"]),
            f"{c['speedup']:.2f}×",
            f"{c['ours']['mfu']:.0%}",
            f"{c['hf']['mfu']:.0%}",
        ]
        for c in cases
    ]
    table = print_table(headers, rows)
    print(
        f"\nmedian of {args.windows} alternating windows; MFU against the measured matmul peak "
        f"(fp32 {peaks.get('fp32', 0) / 1e9:.0f}, bf16 {peaks.get('bf16', 0) / 1e9:.0f} GFLOP/s)"
    )
    if not args.no_json:
        path = write_json(
            "pretrain", {"machine": info, "args": vars(args), "matmul_peak": peak_info, "cases": cases, "table": table}
        )
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
