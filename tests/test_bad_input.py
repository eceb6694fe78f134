"""Bad input fails cleanly: one line naming the file (line, record or config key) and what to do, before anything
is trained; and no half-written files are left behind."""

import errno
import gzip
import json
import re
import subprocess
import zlib

import pytest
from conftest import FROMZERO, save_tiny_policy
from typer.testing import CliRunner

from fromzero import checkpoint
from fromzero.cli import app
from fromzero.config import ConfigError, load_config
from fromzero.data import build as data_build
from fromzero.data.sources import DataError, SourceStats, iter_documents
from fromzero.data.tasks import ReasoningConfig, TaskSources, iter_tasks, load_tasks
from fromzero.data.world import WorldConfig, build_world
from fromzero.train.reward import RewardModel, load_reward_model


def smoke(*overrides):
    return load_config("smoke", list(overrides))


def cli(*args, env=None):
    """The command run in this process (a subprocess costs seconds of imports)."""
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def one_line(stderr: str) -> str:
    """The error: one line, after whatever progress bars were drawn, and no traceback."""
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], stderr
    return lines[-1]


def jsonl_gz(path, n=2000):
    raw = "".join(json.dumps({"text": f"record {i}: " + "words and more words " * 10}) + "\n" for i in range(n))
    path.write_bytes(gzip.compress(raw.encode()))
    return path


# ---------------------------------------------------------------------------
# Pretraining text


@pytest.mark.parametrize("content", ["", "  \n\t\n\n"])
def test_a_corpus_without_text_is_refused_before_the_tokenizer(tmp_path, content):
    corpus = tmp_path / "book.txt"
    corpus.write_text(content)
    with pytest.raises(DataError, match=rf"{re.escape(str(corpus))}: no text: .*point data.sources at another corpus"):
        data_build.build(smoke(f"data.sources=[{corpus}]"), tmp_path / "data", progress=False)
    assert not (tmp_path / "data" / "tokenizer.json").exists()
    empty_val = tmp_path / "val.txt"
    empty_val.write_text("\n")
    corpus.write_text("Some text. " * 100)
    with pytest.raises(DataError, match=rf"{re.escape(str(empty_val))}: no text: .*data.val_sources"):
        data_build.build(
            smoke(f"data.sources=[{corpus}]", f"data.val_sources=[{empty_val}]"), tmp_path / "data", progress=False
        )


def test_every_record_skipped_is_no_text_and_says_why(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"body": "the wrong field"}\n')
    with pytest.raises(DataError, match=r"no text: .*1 malformed records skipped, e.g. .*missing text field 'text'"):
        data_build.build(smoke(f"data.sources=[{corpus}]", "data.on_error=skip"), tmp_path / "data", progress=False)


def test_a_corpus_that_leaves_no_validation_sequence_is_refused(tmp_path):
    corpus = tmp_path / "verdict.txt"
    corpus.write_text("\n".join(f"Line {i} of a short story about a painter." for i in range(300)))
    out = tmp_path / "data"
    with pytest.raises(DataError, match="data.val_fraction is 0 and data.val_sources is empty"):
        data_build.build(smoke(f"data.sources=[{corpus}]", "data.val_fraction=0"), out, progress=False)
    # 1 % of 3,000 words is less than one sequence of the smoke preset's 64 + 1 tokens
    with pytest.raises(
        DataError,
        match=rf"{re.escape(str(corpus))}: the validation split has \d+ tokens, fewer than one "
        r"sequence of pretrain.seq_len \+ 1 = 65; raise data.val_fraction \(now 0.01\)",
    ):
        data_build.build(smoke(f"data.sources=[{corpus}]", "data.val_fraction=0.01"), out, progress=False)
    assert not data_build.is_built(out)  # so the next run checks again instead of reusing the shards
    meta = data_build.build(smoke(f"data.sources=[{corpus}]", "data.val_fraction=0.2"), out, progress=False)
    assert meta.splits["val"].tokens >= 65


