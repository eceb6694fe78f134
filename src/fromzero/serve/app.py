"""`fromzero serve`: the chat page, the blind A/B arena whose votes train the reward model, a leaderboard,
and an OpenAI-compatible API, over continuous batching of every served model.

Routes:
    GET  /chat /arena /leaderboard          the pages (static HTML/JS: model output is set as text, never HTML)
    GET  /v1/models                         POST /v1/chat/completions, /v1/completions (stream or not)
    POST /api/arena  {"messages", "models"?}        -> {"id", "answers": [{"side": "a", "text"}, {"side": "b", ...}]}
    POST /api/vote   {"id", "choice", "better"?, "idempotency_key"?}
    GET  /api/votes  /api/leaderboard  /api/export/preferences.jsonl  /api/export/battles.jsonl
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import random
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse

from fromzero.data import preference as store
from fromzero.data.chat import Message, check_messages
from fromzero.eval.leaderboard import leaderboard
from fromzero.generate import SamplingConfig, TopLogprobs
from fromzero.serve.api import (
    ApiError,
    ArenaRequest,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    Sampling,
    VoteRequest,
    error_body,
)
from fromzero.serve.batching import Request as GenRequest
from fromzero.serve.models import ServedModel

STATIC = Path(__file__).parent / "static"
PAGES = {"/chat": "chat.html", "/arena": "arena.html", "/leaderboard": "leaderboard.html"}
# no inline script or style, nothing from elsewhere: a page cannot be made to run what a model wrote
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'"
)


@dataclass
class Limits:
    max_body_bytes: int = 256 * 1024
    max_tokens: int = 512  # the most new tokens one request may ask for
    max_n: int = 8
    battle_timeout_s: float = 300.0


# ---------------------------------------------------------------------------
# From the batcher's thread to the event loop: one choice's tokens as text deltas


@dataclass
class Delta:
    index: int
    text: str
    logprobs: list[tuple[int, float, TopLogprobs]] = field(default_factory=list)  # (token, log-prob, top) per token
    finish_reason: str | None = None
    tokens: int = 0  # completion tokens so far (at the finish: all of them)


class GenerationError(Exception):
    pass


async def generate(
    model: ServedModel,
    prompt: list[int],
    sampling: SamplingConfig,
    *,
    n: int,
    seed: int,
    logprobs: int | None,
    stops: Sequence[str],
) -> AsyncIterator[Delta]:
    """Deltas of n choices sampled together (choice i with seed + i), as the batcher produces them. Text is held
    back while it ends in a partial UTF-8 character or could be the start of a stop string; a stop string ends
    its choice there (finish "stop"), and is not part of the text."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple] = asyncio.Queue()
    requests = []
    for i in range(n):

        def on_token(token: int, lp: float | None, top: TopLogprobs | None, i: int = i) -> bool:
            loop.call_soon_threadsafe(events.put_nowait, ("token", i, token, lp, top))
            return not requests[i].cancelled

        def on_finish(reason: str | None, error: BaseException | None, i: int = i) -> None:
            loop.call_soon_threadsafe(events.put_nowait, ("finish", i, reason, error))

        requests.append(GenRequest(prompt, sampling, seed + i, on_token, on_finish, logprobs=logprobs))
    for r in requests:
        model.batcher.submit(r)
    tokens: list[list[int]] = [[] for _ in range(n)]
    sent = [""] * n
    pending: list[list[tuple[int, float, TopLogprobs]]] = [[] for _ in range(n)]
    done = [False] * n
    hold = max((len(s) for s in stops), default=1) - 1
    decode = model.engine.decode
    try:
        while not all(done):
            kind, i, *rest = await events.get()
            if done[i]:
                continue
            if kind == "finish":
                reason, error = rest
                if error is not None:
                    raise GenerationError(str(error))
                done[i] = True
                yield Delta(i, decode(tokens[i])[len(sent[i]) :], pending[i], reason, len(tokens[i]))
                continue
            token, lp, top = rest
            tokens[i].append(token)
            if logprobs is not None:
                pending[i].append((token, lp, top))
            text = decode(tokens[i])
            cut = min((k for k in (text.find(s, max(0, len(sent[i]) - hold)) for s in stops) if k >= 0), default=-1)
            if cut >= 0:
                done[i] = True
                requests[i].cancel()
                yield Delta(i, text[len(sent[i]) : cut], pending[i], "stop", len(tokens[i]))
                continue
            if text.endswith("\ufffd"):  # the rest of a multi-byte character is still to come
                continue
            safe = len(text) - hold if stops else len(text)
            if safe > len(sent[i]):
                delta, pending[i] = Delta(i, text[len(sent[i]) : safe], pending[i], tokens=len(tokens[i])), []
                sent[i] = text[:safe]
                yield delta
    finally:
        for r in requests:
            r.cancel()


