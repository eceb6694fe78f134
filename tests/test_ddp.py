"""Every trainer under torchrun: two gloo processes on CPU give, step by step, the losses (and for RL the rewards and
KL) of one process with the same global batch, and FSDP2 gives DDP's losses and the same checkpoint.

The two-process runs of all stages share one spawn of two workers (one process-group start, one torch import each):
`two_ranks` runs them once per session and each test compares one stage with its single-process run."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fromzero import checkpoint
from fromzero.data.preference import PreferencePair
from fromzero.data.tasks import Task
from fromzero.train import dpo, grpo, ppo, reward, sft
from fromzero.train.loop import read_metrics

WORDS = ("cat", "dog", "sun", "hat", "box", "pen", "cup", "map", "car", "bus", "fox", "owl", "bee", "ant", "elk", "yak")
CONVERSATIONS = [
    [{"role": "user", "content": f"spell {w}"}, {"role": "assistant", "content": f"{w} is {' '.join(w)}"}]
    for w in WORDS * 2
]
PAIRS = [
    PreferencePair(
        [{"role": "user", "content": f"count to {i % 9 + 1}"}], " ".join(str(k) for k in range(1, i % 9 + 2)), "no"
    )
    for i in range(24)
]
PROMPTS = [[{"role": "user", "content": f"say a number {i}"}] for i in range(16)]
TASKS = [Task(f"say a number {i}", "7") for i in range(16)]
COMMON = dict(precision="fp32", warmup_steps=0, eval_every=3, checkpoint_every=3)


def digit_share(completion: str, task: Task) -> float:
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


def gold(index: int, answer: str) -> float:
    return sum(c.isdigit() for c in answer) / max(1, len(answer))


def configs(micro: int) -> dict[str, object]:
    """Each stage's config: the same global batch whatever the ranks, `micro` rows per forward pass."""
    return {
        "sft": sft.SFTConfig(
            steps=3,
            seq_len=32,
            micro_batch_size=micro,
            batch_tokens=8 * 32,
            lr=1e-2,
            val_fraction=0.1,
            schedule="constant",
            **COMMON,
        ),
        "reward": reward.RewardConfig(
            steps=3,
            seq_len=32,
            micro_batch_size=micro,
            batch_tokens=8 * 32,
            lr=1e-2,
            likelihood=True,
            val_fraction=0.2,
            **COMMON,
        ),
        "dpo": dpo.DPOConfig(
            steps=3,
            seq_len=32,
            micro_batch_size=micro,
            batch_tokens=8 * 32,
            lr=1e-2,
            rpo_alpha=0.5,
            val_fraction=0.2,
            **COMMON,
        ),
        # two minibatches of 4 answers per rollout: micro-batches of 2 make 2 accumulation steps on one process
        "ppo": ppo.PPOConfig(
            steps=4,
            prompts_per_rollout=8,
            num_minibatches=2,
            ppo_epochs=1,
            micro_batch_size=micro,
            max_new_tokens=6,
            seq_len=32,
            lr=1e-2,
            kl_coef=0.1,
            adaptive_kl=True,
            kl_target=1.0,
            kl_horizon=20,
            missing_eos_penalty=0.5,
            ptx_coef=0.5,
            ptx_batch_size=2,
            **COMMON,
        ),
        "grpo": grpo.GRPOConfig(
            steps=4,
            prompts_per_step=4,
            num_generations=4,
            micro_batch_size=micro,
            max_new_tokens=6,
            seq_len=32,
            lr=1e-2,
            beta=0.1,
            num_iterations=2,
            loss_type="dapo",
            reward_funcs=[f"{__name__}:digit_share"],
            eval_problems=4,
            ptx_coef=0.5,
            ptx_batch_size=2,
            ptx_targets="policy",  # each rank samples its share of the answers, every rank trains on all of them
            **COMMON,
        ),
        "sft_fsdp": sft.SFTConfig(
            steps=3,
            seq_len=32,
            micro_batch_size=micro,
            batch_tokens=8 * 32,
            lr=1e-2,
            val_fraction=0.1,
            schedule="constant",
            parallel="fsdp",
            **COMMON,
        ),
        "sft_fsdp_resume": sft.SFTConfig(
            steps=3,
            seq_len=32,
            micro_batch_size=micro,
            batch_tokens=8 * 32,
            lr=1e-2,
            val_fraction=0.1,
            schedule="constant",
            parallel="fsdp",
            **COMMON,
        ),
    }