def test_corrupt_truncated_and_mislabelled_gzip_end_in_one_line_naming_the_file(tmp_path):
    good = jsonl_gz(tmp_path / "good.jsonl.gz")
    data = good.read_bytes()
    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        DataError,
        match=rf"{re.escape(str(truncated))}: the gzip stream ends early \(truncated\) after "
        r"line \d+; copy or download the file again",
    ):
        list(iter_documents(truncated))
    damaged = tmp_path / "damaged.jsonl.gz"
    damaged.write_bytes(data[:10] + bytes(b ^ 0xFF for b in data[10:40]) + data[40:])  # the first deflate block
    with pytest.raises(DataError, match=rf"{re.escape(str(damaged))}: the gzip stream is corrupt \(.*\)"):
        list(iter_documents(damaged, on_error="skip"))  # no skipping past a broken stream
    crc = tmp_path / "crc.jsonl.gz"
    crc.write_bytes(data[:-8] + bytes(b ^ 0xFF for b in data[-8:-4]) + data[-4:])
    with pytest.raises(
        DataError, match=r"crc.jsonl.gz: the gzip stream is corrupt \(CRC check failed.*after line 2000"
    ):
        list(iter_documents(crc))
    plain = tmp_path / "plain.jsonl.gz"
    plain.write_text('{"text": "not compressed"}\n')
    with pytest.raises(DataError, match=r"plain.jsonl.gz: not gzip data .*compress it with gzip"):
        list(iter_documents(plain))
    whole = tmp_path / "array.json.gz"
    whole.write_bytes(gzip.compress(json.dumps([{"text": f"record {i}"} for i in range(2000)]).encode())[:2000])
    with pytest.raises(DataError, match=r"array.json.gz: the gzip stream ends early \(truncated\);"):
        list(iter_documents(whole))


def test_the_cli_reports_bad_files_in_one_line_and_names_the_option_that_skips(tmp_path):
    out = tmp_path / "data"
    truncated = tmp_path / "corpus.jsonl.gz"
    truncated.write_bytes(jsonl_gz(tmp_path / "good.jsonl.gz").read_bytes()[:3000])
    result = cli("data", "--out", out, "--preset", "smoke", "--set", f"data.sources=[{truncated}]")
    assert result.exit_code == 2
    assert one_line(result.stderr).startswith(f"error: {truncated}: the gzip stream ends early")
    bad_utf8 = tmp_path / "corpus.jsonl"
    bad_utf8.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    result = cli("data", "--out", out, "--preset", "smoke", "--set", f"data.sources=[{bad_utf8}]")
    assert result.exit_code == 2
    assert one_line(result.stderr) == (
        f"error: {bad_utf8}:2: invalid UTF-8 (invalid continuation byte at byte 13); "
        "save the file as UTF-8; --set data.on_error=skip skips and counts such records"
    )


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        zlib.error("Error -3 while decompressing data"),
        EOFError("Compressed file ended before the end-of-stream marker was reached"),
        PermissionError(13, "Permission denied", "x.txt"),
    ],
)
def test_file_errors_reach_the_user_as_one_line_and_debug_shows_the_traceback(monkeypatch, tmp_path, error):
    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(data_build, "build", broken)
    result = cli("data", "--out", tmp_path / "d", "--preset", "smoke")
    assert result.exit_code == 2
    line = one_line(result.stderr)
    assert line.startswith(f"error: {type(error).__name__}: ") and "FROMZERO_DEBUG=1 shows the traceback" in line
    debug = cli("data", "--out", tmp_path / "d", "--preset", "smoke", env={"FROMZERO_DEBUG": "1"})
    # click itself turns an EOFError reaching it into "Aborted!" (what it raises for Ctrl-D at a prompt)
    assert debug.exception is error or isinstance(error, EOFError)


def test_one_huge_record_reaches_the_tokenizer_in_pieces(tmp_path):
    corpus = tmp_path / "huge.jsonl"
    words = " ".join(f"w{i % 997}" for i in range(400_000))  # one 2.3 MB line with no line break
    corpus.write_text(json.dumps({"text": words}) + "\n")
    cfg = smoke(f"data.sources=[{corpus}]", "data.chunk_chars=20000", "data.tokenizer_chars=300000")
    pieces = list(data_build.tokenizer_texts(data_build.documents(cfg), cfg.data))
    assert max(map(len, pieces)) <= 20000 and sum(map(len, pieces)) == 300000
    assert "".join(pieces) == words[:300000]  # cut at spaces, nothing lost or added
    meta = data_build.build(cfg, tmp_path / "data", progress=False)
    assert meta.splits["train"].documents >= 90 and meta.splits["val"].tokens > 0  # 1.96M chars in 20k pieces


