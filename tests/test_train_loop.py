"""The shared loop: loss falls, exact resume after SIGKILL, NaN guard, schedule, DDP equivalence."""

import json
import math
import signal
import subprocess
import time

import pytest
import torch
from conftest import FROMZERO

from fromzero import checkpoint
from fromzero.train.loop import TrainConfig, TrainingDiverged, read_metrics


def pretrain_cmd(data, out, *sets):
    cmd = FROMZERO + ["pretrain", "--preset", "smoke", "--data", str(data), "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def losses(stage_dir):
    return {r["step"]: r["loss"] for r in read_metrics(stage_dir) if "loss" in r}


def test_pretraining_lowers_loss_and_writes_a_checkpoint(smoke_data, tmp_path, cli_env):
    subprocess.run(pretrain_cmd(smoke_data, tmp_path / "p"), check=True, env=cli_env, capture_output=True)
    curve = losses(tmp_path / "p")
    assert len(curve) == 30
    assert sum(list(curve.values())[-5:]) / 5 < curve[1] - 0.8
    ckpt = checkpoint.resolve(tmp_path / "p")
    assert ckpt.name == "ckpt-0000030" and (tmp_path / "p" / "DONE").exists()
    model = checkpoint.load_model(ckpt)
    assert model.cfg.vocab_size == 512
    evals = [r for r in read_metrics(tmp_path / "p") if "val_bpb" in r]
    assert [r["step"] for r in evals] == [15, 30]


def test_resume_after_sigkill_gives_identical_losses(smoke_data, tmp_path, cli_env):
    # with dropout: its random masks come back with the RNG state too
    sets = ["pretrain.steps=60", "pretrain.dropout=0.1", "pretrain.checkpoint_every=10", "pretrain.eval_every=1000"]
    subprocess.run(pretrain_cmd(smoke_data, tmp_path / "full", *sets), check=True, env=cli_env, capture_output=True)
    reference = losses(tmp_path / "full")

    proc = subprocess.Popen(
        pretrain_cmd(smoke_data, tmp_path / "killed", *sets),
        env=cli_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and max(losses(tmp_path / "killed"), default=0) < 25:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "DONE").exists(), "the run finished before it could be killed"
    killed_at = checkpoint.load_meta(tmp_path / "killed")["step"]
    assert 20 <= killed_at < 60

    subprocess.run(
        pretrain_cmd(smoke_data, tmp_path / "killed", *sets) + ["--resume"],
        check=True,
        env=cli_env,
        capture_output=True,
    )
    resumed = losses(tmp_path / "killed")
    assert sorted(resumed) == list(range(1, 61))
    assert resumed == reference


def test_existing_run_needs_resume_flag(smoke_data, tmp_path, cli_env):
    cmd = pretrain_cmd(smoke_data, tmp_path / "p", "pretrain.steps=2")
    subprocess.run(cmd, check=True, env=cli_env, capture_output=True)
    again = subprocess.run(cmd, env=cli_env, capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr


def test_nan_loss_stops_and_keeps_last_good_checkpoint(smoke_data, tmp_path):
    from fromzero.config import load_config
    from fromzero.tokenizer import Tokenizer
    from fromzero.train import pretrain

    cfg = load_config("smoke", ["pretrain.steps=20", "pretrain.checkpoint_every=5"]).pretrain
    tok = Tokenizer.load(smoke_data)
    model = pretrain.init_model(load_config("smoke").model, tok, 0)
    checkpoint.save(tmp_path / "init", 0, model, tokenizer_file=smoke_data / "tokenizer.json", meta={})
    calls = {"n": 0}
    real = pretrain.next_token_loss

    def poisoned(m, batch):
        calls["n"] += 1
        loss, metrics = real(m, batch)
        return (loss * float("nan") if calls["n"] > 14 else loss), metrics  # 2 micro-batches a step

    pretrain.next_token_loss = poisoned
    try:
        with pytest.raises(TrainingDiverged, match=r"at step 8.*last good checkpoint kept at .*ckpt-0000005"):
            pretrain.train(cfg, smoke_data, tmp_path / "p", init=tmp_path / "init")
    finally:
        pretrain.next_token_loss = real
    assert checkpoint.load_meta(tmp_path / "p")["step"] == 5
    good = checkpoint.load_model(tmp_path / "p")
    assert all(torch.isfinite(p).all() for p in good.parameters())


def test_schedules():
    cos = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert cos.lr_at(5) == pytest.approx(0.5) and cos.lr_at(10) == pytest.approx(1.0)
    assert cos.lr_at(55) == pytest.approx(0.55) and cos.lr_at(100) == pytest.approx(0.1)
    wsd = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.0, schedule="wsd", decay_fraction=0.2)
    assert wsd.lr_at(80) == 1.0 and wsd.lr_at(90) == pytest.approx(0.5) and wsd.lr_at(100) == pytest.approx(0.0)


def test_accumulation_must_divide_the_token_batch():
    cfg = TrainConfig(batch_tokens=1000, micro_batch_size=8, seq_len=64)
    with pytest.raises(ValueError, match="not a multiple"):
        cfg.accumulation(1)
    assert TrainConfig(batch_tokens=2048, micro_batch_size=8, seq_len=64).accumulation(2) == 2


def test_checkpoints_are_replaced_atomically(smoke_data, tmp_path):
    from fromzero.config import load_config
    from fromzero.tokenizer import Tokenizer
    from fromzero.train import pretrain

    model = pretrain.init_model(load_config("smoke").model, Tokenizer.load(smoke_data), 0)
    tok = smoke_data / "tokenizer.json"
    checkpoint.save(tmp_path, 1, model, tokenizer_file=tok, meta={})
    (tmp_path / "ckpt-0000002").mkdir()  # debris of a run killed between writing and pointing LATEST
    (tmp_path / "ckpt-0000002" / "model.safetensors").write_text("partial")
    checkpoint.save(tmp_path, 2, model, tokenizer_file=tok, meta={"note": "second"})
    assert checkpoint.load_meta(tmp_path) == {"step": 2, "note": "second"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "ckpt-0000002"]
    checkpoint.load_model(tmp_path)


def test_torchrun_two_processes_match_one_process(smoke_data, tmp_path, cli_env):
    sets = ["pretrain.steps=6", "pretrain.precision=fp32", "pretrain.eval_every=3"]
    subprocess.run(pretrain_cmd(smoke_data, tmp_path / "one", *sets), check=True, env=cli_env, capture_output=True)
    cmd = pretrain_cmd(smoke_data, tmp_path / "two", *sets)
    torchrun = [
        cmd[0],
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29533",
        "-m",
        "fromzero",
    ] + cmd[3:]
    done = subprocess.run(torchrun, env=cli_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(1, 7))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4)
    val_one = [r["val_loss"] for r in read_metrics(tmp_path / "one") if "val_loss" in r]
    val_two = [r["val_loss"] for r in read_metrics(tmp_path / "two") if "val_loss" in r]
    assert val_two == pytest.approx(val_one, rel=1e-4)
    assert math.isfinite(json.loads((tmp_path / "two" / "DONE").read_text())["loss"])


