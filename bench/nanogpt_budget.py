"""Pretraining at equal wall time: fromzero against nanoGPT's CPU character-level config, in bits per byte.

One plain-text file is split as nanoGPT's `data/shakespeare_char/prepare.py` splits it (the first 90 % of its
characters train, the last 10 % validate). nanoGPT gets `train.bin`/`val.bin`/`meta.pkl` written here the way
prepare.py writes them (no download); fromzero gets the two parts as `data.sources` and `data.val_sources`.
Then, for each budget, the two train in turn (fromzero, nanoGPT, fromzero, nanoGPT, ...) in their own processes:

- fromzero: `fromzero pretrain --preset text --set pretrain.time_budget=B` (its first probe_steps steps
  measure the speed and fix the steps and the cosine decay); intermediate evaluations and checkpoints are
  switched off, and the final evaluation covers the whole validation split (`eval.val_batches` sized to it).
- nanoGPT: the README's CPU command (`config/train_shakespeare_char.py --device=cpu --compile=False
  --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
  --dropout=0.0`) with `max_iters = lr_decay_iters` fitted to the budget from a short probe run of the
  same command (the courtesy time_budget gives fromzero) and `eval_interval = max_iters`, so it evaluates
  only at the start and the end. Its final checkpoint is then scored here on the whole validation text.

Both count the same time: the sum of their training steps (data, forward, backward, optimizer), without
evaluation or checkpoints (fromzero's `time` column; nanoGPT's per-iteration `time`, the first and last
iterations, which hold its evaluations, replaced by the median). Both score the validation text in
non-overlapping windows of their own training context (fromzero seq_len tokens, nanoGPT block_size
characters); bits per byte is the summed loss in bits over the UTF-8 bytes the scored targets stand for.

A budget means nothing on a machine other processes share (on 2 cores a 2-thread PyTorch process then runs many
times slower), so before each run the script waits for the machine to be idle (`--wait-quiet`), measures the CPU
other processes used during the run, and runs again one during which they used more than `--max-load` CPUs
(`--retries`); the load is printed and kept in the JSON (`bench/results/nanogpt_budget-CORPUS-TIME/result.json`).

    .venv/bin/python bench/nanogpt_budget.py --nanogpt /tmp/nanogpt                  # 2 and 8 minutes
    .venv/bin/python bench/nanogpt_budget.py --nanogpt /tmp/nanogpt --budgets 2m --corpus pride

`--nanogpt` is a local copy of github.com/karpathy/nanoGPT (outside this repository; nothing of it is
committed here), e.g. `git clone https://github.com/karpathy/nanoGPT /tmp/nanogpt`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import pickle
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, busy_cpus, cpu_name, print_table  # noqa: E402

from fromzero.config import load_config  # noqa: E402
from fromzero.data.build import open_split  # noqa: E402
from fromzero.train.loop import parse_duration  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CORPORA = {
    "shakespeare": SHARED / "tinyshakespeare" / "input.txt",
    "pride": SHARED / "gutenberg" / "pg1342.txt",  # Project Gutenberg boilerplate stripped, CRLF -> LF
}
NANOGPT_ARGS = [
    "config/train_shakespeare_char.py",
    "--device=cpu",
    "--compile=False",
    "--eval_iters=20",
    "--log_interval=1",
    "--block_size=64",
    "--batch_size=12",
    "--n_layer=4",
    "--n_head=4",
    "--n_embd=128",
    "--dropout=0.0",
]
ITER = re.compile(r"^iter (\d+): loss ([\d.]+), time ([\d.]+)ms")
EVAL = re.compile(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)")


def corpus_text(name: str, path: Path) -> str:
    text = path.read_text(encoding="utf-8-sig")
    if name == "pride":
        text = text.replace("\r\n", "\n")
        start = text.index("\n", text.index("*** START OF THE PROJECT GUTENBERG EBOOK")) + 1
        text = text[start : text.index("*** END OF THE PROJECT GUTENBERG EBOOK")].strip() + "\n"
    return text


def cpu_seconds() -> tuple[float, float, float]:
    """(wall clock, busy CPU seconds of the whole machine, CPU seconds of this process and its waited children)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    t = os.times()
    return time.perf_counter(), busy, t.user + t.system + t.children_user + t.children_system


def run_logged(cmd: list[str], log: Path, cwd: Path, env: dict) -> tuple[str, dict]:
    """Run a command to completion, its output to `log`; returns the output and the CPU other processes used."""
    start = cpu_seconds()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    end = cpu_seconds()
    out = log.read_text()
    if proc.returncode:
        sys.exit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}); the end of {log}:\n{out[-3000:]}")
    wall = end[0] - start[0]
    load = {
        "wall_s": round(wall, 1),
        "cpus_ours": round((end[2] - start[2]) / wall, 2),
        "cpus_others": round(max(0.0, (end[1] - start[1]) - (end[2] - start[2])) / wall, 2),
    }
    return out, load