# ---------------------------------------------------------------------------
# Checkpoints


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint_and_no_temp_dir(tmp_path, monkeypatch):
    good, _, tok_file = save_tiny_policy(tmp_path)
    stage = tmp_path / "pretrain"
    model = checkpoint.load_model(good)
    first = checkpoint.save(stage, 1, model, tokenizer_file=tok_file, meta={"stage": "pretrain"})

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    for target in ("save_model", "shutil.copyfile"):
        with monkeypatch.context() as m:
            m.setattr(checkpoint if target == "save_model" else checkpoint.shutil, target.split(".")[-1], full_disk)
            with pytest.raises(
                OSError,
                match=rf"writing checkpoint {re.escape(str(stage))}/ckpt-0000002 failed \(No space "
                rf"left on device\); the previous checkpoint {re.escape(str(first))} is kept",
            ):
                checkpoint.save(stage, 2, model, tokenizer_file=tok_file, meta={"stage": "pretrain"})
        assert sorted(p.name for p in stage.iterdir()) == ["LATEST", "ckpt-0000001"]
        assert checkpoint.resolve(stage) == first
    gone = tmp_path / "gone" / "tokenizer.json"  # the starting checkpoint's tokenizer, removed while a stage ran
    with pytest.raises(
        OSError,
        match=rf"\(No such file or directory: {re.escape(str(gone))}\); the previous "
        rf"checkpoint .* is kept; restore {re.escape(str(gone))} and run again with --resume",
    ):
        checkpoint.save(stage, 2, model, tokenizer_file=gone, meta={"stage": "pretrain"})
    assert sorted(p.name for p in stage.iterdir()) == ["LATEST", "ckpt-0000001"]
    with monkeypatch.context() as m:
        m.setattr(checkpoint.torch, "save", full_disk)
        with pytest.raises(OSError, match="ENOSPC|No space left"):
            checkpoint.save(stage, 2, model, tokenizer_file=tok_file, meta={}, trainer_state={"step": 2})
    assert sorted(p.name for p in stage.iterdir()) == ["LATEST", "ckpt-0000001"]
    checkpoint.load_model(stage)


