"""PPO: GAE, whitening, the clipped losses and KL estimators by hand, the adaptive KL controller, and short real
runs on a tiny model against a hand-built reward model (learning, plain policy checkpoints, exact resume)."""

import math
import shutil

import pytest
import torch
from conftest import save_tiny_policy

from fromzero import checkpoint
from fromzero.model import ModelConfig, Transformer
from fromzero.tokenizer import Tokenizer
from fromzero.train.loop import read_metrics
from fromzero.train.ppo import (
    AdaptiveKLController,
    PPOConfig,
    gae,
    kl_penalty,
    ppo_policy_loss,
    reward_evaluator,
    train,
    value_loss,
    whiten,
)
from fromzero.train.reward import RewardModel, answer_rewards, load_reward_model
from fromzero.train.rollout import reward_ranked
from fromzero.train.sft import collate, tokenize


def test_gae_by_hand():
    # row 0: a prompt token, then a 3-token answer; row 1: a prompt token, a 2-token answer, then padding whose
    # reward and value are junk that must not leak in
    rewards = torch.tensor([[0.0, 1.0, 0.0, 2.0], [0.0, 0.5, -1.0, 7.0]])
    values = torch.tensor([[5.0, 0.5, 1.0, 1.5], [3.0, 0.2, 0.4, 9.0]])
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 0]], dtype=torch.bool)
    gamma, lam = 0.9, 0.8
    # row 0: δ3 = 2 - 1.5 = 0.5 (nothing comes after the last token), δ2 = 0 + 0.9·1.5 - 1 = 0.35,
    # δ1 = 1 + 0.9·1 - 0.5 = 1.4
    a3 = 0.5
    a2 = 0.35 + gamma * lam * a3
    a1 = 1.4 + gamma * lam * a2
    # row 1: δ2 = -1 + 0 - 0.4 = -1.4 (the padding's value is not the next state); δ1 = 0.5 + 0.9·0.4 - 0.2 = 0.66
    b2 = -1.4
    b1 = 0.66 + gamma * lam * b2
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(advantages, torch.tensor([[0, a1, a2, a3], [0, b1, b2, 0]]))
    torch.testing.assert_close(returns, torch.tensor([[0, a1 + 0.5, a2 + 1.0, a3 + 1.5], [0, b1 + 0.2, b2 + 0.4, 0]]))
    # γ = λ = 1: the return is the sum of the rewards to come (Monte Carlo), whatever the values
    _, returns = gae(rewards, values, mask, 1.0, 1.0)
    torch.testing.assert_close(returns, torch.tensor([[0, 3.0, 2.0, 2.0], [0, -0.5, -1.0, 0]]))
    # λ = 0: one-step TD, δ_t alone
    advantages, _ = gae(rewards, values, mask, gamma, 0.0)
    torch.testing.assert_close(advantages, torch.tensor([[0, 1.4, 0.35, 0.5], [0, 0.66, -1.4, 0]]))