# ---------------------------------------------------------------------------
# The app


class Server:
    def __init__(self, models: Sequence[ServedModel], db: Path, api_key: str | None, limits: Limits):
        self.models = {m.name: m for m in models}
        self.db_path, self.api_key, self.limits = db, api_key, limits
        self.db = store.connect(db)
        self.battles: dict[str, Battle] = {}
        self.created = int(time.time())

    def model(self, name: str | None) -> ServedModel:
        if name not in self.models:
            raise ApiError(
                404,
                f"The model `{name}` does not exist; served: {', '.join(self.models)}",
                param="model",
                code="model_not_found",
            )
        return self.models[name]

    def close(self) -> None:
        for m in self.models.values():
            m.batcher.close()
        self.db.close()


def messages_of(messages: Sequence[ChatMessage], param: str = "messages") -> list[Message]:
    out: list[Message] = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages
    ]  # type: ignore[misc]
    try:
        check_messages(out)
    except ValueError as e:
        raise ApiError(400, f"{param}: {e}", param=param) from None
    if out[-1]["role"] != "user":
        raise ApiError(400, f"{param}: the last message must be the user's (the answer replies to it)", param=param)
    return out


def sampling_of(
    body: Sampling, model: ServedModel, prompt_len: int, limits: Limits, stop_tokens: tuple[int, ...], param: str
) -> SamplingConfig:
    room = model.max_seq_len - prompt_len
    if room < 1:
        raise ApiError(
            400,
            f"{param}: {prompt_len} prompt tokens leave no room in the model's context of {model.max_seq_len} tokens",
            param=param,
            code="context_length_exceeded",
        )
    asked = body.max_completion_tokens or body.max_tokens
    if asked is not None and asked > limits.max_tokens:
        key = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        raise ApiError(400, f"{key}: at most {limits.max_tokens} on this server, got {asked}", param=key)
    temperature = 1.0 if body.temperature is None else body.temperature
    return SamplingConfig(
        max_new_tokens=min(asked or limits.max_tokens, room),
        temperature=temperature,
        top_k=body.top_k,
        top_p=body.top_p,
        stop_tokens=stop_tokens,
    )


def _new_seed() -> int:
    return secrets.randbelow(2**31)


def sse(data: Any) -> str:
    return f"data: {json.dumps(data) if not isinstance(data, str) else data}\n\n"


def token_entry(model: ServedModel, token: int, lp: float) -> dict[str, Any]:
    text = model.engine.tok.decode([token])
    return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(model: ServedModel, entries: list[tuple[int, float, TopLogprobs]]) -> dict[str, Any]:
    return {
        "content": [
            {**token_entry(model, t, lp), "top_logprobs": [token_entry(model, a, b) for a, b in top]}
            for t, lp, top in entries
        ]
    }


