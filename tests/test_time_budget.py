"""pretrain.time_budget: the steps follow from the measured speed, the schedule decays to them, resume keeps them."""

import re
import signal
import subprocess
import time

import pytest
import torch
from conftest import FROMZERO
from test_train_loop import losses, pretrain_cmd

from fromzero import checkpoint
from fromzero.train.loop import TrainConfig, parse_duration, read_metrics

# probe_fraction=0: the probe is its 3 steps, within the warmup (test_probe_times_its_share_of_the_budget: longer)
SETS = [
    "pretrain.probe_steps=3",
    "pretrain.probe_fraction=0",
    "pretrain.checkpoint_every=10",
    "pretrain.eval_every=1000",
]


def budget_steps(stage_dir) -> int:
    state = torch.load(checkpoint.resolve(stage_dir) / "trainer_state.pt", weights_only=False)
    return state["budget_steps"]


def test_durations_read_as_seconds():
    assert [parse_duration(v) for v in (90, "90s", "2m", "1.5h", " 45 ")] == [90, 90, 120, 5400, 45]
    assert TrainConfig(time_budget="2m").time_budget == 120
    for bad in ("soon", "0s", "-2m"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_bad_budget_fails_at_load_naming_the_key(cli_env):
    bad = subprocess.run(
        FROMZERO + ["config", "--preset", "smoke", "--set", "pretrain.time_budget=soon"],
        env=cli_env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "pretrain.time_budget" in bad.stderr and "90s, 2m, 1.5h" in bad.stderr


def test_budget_fixes_the_steps_and_equals_a_run_of_that_many_steps(smoke_data, tmp_path, cli_env):
    budgeted = subprocess.run(
        pretrain_cmd(smoke_data, tmp_path / "budget", "pretrain.time_budget=6s", *SETS),
        env=cli_env,
        capture_output=True,
        text=True,
    )
    assert budgeted.returncode == 0, budgeted.stderr[-2000:]
    said = re.search(r"time_budget 6s at \d+ ms a step: (\d+) steps", budgeted.stdout + budgeted.stderr)
    assert said, budgeted.stderr[-2000:]
    steps = int(said.group(1))
    assert steps > 3 and budget_steps(tmp_path / "budget") == steps
    curve = losses(tmp_path / "budget")
    assert sorted(curve) == list(range(1, steps + 1))
    # the schedule was fitted to the fixed steps: past the warmup, the last step is at the cosine's floor
    cfg = TrainConfig(steps=steps, lr=3e-3, warmup_steps=5)
    assert [r["lr"] for r in read_metrics(tmp_path / "budget") if "lr" in r] == [
        cfg.lr_at(s) for s in range(1, steps + 1)
    ]
    assert steps <= 5 or cfg.lr_at(steps) == pytest.approx(cfg.lr * cfg.min_lr_ratio)
    # the probe ran within the warmup, which does not depend on the number of steps: same losses as a fixed run
    subprocess.run(
        pretrain_cmd(smoke_data, tmp_path / "fixed", f"pretrain.steps={steps}", *SETS),
        check=True,
        env=cli_env,
        capture_output=True,
    )
    assert losses(tmp_path / "fixed") == curve


def test_resume_keeps_the_steps_the_budget_fixed(smoke_data, tmp_path, cli_env):
    cmd = pretrain_cmd(smoke_data, tmp_path / "killed", "pretrain.time_budget=8s", *SETS)
    proc = subprocess.Popen(cmd, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (
        checkpoint.exists(tmp_path / "killed") and checkpoint.load_meta(tmp_path / "killed")["step"] >= 10
    ):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "DONE").exists(), "the run finished before it could be killed"
    fixed = budget_steps(tmp_path / "killed")
    resumed = subprocess.run(cmd + ["--resume"], check=True, env=cli_env, capture_output=True, text=True)
    assert "time_budget" not in resumed.stdout + resumed.stderr  # no second probe
    assert sorted(losses(tmp_path / "killed")) == list(range(1, fixed + 1))


def test_probe_times_its_share_of_the_budget_at_the_peak_learning_rate(smoke_data, tmp_path, cli_env):
    sets = [*SETS[:1], "pretrain.probe_fraction=0.5", *SETS[2:], "pretrain.time_budget=4s", "pretrain.warmup_steps=2"]
    run = subprocess.run(pretrain_cmd(smoke_data, tmp_path / "b", *sets), env=cli_env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    steps = int(re.search(r"time_budget 4s at \d+ ms a step: (\d+) steps", run.stdout + run.stderr).group(1))
    rows = [r for r in read_metrics(tmp_path / "b") if "lr" in r]
    assert len(rows) == steps
    # the probe went on until half the budget was spent: its last step is the first whose clock passed 2 s
    n = next(r["step"] for r in rows if r["time"] >= 2.0)
    assert n > 3
    cfg = TrainConfig(steps=steps, lr=3e-3, warmup_steps=2)
    assert [r["lr"] for r in rows[:n]] == [cfg.lr_at(1), cfg.lr_at(2)] + [cfg.lr] * (n - 2)
    assert [r["lr"] for r in rows[n:]] == [cfg.lr_at(s) for s in range(n + 1, steps + 1)]
