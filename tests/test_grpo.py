"""GRPO: advantages and the loss by hand, pass@k, and short real runs on a tiny model (learning, exact resume)."""

import math
import shutil

import pytest
import torch
from conftest import save_ending_policy, save_tiny_policy

from fromzero import checkpoint
from fromzero.data.tasks import Task
from fromzero.dist import DistInfo
from fromzero.eval.reasoning import evaluate, pass_at_k
from fromzero.model import ModelConfig, Transformer
from fromzero.tokenizer import Tokenizer
from fromzero.train.grpo import GRPOConfig, group_advantages, grpo_loss, policy_answers, token_logps, train
from fromzero.train.loop import read_metrics
from fromzero.train.sft import collate, tokenize


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    std = math.sqrt((4 * 0.25) / 3)  # the unbiased std of [1, 0, 0, 1]
    expected = [0.5 / (std + 1e-4) * s for s in (1, -1, -1, 1)] + [0.0] * 4
    torch.testing.assert_close(group_advantages(rewards, 4), torch.tensor(expected))
    torch.testing.assert_close(
        group_advantages(rewards, 4, scale=False), torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])
    )


def crafted(requires_grad: bool = True):
    """Two completions: ratios [1.5, 0.5, 1.0] with advantage +1, and [1.5, 0.5, (padding)] with advantage -1."""
    old = torch.zeros(2, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.0], [1.5, 0.5, 1.0]])).requires_grad_(requires_grad)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    return logp, old, torch.tensor([1.0, -1.0]), mask


def test_grpo_loss_clipping_by_hand():
    logp, old, adv, mask = crafted()
    # ε = 0.2. Row 0 (A = +1): min(r, clip(r)) = [1.2 (clipped), 0.5, 1.0]. Row 1 (A = -1): min(-r, -clip(r)) =
    # [-1.5, -0.8 (clipped)]. The loss is minus these.
    loss, metrics = grpo_loss(logp, old, None, adv, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx((-(1.2 + 0.5 + 1.0) / 3 + (1.5 + 0.8) / 2) / 2)
    assert metrics["clipfrac"] == pytest.approx(2 / 5)
    assert metrics["approx_kl"] == pytest.approx(sum(r - 1 - math.log(r) for r in (1.5, 0.5, 1.0, 1.5, 0.5)) / 5)
    assert "kl" not in metrics
    loss.backward()
    # d(-A·r)/d logp = -A·r where unclipped, 0 where clipped; each row's token mean, then the mean of the rows
    torch.testing.assert_close(logp.grad, torch.tensor([[0, -0.5 / 6, -1 / 6], [1.5 / 4, 0, 0]]))

    logp, old, adv, mask = crafted()
    loss, metrics = grpo_loss(logp, old, None, adv, mask, clip_eps=0.2, clip_eps_high=0.6)  # 1.5 < 1 + 0.6
    assert loss.item() == pytest.approx((-(1.5 + 0.5 + 1.0) / 3 + (1.5 + 0.8) / 2) / 2)
    assert metrics["clipfrac"] == pytest.approx(1 / 5)


def test_loss_types_aggregate_tokens_differently():
    logp, old, adv, mask = crafted(requires_grad=False)
    token_sum = -(1.2 + 0.5 + 1.0) + (1.5 + 0.8)
    assert grpo_loss(logp, old, None, adv, mask, loss_type="dapo")[0].item() == pytest.approx(token_sum / 5)
    dr = grpo_loss(logp, old, None, adv, mask, loss_type="dr_grpo", max_completion_length=4)[0]
    assert dr.item() == pytest.approx(token_sum / (2 * 4))
    # a row with no completion tokens (a group left out) counts for nothing
    padded = grpo_loss(
        torch.cat([logp, logp[:1]]),
        torch.cat([old, old[:1]]),
        None,
        torch.cat([adv, adv[:1]]),
        torch.cat([mask, torch.zeros(1, 3, dtype=torch.bool)]),
    )[0]
    assert padded.item() == pytest.approx(grpo_loss(logp, old, None, adv, mask)[0].item())
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(logp, old, None, adv, mask, loss_type="ppo")
    with pytest.raises(ValueError, match="reference"):
        grpo_loss(logp, old, None, adv, mask, beta=0.1)


def test_k3_kl_penalty_value_and_gradient():
    logp = torch.full((1, 2), -1.0, requires_grad=True)
    ref = logp.detach() + math.log(2)  # the reference puts twice the probability on each token
    beta = 0.5
    loss, metrics = grpo_loss(logp, logp.detach(), ref, torch.zeros(1), torch.ones(1, 2, dtype=torch.bool), beta=beta)
    k3 = 2 - math.log(2) - 1  # exp(q) - q - 1 at q = ln 2
    assert metrics["kl"] == pytest.approx(k3) and loss.item() == pytest.approx(beta * k3)
    loss.backward()
    # d/dlogp [exp(ref - logp) - (ref - logp) - 1] = 1 - exp(ref - logp) = -1, averaged over the 2 tokens
    torch.testing.assert_close(logp.grad, torch.full((1, 2), beta * -1 / 2))


def test_completion_only_logps_equal_the_full_ones_and_their_gradient():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32))
    ids = torch.randint(0, 97, (3, 12))
    keep = torch.zeros(3, 11, dtype=torch.bool)
    keep[0, 4:9], keep[2, 6:] = True, True  # row 1: a group left out, nothing kept
    full, full_lp = token_logps(model, ids, 0.7)
    part, part_lp = token_logps(model, ids, 0.7, keep)
    assert part_lp.shape == (int(keep.sum()), 97) and torch.allclose(part_lp, full_lp[keep], atol=1e-6)
    assert torch.allclose(part, full * keep, atol=1e-6) and not part[~keep].any()
    grads = []
    for use_keep in (False, True):
        model.zero_grad()
        logp = token_logps(model, ids, 0.7, keep if use_keep else None)[0]
        (logp * keep).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_pass_at_k():
    assert pass_at_k(10, 0, 1) == 0.0 and pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))
    assert pass_at_k(4, 1, 4) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def digit_share(completion: str, task: Task) -> float:
    """A reward a randomly initialised model can earn quickly: the share of its characters that are digits."""
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


