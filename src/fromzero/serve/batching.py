"""Continuous batching over the engine: concurrent requests share decode steps.

One worker thread per served model owns its `SlotCache`. Each iteration it admits waiting requests (each
prefilled on its own, its first token sampled, its keys and values loaded into a free slot), then runs
one decode step for every running request together, and drops those that stopped: a request joins the
running batch at the next step after it arrives and leaves at the step it finishes, instead of waiting
for the whole batch. `max_batch=1` is one request at a time (the benchmark's baseline).

Every request has its own sampling settings and its own seeded generator, so what it samples does not
depend on which other requests share its steps (up to float rounding in batched matrix products).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from fromzero.generate import Engine, SamplingConfig, TopLogprobs, sample_next, token_logprobs
from fromzero.model import SlotCache


@dataclass
class Request:
    prompt: list[int]
    sampling: SamplingConfig
    seed: int
    # called from the worker thread with each new token, its log-prob and top alternatives (None unless asked);
    # returns False when the request should stop there (a stop string seen, the client gone)
    on_token: Callable[[int, float | None, TopLogprobs | None], bool]
    # called once, from the worker thread: finish_reason "stop" | "length", or an error
    on_finish: Callable[[str | None, BaseException | None], None]
    logprobs: int | None = None
    generated: int = 0
    cancelled: bool = False
    generator: torch.Generator | None = field(default=None, repr=False)

    def cancel(self) -> None:
        self.cancelled = True


class Batcher:
    def __init__(self, engine: Engine, max_batch: int = 16, threads: int | None = None):
        self.engine, self.max_batch, self.threads = engine, max_batch, threads
        model = engine.model
        self.max_seq_len = model.cfg.max_seq_len
        self.cache = SlotCache(model.cfg, max_batch, next(model.parameters()).dtype, engine.device)
        self.running: list[Request] = []
        self.last = torch.zeros(max_batch, dtype=torch.long, device=engine.device)
        self.waiting: queue.Queue[Request | None] = queue.Queue()
        self.steps = 0  # decode steps run, for the benchmark and tests
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fromzero-batcher", daemon=True)
        self._thread.start()

    def submit(self, request: Request) -> None:
        if self._stop.is_set():
            raise RuntimeError("the batcher is closed")
        request.generator = torch.Generator(device=self.engine.device).manual_seed(request.seed)
        self.waiting.put(request)

    def close(self) -> None:
        self._stop.set()
        self.waiting.put(None)
        self._thread.join(timeout=30)

    # ------------------------------------------------------------------ the worker thread

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        if self.threads:  # torch's intra-op threads are per calling thread: the model's work runs here
            torch.set_num_threads(self.threads)
        self.engine.model.eval()
        while not self._stop.is_set():
            try:
                self._admit()
                if self.running:
                    self._step()
            except Exception as e:  # noqa: BLE001 - a failed step ends the requests in it, not the server
                for r in self.running:
                    r.on_finish(None, e)
                self.running, self.cache.rows = [], 0
        for r in self.running:
            r.on_finish(None, RuntimeError("the server is shutting down"))

    def _admit(self) -> None:
        while len(self.running) < self.max_batch:
            try:
                # with nothing running, wait for work; otherwise only take what is already there
                r = self.waiting.get(timeout=0.5) if not self.running else self.waiting.get_nowait()
            except queue.Empty:
                return
            if r is None:
                return
            if r.cancelled:
                continue
            try:
                logits, prefilled = self.engine.prefill(r.prompt)
            except Exception as e:  # noqa: BLE001 - e.g. a prompt too long: that request's error alone
                r.on_finish(None, e)
                continue
            token = self._sample(logits[None], [r])
            if self._emit(r, int(token[0]), logits[None], token, 0):
                continue
            slot = len(self.running)
            self.cache.load(slot, prefilled)
            self.last[slot] = token[0]
            self.running.append(r)
            self.cache.rows = len(self.running)

    def _step(self) -> None:
        cache, rows = self.cache, len(self.running)
        mask = cache.key_mask()
        logits = self.engine.model(self.last[:rows, None], positions=cache.positions(), mask=mask, cache=cache)[:, -1]
        self.steps += 1
        tokens = self._sample(logits, self.running)
        self.last[:rows] = tokens
        finished = [
            i for i, (r, t) in enumerate(zip(self.running, tokens.tolist())) if self._emit(r, t, logits, tokens, i)
        ]
        for i in reversed(finished):  # the last running row fills each freed slot
            last = len(self.running) - 1
            if i != last:
                cache.move(last, i)
                self.last[i] = self.last[last]
                self.running[i] = self.running[last]
            self.running.pop()
            cache.rows = len(self.running)

    def _sample(self, logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
        tokens = logits.argmax(-1)
        for i, r in enumerate(requests):
            if r.sampling.temperature > 0:
                tokens[i] = sample_next(logits[i : i + 1], r.sampling, r.generator)[0]
        return tokens

    def _emit(self, r: Request, token: int, logits: torch.Tensor, tokens: torch.Tensor, row: int) -> bool:
        """Hand a request its new token; True when it is finished (and told so)."""
        if r.cancelled:
            r.on_finish("stop", None)
            return True
        r.generated += 1
        if token in r.sampling.stop_tokens:
            r.on_finish("stop", None)
            return True
        lp = top = None
        if r.logprobs is not None:
            chosen, tops = token_logprobs(logits[row : row + 1], tokens[row : row + 1], r.logprobs)
            lp, top = chosen[0], tops[0]
        if not r.on_token(token, lp, top):
            r.on_finish("stop", None)
            return True
        # the token just sampled goes into the cache at the next step: it needs a position left
        if r.generated >= r.sampling.max_new_tokens or len(r.prompt) + r.generated >= self.max_seq_len:
            r.on_finish("length", None)
            return True
        return False
