"""Shared helpers for the benchmark scripts: machine facts, matmul peak, an HF twin of our model, A/B timing.

Not part of the package: run the scripts from the repository root with the project's interpreter, e.g.
`.venv/bin/python bench/pretrain_throughput.py`.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fromzero.model import ModelConfig

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def busy_cpus(seconds: float = 0.5) -> float:
    """CPUs kept busy by *other* processes over a short sample (from /proc/stat; 0.0 where unavailable)."""

    def read() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields[:8]), idle

    try:
        total0, idle0 = read()
        time.sleep(seconds)
        total1, idle1 = read()
    except (OSError, ValueError, IndexError):
        return 0.0
    if total1 == total0:
        return 0.0
    return (1 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


class OtherLoad:
    """CPUs used by other processes while a block runs (/proc/stat busy time minus this process's CPU time).

    The benchmarks need a quiet machine: on 2 cores one other busy process halves a result.
    """

    def __enter__(self) -> "OtherLoad":
        self.start = self._sample()
        self.cpus = 0.0
        return self

    def __exit__(self, *exc) -> None:
        end = self._sample()
        if self.start is not None and end is not None:
            wall = end[0] - self.start[0]
            others = (end[1] - self.start[1]) - (end[2] - self.start[2])
            self.cpus = max(0.0, others / wall) if wall > 0 else 0.0

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError, IndexError):
            return None
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
        t = os.times()
        return time.perf_counter(), busy, t.user + t.system


def machine_info(threads: int) -> dict:
    import transformers

    flags = cpu_flags()
    return {
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "busy_cpus_at_start": round(busy_cpus(), 2),
    }


def warn_if_busy(info: dict) -> None:
    if info["busy_cpus_at_start"] > 0.3:
        print(
            f"warning: {info['busy_cpus_at_start']:.1f} CPUs were busy with other work at start; "
            "absolute numbers (and MFU) will be low, the A/B ratios less so",
            file=sys.stderr,
        )


def matmul_peak(dtype: torch.dtype, sizes=(1024, 2048), seconds: float = 0.4, windows: int = 3) -> dict:
    """Best dense-matmul FLOP/s over a few square sizes and timed windows: the MFU denominator.

    `fromzero.train.loop.matmul_peak_flops` times one 1024² matmul for 0.3 s; here the best of several
    sizes and windows is taken, since a single short window on a 2-core machine is easily disturbed.
    """
    best, per_size = 0.0, {}
    for n in sizes:
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        for _ in range(2):
            a @ b
        size_best = 0.0
        for _ in range(windows):
            reps, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds / windows:
                a @ b
                reps += 1
            size_best = max(size_best, 2 * n**3 * reps / (time.perf_counter() - start))
        per_size[n] = size_best
        best = max(best, size_best)
    return {"flops": best, "per_size_gflops": {n: round(f / 1e9, 1) for n, f in per_size.items()}}


def hf_llama(cfg: ModelConfig):
    """HF `LlamaForCausalLM` with exactly our shape (SDPA attention); same parameter names as ours."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.dim,
        intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.init_std,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    model = LlamaForCausalLM._from_config(hf_cfg, attn_implementation="sdpa")
    assert model.config._attn_implementation == "sdpa", model.config._attn_implementation
    return model


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def interleaved(
    runners: dict[str, Callable[[], float]],
    windows: int,
    warmup: int = 1,
    max_load: float = 0.25,
    retries: int | None = None,
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Call each runner in turn (A, B, A, B, ...) `windows` times after `warmup` untimed rounds.

    A runner does one timed window and returns its measure (e.g. tokens/s); alternating the windows spreads
    slow drifts (frequency, other load) evenly over the contenders. A round during which other processes
    kept more than `max_load` CPUs busy is thrown away and run again (at most `retries` times, default
    `windows`); returns the results and {"dropped": rounds thrown away, "other_cpus": the most CPUs other
    processes used during a kept round}.
    """
    for _ in range(warmup):
        for run in runners.values():
            run()
    results: dict[str, list[float]] = {name: [] for name in runners}
    dropped, worst, retries = 0, 0.0, windows if retries is None else retries
    while len(next(iter(results.values()))) < windows:
        with OtherLoad() as load:
            rnd = {name: run() for name, run in runners.items()}
        if load.cpus > max_load and dropped < retries:
            dropped += 1
            time.sleep(1.0)
            continue
        worst = max(worst, load.cpus)
        for name, value in rnd.items():
            results[name].append(value)
    return results, {"dropped": dropped, "other_cpus": worst}


def load_notes(case: dict) -> str:
    """What other processes did to a measured case, for its progress line (empty when nothing)."""
    notes = ""
    if case["rounds_dropped_for_load"]:
        notes += f"  [{case['rounds_dropped_for_load']} rounds re-run: other processes were busy]"
    if case["other_cpus"] > 0.25:
        notes += f"  [other processes used up to {case['other_cpus']:.1f} CPUs]"
    return notes


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def fmt_k(x: float) -> str:
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


def print_table(headers: list[str], rows: list[list[str]]) -> str:
    """Print (and return) a GitHub-markdown table."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    line = lambda cells: "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    text = "\n".join([line(headers), "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|", *map(line, rows)])
    print(text)
    return text


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path