def wait_quiet(args) -> float:
    """Wait (at most args.wait_quiet seconds) until other processes leave the machine idle for 5 s; returns the wait."""
    start = time.perf_counter()
    while time.perf_counter() - start < args.wait_quiet and busy_cpus(5.0) > args.max_load:
        pass
    return round(time.perf_counter() - start, 1)


# ---------------------------------------------------------------- fromzero


def fromzero_data(args, text_dir: Path, work: Path, env: dict) -> tuple[Path, dict]:
    data = work / "fromzero-data"
    sets = [f"data.sources=[{text_dir / 'train.txt'}]", f"data.val_sources=[{text_dir / 'val.txt'}]", *args.set]
    if not (data / "shards" / "meta.json").exists():
        cmd = [str(REPO / ".venv/bin/fromzero"), "data", "--preset", args.preset, "--out", str(data)]
        _, load = run_logged(cmd + [a for s in sets for a in ("--set", s)], work / "fromzero-data.log", REPO, env)
        print(f"  fromzero data: {load['wall_s']:.0f} s (tokenizer training and tokenisation, not counted)")
    return data, {"sets": sets, "wall_s": load["wall_s"]}


def fromzero_run(args, budget: float, data: Path, sets: list[str], out: Path, env: dict) -> dict:
    cfg = load_config(args.preset, sets).pretrain
    val = open_split(data, "val")
    n_windows = (len(val) - 1) // cfg.seq_len
    val_batches = math.ceil(n_windows / cfg.micro_batch_size)
    run_sets = [
        *sets,
        f"pretrain.time_budget={budget:g}",
        f"eval.val_batches={val_batches}",
        "pretrain.eval_every=100000000",
        "pretrain.checkpoint_every=100000000",
    ]
    cmd = [
        str(REPO / ".venv/bin/fromzero"),
        "pretrain",
        "--preset",
        args.preset,
        "--data",
        str(data),
        "--out",
        str(out),
    ]
    _, load = run_logged(cmd + [a for s in run_sets for a in ("--set", s)], out.parent / f"{out.name}.log", REPO, env)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    steps = [r for r in rows if "loss" in r]
    final = [r for r in rows if "val_bpb" in r][-1]
    # the bytes the scored windows' targets stand for (specials stand for none), to show the whole text was scored
    from fromzero.tokenizer import Tokenizer

    token_bytes = Tokenizer.load(data).token_bytes()
    targets = np.concatenate([val.slice(i * cfg.seq_len + 1, cfg.seq_len) for i in range(n_windows)])
    train_tokens = len(open_split(data, "train"))
    return {
        "system": "fromzero",
        "steps": steps[-1]["step"],
        "train_seconds": steps[-1]["time"],
        "tokens": steps[-1]["step"] * cfg.batch_tokens,
        "batch_tokens": cfg.batch_tokens,
        "seq_len": cfg.seq_len,
        "epochs": steps[-1]["step"] * cfg.batch_tokens / train_tokens,
        "final_train_loss": statistics.mean(r["loss"] for r in steps[-10:]),
        "val_loss": final["val_loss"],
        "val_bpb": final["val_bpb"],
        "val_bytes_scored": int(token_bytes[targets].sum()),
        "val_tokens": len(val),
        "train_tokens": train_tokens,
        "load": load,
        "sets": run_sets,
    }


# ---------------------------------------------------------------- nanoGPT


