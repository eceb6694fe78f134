"""Server throughput: `fromzero serve` with continuous batching against one request at a time.

A random-weight model of the tiny preset's shape (configs/tiny.yaml `model:`, vocabulary from a byte-level
BPE trained here at the preset's data.vocab_size on generated text) is saved to a temporary directory and
served by the real `fromzero serve` in a subprocess on a loopback port, twice, one server after the other:
`--max-batch 16` (continuous batching) and `--max-batch 1` (one request at a time). Against each, 1, 4 and 16
concurrent streaming clients (threads in this process, stdlib `http.client` on a kept-alive connection each,
so the client side costs little CPU on a 2-core machine) each send --requests-per-client chat completions
back to back, temperature 1, distinct seeds, max_tokens --max-tokens. A random model rarely samples
`<|end|>`, so nearly every request generates exactly max_tokens tokens; the completion tokens are counted
from each stream's `usage` (stream_options.include_usage) and their mean is reported.

Per setting: aggregate generated tokens/s (all completion tokens over the wall time from the first request
sent to the last stream closed), time to first token (request sent -> first non-empty content delta), median
and p90 over all requests, and the ratio continuous-batching / one-at-a-time at each concurrency. The CPU
time the server and this process used is read from /proc, and what other processes used during each setting
is reported (a setting is run again, up to --retries times, when they kept more than --max-load CPUs busy).

    .venv/bin/python bench/serve_throughput.py                      # 1-3 min on 2 idle cores
    .venv/bin/python bench/serve_throughput.py --clients 1,4,16 --requests-per-client 8 --max-tokens 64 --rounds 2
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import fmt_k, machine_info, print_table, warn_if_busy, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CLK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------- the served model


def synthetic_texts(n: int = 4000, seed: int = 0) -> list[str]:
    """Deterministic word salad over a few thousand made-up words: enough distinct pieces for ~2000 BPE merges."""
    rng = random.Random(seed)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(6000)]
    weights = [1 / (k + 1) for k in range(len(words))]  # Zipf-like, so frequent words merge whole
    out = []
    for _ in range(n):
        sent = rng.choices(words, weights, k=rng.randint(6, 20))
        out.append(" ".join(sent).capitalize() + rng.choice([".", "?", "!", ", and 42."]))
    return out


def build_checkpoint(directory: Path, seed: int) -> tuple[Path, dict]:
    from fromzero import checkpoint
    from fromzero.model import ModelConfig, Transformer
    from fromzero.tokenizer import Tokenizer

    preset = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    tok = Tokenizer.train(synthetic_texts(), vocab_size=preset["data"]["vocab_size"])
    tok_file = tok.save(directory / "tok")
    cfg = ModelConfig(**preset["model"], vocab_size=tok.vocab_size)
    torch.manual_seed(seed)
    ckpt = checkpoint.save(directory / "init", 0, Transformer(cfg), tokenizer_file=tok_file, meta={"stage": "init"})
    shape = {
        "dim": cfg.dim,
        "n_layers": cfg.n_layers,
        "n_heads": cfg.n_heads,
        "n_kv_heads": cfg.n_kv_heads,
        "ffn_dim": cfg.ffn_dim,
        "vocab_size": cfg.vocab_size,
        "max_seq_len": cfg.max_seq_len,
        "params": cfg.num_params(),
    }
    return ckpt, shape


# ---------------------------------------------------------------------------------------------- the server


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`fromzero serve` in a subprocess; OMP_NUM_THREADS fixed, torch's default intra-op threads otherwise."""

    def __init__(self, ckpt: Path, workdir: Path, max_batch: int, max_tokens: int, threads: int):
        self.port = free_port()
        self.log_path = workdir / f"serve-b{max_batch}-{self.port}.log"
        cmd = [
            sys.executable,
            "-m",
            "fromzero",
            "serve",
            "--ckpt",
            str(ckpt),
            "--db",
            str(workdir / f"votes-{self.port}.sqlite"),
            "--port",
            str(self.port),
            "--max-batch",
            str(max_batch),
            "--max-tokens",
            str(max_tokens),
            "--device",
            "cpu",
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        env.pop("FROMZERO_API_KEY", None)
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v1/models", timeout=2) as r:
                    self.model = json.loads(r.read())["data"][0]["id"]
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def cpu_seconds(self) -> float:
        """User + system time of the server process, all its threads."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def machine_busy() -> float:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


# ---------------------------------------------------------------------------------------------- the clients


PROMPTS = [
    "Tell me a story about a dragon.",
    "What is the capital of France?",
    "Write a poem about the sea.",
    "Explain how a bicycle works.",
    "List three uses of a brick.",
    "Why is the sky blue?",
    "Describe your favourite meal.",
    "How do plants grow?",
]


def stream_one(conn: http.client.HTTPConnection, model: str, prompt: str, max_tokens: int, seed: int) -> dict:
    """One streaming chat completion; times (from the request being sent) of its first content delta and end."""
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": max_tokens,
            "temperature": 1.0,
            "seed": seed,
        }
    ).encode()
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:500]!r}")
    first = None
    chunks = tokens = 0
    finish = None
    while True:
        line = resp.readline()
        if not line:
            break
        if not line.startswith(b"data: "):
            continue
        data = line[6:].strip()
        if data == b"[DONE]":
            break
        event = json.loads(data)
        if "error" in event:
            raise RuntimeError(f"server error: {event['error']}")
        for choice in event.get("choices", ()):
            if choice["delta"].get("content"):
                chunks += 1
                if first is None:
                    first = time.perf_counter() - t0
            finish = choice.get("finish_reason") or finish
        if event.get("usage"):
            tokens = event["usage"]["completion_tokens"]
    resp.read()
    end = time.perf_counter() - t0
    return {
        "ttft": first if first is not None else end,
        "latency": end,
        "tokens": tokens,
        "chunks": chunks,
        "finish_reason": finish,
        "sent": t0,
    }


def load(port: int, model: str, clients: int, requests: int, max_tokens: int, seed0: int) -> dict:
    """`clients` threads, each sending `requests` streaming requests back to back; all start together."""
    barrier = threading.Barrier(clients + 1)
    results: list[list[dict]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []

    def client(j: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            conn.connect()
            barrier.wait()
            for i in range(requests):
                k = j * requests + i
                results[j].append(stream_one(conn, model, PROMPTS[k % len(PROMPTS)], max_tokens, seed0 + k))
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            errors.append(e)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(j,), daemon=True) for j in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    done = [r for rs in results for r in rs]
    return {"wall": wall, "requests": done}


def p90(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=10, method="inclusive")[8] if len(xs) > 1 else xs[0]


def measure(server: Server, clients: int, args, seed0: int) -> dict:
    busy0, own0, srv0 = machine_busy(), own_cpu(), server.cpu_seconds()
    out = load(server.port, server.model, clients, args.requests_per_client, args.max_tokens, seed0)
    busy1, own1, srv1 = machine_busy(), own_cpu(), server.cpu_seconds()
    reqs, wall = out["requests"], out["wall"]
    tokens = sum(r["tokens"] for r in reqs)
    ttft = [r["ttft"] for r in reqs]
    return {
        "clients": clients,
        "requests": len(reqs),
        "wall_s": wall,
        "completion_tokens": tokens,
        "mean_completion_tokens": tokens / len(reqs),
        "short_requests": sum(r["tokens"] < args.max_tokens for r in reqs),
        "tokens_per_s": tokens / wall,
        "ttft_median_s": statistics.median(ttft),
        "ttft_p90_s": p90(ttft),
        "latency_median_s": statistics.median(r["latency"] for r in reqs),
        "per_stream_tokens_per_s": statistics.median(
            (r["tokens"] - 1) / (r["latency"] - r["ttft"]) for r in reqs if r["tokens"] > 1
        ),
        "content_chunks_per_request": sum(r["chunks"] for r in reqs) / len(reqs),
        "server_cpus": (srv1 - srv0) / wall,
        "client_cpus": (own1 - own0) / wall,
        "other_cpus": max(0.0, (busy1 - busy0) - (srv1 - srv0) - (own1 - own0)) / wall,
        "ttft_s": ttft,
    }


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", default="1,4,16", help="concurrent streaming clients, comma-separated")
    p.add_argument("--requests-per-client", type=int, default=8, help="requests each client sends back to back")
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every request")
    p.add_argument("--max-batch", type=int, default=16, help="the continuous-batching server's --max-batch")
    p.add_argument("--baseline-batch", type=int, default=1, help="the other server's --max-batch (1: one at a time)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="OMP_NUM_THREADS of the servers")
    p.add_argument("--rounds", type=int, default=1, help="times each server is started and measured (medians)")
    p.add_argument("--max-load", type=float, default=0.25, help="re-run a setting when other processes used more CPUs")
    p.add_argument("--retries", type=int, default=2, help="re-runs allowed per setting for other load")
    p.add_argument("--seed", type=int, default=0, help="model init seed")
    p.add_argument("--ckpt", type=Path, help="serve this checkpoint instead of a random-weight tiny model")
    p.add_argument("--no-json", action="store_true", help="do not write bench/results/serve-*.json")
    args = p.parse_args()
    concurrencies = [int(c) for c in args.clients.split(",")]

    info = machine_info(args.threads)
    print(
        f"{info['cpu']} · {info['logical_cpus']} CPUs · server OMP_NUM_THREADS={args.threads} · torch {info['torch']}"
    )
    warn_if_busy(info)
    servers = {"cb": args.max_batch, "one": args.baseline_batch}
    names = {"cb": f"max-batch {args.max_batch}", "one": f"max-batch {args.baseline_batch}"}
    runs: dict[str, dict[int, list[dict]]] = {s: {c: [] for c in concurrencies} for s in servers}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        work = Path(tmp)
        if args.ckpt is not None:
            ckpt, shape = args.ckpt, {"checkpoint": str(args.ckpt)}
        else:
            ckpt, shape = build_checkpoint(work, args.seed)
            print(
                f"model: random weights, d{shape['dim']} L{shape['n_layers']} H{shape['n_heads']}/{shape['n_kv_heads']} "
                f"vocab {shape['vocab_size']}, {shape['params'] / 1e6:.2f}M params"
            )
        for rnd in range(args.rounds):
            for key, batch in servers.items():
                t0 = time.perf_counter()
                server = Server(ckpt, work, batch, max(args.max_tokens, 8), args.threads)
                try:
                    # warm-up: the first requests pay for lazy init (allocator, kernels, imports)
                    load(server.port, server.model, max(concurrencies), 1, 8, 10**6)
                    for c in concurrencies:
                        for attempt in range(args.retries + 1):
                            case = measure(server, c, args, seed0=1000 * c + 100000 * rnd)
                            case["rerun_for_load"] = attempt
                            if case["other_cpus"] <= args.max_load or attempt == args.retries:
                                break
                            time.sleep(1.0)
                        runs[key][c].append(case)
                        note = (
                            f"  [other processes: {case['other_cpus']:.2f} CPUs]"
                            if case["other_cpus"] > args.max_load
                            else ""
                        )
                        print(
                            f"  round {rnd + 1} {names[key]:>12}, {c:2d} clients: {fmt_k(case['tokens_per_s'])} tok/s, "
                            f"TTFT median {1000 * case['ttft_median_s']:.0f} ms p90 {1000 * case['ttft_p90_s']:.0f} ms, "
                            f"{case['mean_completion_tokens']:.1f} tokens/request, server {case['server_cpus']:.2f} CPUs, "
                            f"client {case['client_cpus']:.2f}{note}",
                            flush=True,
                        )
                finally:
                    server.close()
                print(f"  ({names[key]}: {time.perf_counter() - t0:.0f} s with start-up)", flush=True)

    def med(key: str, c: int, field: str) -> float:
        return statistics.median(r[field] for r in runs[key][c])

    summary = []
    for c in concurrencies:
        row = {"clients": c}
        for key in servers:
            row[key] = {
                f: med(key, c, f)
                for f in (
                    "tokens_per_s",
                    "ttft_median_s",
                    "ttft_p90_s",
                    "mean_completion_tokens",
                    "per_stream_tokens_per_s",
                    "server_cpus",
                    "other_cpus",
                )
            }
        row["throughput_ratio"] = row["cb"]["tokens_per_s"] / row["one"]["tokens_per_s"]
        summary.append(row)

    print()
    headers = [
        "clients",
        "CB tok/s",
        "CB TTFT p50 / p90 ms",
        "1-at-a-time tok/s",
        "1-at-a-time TTFT p50 / p90 ms",
        "CB / 1-at-a-time",
        "tokens/request",
    ]
    rows = [
        [
            r["clients"],
            fmt_k(r["cb"]["tokens_per_s"]),
            f"{1000 * r['cb']['ttft_median_s']:.0f} / {1000 * r['cb']['ttft_p90_s']:.0f}",
            fmt_k(r["one"]["tokens_per_s"]),
            f"{1000 * r['one']['ttft_median_s']:.0f} / {1000 * r['one']['ttft_p90_s']:.0f}",
            f"{r['throughput_ratio']:.2f}×",
            f"{r['cb']['mean_completion_tokens']:.1f} / {r['one']['mean_completion_tokens']:.1f}",
        ]
        for r in summary
    ]
    table = print_table(headers, rows)
    worst = max(case["other_cpus"] for s in runs.values() for cs in s.values() for case in cs)
    print(
        f"\nCB = --max-batch {args.max_batch}, 1-at-a-time = --max-batch {args.baseline_batch}; {args.requests_per_client} "
        f"streaming requests per client, max_tokens {args.max_tokens}, temperature 1; median of {args.rounds} round(s); "
        f"other processes used at most {worst:.2f} CPUs during a setting; {time.perf_counter() - t_start:.0f} s in all"
    )
    if not args.no_json:
        path = write_json(
            "serve",
            {
                "machine": info,
                "args": {**vars(args), "ckpt": str(args.ckpt) if args.ckpt else None},
                "model": shape,
                "summary": summary,
                "runs": runs,
                "table": table,
            },
        )
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