def test_mfu_counts_the_flops_a_batch_source_spends_itself(smoke_data, tmp_path):
    """An RL batch source samples and scores with models the loop never sees; what it reports spending
    (`extra_flops`) is in the step's MFU beside the training FLOPs."""
    from fromzero.config import load_config
    from fromzero.data.build import open_split
    from fromzero.data.loader import PackedBatches
    from fromzero.dist import setup
    from fromzero.tokenizer import Tokenizer
    from fromzero.train import loop, pretrain

    cfg = load_config("smoke", ["pretrain.steps=3", "pretrain.precision=fp32", "pretrain.eval_every=100"]).pretrain
    model = pretrain.init_model(load_config("smoke").model, Tokenizer.load(smoke_data), 0)
    spent_per_step = 3e12  # far more than the step's training FLOPs: it shows in the MFU

    class Spending(PackedBatches):
        def extra_flops(self) -> float:
            return spent_per_step

    batches = Spending(open_split(smoke_data, "train"), cfg.seq_len, cfg.micro_batch(1), seed=0)
    stage = loop.Stage("pretrain", tmp_path / "p", smoke_data / "tokenizer.json", setup("cpu"))
    loop.run(cfg, stage, model, batches, loop.next_token_loss)
    peak = loop.matmul_peak_flops(torch.device("cpu"), torch.float32)
    rows = [r for r in read_metrics(tmp_path / "p") if "mfu" in r]
    times = [0.0] + [r["time"] for r in rows]
    train_flops = model.cfg.flops_per_token(cfg.seq_len)
    for r, dt in zip(rows, (b - a for a, b in zip(times, times[1:]))):
        assert r["mfu"] * peak * dt == pytest.approx(train_flops * r["tokens_per_s"] * dt + spent_per_step, rel=1e-6)