def test_the_cli_reports_a_full_disk_in_one_line(tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(data_build, "build", full_disk)
    result = cli("data", "--out", tmp_path / "d", "--preset", "smoke")
    assert one_line(result.stderr) == (
        "error: OSError: [Errno 28] No space left on device (FROMZERO_DEBUG=1 shows the traceback)"
    )


def test_a_reward_model_where_a_policy_is_expected_says_which_is_which(tmp_path):
    policy, _, tok_file = save_tiny_policy(tmp_path)
    rm = checkpoint.save(
        tmp_path / "rm",
        1,
        RewardModel.from_lm(checkpoint.load_model(policy), likelihood=True),
        tokenizer_file=tok_file,
        meta={"stage": "reward"},
    )
    assert checkpoint.is_reward_model(rm) and not checkpoint.is_reward_model(policy)
    with pytest.raises(
        ValueError,
        match=rf"checkpoint {re.escape(str(rm))} is a reward model \(it has score.\* "
        r"weights\), but a language model \(no score head\) is expected here; pass a "
        r"pretrain, SFT, DPO, PPO or GRPO checkpoint",
    ):
        checkpoint.load_model(rm)
    with pytest.raises(
        ValueError,
        match=r"is a language model \(no score head\), but a reward model .* is expected "
        r"here; pass the output of `fromzero reward`",
    ):
        load_reward_model(policy)
    result = cli("sample", "--ckpt", tmp_path / "rm", "Hello")
    assert result.exit_code == 2 and "is a reward model" in one_line(result.stderr)


@pytest.mark.parametrize("stage, section", [("ppo", "reward"), ("grpo", "grpo")])
def test_a_bad_ptx_file_is_one_line_naming_its_line_and_the_key_that_skips(tmp_path, stage, section):
    bad = tmp_path / "ptx.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    models = ["--reward-model", tmp_path / "rm"] if stage == "ppo" else []
    args = [stage, "--init", tmp_path / "sft", *models, "--out", tmp_path / "out", "--ptx-data", bad]
    result = cli(*args, "--preset", "smoke", "--set", f"{stage}.ptx_coef=1")
    assert result.exit_code == 2
    line = one_line(result.stderr)
    assert line.startswith(f"error: {bad}:2: bad messages record") and line.endswith(
        f"--set {section}.on_error=skip skips and counts such records"
    )
    # skipped as the line says, the run goes on to the next thing it needs: here the checkpoint, which is missing
    result = cli(*args, "--preset", "smoke", "--set", f"{stage}.ptx_coef=1", "--set", f"{section}.on_error=skip")
    assert result.exit_code == 2 and "no checkpoint at" in one_line(result.stderr)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------
# Task files


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_a_gsm8k_file_without_final_lines_is_not_read_as_free_text_answers(tmp_path):
    path = write_jsonl(
        tmp_path / "gsm8k.jsonl",
        [
            {
                "question": "Janet has 16 eggs and eats 3. How many are left?",
                "answer": "She eats 3.\nSo 16 - 3 = <<16-3=13>>13.",
            },
            {"question": "How many legs do 2 cats have?", "answer": "Each cat has 4 legs, so 8."},
        ],
    )
    with pytest.raises(
        DataError,
        match=rf"{re.escape(str(path))}:1: bad prompt_answer record: the answer \"She eats 3.\\n"
        r"So .*\" is a worked solution, not a final answer: end a GSM8K solution with a "
        r"line '#### N', or give the final answer alone",
    ):
        list(iter_tasks(path))
    stats = SourceStats()
    assert list(iter_tasks(path, on_error="skip", stats=stats)) == []
    assert (stats.documents, stats.skipped) == (0, 2)  # every record counted once
    math_style = write_jsonl(
        tmp_path / "math.jsonl",
        [
            {"problem": "Who won?", "answer": "\\text{Evelyn}"},
            {"problem": "Solve.", "answer": "\\left( 3, \\frac{\\pi}{2} \\right)"},
        ],
    )
    assert [t.answer for t in iter_tasks(math_style)] == ["\\text{Evelyn}", "\\left( 3, \\frac{\\pi}{2} \\right)"]


def test_holding_out_every_task_says_so(tmp_path):
    world = build_world(WorldConfig(n_people=24, n_places=6))
    one = write_jsonl(tmp_path / "one.jsonl", [{"question": "What is 2 + 2?", "answer": "4 = 4\n#### 4"}])
    with pytest.raises(
        ValueError,
        match=rf"{re.escape(str(one))}: holding out eval_fraction=0.05 of 1 tasks leaves none "
        r"to train on; add tasks, lower grpo.eval_fraction",
    ):
        load_tasks(TaskSources(data=[str(one)]), ReasoningConfig(), world)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Q?", "answer": None}])
    with pytest.raises(
        ValueError, match=r"bad.jsonl: no tasks \(1 malformed records skipped, e.g. .*the answer must be"
    ):
        load_tasks(TaskSources(data=[str(bad)], on_error="skip"), ReasoningConfig(), world)


# ---------------------------------------------------------------------------
# Config values


@pytest.mark.parametrize(
    "override, message",
    [
        ("pretrain.lr=-1", "config key 'pretrain.lr': Input should be greater than 0 (got -1)"),
        ("data.vocab_size=10", "config key 'data.vocab_size': Input should be greater than or equal to 262 (got 10)"),
        ("data.val_fraction=1", "config key 'data.val_fraction': Input should be less than 1 (got 1)"),
        ("model.n_heads=0", "config key 'model.n_heads': Input should be greater than or equal to 1 (got 0)"),
        (
            "pretrain.micro_batch_size=0",
            "config key 'pretrain.micro_batch_size': Input should be greater than or equal to 1",
        ),
        ("sft.steps=0", "config key 'sft.steps': Input should be greater than 0 (got 0)"),
        ("reward.warmup_steps=-1", "config key 'reward.warmup_steps': Input should be greater than or equal to 0"),
        ("dpo.lr=0", "config key 'dpo.lr': Input should be greater than 0 (got 0)"),
        ("grpo.ptx_coef=-1", "config key 'grpo.ptx_coef': Input should be greater than or equal to 0 (got -1)"),
        ("reward.val_fraction=-0.1", "config key 'reward.val_fraction': Input should be greater than or equal to 0"),
        ("reward.max_prompt_len=1", "config key 'reward.max_prompt_len': Input should be greater than or equal to 2"),
        ("world.n_people=1", "config key 'world.n_people': Input should be greater than or equal to 2 (got 1)"),
        ("eval.val_batches=0", "config key 'eval.val_batches': Input should be greater than or equal to 1 (got 0)"),
    ],
)
def test_numbers_out_of_range_fail_at_load_naming_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        smoke(override)
    assert str(e.value).startswith(message)


def test_fromzero_config_refuses_a_bad_value_instead_of_printing_a_plan():
    result = cli("config", "--preset", "smoke", "--set", "pretrain.lr=-1")
    assert result.exit_code == 2 and result.stdout == ""
    assert one_line(result.stderr) == "error: config key 'pretrain.lr': Input should be greater than 0 (got -1)"


def test_a_real_process_prints_one_line_for_a_corrupt_file(tmp_path, cli_env):
    corpus = tmp_path / "c.jsonl.gz"
    corpus.write_bytes(b"\x1f\x8b\x08\x00" + bytes(60))
    proc = subprocess.run(
        FROMZERO + ["data", "--out", str(tmp_path / "d"), "--preset", "smoke", "--set", f"data.sources=[{corpus}]"],
        env=cli_env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert one_line(proc.stderr).startswith(f"error: {corpus}: the gzip stream")