def test_whiten_over_the_mask():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, -50.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    # 1, 2, 3: mean 2, Bessel-corrected variance 1
    torch.testing.assert_close(whiten(x, mask), torch.tensor([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))


def test_ppo_policy_loss_clipping_by_hand():
    # row 0, advantage +2 on every token, ratios 1.5, 0.5, 1; row 1, advantage -1, ratios 1.5, 0.5 and a padded token
    ratios = torch.tensor([[1.5, 0.5, 1.0], [1.5, 0.5, 3.0]])
    logp = ratios.log().requires_grad_(True)
    old = torch.zeros(2, 3)
    adv = torch.tensor([[2.0, 2.0, 2.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    loss, metrics = ppo_policy_loss(logp, old, adv, mask, clip_eps=0.2)
    # per token max(-A·r, -A·clip(r)): A = +2: max(-3, -2.4) = -2.4 (clipped: r is already above 1 + ε),
    # max(-1, -1.6) = -1, -2; A = -1: max(1.5, 1.2) = 1.5 (r moved the wrong way: not clipped), max(0.5, 0.8) = 0.8
    # (clipped: r is already below 1 - ε)
    assert loss.item() == pytest.approx((-2.4 - 1 - 2 + 1.5 + 0.8) / 5)
    assert metrics["clipfrac"] == pytest.approx(2 / 5)
    assert metrics["approx_kl"] == pytest.approx(sum(r - 1 - math.log(r) for r in (1.5, 0.5, 1.0, 1.5, 0.5)) / 5)
    loss.backward()
    # d(-A·r)/d log π = -A·r on unclipped tokens, 0 on clipped and padded ones; the mean divides by 5 tokens
    torch.testing.assert_close(logp.grad, torch.tensor([[0, -2 * 0.5 / 5, -2 * 1.0 / 5], [1.5 / 5, 0, 0]]))


def test_value_loss_clipping_by_hand():
    old = torch.zeros(1, 5)
    returns = torch.tensor([[1.0, 1.0, -1.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.1, 0.5, -0.5, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.bool)
    loss, metrics = value_loss(values, old, returns, mask, clip=0.2)
    # token 0 moved 0.5 towards its return, past the clip: the clipped error (0.2 - 1)² = 0.64 is the larger and
    # gives no gradient; token 1 is inside the clip: 0.81; tokens 2 and 3 moved away from their returns: their own
    # errors 2.25 are the larger (clipped: 1.44) and keep their gradient; token 4 is padding
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81 + 2.25 + 2.25) / 4)
    assert metrics["value_clipfrac"] == pytest.approx(1 / 4)
    loss.backward()
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, (0.1 - 1) / 4, (0.5 + 1) / 4, (-0.5 - 1) / 4, 0.0]]))


def test_kl_estimators_match_the_closed_form():
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.3, 0.5])
    exact = (p * (p / q).log()).sum()
    for estimator in ("k1", "k3"):
        per_token = kl_penalty(p.log(), q.log(), estimator)
        # the expectation over tokens sampled from p, weighted exactly: both estimators are unbiased
        torch.testing.assert_close((p * per_token).sum(), exact)
    assert (kl_penalty(p.log(), q.log(), "k1") < 0).any()  # k1 is negative where the reference likes a token better
    assert (kl_penalty(p.log(), q.log(), "k3") >= 0).all()
    assert kl_penalty(p.log(), p.log(), "k3").abs().max() == 0
    with pytest.raises(ValueError, match="estimator"):
        kl_penalty(p.log(), q.log(), "k2")


def test_adaptive_kl_controller_moves_towards_the_target():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=100)
    ctl.update(12.0, n_steps=10)  # far above: the error is clipped to +0.2
    assert ctl.value == pytest.approx(0.1 * 1.02)
    ctl.update(6.6, n_steps=10)  # 10 % above
    assert ctl.value == pytest.approx(0.1 * 1.02 * 1.01)
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=100)
    ctl.update(0.0, n_steps=50)  # far below: β shrinks by at most 0.2 × 50/100
    assert ctl.value == pytest.approx(0.1 * 0.9)


def test_config_checks():
    cfg = PPOConfig(prompts_per_rollout=32, num_minibatches=4, seq_len=128, micro_batch_size=4)
    assert cfg.batch_tokens == 8 * 128 and cfg.accumulation(1) == 2  # a minibatch of 8 answers per step
    with pytest.raises(ValueError, match="leave it unset"):
        PPOConfig(batch_tokens=1024)
    with pytest.raises(ValueError, match="num_minibatches"):
        PPOConfig(prompts_per_rollout=10, num_minibatches=4)
    with pytest.raises(ValueError, match="no room"):
        PPOConfig(max_new_tokens=64, seq_len=64)
    with pytest.raises(ValueError, match="adaptive_kl"):
        PPOConfig(adaptive_kl=True, kl_coef=0)
    with pytest.raises(ValueError):
        PPOConfig(not_a_field=1)


# ---------------------------------------------------------------------------
# Real runs