def completion_logprobs(
    model: ServedModel, entries: list[tuple[int, float, TopLogprobs]], offset: int
) -> dict[str, Any]:
    decode = model.engine.tok.decode
    tokens = [decode([t]) for t, _, _ in entries]
    offsets = [offset + sum(len(x) for x in tokens[:k]) for k in range(len(tokens))]
    return {
        "tokens": tokens,
        "token_logprobs": [lp for _, lp, _ in entries],
        "top_logprobs": [{decode([a]): b for a, b in top} for _, _, top in entries],
        "text_offset": offsets,
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def create_app(
    models: Sequence[ServedModel], db: Path, *, api_key: str | None = None, limits: Limits | None = None
) -> FastAPI:
    server = Server(models, db, api_key, limits or Limits())

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        server.close()

    app = FastAPI(title="fromzero", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.server = server

    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0]
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        return JSONResponse(error_body(message, param=param), status_code=400)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        path = request.url.path
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is None or not length.isdigit():
                return JSONResponse(error_body("a request body needs a Content-Length header"), status_code=411)
            if int(length) > server.limits.max_body_bytes:
                return JSONResponse(
                    error_body(
                        f"request body of {length} bytes is over this server's limit of {server.limits.max_body_bytes}"
                    ),
                    status_code=413,
                )
        if server.api_key and path.startswith(("/v1", "/api")):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {server.api_key}".encode()):
                return JSONResponse(
                    error_body("missing or wrong API key: send 'Authorization: Bearer KEY'", code="invalid_api_key"),
                    status_code=401,
                )
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    # -- pages --------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def index() -> RedirectResponse:
        return RedirectResponse("/chat")

    for route, file in PAGES.items():
        app.add_api_route(route, (lambda file=file: FileResponse(STATIC / file)), methods=["GET"])

    @app.get("/static/{name}")
    async def static(name: str) -> FileResponse:
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise ApiError(404, f"no static file {name!r}")
        return FileResponse(path)

    # -- OpenAI-compatible API ------------------------------------------------

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": m.name,
                    "object": "model",
                    "created": server.created,
                    "owned_by": "fromzero",
                    "stage": m.stage,
                    "checkpoint_sha": m.sha,
                    "max_model_len": m.max_seq_len,
                }
                for m in server.models.values()
            ],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest) -> Response:
        model = server.model(body.model)
        if body.n > server.limits.max_n:
            raise ApiError(400, f"n: at most {server.limits.max_n}", param="n")
        prompt = model.engine.encode(messages_of(body.messages))
        tok = model.engine.tok
        sampling = sampling_of(body, model, len(prompt), server.limits, (tok.end_id,), "messages")
        top = (body.top_logprobs or 0) if body.logprobs else None
        seed, stops = body.seed if body.seed is not None else _new_seed(), body.stops()
        deltas = generate(model, prompt, sampling, n=body.n, seed=seed, logprobs=top, stops=stops)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": cid, "created": created, "model": model.name, "system_fingerprint": model.sha}
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)

            def chunk(choices: list[dict], **extra: Any) -> str:
                return sse(
                    {
                        **head,
                        "object": "chat.completion.chunk",
                        "choices": choices,
                        **extra,
                        **({"usage": None} if include_usage and "usage" not in extra else {}),
                    }
                )

            async def events() -> AsyncIterator[str]:
                done: dict[int, int] = {}
                try:
                    yield chunk(
                        [
                            {
                                "index": i,
                                "delta": {"role": "assistant", "content": ""},
                                "logprobs": None,
                                "finish_reason": None,
                            }
                            for i in range(body.n)
                        ]
                    )
                    async for d in deltas:
                        lp = chat_logprobs(model, d.logprobs) if top is not None else None
                        if d.text or lp and lp["content"]:
                            yield chunk(
                                [
                                    {
                                        "index": d.index,
                                        "delta": {"content": d.text},
                                        "logprobs": lp,
                                        "finish_reason": None,
                                    }
                                ]
                            )
                        if d.finish_reason:
                            done[d.index] = d.tokens
                            yield chunk(
                                [{"index": d.index, "delta": {}, "logprobs": None, "finish_reason": d.finish_reason}]
                            )
                    if include_usage:
                        yield chunk([], usage=usage(len(prompt), sum(done.values())))
                except GenerationError as e:
                    yield sse(error_body(f"generation failed: {e}", type="server_error"))
                yield sse("[DONE]")

            return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        texts, entries, finish, counts = await collect(deltas, body.n)
        return JSONResponse(
            {
                **head,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": texts[i]},
                        "logprobs": chat_logprobs(model, entries[i]) if top is not None else None,
                        "finish_reason": finish[i],
                    }
                    for i in range(body.n)
                ],
                "usage": usage(len(prompt), sum(counts)),
            }
        )

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Response:
        model = server.model(body.model)
        if isinstance(body.prompt, list):
            if len(body.prompt) != 1:
                raise ApiError(400, "prompt: one prompt per request on this server", param="prompt")
            body.prompt = body.prompt[0]
        if body.n > server.limits.max_n:
            raise ApiError(400, f"n: at most {server.limits.max_n}", param="n")
        prompt = model.engine.encode(body.prompt, chat=False)
        sampling = sampling_of(body, model, len(prompt), server.limits, (model.engine.tok.bos_id,), "prompt")
        seed, stops = body.seed if body.seed is not None else _new_seed(), body.stops()
        deltas = generate(model, prompt, sampling, n=body.n, seed=seed, logprobs=body.logprobs, stops=stops)
        head = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model.name,
            "system_fingerprint": model.sha,
        }
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)

            async def events() -> AsyncIterator[str]:
                done: dict[int, int] = {}
                offsets = [0] * body.n
                try:
                    async for d in deltas:
                        lp = (
                            completion_logprobs(model, d.logprobs, offsets[d.index])
                            if body.logprobs is not None
                            else None
                        )
                        offsets[d.index] += len(d.text)
                        if d.finish_reason:
                            done[d.index] = d.tokens
                        yield sse(
                            {
                                **head,
                                "choices": [
                                    {"index": d.index, "text": d.text, "logprobs": lp, "finish_reason": d.finish_reason}
                                ],
                            }
                        )
                    if include_usage:
                        yield sse({**head, "choices": [], "usage": usage(len(prompt), sum(done.values()))})
                except GenerationError as e:
                    yield sse(error_body(f"generation failed: {e}", type="server_error"))
                yield sse("[DONE]")

            return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        texts, entries, finish, counts = await collect(deltas, body.n)
        return JSONResponse(
            {
                **head,
                "choices": [
                    {
                        "index": i,
                        "text": texts[i],
                        "finish_reason": finish[i],
                        "logprobs": completion_logprobs(model, entries[i], 0) if body.logprobs is not None else None,
                    }
                    for i in range(body.n)
                ],
                "usage": usage(len(prompt), sum(counts)),
            }
        )

    # -- the arena ------------------------------------------------------------

    @app.post("/api/arena")
    async def arena(body: ArenaRequest) -> Response:
        battle = await start_battle(server, body)
        if body.stream:

            async def events() -> AsyncIterator[str]:
                yield sse({"id": battle.id})
                async for event in battle.follow():
                    yield sse(event)
                yield sse("[DONE]")

            return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        await battle.finished(server.limits.battle_timeout_s)
        if battle.error:
            raise ApiError(500, f"generation failed: {battle.error}", type="server_error")
        return JSONResponse({"id": battle.id, "answers": [{"side": s, "text": battle.texts[s]} for s in "ab"]})

    @app.post("/api/vote")
    async def vote(body: VoteRequest) -> JSONResponse:
        battle = server.battles.get(body.id)
        if battle is not None:  # still being written: the vote waits for both answers
            await battle.finished(server.limits.battle_timeout_s)
        try:
            vote_id, duplicate = store.add_vote(
                server.db,
                body.id,
                body.choice,
                better=body.better,
                session_id=body.session_id,
                idempotency_key=body.idempotency_key,
            )
        except KeyError:
            raise ApiError(404, f"id: no battle {body.id!r}", param="id") from None
        except store.VoteConflict as e:
            raise ApiError(409, str(e), param="id", code="conflict") from None
        except ValueError as e:
            raise ApiError(400, str(e), param="better" if "better" in str(e) else "id") from None
        row = server.db.execute("SELECT model_a, model_b FROM battles WHERE id = ?", (body.id,)).fetchone()
        return JSONResponse(
            {
                "vote_id": vote_id,
                "id": body.id,
                "choice": body.choice,
                "duplicate": duplicate,
                "models": {"a": row[0], "b": row[1]},
            }
        )

    @app.get("/api/votes")
    async def votes() -> dict[str, Any]:
        rows = server.db.execute(
            "SELECT b.model_a, b.model_b, v.choice FROM votes v JOIN battles b ON b.id = v.battle_id"
        ).fetchall()
        pairs: dict[tuple[str, str], dict[str, Any]] = {}
        choices = dict.fromkeys(store.CHOICES, 0)
        for a, b, choice in rows:
            choices[choice] += 1
            first, second = sorted((a, b))
            entry = pairs.setdefault(
                (first, second),
                {"models": [first, second], "votes": 0, "wins": {first: 0, second: 0}, "tie": 0, "both_bad": 0},
            )
            entry["votes"] += 1
            if choice in ("a", "b"):
                entry["wins"][a if choice == "a" else b] += 1
            else:
                entry[choice] += 1
        return {"total": len(rows), "choices": choices, "pairs": list(pairs.values())}

    @app.get("/api/leaderboard")
    async def ranking() -> dict[str, Any]:
        rows = server.db.execute(
            "SELECT b.model_a, b.model_b, v.choice FROM votes v JOIN battles b ON b.id = v.battle_id"
        ).fetchall()
        return {"models": leaderboard(list(server.models), [tuple(r) for r in rows])}

    @app.get("/api/export/{name}")
    async def export(name: str) -> Response:
        exporters = {"preferences.jsonl": store.export_preferences, "battles.jsonl": store.export_battles}
        if name not in exporters:
            raise ApiError(404, f"no export {name!r}; there are {', '.join(exporters)}")
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in exporters[name](server.db))
        return Response(
            lines, media_type="application/x-ndjson", headers={"Content-Disposition": f'attachment; filename="{name}"'}
        )

    return app


