"""Who writes the data: a fromzero (or imported HF) checkpoint in this process, through the project's generation
engine, or any OpenAI-compatible server (`fromzero serve`, Ollama, llama.cpp's server, vLLM) over HTTP. Both take
a list of chat prompts and give one completion each; a failed request is a `Generated` with an error, not an
exception, so one bad request never stops a run."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Generated:
    text: str
    finish_reason: str  # "stop", "length", or "error"
    error: str | None = None  # why the request failed, after its retries


class Generator(Protocol):
    name: str  # the generator model, recorded with every record

    def complete(
        self, prompts: Sequence[str], *, temperature: float, top_p: float, max_new_tokens: int, seeds: Sequence[int]
    ) -> list[Generated]: ...


class EngineGenerator:
    """A checkpoint in this process: prompts in its chat template, sampled in batches of `batch_size`, each row from
    its request's own seed (so a request's reply does not depend on which others share its batch, as on resume)."""

    def __init__(self, model, tok, name: str, batch_size: int = 16):
        from fromzero.generate import Engine

        self.engine, self.name, self.batch_size = Engine(model, tok), name, batch_size

    @classmethod
    def from_checkpoint(cls, ckpt: str | Path, device: str = "cpu", batch_size: int = 16) -> EngineGenerator:
        from fromzero import checkpoint
        from fromzero.tokenizer import Tokenizer

        path = checkpoint.resolve(ckpt)
        if checkpoint.is_reward_model(path):
            raise ValueError(f"--ckpt {ckpt}: a reward model, not a language model: it cannot write text")
        model = checkpoint.load_model(path, device).eval()
        return cls(model, Tokenizer.load(checkpoint.tokenizer_file(path)), str(path), batch_size)

    def complete(
        self, prompts: Sequence[str], *, temperature: float, top_p: float, max_new_tokens: int, seeds: Sequence[int]
    ) -> list[Generated]:
        from fromzero.generate import SamplingConfig

        eng, limit = self.engine, self.engine.model.cfg.max_seq_len
        sampling = SamplingConfig(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p if temperature else None,
            stop_tokens=(eng.tok.end_id,),
        )
        out: list[Generated | None] = [None] * len(prompts)
        ids = [eng.encode(p) for p in prompts]
        fits = [i for i, p in enumerate(ids) if len(p) + max_new_tokens <= limit]
        for i in set(range(len(prompts))) - set(fits):
            out[i] = Generated(
                "",
                "error",
                f"prompt of {len(ids[i])} tokens + max_new_tokens {max_new_tokens} is "
                f"more than the model's max_seq_len {limit}: lower chunk_tokens or max_new_tokens",
            )
        for start in range(0, len(fits), self.batch_size):
            rows = fits[start : start + self.batch_size]
            done = eng.generate([ids[i] for i in rows], sampling, row_seeds=[seeds[i] for i in rows])
            for i, c in zip(rows, done):
                out[i] = Generated(c.text.strip(), c.finish_reason)
        return out  # type: ignore[return-value]


class EndpointGenerator:
    """An OpenAI-compatible /v1/chat/completions endpoint: at most `concurrency` requests in flight; a request that
    fails with a connection error, a timeout, 429 or a 5xx is retried `retries` times, waiting backoff_s, then twice
    as long, and so on; other errors (a 400, a 404 for a wrong model name) are not retried."""

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        *,
        concurrency: int = 4,
        retries: int = 3,
        backoff_s: float = 0.5,
        timeout_s: float = 120.0,
    ):
        base = url.rstrip("/")
        self.url = (
            base
            if base.endswith("/chat/completions")
            else base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")
        )
        self.name, self.api_key, self.concurrency = model, api_key, concurrency
        self.retries, self.backoff_s, self.timeout_s = retries, backoff_s, timeout_s

    def request(self, prompt: str, *, temperature: float, top_p: float, max_new_tokens: int, seed: int) -> Generated:
        body = json.dumps(
            {
                "model": self.name,
                "messages": [{"role": "user", "content": prompt}],
                "temperature": temperature,
                "top_p": top_p,
                "max_tokens": max_new_tokens,
                "seed": seed,
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                    reply = json.loads(r.read())
                choice = reply["choices"][0]
                return Generated(
                    (choice["message"].get("content") or "").strip(), choice.get("finish_reason") or "stop"
                )
            except urllib.error.HTTPError as e:
                detail = e.read()[:200].decode("utf-8", "replace")
                error = f"HTTP {e.code} from {self.url}: {detail}"
                if e.code != 429 and e.code < 500:
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                error = f"{self.url}: {getattr(e, 'reason', e)}"
            except (ValueError, KeyError, IndexError, TypeError) as e:  # not an OpenAI-shaped reply
                error = f"{self.url}: unexpected reply ({type(e).__name__}: {e})"
        return Generated("", "error", error)

    def complete(
        self, prompts: Sequence[str], *, temperature: float, top_p: float, max_new_tokens: int, seeds: Sequence[int]
    ) -> list[Generated]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(
                pool.map(
                    lambda ps: self.request(
                        ps[0], temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=ps[1]
                    ),
                    zip(prompts, seeds),
                )
            )


def make_generator(
    *, ckpt: str | Path | None, endpoint: str | None, model: str | None, api_key: str | None, cfg, device: str = "cpu"
) -> Generator:
    """A checkpoint in process (--ckpt) or an endpoint (--endpoint with --model), never both."""
    if (ckpt is None) == (endpoint is None):
        raise ValueError("give the generator as --ckpt DIR (in process) or --endpoint URL --model NAME, one of them")
    if ckpt is not None:
        return EngineGenerator.from_checkpoint(ckpt, device)
    if not model:
        raise ValueError("--endpoint needs --model (the model name the server serves, e.g. sft for fromzero serve)")
    return EndpointGenerator(
        endpoint,
        model,
        api_key,
        concurrency=cfg.concurrency,
        retries=cfg.retries,
        backoff_s=cfg.backoff_s,
        timeout_s=cfg.timeout_s,
    )