def mean_feature_reward_model(feature: torch.Tensor) -> RewardModel:
    """A reward model whose score is an increasing function of the mean of feature[token] (in [0, 1]) over the
    sequence: its one layer attends uniformly (queries and keys are zero) to a value that carries the feature.

    Every embedding is (f, √(1 - f²), 0, ...), so all have the same norm and the RMSNorm before attention scales
    them alike; the attention writes √8·mean(f) to dimension 2, and after the final RMSNorm the head reads
    8m / √(1 + 8m²) there, increasing in the mean m.
    """
    cfg = ModelConfig(vocab_size=len(feature), dim=8, n_layers=1, n_heads=1, n_kv_heads=1, hidden_dim=8, max_seq_len=48)
    rm = RewardModel(cfg)
    layer = rm.model.layers[0]
    with torch.no_grad():
        for p in rm.parameters():
            p.zero_()
        for norm in (layer.input_layernorm, layer.post_attention_layernorm, rm.model.norm):
            norm.weight.fill_(1.0)
        rm.model.embed_tokens.weight[:, 0] = feature
        rm.model.embed_tokens.weight[:, 1] = (1 - feature**2).sqrt()
        layer.self_attn.v_proj.weight[0, 0] = 1.0
        layer.self_attn.o_proj.weight[2, 0] = 1.0
        rm.score.weight[0, 2] = 1.0
    return rm


def digit_share(text: str) -> float:
    return sum(c.isdigit() for c in text) / max(1, len(text))


PROMPTS = [[{"role": "user", "content": f"say a number {i}"}] for i in range(16)]
# instruction conversations for PPO-ptx's SFT loss
PTX = [
    [{"role": "user", "content": f"spell {w}"}, {"role": "assistant", "content": f"{w} is spelt {' '.join(w)}"}]
    for w in ("cat", "dog", "sun", "hat", "box", "pen", "cup", "map")
]