async def collect(deltas: AsyncIterator[Delta], n: int):
    texts, entries, finish, counts = [""] * n, [[] for _ in range(n)], [None] * n, [0] * n
    try:
        async for d in deltas:
            texts[d.index] += d.text
            entries[d.index] += d.logprobs
            if d.finish_reason:
                finish[d.index], counts[d.index] = d.finish_reason, d.tokens
    except GenerationError as e:
        raise ApiError(500, f"generation failed: {e}", type="server_error") from None
    return texts, entries, finish, counts


# ---------------------------------------------------------------------------
# Battles: two answers written side by side, followed by any number of streams, stored when written


class Battle:
    def __init__(self, battle_id: str):
        self.id = battle_id
        self.events: list[dict[str, Any]] = []
        self.texts = {"a": "", "b": ""}
        self.error: str | None = None
        self.done = asyncio.Event()
        self.changed = asyncio.Condition()
        self.task: asyncio.Task | None = None

    async def publish(self, event: dict[str, Any]) -> None:
        async with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    async def follow(self) -> AsyncIterator[dict[str, Any]]:
        seen = 0
        while True:
            async with self.changed:
                await self.changed.wait_for(lambda: len(self.events) > seen or self.done.is_set())
                new, finished = self.events[seen:], self.done.is_set()
            seen += len(new)
            for event in new:
                yield event
            if finished and seen == len(self.events):
                return

    async def finished(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.done.wait(), timeout)
        except asyncio.TimeoutError:
            raise ApiError(
                504, f"the answers of battle {self.id} took longer than {timeout:.0f} s", type="server_error"
            ) from None


