"""`fromzero synth`: chunking, parsing, the filters and their counts, retries, resume after a kill, preference pairs,
against a scripted OpenAI-compatible server on loopback, a real `fromzero serve`, and a checkpoint in process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import FROMZERO
from synth_server import ScriptedServer

from fromzero import synth
from fromzero.synth.config import SynthConfig
from fromzero.synth.parse import parse_pairs


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- chunking


def test_chunks_overlap_cover_every_token_and_are_the_documents_own_text(smoke_data):
    from fromzero.tokenizer import Tokenizer

    tok = Tokenizer.load(smoke_data / "tokenizer.json")
    text = " ".join(f"Sentence number {i} talks about the weather in town {i % 7}." for i in range(40))
    chunks = synth.chunk_documents([("doc.txt", text), ("short.txt", "A short note.")], tok, 32, 8)
    long_ = [c for c in chunks if c.source == "doc.txt"]
    assert len(long_) > 3 and [c.index for c in long_] == list(range(len(long_)))
    for c in chunks:
        source = text if c.source == "doc.txt" else "A short note."
        assert source[c.start : c.end] == c.text and c.text == c.text.strip()
        assert len(tok.encode(c.text)) <= 33  # a window of 32 tokens (the first word's leading space aside)
    for a, b in zip(long_, long_[1:]):
        assert b.start < a.end  # consecutive chunks share their overlap
    assert long_[0].start == 0 and long_[-1].end == len(text)
    assert [c.text for c in chunks if c.source == "short.txt"] == ["A short note."]
    words = synth.chunk_documents([("w", "one two three four five six seven")], synth.WordSpans(), 3, 1)
    assert [c.text for c in words] == ["one two three", "three four five", "five six seven"]
    with pytest.raises(ValueError, match="overlap"):
        synth.chunk_documents([("w", "x")], synth.WordSpans(), 4, 4)


def test_read_documents_names_each_file_and_record(tmp_path):
    (tmp_path / "a.txt").write_text("First doc.<|endoftext|>Second doc.")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "A record."}) + "\n")
    docs = synth.read_documents([str(tmp_path)])
    assert docs == [
        (f"{tmp_path}/a.txt#0", "First doc."),
        (f"{tmp_path}/a.txt#1", "Second doc."),
        (f"{tmp_path}/b.jsonl", "A record."),
    ]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blank.txt").write_text("  \n")
    with pytest.raises(ValueError, match="no documents"):
        synth.read_documents([str(tmp_path / "empty")])


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "text, pairs, style",
    [
        (
            '[{"question": "Who?", "answer": "Ann."}, {"q": "Where?", "a": "Oslo."}]',
            [("Who?", "Ann."), ("Where?", "Oslo.")],
            "json",
        ),
        (
            'Sure! ```json\n{"pairs": [{"instruction": "Why?", "output": "Because."}]}\n```',
            [("Why?", "Because.")],
            "json",
        ),
        ("<question>How old?</question>\n<answer>41</answer>", [("How old?", "41")], "tagged"),
        (
            "Question: Who is Ann?\nAnswer: A pilot.\nQuestion: Where?\nAnswer: Oslo.",
            [("Who is Ann?", "A pilot."), ("Where?", "Oslo.")],
            "labelled",
        ),
        ("**Q1:** What?\n**A1:** That.", [("What?", "That.")], "labelled"),
        (
            "1. What does Ann do? She flies planes.\n2. Where? In Oslo.",
            [("What does Ann do?", "She flies planes."), ("Where?", "In Oslo.")],
            "numbered",
        ),
    ],
)
def test_parse_pairs_reads_what_small_models_write(text, pairs, style):
    parsed = parse_pairs(text)
    assert parsed.pairs == pairs and parsed.style == style and parsed.reason is None


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("I cannot help with that.", "no_pairs"),
        ("Question: Who is Ann?", "unfinished"),
        ('[{"question": "x"', "no_pairs"),
    ],
)
def test_parse_pairs_says_why_nothing_was_read(text, reason):
    parsed = parse_pairs(text)
    assert parsed.pairs == [] and parsed.reason == reason


# --------------------------------------------------------------------------- the filters, retries, judge: a scripted server

DOCS = {
    "good": "Ann Berg is a pilot who lives in Oslo. Ann Berg has a dog called Rex.",
    "dupes": "Carl Dunn is a baker in Leeds. Carl Dunn likes chess.",
    "short": "Eva Fox keeps bees in Bath.",
    "long": "Gus Hale writes long letters in York.",
    "ungrounded": "Ida Jones is a nurse in Hull.",
    "contaminated": "Kim Lowe is a tailor in Ely.",
    "judged": "Max Neal is a farmer in Rye.",
    "broken": "Ola Park is a cook in Wells.",
    "cut": "Pia Quinn is a judge in Derby.",
    "flaky": "Rob Stone is a miner in Truro.",
    "down": "Sam Todd is a vet in Poole.",
}
REPLIES = {
    "Ann Berg": "Question: What is the job of Ann Berg?\nAnswer: Ann Berg is a pilot.\n"
    "Question: What is the name of Ann Berg's dog?\nAnswer: The dog is called Rex.",
    "Carl Dunn": "Question: Where does Carl Dunn work?\nAnswer: Carl Dunn is a baker in Leeds.\n"
    "Question: Where does Carl Dunn work?\nAnswer: Carl Dunn is a baker in Leeds.\n"
    "Question: Where does Carl Dunn work?\nAnswer: Carl Dunn is a baker in Leeds town.",
    "Eva Fox": "Question: Bees?\nAnswer: Bath, where Eva Fox keeps bees.\nQuestion: What does Eva Fox keep?\nAnswer: B",
    "Gus Hale": "Question: What does Gus Hale write?\nAnswer: " + "Gus Hale writes long letters in York. " * 20,
    "Ida Jones": "Question: What is Ida Jones's job?\nAnswer: She sells cars in Paris.",
    "Kim Lowe": "Question: Where does Kim Lowe work as a tailor?\nAnswer: Kim Lowe is a tailor in Ely.",
    "Max Neal": "Question: What is Max Neal's job?\nAnswer: Max Neal is a farmer lowscore.\n"
    "Question: Where does Max Neal live?\nAnswer: Max Neal lives in Rye nojudge.",
    "Ola Park": "I am sorry, I cannot write questions.",
    "Pia Quinn": (
        "Question: What is Pia Quinn's job?\nAnswer: Pia Quinn is a judge.\nQuestion: Where does Pia Quinn "
        "live?\nAnswer: Pia Quinn lives in",
        "length",
    ),
    "Rob Stone": "Question: What does Rob Stone mine?\nAnswer: Rob Stone is a miner in Truro.",
    "Sam Todd": "Question: What is Sam Todd's job?\nAnswer: Sam Todd is a vet.",
}


def scripted_reply(prompt: str):
    if prompt.startswith("Rate the answer"):
        answer = prompt.split("Answer:")[-1]
        return "2" if "lowscore" in answer else "no idea" if "nojudge" in answer else "Score: 9/10"
    return next(reply for name, reply in REPLIES.items() if name in prompt)


def write_docs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in DOCS.items():
        (folder / f"{name}.txt").write_text(text)
    return folder


def test_every_filter_drops_and_counts_and_a_failing_server_is_retried(tmp_path):
    docs = write_docs(tmp_path / "docs")
    evals = tmp_path / "eval.jsonl"
    evals.write_text(json.dumps({"prompt": "Where does Kim Lowe work as a tailor?", "response": "In Ely."}) + "\n")
    cfg = SynthConfig(
        pairs_per_chunk=1,
        grounding=0.5,
        judge="llm",
        judge_threshold=5,
        decontaminate=[str(evals)],
        retries=2,
        backoff_s=0.01,
    )
    server = ScriptedServer(scripted_reply, fail={"Rob Stone": (500, 2), "Sam Todd": (429, 5)})
    with server.running():
        gen = synth.EndpointGenerator(
            server.url, "scripted", concurrency=3, retries=cfg.retries, backoff_s=cfg.backoff_s
        )
        chunks = synth.chunk_documents(synth.read_documents([str(docs)]), synth.WordSpans(), 200, 0)
        report = synth.synth_instructions(
            chunks, gen, cfg, tmp_path / "out" / "pairs.jsonl", judge=synth.LLMJudge(gen), progress=False
        )
    assert len(chunks) == len(DOCS) and report.requests == len(DOCS)
    # Rob Stone's two 500s were retried (3 tries); Sam Todd's 429s outlasted the retries: a failed request
    assert server.failures["Rob Stone"] == 2 and server.failures["Sam Todd"] == 3
    assert report.failed == 2 and report.failed_reasons == {"request_error": 1, "parse_no_pairs": 1}
    assert report.generated == 15
    assert dict(report.dropped) == {
        "truncated": 1,
        "too_short": 2,
        "too_long": 1,
        "duplicate": 1,
        "near_duplicate": 1,
        "ungrounded": 1,
        "contaminated": 1,
        "judge_failed": 1,
        "judge_below_threshold": 1,
    }
    kept = lines(tmp_path / "out" / "pairs.jsonl")
    assert report.kept == len(kept) == 15 - sum(report.dropped.values()) == 5
    assert {r["messages"][0]["content"] for r in kept} == {
        "What is the job of Ann Berg?",
        "What is the name of Ann Berg's dog?",
        "Where does Carl Dunn work?",
        "What is Pia Quinn's job?",
        "What does Rob Stone mine?",
    }
    first = kept[0]
    assert first["messages"][1]["role"] == "assistant"
    prov = first["provenance"]
    assert prov["generator"] == "scripted" and prov["document"].endswith(".txt") and prov["score"] == 9.0
    assert {"chunk", "start", "end", "template", "seed", "judge"} <= set(prov)
    rejected = lines(tmp_path / "out" / "pairs.rejected.jsonl")
    assert sorted(r["reason"] for r in rejected) == sorted(
        [*report.dropped.elements(), "request_error", "parse_no_pairs"]
    )
    assert next(r for r in rejected if r["reason"] == "parse_no_pairs")["raw"] == REPLIES["Ola Park"]
    saved = json.loads((tmp_path / "out" / "pairs.report.json").read_text())
    assert saved["kept"] == 5 and saved["dropped"] == dict(report.dropped)
    table = report.table()
    assert "dropped: near_duplicate" in table and "kept" in table

    # the kept file is SFT data as `fromzero sft --data` reads it
    from fromzero.data.instruct import iter_conversations

    assert len(list(iter_conversations(str(tmp_path / "out" / "pairs.jsonl")))) == 5


def test_a_rerun_asks_only_what_failed_and_a_changed_setting_asks_again(tmp_path):
    docs = write_docs(tmp_path / "docs")
    cfg = SynthConfig(pairs_per_chunk=1, retries=0, backoff_s=0)
    server = ScriptedServer(scripted_reply, fail={"Rob Stone": (503, 1)})
    out = tmp_path / "pairs.jsonl"
    with server.running():
        gen = synth.EndpointGenerator(server.url, "scripted", retries=0)
        chunks = synth.chunk_documents(synth.read_documents([str(docs)]), synth.WordSpans(), 200, 0)
        first = synth.synth_instructions(chunks, gen, cfg, out, progress=False)
        assert first.failed_reasons == {"request_error": 1, "parse_no_pairs": 1} and len(server.requests) == len(DOCS)
        again = synth.synth_instructions(chunks, gen, cfg, out, progress=False)
        # the unparseable reply is an answer (asking again at the same seed would get it again); the error is not
        assert again.resumed == len(DOCS) - 1 and again.failed_reasons == {"parse_no_pairs": 1}
        assert len(server.requests) == len(DOCS) + 1
        assert again.kept == first.kept + 1
        hotter = synth.synth_instructions(chunks, gen, cfg.model_copy(update={"temperature": 0.5}), out, progress=False)
        assert hotter.resumed == 0 and len(server.requests) == 2 * len(DOCS) + 1


def test_resume_after_the_client_is_killed(tmp_path, cli_env):
    """A run killed mid-way (SIGKILL: nothing is cleaned up) keeps every reply it logged; the re-run asks only the
    rest and its output is the same as a run that was never interrupted."""
    docs = tmp_path / "docs"
    docs.mkdir()
    people = [f"Person{i} Surname{i}" for i in range(40)]
    for i, name in enumerate(people):
        (docs / f"{i:02d}.txt").write_text(f"{name} works as a pilot in Town{i}.")

    def reply(prompt: str) -> str:
        name = next(n for n in people if n + " " in prompt)
        return f"Question: What is the job of {name}?\nAnswer: {name} works as a pilot."

    server = ScriptedServer(reply, delay_s=0.05)
    out = tmp_path / "out" / "pairs.jsonl"
    raw = out.with_name("pairs.raw.jsonl")
    cmd = FROMZERO + [
        "synth",
        "instruct",
        "--docs",
        str(docs),
        "--out",
        str(out),
        "--endpoint",
        server.url,
        "--model",
        "scripted",
        "--set",
        "synth.pairs_per_chunk=1",
        "--set",
        "synth.concurrency=1",
    ]
    with server.running():
        proc = subprocess.Popen(cmd, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while time.time() < deadline and (not raw.exists() or len(raw.read_text().splitlines()) < 16):
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        logged = len(raw.read_text().splitlines())
        assert 16 <= logged < 40 and not out.exists()
        with open(raw, "a") as f:
            f.write('{"key": "cut short by the kill')  # a line half-written when the process died
        asked = len(server.requests)
        done = subprocess.run(cmd, env=cli_env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    assert len(server.requests) - asked == 40 - logged
    report = json.loads(out.with_name("pairs.report.json").read_text())
    assert report["resumed"] == logged and report["kept"] == 40 and report["requests"] == 40
    assert all(json.loads(line) for line in raw.read_text().splitlines())  # the torn line was cut off
    assert sorted(r["messages"][0]["content"] for r in lines(out)) == sorted(f"What is the job of {n}?" for n in people)


def test_prefs_pairs_best_and_worst_and_drop_ties_and_unscored(tmp_path):
    answers = {
        "Name a colour.": ["Blue. good", "Red. bad", "Green. good"],
        "Say hi.": ["Hi. good", "Hello. good"],
        "Count to two.": ["One, two. nojudge", "1 2 nojudge"],
        "Say yes.": ["Yes. good", "Yes. good"],
    }
    calls: dict[str, int] = {}

    def reply(prompt: str) -> str:
        if prompt.startswith("Rate the answer"):
            answer = prompt.split("Answer:")[-1]
            return "9" if "good" in answer else "3" if "bad" in answer else "?"
        i = calls[prompt] = calls.get(prompt, -1) + 1
        options = answers[prompt]
        return options[i % len(options)]

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(answers) + "\n")
    server = ScriptedServer(reply)
    out = tmp_path / "prefs.jsonl"
    with server.running():
        gen = synth.EndpointGenerator(server.url, "scripted", concurrency=1)
        report = synth.synth_preferences(
            synth.read_prompts(prompts),
            gen,
            synth.LLMJudge(gen, default="prefs_judge.txt"),
            SynthConfig(),
            out,
            k=3,
            progress=False,
        )
    assert report.generated == 4 and report.kept == 1
    assert dict(report.dropped) == {"tie": 1, "unscored": 1, "too_few_answers": 1}
    (pair,) = lines(out)
    assert pair["chosen"] in ("Blue. good", "Green. good") and pair["rejected"] == "Red. bad"
    assert pair["provenance"]["chosen_score"] == 9.0 and pair["provenance"]["rejected_score"] == 3.0

    from fromzero.data.preference import PreferenceSources, load_pairs

    pairs, stats = load_pairs(PreferenceSources(data=[str(out)]))
    assert len(pairs) == 1 and pairs[0].messages == [{"role": "user", "content": "Name a colour."}]


def test_bad_settings_and_inputs_fail_in_one_line(tmp_path, cli_env):
    docs = write_docs(tmp_path / "docs")
    template = tmp_path / "t.txt"
    template.write_text("Write questions.")  # no {chunk}
    cases = [
        (["--docs", str(docs), "--out", str(tmp_path / "o.jsonl")], "--ckpt DIR"),
        (
            ["--docs", str(docs), "--out", str(tmp_path / "o.jsonl"), "--endpoint", "http://127.0.0.1:9"],
            "needs --model",
        ),
        (
            [
                "--docs",
                str(tmp_path / "nope"),
                "--out",
                str(tmp_path / "o.jsonl"),
                "--endpoint",
                "http://127.0.0.1:9",
                "--model",
                "m",
            ],
            "no such file",
        ),
        (
            [
                "--docs",
                str(docs),
                "--out",
                str(tmp_path / "o.jsonl"),
                "--endpoint",
                "http://127.0.0.1:9",
                "--model",
                "m",
                "--template",
                str(template),
            ],
            "must contain {chunk}",
        ),
        (
            [
                "--docs",
                str(docs),
                "--out",
                str(tmp_path / "o.jsonl"),
                "--endpoint",
                "http://127.0.0.1:9",
                "--model",
                "m",
                "--set",
                "synth.chunk_overlap=500",
            ],
            "chunk_overlap",
        ),
    ]
    for args, message in cases:
        r = subprocess.run(FROMZERO + ["synth", "instruct", *args], env=cli_env, capture_output=True, text=True)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- the pipeline's synth stage


def test_the_synth_stage_learns_the_new_people_from_a_local_teacher(tmp_path, cli_env):
    """`fromzero run` with synth.endpoint: a local server (here one that reads each chunk and writes right pairs about
    the facts in it, as a capable local model would) writes the data, the filters keep it, SFT continues on it with
    a replay, and the model answers the generated questions about the new people it could not answer before."""
    from fromzero import checkpoint
    from fromzero.config import load_config
    from fromzero.data.world import ATTRIBUTES, build_world
    from fromzero.data.world_chat import QUESTIONS, Question, fact_sentence
    from fromzero.eval.qa import accuracy

    world = build_world(load_config("smoke").world)
    facts = {p.name: world.facts(p) for p in world.new_people}

    def teacher(prompt: str) -> str:
        chunk = prompt.split("\n\n", 1)[1]
        p = next((q for q in world.new_people if q.first_name in chunk), None)
        if p is None:  # a piece of a biography that names no one
            return "There is nothing to ask about this text."
        pairs = [
            (QUESTIONS[attr][0][0].format(n=p.name, his=p.his), fact_sentence(p, attr))
            for attr in ATTRIBUTES
            if str(facts[p.name][attr]) in chunk
        ]
        return "\n".join(f"Question: {q}\nAnswer: {a}" for q, a in pairs) or "Nothing to ask."

    server = ScriptedServer(teacher)
    out = tmp_path / "run"
    with server.running():
        r = subprocess.run(
            FROMZERO
            + [
                "run",
                "--preset",
                "smoke",
                "--out",
                str(out),
                "--preference",
                "none",
                "--set",
                "reasoning_rl=false",
                "--set",
                f"synth.endpoint={server.url}",
                "--set",
                "synth.model=teacher",
                "--set",
                "synth.steps=200",
                "--set",
                "synth.lr=0.003",
                "--set",
                "synth.grounding=0.3",
            ],
            env=cli_env,
            capture_output=True,
            text=True,
        )
    assert r.returncode == 0, r.stderr[-3000:]
    stage = json.loads((out / "summary.json").read_text())["stages"]["synth"]
    assert stage["kept"] > 0 and stage["generated"] == stage["kept"] + sum(stage["dropped"].values())
    assert {"new_people_acc_before", "new_people_acc_after", "heldout_phrasing_acc_after"} <= set(stage)
    kept = lines(out / "synth" / "pairs.jsonl")
    assert all(k["provenance"]["generator"] == "teacher" for k in kept)
    questions = []
    for k in kept:
        q = k["messages"][0]["content"]
        p = next(p for p in world.new_people if p.name in q)
        attr = next(a for a in ATTRIBUTES if QUESTIONS[a][0][0].format(n=p.name, his=p.his) == q)
        questions.append(Question(q, p.name, attr, facts[p.name][attr]))
    tok_ckpt = checkpoint.resolve(out / "sft")
    from fromzero.tokenizer import Tokenizer

    tok = Tokenizer.load(checkpoint.tokenizer_file(tok_ckpt))
    before, _ = accuracy(checkpoint.load_model(tok_ckpt), tok, questions, world)
    after, _ = accuracy(checkpoint.load_model(checkpoint.resolve(out / "synth")), tok, questions, world)
    assert after >= before + 0.3, (before, after)


def test_in_process_replies_depend_on_their_own_seed_only(tmp_path):
    """A request sampled alone (as on resume) gets the reply it got in a batch with others: rows are seeded per
    request, not per batch."""
    from conftest import save_tiny_policy

    ckpt, _, _ = save_tiny_policy(tmp_path)
    gen = synth.EngineGenerator.from_checkpoint(ckpt, batch_size=2)
    opts = {"temperature": 1.0, "top_p": 0.95, "max_new_tokens": 8}
    batch = gen.complete(["count 1 2", "say the answer", "count 3"], seeds=[1, 2, 3], **opts)
    alone = gen.complete(["say the answer"], seeds=[2], **opts)
    assert alone[0] == batch[1] and gen.complete(["say the answer"], seeds=[9], **opts)[0].text != alone[0].text
    too_long = gen.complete(["count " * 60], seeds=[0], **opts)[0]
    assert too_long.finish_reason == "error" and "max_seq_len" in too_long.error


def test_fromzero_serve_is_an_endpoint(tmp_path, cli_env):
    """`fromzero synth instruct --endpoint` against a real `fromzero serve` on loopback, several requests in flight
    at once through its batcher: the served model's pairs are parsed, filtered, and written with its name."""
    from serving import make_run, serving

    doc = "Ann Berg is a baker in Ely. She has a dog called Rex."
    reply = "Question: What is Ann Berg's job?\nAnswer: Ann Berg is a baker."
    prompt = synth.render_prompt(synth.DEFAULT_TEMPLATE, doc, 1)
    run = make_run(tmp_path / "served", answer=reply, prompts=(prompt,))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "ann.txt").write_text(doc + "\n")
    out = tmp_path / "pairs.jsonl"
    with serving([run], tmp_path / "votes.sqlite", "--max-tokens", "64") as base:
        r = subprocess.run(
            FROMZERO
            + [
                "synth",
                "instruct",
                "--docs",
                str(tmp_path / "docs"),
                "--out",
                str(out),
                "--endpoint",
                base + "/v1",
                "--model",
                "sft",
                "--pairs-per-chunk",
                "4",
                "--set",
                "synth.temperature=0",
                "--set",
                "synth.concurrency=4",
                "--set",
                "synth.max_new_tokens=48",
                "--set",
                "synth.near_duplicate=1.0",
            ],
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(out.with_suffix(".report.json").read_text())
    # four greedy requests, one reply each: one pair kept, the three copies of it dropped as duplicates (near
    # duplicates off: a threshold of 1 is exact copies only)
    assert report["requests"] == 4 and report["generated"] == 4 and report["dropped"] == {"duplicate": 3}
    (kept,) = lines(out)
    assert kept["messages"] == [
        {"role": "user", "content": "What is Ann Berg's job?"},
        {"role": "assistant", "content": "Ann Berg is a baker."},
    ]
    assert kept["provenance"]["generator"] == "sft" and kept["provenance"]["document"].endswith("ann.txt")