@pytest.fixture(scope="module")
def tiny_init(tmp_path_factory):
    """A randomly initialised one-layer model with a byte-level tokenizer, saved as a checkpoint."""
    return save_tiny_policy(tmp_path_factory.mktemp("grpo"))[0]


TASKS = [Task(f"say a number {i}", "7") for i in range(16)]
# instruction conversations for the ptx term's SFT loss
PTX = [
    [{"role": "user", "content": f"spell {w}"}, {"role": "assistant", "content": f"{w} is {' '.join(w)}"}]
    for w in ("cat", "dog", "fish", "bird", "cow", "hen")
]


def config(**overrides) -> GRPOConfig:
    base = dict(
        steps=30,
        prompts_per_step=4,
        num_generations=8,
        micro_batch_size=16,
        max_new_tokens=6,
        seq_len=32,
        lr=0.01,
        warmup_steps=0,
        precision="fp32",
        reward_funcs=[f"{__name__}:digit_share"],
        beta=0.0,
        eval_every=1000,
        checkpoint_every=1000,
        eval_problems=0,
    )
    return GRPOConfig(**{**base, **overrides})


def test_grpo_raises_the_reward_of_a_tiny_model(tiny_init, tmp_path):
    train(config(), TASKS, [], tiny_init, tmp_path / "grpo", log=lambda *_: None)
    rewards = [m["reward/mean"] for m in read_metrics(tmp_path / "grpo")]
    assert len(rewards) == 30
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert first < 0.15 and last > first + 0.4, rewards


