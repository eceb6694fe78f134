"""report_to: TensorBoard (and W&B offline) get the same scalars as metrics.jsonl, from rank 0 only."""

import importlib.util

import pytest
from test_lora import CONVERSATIONS, save_init

from fromzero.config import ConfigError, load_config
from fromzero.train import sft
from fromzero.train.loop import MetricsLog, read_metrics


def scalars(records):
    """{(tag, step): value} of every number the loop logged."""
    return {
        (k, r["step"]): v
        for r in records
        for k, v in r.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def test_tensorboard_gets_the_jsonl_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    init = save_init(tmp_path)
    cfg = sft.SFTConfig(
        steps=4,
        micro_batch_size=4,
        seq_len=32,
        batch_tokens=128,
        lr=1e-2,
        warmup_steps=0,
        precision="fp32",
        eval_every=2,
        checkpoint_every=4,
        val_fraction=0.1,
        report_to="tensorboard",
    )
    sft.train(cfg, CONVERSATIONS, init, tmp_path / "sft", log=lambda _: None)
    events = EventAccumulator(str(tmp_path / "sft" / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    logged = {(tag, e.step): e.value for tag in events.Tags()["scalars"] for e in events.Scalars(tag)}
    expected = scalars(read_metrics(tmp_path / "sft"))
    assert {"loss", "val_loss", "grad_norm", "lr", "tokens_per_s"} <= {tag for tag, _ in logged}
    assert logged.keys() == expected.keys()
    for key, value in expected.items():  # TensorBoard keeps float32
        assert logged[key] == pytest.approx(value, rel=1e-6, abs=1e-30), key


def test_only_the_main_rank_writes(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl", enabled=False, resume_step=0, report_to="tensorboard")
    log.write({"step": 1, "loss": 1.0})
    log.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed")
def test_wandb_offline_writes_a_run_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    log = MetricsLog(
        tmp_path / "metrics.jsonl", enabled=True, resume_step=0, report_to="wandb", name="sft", config={"lr": 0.01}
    )
    for step in (1, 2):
        log.write({"step": step, "loss": 2.0 / step, "reward/mean": 0.5 * step})
    assert log.wandb.summary["loss"] == 2.0  # W&B holds a step's row until a later step or the end
    log.close()
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    assert list(run.glob("run-*.wandb"))  # W&B's own record format, which `wandb sync` uploads
    assert [r["loss"] for r in read_metrics(tmp_path)] == [2.0, 1.0]


def test_report_to_for_every_stage_and_a_missing_package_in_one_line(monkeypatch):
    cfg = load_config("smoke", ["report_to=tensorboard", "sft.report_to=none"])
    assert (cfg.pretrain.report_to, cfg.sft.report_to, cfg.grpo.report_to, cfg.ppo.report_to) == (
        "tensorboard",
        "none",
        "tensorboard",
        "tensorboard",
    )
    assert load_config("smoke").dpo.report_to == "none"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(
        ConfigError, match=r"^config key 'dpo\.report_to': wandb is not installed \(pip install wandb\)$"
    ):
        load_config("smoke", ["dpo.report_to=wandb"])
