"""What the server tests share: small models made here, and `fromzero serve` run as a real process on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import torch

HTML_ANSWER = '<b>bold</b><script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'


def make_run(root: Path, answer: str = HTML_ANSWER, prompts: tuple[str, ...] = ()) -> Path:
    """A run directory with two language models and a reward model: `init` (random weights), `sft` (trained for a
    few seconds to answer every prompt, the default ones and `prompts`, with `answer`: HTML_ANSWER, so the pages can
    be checked to show it as text) and `reward` (which the server must not serve)."""
    from fromzero import checkpoint
    from fromzero.data.chat import render
    from fromzero.model import ModelConfig, Transformer
    from fromzero.tokenizer import Tokenizer
    from fromzero.train.reward import RewardModel

    tok = Tokenizer.train(
        [answer, *prompts, "Hello there! How are you? I am fine, thanks. What is an LLM?"] * 20, vocab_size=400
    )
    tok_file = tok.save(root / "tok")
    cfg = ModelConfig(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128)
    run = root / "run"
    torch.manual_seed(0)
    checkpoint.save(run / "init", 0, Transformer(cfg), tokenizer_file=tok_file, meta={"stage": "init"})
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    prompts = ["Hello!", "What is an LLM?", "Say something.", "hi", "How are you?", *prompts]
    rows = [render(tok, [{"role": "user", "content": p}, {"role": "assistant", "content": answer}]) for p in prompts]
    width = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([i + [tok.pad_id] * (width - len(i)) for i, _ in rows])
    learn = torch.tensor([m + [False] * (width - len(m)) for _, m in rows])
    targets = ids.masked_fill(~learn, -100)[:, 1:]  # the loss on the answer and its <|end|>, as SFT's
    for _ in range(150):
        loss = model(ids[:, :-1], targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    checkpoint.save(run / "sft", 150, model, tokenizer_file=tok_file, meta={"stage": "sft"})
    checkpoint.save(run / "reward", 0, RewardModel(cfg), tokenizer_file=tok_file, meta={"stage": "reward"})
    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, key: str | None = None, timeout: float = 10) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def post(url: str, body: dict, key: str | None = None, timeout: float = 60) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@contextlib.contextmanager
def serving(ckpts: list[Path], db: Path, *args: str, key: str | None = None, startup_s: float = 90):
    """`fromzero serve` in a subprocess on a free loopback port; yields its base URL and stops it on exit."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("FROMZERO_API_KEY", None)
    cmd = [sys.executable, "-m", "fromzero", "serve", "--db", str(db), "--port", str(port), *args]
    for c in ckpts:
        cmd += ["--ckpt", str(c)]
    if key:
        cmd += ["--api-key", key]
    log = db.with_suffix(".log").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {proc.returncode}: {db.with_suffix('.log').read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(base + "/chat", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


SHORT, LONG = "Yes.", "Yes, I am quite sure that it is so, my good friend, and I would say it again."


def make_policies(root: Path, shares: dict[str, float]) -> dict[str, Path]:
    """Language models that answer every "Question N?" either SHORT or LONG, SHORT with the given share of their
    training answers: a policy whose samples differ in a way a rule can vote on."""
    from fromzero import checkpoint
    from fromzero.data.chat import render
    from fromzero.model import ModelConfig, Transformer
    from fromzero.tokenizer import Tokenizer

    prompts = [f"Question {i}?" for i in range(12)]
    tok = Tokenizer.train([SHORT, LONG, *prompts] * 10, vocab_size=400)
    tok_file = tok.save(root / "tok")
    cfg = ModelConfig(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)
    out = {}
    for k, (name, share) in enumerate(shares.items()):
        torch.manual_seed(k)
        model = Transformer(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
        rows = [
            render(tok, [{"role": "user", "content": p}, {"role": "assistant", "content": a}])
            for p in prompts
            for a in [SHORT] * round(10 * share) + [LONG] * (10 - round(10 * share))
        ]
        width = max(len(ids) for ids, _ in rows)
        ids = torch.tensor([i + [tok.pad_id] * (width - len(i)) for i, _ in rows])
        learn = torch.tensor([m + [False] * (width - len(m)) for _, m in rows])
        targets = ids.masked_fill(~learn, -100)[:, 1:]
        for _ in range(80):
            loss = model(ids[:, :-1], targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
        out[name] = checkpoint.save(root / name, 80, model, tokenizer_file=tok_file, meta={"stage": "sft"})
    return out