def test_every_option_runs_and_resume_is_exact(tiny_init, tmp_path):
    """KL to a reference, two updates per rollout (a resume lands between them), clip-higher, token-level loss,
    dynamic sampling, two weighted rewards, the overlong penalty, rollouts in another precision than training,
    the ptx term and pass@1 on held-out tasks."""
    cfg = config(
        steps=4,
        checkpoint_every=3,
        eval_every=2,
        eval_problems=4,
        beta=0.1,
        num_iterations=2,
        rollout_precision="bf16",  # training stays in config()'s fp32
        clip_eps_high=0.28,
        loss_type="dapo",
        filter_zero_std=True,
        micro_batch_size=8,
        overlong_buffer=2,
        reward_funcs=[f"{__name__}:digit_share", "accuracy"],
        reward_weights=[1.0, 0.5],
        ptx_coef=0.5,
        ptx_batch_size=2,
    )
    heldout = [Task("say seven", "7"), Task("say eight", "8")]
    train(cfg, TASKS, heldout, tiny_init, tmp_path / "full", ptx=PTX, log=lambda *_: None)
    full = [m for m in read_metrics(tmp_path / "full") if "loss" in m]
    for name in (
        "reward/mean",
        "reward/digit_share",
        "reward/accuracy",
        "reward/overlong",
        "accuracy",
        "kl",
        "clipfrac",
        "approx_kl",
        "entropy",
        "response_length",
        "clipped_ratio",
        "frac_zero_std",
        "reward/failures",
        "ptx_loss",
    ):
        assert all(math.isfinite(m[name]) for m in full), name
    assert full[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the first step's policy is the reference
    assert full[1]["approx_kl"] > 0  # the second update on the same rollout sees a changed policy
    assert any("pass@1" in m for m in read_metrics(tmp_path / "full"))

    # stop after step 3, between the two updates of the second rollout, then resume to step 4
    cut = cfg.model_copy(update={"steps": 3})
    train(cut, TASKS, heldout, tiny_init, tmp_path / "cut", ptx=PTX, log=lambda *_: None)
    (tmp_path / "cut" / "DONE").unlink()
    train(cfg, TASKS, heldout, tiny_init, tmp_path / "cut", resume=True, ptx=PTX, log=lambda *_: None)
    resumed = [m for m in read_metrics(tmp_path / "cut") if "loss" in m]
    for name in ("loss", "reward/mean", "kl", "approx_kl", "grad_norm", "ptx_loss"):
        assert resumed[3][name] == pytest.approx(full[3][name], rel=1e-5, abs=1e-7), name
    shutil.rmtree(tmp_path / "cut")


def test_ptx_keeps_the_instruction_loss_down(tiny_init, tmp_path):
    """GRPO with ptx: the SFT loss on the instruction conversations falls as GRPO trains; without ptx it does not,
    and ptx_coef without conversations is refused."""
    tok = Tokenizer.load(checkpoint.tokenizer_file(tiny_init))
    x, y = collate(tokenize(tok, PTX, 32)[0], tok.pad_id)

    def sft_loss(ckpt):
        with torch.no_grad():
            return checkpoint.load_model(ckpt)(x, y).item()

    start = sft_loss(tiny_init)
    cfg = config(steps=20, ptx_coef=1.0, ptx_batch_size=4)
    with_ptx = train(cfg, TASKS, [], tiny_init, tmp_path / "ptx", ptx=PTX, log=lambda *_: None)
    without = train(config(steps=20), TASKS, [], tiny_init, tmp_path / "plain", log=lambda *_: None)
    assert sft_loss(with_ptx) < start - 1.0 and sft_loss(with_ptx) < sft_loss(without) - 1.0
    assert "ptx_loss" not in read_metrics(tmp_path / "plain")[0]
    with pytest.raises(ValueError, match="grpo.ptx_coef > 0 needs instruction conversations"):
        train(config(ptx_coef=1.0), TASKS, [], tiny_init, tmp_path / "none", log=lambda *_: None)


def test_policy_ptx_targets_are_the_starting_policys_own_answers(tiny_init, tmp_path):
    """ptx_targets "policy": each ptx conversation's answer is one the starting policy samples to its prompt, the
    same on every call (seeded), answers cut off at max_new_tokens left out; GRPO trains on them."""
    init = save_ending_policy(tiny_init, tmp_path)  # most answers stop within max_new_tokens
    model, tok = checkpoint.load_model(init), Tokenizer.load(checkpoint.tokenizer_file(init))
    cfg = config(steps=2, ptx_coef=1.0, ptx_targets="policy", ptx_batch_size=2, max_new_tokens=12)
    info = DistInfo(0, 1, 0, torch.device("cpu"))
    first = policy_answers(cfg, model, tok, PTX, info)
    assert first == policy_answers(cfg, model, tok, PTX, info)
    assert 0 < len(first) <= len(PTX)
    prompts = [c[:-1] for c in PTX]
    for conversation in first:
        assert conversation[:-1] in prompts and conversation[-1]["role"] == "assistant"
    assert [c[-1] for c in first] != [c[-1] for c in PTX if c[:-1] in [f[:-1] for f in first]]
    train(cfg, TASKS, [], init, tmp_path / "grpo", ptx=PTX, log=lambda *_: None)
    assert all(math.isfinite(m["ptx_loss"]) for m in read_metrics(tmp_path / "grpo") if "loss" in m)
    # a random model's answers of one token all run on: nothing to learn, said in one line
    with pytest.raises(ValueError, match="finished none of its answers to the 6 ptx conversations"):
        short = cfg.model_copy(update={"max_new_tokens": 1})
        train(short, TASKS, [], tiny_init, tmp_path / "random", ptx=PTX, log=lambda *_: None)


def test_ptx_keep_ranks_the_conversations_by_the_reward_model(tiny_init, tmp_path):
    """ptx_keep < 1: GRPO's ptx term learns from the share the reward model scores highest (PPO's ranking); without
    a reward model (a run without stage 3) from all of them, and the log says so."""
    from test_ppo import mean_feature_reward_model

    tok_file = checkpoint.tokenizer_file(tiny_init)
    tok = Tokenizer.load(tok_file)
    feature = torch.tensor([float(any(c.isdigit() for c in tok.decode([i]))) for i in range(tok.vocab_size)])
    rm = checkpoint.save(tmp_path / "rm", 0, mean_feature_reward_model(feature), tokenizer_file=tok_file, meta={})
    lines: list[str] = []
    cfg = config(steps=2, ptx_coef=1.0, ptx_keep=0.5)
    train(cfg, TASKS, [], tiny_init, tmp_path / "ranked", ptx=PTX, reward_model=rm, log=lines.append)
    assert any("on 6 conversations, the 3 of 6 the reward model scores highest" in line for line in lines), lines
    lines.clear()
    train(cfg, TASKS, [], tiny_init, tmp_path / "none", ptx=PTX, log=lines.append)
    assert any(
        "on 6 conversations, all of them: grpo.ptx_keep=0.5 ranks by a reward model, and none was given" in line
        for line in lines
    ), lines


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_micro_batch_size_only_changes_memory(tiny_init, tmp_path, loss_type):
    """One step of 32 completions in one micro-batch or in four: the same loss and gradient (dapo weighs every token
    of the step the same, so each micro-batch's token mean is scaled by its share of the step's tokens)."""
    init = save_ending_policy(tiny_init, tmp_path)  # completions stop after 1 to 12 tokens
    steps = []
    for mb in (32, 8):
        cfg = config(steps=1, micro_batch_size=mb, loss_type=loss_type, max_new_tokens=12)
        train(cfg, TASKS, [], init, tmp_path / f"{loss_type}-{mb}", log=lambda *_: None)
        steps.append(read_metrics(tmp_path / f"{loss_type}-{mb}")[0])
    assert 0.0 < steps[0]["clipped_ratio"] < 1.0 and steps[0]["response_length"] < 10  # lengths differ
    for name in ("loss", "grad_norm", "reward/mean"):
        assert steps[1][name] == pytest.approx(steps[0][name], rel=1e-4, abs=1e-7), name


def test_config_checks():
    assert GRPOConfig(prompts_per_step=4, num_generations=8, seq_len=128).batch_tokens == 4 * 8 * 128
    with pytest.raises(ValueError, match="leave it unset"):
        GRPOConfig(batch_tokens=1024)
    with pytest.raises(ValueError, match="clip_eps_high"):
        GRPOConfig(clip_eps=0.2, clip_eps_high=0.1)
    with pytest.raises(ValueError, match="reward_weights"):
        GRPOConfig(reward_funcs=["accuracy"], reward_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="no room"):
        GRPOConfig(max_new_tokens=64, seq_len=64)


def test_evaluate_reports_pass_at_1_per_step_and_pass_at_k(tiny_init):
    model = checkpoint.load_model(tiny_init)
    tok = Tokenizer.load(checkpoint.tokenizer_file(tiny_init))
    tasks = [Task("one", "1", metadata={"steps": 1}), Task("two", "2", metadata={"steps": 2})]
    metrics, graded = evaluate(model, tok, tasks, k=2, n=4, max_new_tokens=4)
    assert set(metrics) == {"pass@1", "pass@1/steps=1", "pass@1/steps=2", "pass@2", "sampled_accuracy"}
    assert all(0 <= v <= 1 for v in metrics.values()) and len(graded) == 2