def nanogpt_prepare(text: str, nanogpt: Path, name: str) -> tuple[Path, dict]:
    """train.bin, val.bin and meta.pkl exactly as data/shakespeare_char/prepare.py writes them."""
    out = nanogpt / "data" / name
    out.mkdir(parents=True, exist_ok=True)
    chars = sorted(set(text))
    stoi, itos = {ch: i for i, ch in enumerate(chars)}, dict(enumerate(chars))
    n = len(text)
    train, val = text[: int(n * 0.9)], text[int(n * 0.9) :]
    np.array([stoi[c] for c in train], dtype=np.uint16).tofile(out / "train.bin")
    np.array([stoi[c] for c in val], dtype=np.uint16).tofile(out / "val.bin")
    with open(out / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": itos, "stoi": stoi}, f)
    return out, {"vocab_size": len(chars), "train_chars": len(train), "val_chars": len(val)}


def nanogpt_cmd(args, name: str, out_dir: Path, iters: int, eval_interval: int) -> list[str]:
    return [
        sys.executable,
        "train.py",
        *NANOGPT_ARGS,
        f"--dataset={name}",
        f"--out_dir={out_dir}",
        f"--max_iters={iters}",
        f"--lr_decay_iters={iters}",
        f"--eval_interval={eval_interval}",
    ]


def parse_iters(out: str) -> list[tuple[int, float, float]]:
    return [(int(m[1]), float(m[2]), float(m[3]) / 1000) for m in map(ITER.match, out.splitlines()) if m]


def nanogpt_run(args, budget: float, name: str, text_val: str, out: Path, env: dict) -> dict:
    # the probe: the same command for probe_iters iterations; its per-iteration time fixes max_iters
    probe_out, _ = run_logged(
        nanogpt_cmd(args, name, out / "probe", args.nanogpt_probe, 10**9),
        out.parent / f"{out.name}-probe.log",
        args.nanogpt,
        env,
    )
    per_iter = statistics.median(dt for i, _, dt in parse_iters(probe_out) if i > 0)
    iters = max(1, int(budget / per_iter))
    print(f"    nanoGPT probe: {per_iter * 1e3:.1f} ms an iteration -> max_iters {iters}", flush=True)
    cmd = nanogpt_cmd(args, name, out, iters, iters)
    text, load = run_logged(cmd, out.parent / f"{out.name}.log", args.nanogpt, env)
    logged = parse_iters(text)
    dts = [dt for i, _, dt in logged if 0 < i < iters]  # iteration 0 and `iters` hold the evaluations
    train_seconds = sum(dts) + statistics.median(dts)
    own_eval = [m for m in map(EVAL.match, text.splitlines()) if m][-1]
    val_loss, val_bpb, scored = nanogpt_score(args.nanogpt, out / "ckpt.pt", args.nanogpt / "data" / name, text_val)
    return {
        "system": "nanoGPT",
        "steps": iters,
        "train_seconds": train_seconds,
        "probe_ms_per_iter": per_iter * 1e3,
        "tokens": iters * 12 * 64,
        "batch_tokens": 12 * 64,
        "seq_len": 64,
        "epochs": iters * 12 * 64 / (len(np.fromfile(args.nanogpt / "data" / name / "train.bin", dtype=np.uint16))),
        "final_train_loss": statistics.mean(loss for i, loss, _ in logged if iters - 10 <= i < iters),
        "own_estimate": {"step": int(own_eval[1]), "train_loss": float(own_eval[2]), "val_loss": float(own_eval[3])},
        "val_loss": val_loss,
        "val_bpb": val_bpb,
        "val_bytes_scored": scored,
        "load": load,
    }


@torch.no_grad()
def nanogpt_score(nanogpt: Path, ckpt_path: Path, data_dir: Path, text_val: str) -> tuple[float, float, int]:
    """nats per character over the whole val.bin in non-overlapping block_size windows, and bits per UTF-8 byte."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", nanogpt / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    model = mod.GPT(mod.GPTConfig(**ckpt["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
    model.eval()
    block = ckpt["model_args"]["block_size"]
    val = torch.from_numpy(np.fromfile(data_dir / "val.bin", dtype=np.uint16).astype(np.int64))
    with open(data_dir / "meta.pkl", "rb") as f:
        itos = pickle.load(f)["itos"]
    char_bytes = torch.tensor([len(itos[i].encode()) for i in range(len(itos))])
    assert "".join(itos[int(i)] for i in val[:200]) == text_val[:200]
    n = (len(val) - 1) // block
    x, y = val[: n * block].view(n, block), val[1 : n * block + 1].view(n, block)
    nats = 0.0
    for i in range(0, n, 64):
        logits, _ = model(x[i : i + 64], y[i : i + 64])
        nats += F.cross_entropy(logits.flatten(0, 1), y[i : i + 64].flatten(), reduction="sum").item()
    scored = int(char_bytes[y.flatten()].sum())
    return nats / y.numel(), nats / math.log(2) / scored, scored


# ---------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nanogpt", type=Path, required=True, help="a local copy of karpathy/nanoGPT (outside this repo)")
    p.add_argument("--corpus", choices=sorted(CORPORA), default="shakespeare")
    p.add_argument("--budgets", nargs="+", default=["2m", "8m"], help="wall-clock training budgets")
    p.add_argument("--repeats", type=int, default=1, help="runs of each system per budget (alternating)")
    p.add_argument("--preset", default="text", help="fromzero's preset")
    p.add_argument("--set", action="append", default=[], help="an extra fromzero override (repeatable)")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS for both")
    p.add_argument("--nanogpt-probe", type=int, default=30, help="iterations of nanoGPT's probe run")
    p.add_argument("--max-load", type=float, default=0.25, help="run again when other processes used more CPUs")
    p.add_argument("--retries", type=int, default=1, help="runs again at most this many times (the last one is kept)")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=600,
        help="before each run, wait at most this long for other processes to use under --max-load CPUs",
    )
    p.add_argument("--systems", nargs="+", choices=["fromzero", "nanoGPT"], default=["fromzero", "nanoGPT"])
    args = p.parse_args()
    args.nanogpt = args.nanogpt.resolve()
    if not (args.nanogpt / "train.py").exists():
        sys.exit(f"{args.nanogpt}: no nanoGPT train.py; git clone https://github.com/karpathy/nanoGPT {args.nanogpt}")

    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = RESULTS / f"nanogpt_budget-{args.corpus}-{stamp}"
    text_dir = work / "text"
    text_dir.mkdir(parents=True)
    text = corpus_text(args.corpus, CORPORA[args.corpus])
    cut = int(len(text) * 0.9)  # prepare.py's split, by characters
    (text_dir / "train.txt").write_text(text[:cut], encoding="utf-8")
    (text_dir / "val.txt").write_text(text[cut:], encoding="utf-8")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "PYTHONUNBUFFERED": "1",
        "TQDM_DISABLE": "1",
    }
    info = {
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "threads": args.threads,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "corpus": args.corpus,
        "file": str(CORPORA[args.corpus]),
        "chars": len(text),
        "val_chars": len(text) - cut,
        "val_bytes": len(text[cut:].encode()),
    }
    print(f"{info['cpu']} · {info['logical_cpus']} CPUs · {args.threads} threads · torch {info['torch']}")
    print(
        f"{args.corpus}: {len(text):,} characters, validation: the last {info['val_chars']:,} "
        f"({info['val_bytes']:,} bytes)",
        flush=True,
    )

    ng_name = f"fzbench_{args.corpus}"
    _, info["nanogpt_data"] = nanogpt_prepare(text, args.nanogpt, ng_name)
    data, info["fromzero_data"] = fromzero_data(args, text_dir, work, env)
    sets = info["fromzero_data"]["sets"]

    runs = []
    for budget_text in args.budgets:
        budget = parse_duration(budget_text)
        for rep in range(args.repeats):
            for system in args.systems:
                for attempt in range(args.retries + 1):
                    waited = wait_quiet(args)
                    out = work / (f"{system}-{budget_text}-{rep}" + (f"-retry{attempt}" if attempt else ""))
                    t = time.perf_counter()
                    if system == "fromzero":
                        r = fromzero_run(args, budget, data, sets, out, env)
                    else:
                        r = nanogpt_run(args, budget, ng_name, text[cut:], out, env)
                    r.update(
                        budget=budget_text,
                        budget_s=budget,
                        repeat=rep,
                        attempt=attempt,
                        waited_s=waited,
                        wall_s=time.perf_counter() - t,
                    )
                    print(
                        f"  {budget_text} {system:8s}: val {r['val_bpb']:.4f} bpb ({r['val_loss']:.4f} nats/token), "
                        f"{r['steps']} steps, {r['tokens']:,} tokens, {r['train_seconds']:.0f} s training, "
                        f"{r['wall_s']:.0f} s wall, other processes {r['load']['cpus_others']:.2f} CPUs",
                        flush=True,
                    )
                    r["kept"] = r["load"]["cpus_others"] <= args.max_load or attempt == args.retries
                    runs.append(r)
                    write(work, info, args, runs)
                    if r["kept"]:
                        break
                    print(
                        f"    other processes kept {r['load']['cpus_others']:.2f} CPUs busy: running it again",
                        flush=True,
                    )

    rows = []
    for budget_text in args.budgets:
        for rep in range(args.repeats):
            got = {r["system"]: r for r in runs if r["budget"] == budget_text and r["repeat"] == rep and r["kept"]}
            if len(got) < 2:
                continue
            fz, ng = got["fromzero"], got["nanoGPT"]
            rows.append(
                [
                    budget_text,
                    f"{fz['val_bpb']:.3f}",
                    f"{ng['val_bpb']:.3f}",
                    f"{fz['val_bpb'] / ng['val_bpb']:.3f}",
                    f"{fz['steps']} × {fz['batch_tokens']}",
                    f"{ng['steps']} × {ng['batch_tokens']}",
                    f"{fz['train_seconds']:.0f} / {ng['train_seconds']:.0f}",
                    f"{fz['load']['cpus_others']:.2f} / {ng['load']['cpus_others']:.2f}",
                ]
            )
    print()
    headers = [
        "budget",
        "fromzero bpb",
        "nanoGPT bpb",
        "ratio",
        "fromzero steps × tokens",
        "nanoGPT steps × chars",
        "train s (fz / ng)",
        "other CPUs (fz / ng)",
    ]
    table = print_table(headers, rows) if rows else ""
    path = write(work, info, args, runs, table)
    print(f"wrote {path}")


def write(work: Path, info: dict, args, runs: list[dict], table: str = "") -> Path:
    path = work / "result.json"
    args_json = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    path.write_text(json.dumps({"machine": info, "args": args_json, "runs": runs, "table": table}, indent=2))
    return path


if __name__ == "__main__":
    main()