MICRO = {"sft": 4, "reward": 4, "dpo": 4, "ppo": 2, "grpo": 4, "sft_fsdp": 4, "sft_fsdp_resume": 4}


def run_stage(name: str, cfg, inputs: dict[str, Path], out: Path) -> None:
    quiet = dict(log=lambda *_: None)
    if name in ("sft", "sft_fsdp"):
        sft.train(cfg, CONVERSATIONS, inputs["init"], out, **quiet)
    elif name == "sft_fsdp_resume":  # stopped after step 2 (the full optimizer state saved), resumed; lr constant
        sft.train(cfg.model_copy(update={"steps": 2}), CONVERSATIONS, inputs["init"], out, **quiet)
        dist.barrier()
        if dist.get_rank() == 0:
            (out / "DONE").unlink()
        dist.barrier()
        sft.train(cfg, CONVERSATIONS, inputs["init"], out, resume=True, **quiet)
    elif name == "reward":
        reward.train(cfg, PAIRS[:20], PAIRS[20:], inputs["init"], out, **quiet)
    elif name == "dpo":
        dpo.train(cfg, PAIRS[:20], PAIRS[20:], inputs["init"], out, **quiet)
    elif name == "ppo":
        ppo.train(cfg, PROMPTS, inputs["init"], inputs["rm"], out, gold=gold, ptx=CONVERSATIONS, **quiet)
    elif name == "grpo":
        grpo.train(
            cfg,
            TASKS,
            [Task("say seven", "7"), Task("say eight", "8"), Task("nine", "9")],
            inputs["ending"],
            out,
            ptx=CONVERSATIONS,
            **quiet,
        )


def worker(rank: int, port: int, inputs: dict[str, Path], out: Path) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    try:
        for name in MICRO:
            try:
                run_stage(name, configs(MICRO[name])[name], inputs, out / name)
            except Exception as e:
                if rank == 0:
                    (out / f"{name}.error").write_text(f"{type(e).__name__}: {e}")
                if not name.startswith("sft_fsdp"):  # FSDP's failure is its test's to report; the others' stop the run
                    raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    from conftest import save_ending_policy, save_tiny_policy
    from test_ppo import mean_feature_reward_model

    out = tmp_path_factory.mktemp("ddp-inputs")
    init, tok, tok_file = save_tiny_policy(out)
    feature = torch.tensor([float(any(c.isdigit() for c in tok.decode([i]))) for i in range(tok.vocab_size)])
    rm = checkpoint.save(out / "rm", 0, mean_feature_reward_model(feature), tokenizer_file=tok_file, meta={})
    # GRPO's ptx_targets="policy" learns the answers its starting policy finishes: this one finishes most
    return {"init": init, "rm": rm, "ending": save_ending_policy(init, out / "ending")}


@pytest.fixture(scope="module")
def two_ranks(inputs, tmp_path_factory) -> Path:
    os.environ.pop("RANK", None)
    for attempt in range(2):
        out = tmp_path_factory.mktemp("ddp-two")
        try:
            mp.start_processes(worker, args=(free_port(), inputs, out), nprocs=2, join=True, start_method="spawn")
            return out
        except mp.ProcessExitedException:  # a worker killed by a signal (once seen under load): once more, new port
            if attempt or any(out.glob("*.error")):
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def one_rank(inputs, tmp_path_factory):
    """name -> the single-process run's directory, run on first use with one thread (as each worker has)."""
    out, done = tmp_path_factory.mktemp("ddp-one"), {}

    def get(name: str) -> Path:
        if name not in done:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                run_stage(name, configs(MICRO[name])[name], inputs, out / name)
            finally:
                torch.set_num_threads(threads)
            done[name] = out / name
        return done[name]

    return get


