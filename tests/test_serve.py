"""`fromzero serve` as clients see it: a real server on loopback, the official `openai` client, the arena's JSON
API, a real SQLite file, concurrent voters, API keys; and the continuous batcher under it."""

import json
import sqlite3
import subprocess
import threading
import urllib.request
import uuid

import openai
import pytest
import torch
from conftest import FROMZERO
from serving import HTML_ANSWER, get, make_run, post, serving

from fromzero.generate import Engine, SamplingConfig
from fromzero.model import ModelConfig, Transformer
from fromzero.serve.batching import Batcher, Request
from fromzero.tokenizer import Tokenizer

HELLO = [{"role": "user", "content": "Hello!"}]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    db = tmp_path_factory.mktemp("db") / "votes.sqlite"
    with serving([run], db, "--max-tokens", "96") as base:
        yield base, db


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


def sse_lines(url: str, body: dict) -> list[str]:
    """The raw `data:` payloads of a streamed response, in order."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        return [line[len("data: ") :] for line in r.read().decode().splitlines() if line.startswith("data: ")]


def test_models_are_the_run_stages_with_a_language_model(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["init", "sft"]  # the reward model is not served


def test_chat_completions_with_the_openai_client(client, server):
    greedy = client.chat.completions.create(model="sft", messages=HELLO, temperature=0)
    choice = greedy.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == HTML_ANSWER
    assert choice.finish_reason == "stop" and greedy.model == "sft"
    assert (
        greedy.usage.prompt_tokens > 0
        and greedy.usage.total_tokens == greedy.usage.prompt_tokens + greedy.usage.completion_tokens
    )

    chunks = list(
        client.chat.completions.create(
            model="sft", messages=HELLO, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == HTML_ANSWER
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == greedy.usage.completion_tokens

    raw = sse_lines(
        server[0] + "/v1/chat/completions",
        {"model": "sft", "messages": HELLO, "stream": True, "max_tokens": 5, "temperature": 0},
    )
    assert raw.count("[DONE]") == 1 and raw[-1] == "[DONE]"
    assert json.loads(raw[-2])["choices"][0]["finish_reason"] == "length"

    # n, seed, stop, max_tokens and max_completion_tokens
    three = client.chat.completions.create(model="init", messages=HELLO, n=3, temperature=1.0, max_tokens=8, seed=11)
    assert [c.index for c in three.choices] == [0, 1, 2] and len({c.message.content for c in three.choices}) == 3
    again = client.chat.completions.create(model="init", messages=HELLO, n=3, temperature=1.0, max_tokens=8, seed=11)
    assert [c.message.content for c in again.choices] == [c.message.content for c in three.choices]
    other = client.chat.completions.create(model="init", messages=HELLO, temperature=1.0, max_tokens=8, seed=12)
    assert other.choices[0].message.content != three.choices[0].message.content
    cut = client.chat.completions.create(model="sft", messages=HELLO, temperature=0, stop=["</b>", "never"])
    assert cut.choices[0].message.content == "<b>bold" and cut.choices[0].finish_reason == "stop"
    streamed_cut = client.chat.completions.create(
        model="sft", messages=HELLO, temperature=0, stop="script", stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed_cut if c.choices) == "<b>bold</b><"
    short = client.chat.completions.create(model="sft", messages=HELLO, temperature=0, max_completion_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3

    # log-probs of the tokens sampled, with the most likely alternatives, best first
    lp = client.chat.completions.create(model="sft", messages=HELLO, temperature=0, logprobs=True, top_logprobs=3)
    content = lp.choices[0].logprobs.content
    assert "".join(t.token for t in content) == HTML_ANSWER
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token  # greedy: the top one
        assert [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)


def test_completions_continue_raw_text(client):
    plain = client.completions.create(model="init", prompt="Hello", max_tokens=6, temperature=0, logprobs=2)
    choice = plain.choices[0]
    assert choice.finish_reason == "length" and plain.usage.completion_tokens == 6
    assert len(choice.logprobs.tokens) == 6 and "".join(choice.logprobs.tokens) == choice.text
    streamed = client.completions.create(model="init", prompt="Hello", max_tokens=6, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == choice.text


def test_bad_requests_get_openai_errors(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4", messages=HELLO)
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    cases = [
        ({"model": "sft", "messages": HELLO, "temperature": 5}, "temperature"),
        ({"model": "sft", "messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"model": "sft", "messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
        ({"model": "sft", "messages": []}, "messages"),
        ({"model": "sft", "messages": HELLO, "max_tokens": 10_000}, "max_tokens"),
        ({"model": "sft", "messages": [{"role": "user", "content": "word " * 400}]}, "messages"),
        ({"messages": HELLO}, "model"),
    ]
    for body, param in cases:
        status, error = post(server[0] + "/v1/chat/completions", body)
        assert status == 400 and error["error"]["param"] == param, (body, error)
        assert (
            set(error["error"]) == {"message", "type", "param", "code"}
            and error["error"]["type"] == "invalid_request_error"
        )
    status, error = post(server[0] + "/v1/chat/completions", {"model": "sft", "messages": HELLO, "junk": "x" * 300_000})
    assert status == 413 and "limit" in error["error"]["message"]
    # fields the server does not know are ignored, as OpenAI's own server does
    status, ok = post(
        server[0] + "/v1/chat/completions",
        {"model": "sft", "messages": HELLO, "max_tokens": 2, "temperature": 0, "frequency_penalty": 0.5, "user": "me"},
    )
    assert status == 200 and ok["choices"][0]["finish_reason"] == "length"
    status, error = post(server[0] + "/api/vote", {"id": "no-such-battle", "choice": "a"})
    assert status == 404 and error["error"]["param"] == "id"
    status, error = post(server[0] + "/api/vote", {"id": "x", "choice": "maybe"})
    assert status == 400 and error["error"]["param"] == "choice"


def test_arena_votes_are_stored_once_under_concurrent_retries(server):
    base, db = server
    battles = []
    for i in range(50):
        status, battle = post(
            base + "/api/arena",
            {"messages": [{"role": "user", "content": f"Question {i}?"}], "max_tokens": 4, "session_id": "s1"},
        )
        assert status == 200 and [a["side"] for a in battle["answers"]] == ["a", "b"], battle
        battles.append(battle)
    assert "sft" not in json.dumps(battles) and "init" not in json.dumps(battles)  # names hidden until the vote
    results: list[tuple[int, dict]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(50)

    def voter(i: int) -> None:
        key = str(uuid.uuid4())
        body = {"id": battles[i]["id"], "choice": "abab"[i % 4] if i % 5 else "tie", "idempotency_key": key}
        barrier.wait()
        for _ in range(2):  # the same vote sent twice, as a client retrying after a lost reply does
            outcome = post(base + "/api/vote", body)
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=voter, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 100 and all(status == 200 for status, _ in results), [r for r in results if r[0] != 200][:3]
    assert sum(r["duplicate"] for _, r in results) == 50
    assert all(set(r["models"].values()) <= {"init", "sft"} for _, r in results)  # the reveal
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT v.battle_id, v.choice, b.response_a, b.response_b, b.session_id FROM votes v "
            "JOIN battles b ON b.id = v.battle_id"
        ).fetchall()
    assert sorted(r[0] for r in rows) == sorted(b["id"] for b in battles)  # every vote once, none lost
    assert all(r[2] is not None and r[3] is not None and r[4] == "s1" for r in rows)
    status, changed = post(base + "/api/vote", {"id": battles[1]["id"], "choice": "tie"})
    assert status == 409 and changed["error"]["code"] == "conflict"
    status, counts = get(base + "/api/votes")
    assert counts["total"] == 50 and counts["choices"]["tie"] == 10 and sum(p["votes"] for p in counts["pairs"]) == 50
    status, board = get(base + "/api/leaderboard")
    assert {m["model"] for m in board["models"]} == {"init", "sft"}
    for m in board["models"]:
        assert m["ci"][0] <= m["rating"] <= m["ci"][1]


def test_arena_streams_both_answers_and_a_vote_can_come_before_they_end(server):
    base, db = server
    raw = sse_lines(
        base + "/api/arena", {"messages": HELLO, "models": ["sft", "sft"], "temperature": 0, "stream": True}
    )
    assert raw[-1] == "[DONE]"
    events = [json.loads(x) for x in raw[:-1]]
    battle = events[0]["id"]
    texts = {s: "".join(e["delta"] for e in events[1:] if e["side"] == s) for s in "ab"}
    assert texts == {"a": HTML_ANSWER, "b": HTML_ANSWER}  # two samples of one model
    assert sorted(e["finish_reason"] for e in events if e.get("finish_reason")) == ["stop", "stop"]
    status, vote = post(base + "/api/vote", {"id": battle, "choice": "b", "better": "Hi! How can I help?"})
    assert status == 200 and vote["models"] == {"a": "sft", "b": "sft"}
    # a vote sent while the answers are still being written waits for them (greedy sft against init, which writes
    # on to max_tokens: models drawn at random and sampled answers made the HTML answer a matter of luck)
    request = urllib.request.Request(
        base + "/api/arena",
        headers={"Content-Type": "application/json"},
        data=json.dumps(
            {"messages": HELLO, "models": ["sft", "init"], "temperature": 0, "max_tokens": 96, "stream": True}
        ).encode(),
    )
    with urllib.request.urlopen(request, timeout=60) as r:
        first = json.loads(r.readline().decode()[len("data: ") :])
        status, early = post(base + "/api/vote", {"id": first["id"], "choice": "a"})
    assert status == 200
    with sqlite3.connect(db) as conn:
        a, b, sampling = conn.execute(
            "SELECT response_a, response_b, sampling FROM battles WHERE id = ?", (first["id"],)
        ).fetchone()
    assert HTML_ANSWER in (a, b) and json.loads(sampling)["max_tokens"] == 96


def test_vote_database_trains_and_exports(server, tmp_path, cli_env):
    base, db = server
    out = tmp_path / "prefs.jsonl"
    done = subprocess.run(
        FROMZERO + ["votes", "--db", str(db), "--out", str(out)], env=cli_env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    # JSONL lines end at "\n" only: str.splitlines would also cut at the \x1c or \u2028 a random model writes
    records = [json.loads(line) for line in out.read_text().split("\n") if line]
    assert records and all(r["prompt"][-1]["role"] == "user" and r["chosen"][0]["role"] == "assistant" for r in records)
    assert any(r["chosen"][0]["content"] == "Hi! How can I help?" for r in records)  # the written better answer
    battles = tmp_path / "battles.jsonl"
    done = subprocess.run(
        FROMZERO + ["votes", "--db", str(db), "--out", str(battles), "--format", "battles"],
        env=cli_env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    log = [json.loads(line) for line in battles.read_text().split("\n") if line]
    assert {r["winner"] for r in log} <= {"model_a", "model_b", "tie", "tie (bothbad)"} and len(log) >= 52
    with urllib.request.urlopen(base + "/api/export/preferences.jsonl", timeout=30) as r:
        assert r.read().decode() == out.read_text()
    bad = subprocess.run(
        FROMZERO + ["votes", "--db", str(tmp_path / "none.sqlite"), "--out", str(out)],
        env=cli_env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no such vote database" in bad.stderr


def test_api_key_guards_the_api_and_off_loopback_needs_one(run, tmp_path, cli_env):
    refused = subprocess.run(
        FROMZERO + ["serve", "--ckpt", str(run), "--host", "0.0.0.0", "--db", str(tmp_path / "v.db")],
        env={**cli_env, "FROMZERO_API_KEY": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--api-key" in refused.stderr
    with serving([run / "sft"], tmp_path / "votes.sqlite", key="s3cret") as base:
        assert get(base + "/v1/models")[0] == 401
        assert get(base + "/v1/models", key="wrong")[0] == 401
        status, models = get(base + "/v1/models", key="s3cret")
        assert status == 200 and [m["id"] for m in models["data"]] == ["sft"]
        assert post(base + "/api/arena", {"messages": HELLO})[0] == 401
        with urllib.request.urlopen(base + "/chat", timeout=10) as page:  # the page itself is public
            assert page.status == 200
        keyed = openai.OpenAI(base_url=base + "/v1", api_key="s3cret", max_retries=0)
        assert (
            keyed.chat.completions.create(model="sft", messages=HELLO, max_tokens=2, temperature=0)
            .choices[0]
            .finish_reason
            == "length"
        )
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base + "/v1", api_key="nope", max_retries=0).models.list()


# ---------------------------------------------------------------------------
# The continuous batcher, without a server


def tiny_engine() -> Engine:
    tok = Tokenizer.train(["count 1 2 3 4 5 6 7 8 9 10 and say the answer hello world"] * 10, vocab_size=300)
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=48, init_std=0.5
    )
    return Engine(Transformer(cfg).eval(), tok)


def run_batched(batcher: Batcher, prompts, sampling, seeds) -> list[list]:
    out = [[] for _ in prompts]
    finished = threading.Semaphore(0)

    def request(i: int) -> Request:
        def on_token(t, lp, top):
            out[i].append(t)
            return True

        def on_finish(reason, error):
            out[i].append(reason if error is None else error)
            finished.release()

        return Request(list(prompts[i]), sampling, seeds[i], on_token, on_finish)

    for i in range(len(prompts)):
        batcher.submit(request(i))
    for _ in prompts:
        assert finished.acquire(timeout=60)
    return out


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_continuous_batching_samples_what_each_request_samples_alone(temperature):
    engine = tiny_engine()
    prompts = [engine.encode(p) for p in ["count 1 2", "hello", "say the answer and count to ten please", "1", "the"]]
    sampling = SamplingConfig(max_new_tokens=12, temperature=temperature, top_p=0.9, stop_tokens=(engine.tok.end_id,))
    alone = [engine.generate([p], sampling, seed=7 + i)[0] for i, p in enumerate(prompts)]
    batcher = Batcher(engine, max_batch=3)  # five requests through three slots: two join as others leave
    try:
        out = run_batched(batcher, prompts, sampling, [7 + i for i in range(len(prompts))])
    finally:
        batcher.close()
    for got, want in zip(out, alone):
        assert [t for t in got[:-1] if t != engine.tok.end_id] == [t for t in want.tokens if t != engine.tok.end_id]
        assert got[-1] == want.finish_reason
    # decode steps are shared: fewer than one request at a time would need
    assert batcher.steps < sum(len(c.tokens) for c in alone) - len(prompts)


def test_a_failing_request_ends_alone():
    engine = tiny_engine()
    batcher = Batcher(engine, max_batch=4)
    sampling = SamplingConfig(max_new_tokens=5, temperature=0)
    try:
        out = run_batched(batcher, [[1] * 60, engine.encode("hello")], sampling, [0, 0])
    finally:
        batcher.close()
    assert isinstance(out[0][-1], ValueError) and "max_seq_len" in str(out[0][-1])
    assert out[1][-1] == "length" and len(out[1]) == 6
