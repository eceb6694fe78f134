"""fp32 vs bf16 autocast on this machine: the same pretraining run in both, loss curves and speed.

    python bench/precision_curves.py --steps 150

Builds the tiny preset's data, pretrains from the same random init once per precision, and writes
bench/results/precision-*.json and a plot of the two loss curves. This is how the default precision
(`pretrain.precision`) was picked.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from fromzero import checkpoint  # noqa: E402
from fromzero.config import load_config  # noqa: E402
from fromzero.data.build import build  # noqa: E402
from fromzero.tokenizer import Tokenizer  # noqa: E402
from fromzero.train import pretrain  # noqa: E402
from fromzero.train.loop import native_bf16, read_metrics  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--out", type=Path, default=Path("bench/results/precision"))
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    shutil.rmtree(args.out, ignore_errors=True)
    cfg = load_config(
        args.preset,
        [
            f"pretrain.steps={args.steps}",
            f"pretrain.eval_every={args.steps}",
            f"pretrain.checkpoint_every={args.steps}",
        ],
    )
    data = args.out / "data"
    build(cfg, data, progress=False)
    model = pretrain.init_model(cfg.model, Tokenizer.load(data), cfg.seed)
    checkpoint.save(args.out / "init", 0, model, tokenizer_file=data / "tokenizer.json", meta={})
    results = {}
    for precision in ("fp32", "bf16"):
        run_cfg = cfg.pretrain.model_copy(update={"precision": precision})
        start = time.perf_counter()
        pretrain.train(run_cfg, data, args.out / precision, init=args.out / "init", val_batches=cfg.eval.val_batches)
        metrics = read_metrics(args.out / precision)
        train = [r for r in metrics if "loss" in r]
        steady = train[5:] or train[1:]  # the first steps warm up
        results[precision] = {
            "seconds": time.perf_counter() - start,
            "tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in steady),
            "mfu_median": statistics.median(r["mfu"] for r in steady),
            "final_loss_mean_last10": statistics.mean(r["loss"] for r in train[-10:]),
            "val_loss": [r for r in metrics if "val_loss" in r][-1]["val_loss"],
            "val_bpb": [r for r in metrics if "val_bpb" in r][-1]["val_bpb"],
            "losses": [r["loss"] for r in train],
        }
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out.parent / f"precision-{stamp}.json").write_text(
        json.dumps(
            {
                "preset": args.preset,
                "steps": args.steps,
                "torch": torch.__version__,
                "cpu": torch.cpu.get_capabilities().get("cpu_name"),
                "native_bf16": native_bf16(torch.device("cpu")),
                **results,
            },
            indent=2,
        )
    )
    fig, ax = plt.subplots(figsize=(6, 4))
    for precision, r in results.items():
        ax.plot(
            range(1, len(r["losses"]) + 1), r["losses"], label=f"{precision} ({r['tokens_per_s_median']:.0f} tok/s)"
        )
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out.parent / f"precision-{stamp}.png", dpi=110)
    print(
        f"{'precision':>9} {'tok/s':>8} {'MFU':>6} {'loss(last10)':>13} {'val_loss':>9} {'val_bpb':>8} {'seconds':>8}"
    )
    for precision, r in results.items():
        print(
            f"{precision:>9} {r['tokens_per_s_median']:>8.0f} {r['mfu_median']:>6.1%} {r['final_loss_mean_last10']:>13.4f} "
            f"{r['val_loss']:>9.4f} {r['val_bpb']:>8.4f} {r['seconds']:>8.1f}"
        )


if __name__ == "__main__":
    main()