def assert_same_steps(one: Path, two: Path, names: tuple[str, ...], training_only: bool = False) -> None:
    a, b = read_metrics(one), read_metrics(two)
    if training_only:  # a run cut short also evaluated where it stopped
        a, b = [r for r in a if "loss" in r], [r for r in b if "loss" in r]
    assert [r["step"] for r in a] == [r["step"] for r in b] and a
    for ra, rb in zip(a, b):
        for name in names + tuple(k for k in ra if k.startswith("val_") or k == "pass@1"):
            if name in ra:
                assert rb[name] == pytest.approx(ra[name], rel=1e-4, abs=1e-6), (ra["step"], name, ra[name], rb[name])
    assert all(any(name in r for r in a) for name in names), names


def assert_same_weights(one: Path, two: Path) -> None:
    load = reward.load_reward_model if checkpoint.is_reward_model(checkpoint.resolve(one)) else checkpoint.load_model
    expected = load(one).state_dict()
    for k, v in load(two).state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stage", ["sft", "reward", "dpo"])
def test_supervised_stages_match_one_process(stage, two_ranks, one_rank):
    one = one_rank(stage)
    assert_same_steps(one, two_ranks / stage, ("loss", "grad_norm"))
    assert_same_weights(one, two_ranks / stage)


def test_ppo_matches_one_process(two_ranks, one_rank):
    one = one_rank("ppo")
    names = (
        "loss",
        "grad_norm",
        "policy_loss",
        "value_loss",
        "ptx_loss",
        "reward/mean",
        "reward/rlhf",
        "kl",
        "kl_coef",
        "gold/mean",
        "response_length",
        "entropy",
        "clipfrac",
        "approx_kl",
    )
    assert_same_steps(one, two_ranks / "ppo", names)
    assert read_metrics(one)[2]["kl"] != 0.0  # the second rollout's policy has moved: KL is compared, not zeros
    assert_same_weights(one, two_ranks / "ppo")


def test_grpo_matches_one_process(two_ranks, one_rank):
    one = one_rank("grpo")
    names = (
        "loss",
        "grad_norm",
        "reward/mean",
        "reward/std",
        "accuracy",
        "kl",
        "approx_kl",
        "clipfrac",
        "entropy",
        "response_length",
        "pass@1",
        "ptx_loss",
    )
    assert_same_steps(one, two_ranks / "grpo", names)
    assert [r for r in read_metrics(one) if "loss" in r][-1]["kl"] > 0
    assert_same_weights(one, two_ranks / "grpo")


def test_fsdp_matches_ddp_writes_the_same_checkpoint_and_resumes(two_ranks):
    for name in ("sft_fsdp", "sft_fsdp_resume"):
        error = two_ranks / f"{name}.error"
        assert not error.exists(), error.read_text()
        resumed = name.endswith("resume")
        assert_same_steps(two_ranks / "sft", two_ranks / name, ("loss", "grad_norm"), training_only=resumed)
        assert_same_weights(two_ranks / "sft", two_ranks / name)
        assert json.loads((two_ranks / name / "DONE").read_text())["step"] == 3


def test_presets_split_over_two_ranks():
    """The presets' batch sizes run under 2 processes as they are: micro-batches are derived where needed."""
    from fromzero.config import load_config

    for preset in ("smoke", "tiny", "small", "gpt2"):
        cfg = load_config(preset)
        for stage in ("pretrain", "sft", "reward", "dpo", "ppo", "grpo"):
            section = getattr(cfg, stage)
            for world in (1, 2):
                micro = section.micro_batch(world)
                assert section.batch_tokens == micro * section.seq_len * world * section.accumulation(world)
                assert micro <= section.micro_batch_size
    with pytest.raises(ValueError, match="prompts_per_rollout / num_minibatches = 3 answers per step do not split"):
        ppo.PPOConfig(prompts_per_rollout=3, num_minibatches=1).micro_batch(2)