def gold(index: int, answer: str) -> float:
    """What the reward model stands for, read from the text: the gold/mean metric (never trained on)."""
    assert 0 <= index < len(PROMPTS)
    return digit_share(answer)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A randomly initialised one-layer policy and a reward model that likes digits, saved as checkpoints."""
    out = tmp_path_factory.mktemp("ppo")
    init, tok, tok_file = save_tiny_policy(out)
    feature = torch.tensor([float(any(c.isdigit() for c in tok.decode([i]))) for i in range(tok.vocab_size)])
    rm = checkpoint.save(
        out / "rm", 0, mean_feature_reward_model(feature), tokenizer_file=tok_file, meta={"stage": "reward"}
    )
    return init, rm, tok


def config(**overrides) -> PPOConfig:
    base = dict(
        steps=30,
        prompts_per_rollout=32,
        num_minibatches=1,
        ppo_epochs=2,
        micro_batch_size=16,
        max_new_tokens=6,
        seq_len=32,
        lr=0.01,
        warmup_steps=0,
        kl_coef=0.01,
        precision="fp32",
        eval_every=1000,
        checkpoint_every=1000,
    )
    return PPOConfig(**{**base, **overrides})


def quiet(*_):
    pass


def test_hand_built_reward_model_scores_the_digit_share(tiny):
    _, rm_path, tok = tiny
    rm = load_reward_model(rm_path).eval()
    ids = [[tok.bos_id] + tok.encode(text) for text in ("say a b", "say 1 b", "say 1 2")]
    with torch.no_grad():
        scores = [rm(torch.tensor([row]))[0, -1].item() for row in ids]
    assert scores[0] == pytest.approx(0.0, abs=1e-6) and scores[0] < scores[1] < scores[2]


def test_ppo_raises_the_reward_of_a_tiny_model(tiny, tmp_path):
    init, rm_path, tok = tiny
    ckpt = train(config(), PROMPTS, init, rm_path, tmp_path / "ppo", gold=gold, log=quiet)
    metrics = read_metrics(tmp_path / "ppo")
    assert len(metrics) == 30
    first, last = metrics[:4], metrics[-4:]

    def mean(name, rows):
        return sum(m[name] for m in rows) / len(rows)

    assert mean("gold/mean", first) < 0.15 and mean("gold/mean", last) > mean("gold/mean", first) + 0.3, metrics
    assert mean("reward/mean", last) > mean("reward/mean", first) + 0.5
    # the final checkpoint is a plain language model, and greedy answers earn more reward than before
    policy = checkpoint.load_model(ckpt)
    assert type(policy) is Transformer
    rm = load_reward_model(rm_path).eval()
    _, before = answer_rewards(checkpoint.load_model(init), rm, tok, PROMPTS, max_new_tokens=6)
    texts, after = answer_rewards(policy, rm, tok, PROMPTS, max_new_tokens=6)
    assert sum(after) / len(after) > sum(before) / len(before) + 0.5
    assert sum(map(digit_share, texts)) / len(texts) > 0.5


def test_every_option_runs_and_resume_is_exact(tiny, tmp_path):
    """Two minibatches per rollout in micro-batches of 4, the adaptive k3 KL penalty, the missing-<|end|> penalty,
    PPO-ptx, gold and held-out evaluation; the run is cut after step 3 (the first step of the second rollout) and
    resumed."""
    init, rm_path, tok = tiny
    cfg = config(
        steps=6,
        prompts_per_rollout=16,
        num_minibatches=2,
        ppo_epochs=1,
        micro_batch_size=4,
        adaptive_kl=True,
        kl_coef=0.1,
        kl_target=1.0,
        kl_horizon=20,
        kl_estimator="k3",
        missing_eos_penalty=0.5,
        ptx_coef=0.5,
        ptx_batch_size=3,
        checkpoint_every=3,
        eval_every=2,
    )
    evaluate = reward_evaluator(load_reward_model(rm_path).eval(), tok, PROMPTS[:4], max_new_tokens=6, gold=gold)

    def run(cfg, out, resume=False):
        return train(cfg, PROMPTS, init, rm_path, out, gold=gold, evaluate=evaluate, resume=resume, ptx=PTX, log=quiet)

    final = run(cfg, tmp_path / "full")
    records = read_metrics(tmp_path / "full")
    full = [m for m in records if "loss" in m]
    for name in (
        "reward/mean",
        "reward/std",
        "reward/rlhf",
        "gold/mean",
        "kl",
        "kl_coef",
        "entropy",
        "clipfrac",
        "approx_kl",
        "value_loss",
        "policy_loss",
        "value_clipfrac",
        "response_length",
        "clipped_ratio",
        "ptx_loss",
    ):
        assert all(math.isfinite(m[name]) for m in full), name
    assert sum("val_reward" in m and "val_gold" in m for m in records) == 3  # steps 2, 4, 6
    assert full[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the first rollout's policy is the reference
    assert full[0]["approx_kl"] == pytest.approx(0.0, abs=1e-6) and full[1]["approx_kl"] > 0  # a minibatch later
    assert full[2]["kl_coef"] < full[0]["kl_coef"] == pytest.approx(0.1)  # KL below target: β shrinks
    policy = checkpoint.load_model(final)  # a plain policy checkpoint, though the value model trained alongside
    changed = checkpoint.load_model(init).state_dict()
    assert any(not torch.equal(v, changed[k]) for k, v in policy.state_dict().items())

    # stop after step 3, between the two minibatch steps of the second rollout, then resume to step 6
    run(cfg.model_copy(update={"steps": 3}), tmp_path / "cut")
    (tmp_path / "cut" / "DONE").unlink()
    resumed_final = run(cfg, tmp_path / "cut", resume=True)
    resumed = [m for m in read_metrics(tmp_path / "cut") if "loss" in m]
    assert [m["step"] for m in resumed] == [1, 2, 3, 4, 5, 6]
    for step in (3, 4, 5):  # step 5 samples a new rollout with the restored value model, β and RNG
        for name in (
            "loss",
            "policy_loss",
            "value_loss",
            "reward/mean",
            "kl",
            "kl_coef",
            "approx_kl",
            "grad_norm",
            "ptx_loss",
        ):
            assert resumed[step][name] == pytest.approx(full[step][name], rel=1e-5, abs=1e-7), (step, name)
    expected = policy.state_dict()
    for k, v in checkpoint.load_model(resumed_final).state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-5, atol=1e-7)
    shutil.rmtree(tmp_path / "cut")


def test_ptx_keeps_the_instruction_loss_down(tiny, tmp_path):
    """PPO-ptx: the SFT loss on the instruction conversations falls as PPO trains; without ptx it does not, and
    ptx_coef without conversations is refused."""
    init, rm_path, tok = tiny
    examples = tokenize(tok, PTX, 32)[0]

    def sft_loss(ckpt):
        x, y = collate(examples, tok.pad_id)
        with torch.no_grad():
            return checkpoint.load_model(ckpt)(x, y).item()

    start = sft_loss(init)
    with_ptx = train(config(steps=20, ptx_coef=1.0), PROMPTS, init, rm_path, tmp_path / "ptx", ptx=PTX, log=quiet)
    without = train(config(steps=20), PROMPTS, init, rm_path, tmp_path / "plain", log=quiet)
    assert sft_loss(with_ptx) < start - 1.0 and sft_loss(with_ptx) < sft_loss(without) - 1.0
    assert "ptx_loss" not in read_metrics(tmp_path / "plain")[0]
    with pytest.raises(ValueError, match="ptx_coef > 0 needs instruction conversations"):
        train(config(ptx_coef=1.0), PROMPTS, init, rm_path, tmp_path / "none", log=quiet)


def test_micro_batch_size_only_changes_memory(tiny, tmp_path):
    """Every answer token weighs the same in its minibatch however micro-batches cut it."""
    init, rm_path, _ = tiny
    runs = {}
    for mb in (4, 8):
        cfg = config(steps=2, prompts_per_rollout=16, num_minibatches=2, ppo_epochs=1, micro_batch_size=mb)
        train(cfg, PROMPTS, init, rm_path, tmp_path / str(mb), log=quiet)
        runs[mb] = read_metrics(tmp_path / str(mb))
    for a, b in zip(runs[4], runs[8]):
        for name in ("loss", "policy_loss", "value_loss", "entropy", "reward/mean", "grad_norm"):
            assert a[name] == pytest.approx(b[name], rel=1e-4, abs=1e-6), name


def test_mismatched_tokenizer_is_refused(tiny, tmp_path):
    init, rm_path, _ = tiny
    other = Tokenizer.train(["something else entirely"] * 10, vocab_size=280)
    rm = checkpoint.save(
        tmp_path / "rm",
        0,
        RewardModel(
            ModelConfig(vocab_size=other.vocab_size, dim=8, n_layers=1, n_heads=1, n_kv_heads=1, max_seq_len=48)
        ),
        tokenizer_file=other.save(tmp_path / "tok"),
        meta={},
    )
    with pytest.raises(ValueError, match="tokenizer"):
        train(config(), PROMPTS, init, rm, tmp_path / "ppo", log=quiet)
    assert rm_path.exists()


def test_ptx_keep_learns_from_the_conversations_the_reward_model_scores_highest(tiny, tmp_path):
    """ptx_keep < 1: the ptx loss uses only the share of the conversations the reward model likes best (here the
    digit-heavy answers), in their own order, and the run says how many it kept."""
    init, rm_path, tok = tiny
    mixed = [
        [{"role": "user", "content": f"count {w}"}, {"role": "assistant", "content": a}]
        for w in ("cat", "dog", "sun", "hat")
        for a in (f"{w} is {w}", "1 2 3 4 5 6 7 8 9")
    ]
    examples = tokenize(tok, mixed, 32)[0]
    kept = reward_ranked(load_reward_model(rm_path), examples, 0.5, tok.pad_id, batch_size=3)
    assert kept == examples[1::2]  # every second answer is the digits
    assert len(kept) == 4 and reward_ranked(load_reward_model(rm_path), examples, 1e-9, tok.pad_id, 8) == [kept[0]]
    # examples cut to seq_len hold seq_len + 1 tokens: ranked by a reward model of max_seq_len = seq_len, one is cut
    long = tokenize(tok, [[{"role": "user", "content": "count"}, {"role": "assistant", "content": "1 2 " * 40}]], 48)[0]
    assert len(long[0][0]) == 49 and reward_ranked(load_reward_model(rm_path), long, 1.0, tok.pad_id, 8) == long
    lines = []
    train(
        config(steps=2, ptx_coef=1.0, ptx_keep=0.5), PROMPTS, init, rm_path, tmp_path / "k", ptx=mixed, log=lines.append
    )
    assert any("on 8 conversations, the 4 of 8 the reward model scores highest" in line for line in lines)