async def start_battle(server: Server, body: ArenaRequest) -> Battle:
    messages = messages_of(body.messages)
    names = list(server.models)
    if body.models:
        chosen = [server.model(name).name for name in body.models]
    else:
        chosen = random.sample(names, 2) if len(names) >= 2 else names * 2
    random.shuffle(chosen)  # which answer is shown on the left is drawn, and recorded as side a
    models = {"a": server.models[chosen[0]], "b": server.models[chosen[1]]}
    seeds = {"a": _new_seed(), "b": _new_seed()}
    max_tokens = body.max_tokens or min(128, server.limits.max_tokens)
    prompts, samplings = {}, {}
    for side, model in models.items():
        prompts[side] = model.engine.encode(messages)
        sampling = Sampling(temperature=body.temperature, top_p=body.top_p, max_tokens=max_tokens)
        samplings[side] = sampling_of(
            sampling, model, len(prompts[side]), server.limits, (model.engine.tok.end_id,), "messages"
        )
    battle = Battle(
        store.add_battle(
            server.db,
            messages,
            models["a"].name,
            models["b"].name,
            ckpt_a=models["a"].sha,
            ckpt_b=models["b"].sha,
            sampling={"temperature": body.temperature, "top_p": body.top_p, "max_tokens": max_tokens},
            seed_a=seeds["a"],
            seed_b=seeds["b"],
            session_id=body.session_id,
        )
    )
    server.battles[battle.id] = battle

    async def side(name: str) -> None:
        async for d in generate(
            models[name], prompts[name], samplings[name], n=1, seed=seeds[name], logprobs=None, stops=()
        ):
            battle.texts[name] += d.text
            await battle.publish({"side": name, "delta": d.text, "finish_reason": d.finish_reason})

    async def run() -> None:
        try:
            await asyncio.gather(side("a"), side("b"))
            store.set_responses(server.db, battle.id, battle.texts["a"], battle.texts["b"])
        except Exception as e:  # noqa: BLE001 - the battle's followers and voters are told
            battle.error = str(e)
            await battle.publish({"error": error_body(f"generation failed: {e}", type="server_error")["error"]})
        finally:
            battle.done.set()
            async with battle.changed:
                battle.changed.notify_all()
            server.battles.pop(battle.id, None)

    battle.task = asyncio.create_task(run())
    return battle
