"""Stage 3a: the Bradley–Terry loss, the reward model's head and checkpoint, and a short training run."""

import math

import pytest
import torch

from fromzero import checkpoint
from fromzero.model import ModelConfig, Transformer
from fromzero.train.reward import RewardConfig, RewardModel, bradley_terry_loss, load_reward_model, score_responses


def test_bradley_terry_loss_and_gradient_match_closed_form():
    chosen = torch.tensor([1.0, 0.0, -2.0], requires_grad=True)
    rejected = torch.tensor([0.0, 0.0, 1.0], requires_grad=True)
    loss = bradley_terry_loss(chosen, rejected)
    deltas = [1.0, 0.0, -3.0]
    assert loss.item() == pytest.approx(sum(math.log(1 + math.exp(-d)) for d in deltas) / 3)
    loss.backward()
    # d/dΔ of -log σ(Δ) is -σ(-Δ); the mean divides by the batch
    expected = torch.tensor([-1 / (1 + math.exp(d)) / 3 for d in deltas])
    torch.testing.assert_close(chosen.grad, expected)
    torch.testing.assert_close(rejected.grad, -expected)
    assert bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]), margin=1.0).item() == pytest.approx(math.log(2))
    margins = torch.tensor([0.0, 2.0])
    assert bradley_terry_loss(torch.tensor([2.0, 2.0]), torch.tensor([0.0, 0.0]), margins).item() == pytest.approx(
        (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    )


def tiny_lm(tie: bool = True) -> Transformer:
    torch.manual_seed(0)
    return Transformer(
        ModelConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32, tie_embeddings=tie)
    )


def test_reward_model_starts_from_the_lm_and_reads_the_last_real_token(tmp_path):
    lm = tiny_lm()
    rm = RewardModel.from_lm(lm).eval()
    assert torch.equal(rm.model.layers[1].mlp.up_proj.weight, lm.model.layers[1].mlp.up_proj.weight)
    prompts, responses = [[1, 5, 6], [1, 7]], [[8, 9, 2], [3]]
    assert score_responses(rm, prompts, responses, pad_id=0).tolist() == [0.0, 0.0]  # zero head: all rewards start at 0
    torch.nn.init.normal_(rm.score.weight)
    batched = score_responses(rm, prompts, responses, pad_id=0)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        with torch.no_grad():
            alone = rm(torch.tensor([p + r]))[0, -1]
        assert batched[i].item() == pytest.approx(alone.item(), abs=1e-5)

    checkpoint.save(tmp_path / "rm", 1, rm, tokenizer_file=write_tokenizer(tmp_path), meta={"stage": "reward"})
    loaded = load_reward_model(tmp_path / "rm").eval()
    torch.testing.assert_close(score_responses(loaded, prompts, responses, pad_id=0), batched)
    checkpoint.save(tmp_path / "lm", 1, lm, tokenizer_file=write_tokenizer(tmp_path), meta={})
    with pytest.raises(ValueError, match="is a language model .* but a reward model"):
        load_reward_model(tmp_path / "lm")
    with pytest.raises(ValueError, match="is a reward model .* but a language model"):
        checkpoint.load_model(tmp_path / "rm")  # a reward model is not a language model


def test_untied_lm_head_stays_out_of_training():
    rm = RewardModel.from_lm(tiny_lm(tie=False))
    assert not rm.lm_head.weight.requires_grad and rm.score.weight.requires_grad


def test_likelihood_reward_adds_the_gated_surprise_of_the_answer_tokens(tmp_path):
    from fromzero.train.reward import ASSISTANT_ID

    lm = tiny_lm()
    rm = RewardModel.from_lm(lm, likelihood=True).eval()
    prompts, responses = [[1, 5, ASSISTANT_ID], [1, 7, ASSISTANT_ID, 9, 2, ASSISTANT_ID]], [[8, 9, 2], [3]]
    assert score_responses(rm, prompts, responses, pad_id=0).tolist() == [0.0, 0.0]  # zero heads: rewards start at 0
    with torch.no_grad():
        torch.nn.init.normal_(rm.score.weight)
        rm.gate.bias.fill_(0.5)  # a constant gate: half the answer's surprise
    rewards = score_responses(rm, prompts, responses, pad_id=0)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids = torch.tensor([p + r])
        with torch.no_grad():
            logps = torch.log_softmax(lm(ids)[0, :-1], -1)
            entropy = -(logps.exp() * logps).sum(-1)
            surprise = logps.gather(1, ids[0, 1:, None]).squeeze(1) + entropy
            last = rm.score(rm.hidden_states(ids))[0, -1, 0]
        # only the tokens after the last <|assistant|> count, each predicted from the position before it
        expected = last + 0.5 * surprise[-len(r) :].sum()
        assert rewards[i].item() == pytest.approx(expected.item(), abs=1e-4)

    checkpoint.save(tmp_path / "rm", 1, rm, tokenizer_file=write_tokenizer(tmp_path), meta={"stage": "reward"})
    loaded = load_reward_model(tmp_path / "rm").eval()
    assert loaded.gate is not None
    torch.testing.assert_close(score_responses(loaded, prompts, responses, pad_id=0), rewards)
    assert RewardModel.from_lm(tiny_lm(tie=False), likelihood=True).lm_head.weight.requires_grad  # it reads the LM head


def write_tokenizer(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text("{}")
    return path


def smoke_init(smoke_data, out):
    """A random-init smoke-size model as the starting checkpoint, and world preferences that differ in style
    only: a model that has learned no facts can still learn what people prefer in the way answers are said."""
    from fromzero.config import load_config
    from fromzero.data.world import build_world
    from fromzero.data.world_pref import PreferenceConfig, build_preferences
    from fromzero.tokenizer import Tokenizer
    from fromzero.train import pretrain

    cfg = load_config("smoke")
    model = pretrain.init_model(cfg.model, Tokenizer.load(smoke_data), seed=0)
    checkpoint.save(out / "init", 0, model, tokenizer_file=smoke_data / "tokenizer.json", meta={"stage": "init"})
    prefs = build_preferences(
        build_world(cfg.world), PreferenceConfig(content_weights={"right": 1.0}, temperature=0, eval_questions=48)
    )
    return out / "init", prefs


def test_short_reward_training_raises_heldout_pairwise_accuracy(smoke_data, tmp_path):
    from fromzero.data.preference import encode_pairs
    from fromzero.tokenizer import Tokenizer
    from fromzero.train import reward
    from fromzero.train.loop import read_metrics

    init, prefs = smoke_init(smoke_data, tmp_path)
    cfg = RewardConfig(
        steps=20,
        lr=5e-3,
        warmup_steps=2,
        micro_batch_size=16,
        batch_tokens=2048,
        seq_len=128,
        precision="fp32",
        eval_every=20,
        checkpoint_every=20,
    )
    ckpt = reward.train(cfg, prefs.train, prefs.eval_pairs, init, tmp_path / "rm", log=lambda _: None)
    metrics = read_metrics(tmp_path / "rm")
    first, final = metrics[0], metrics[-1]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)  # the zero head: no preference yet
    assert final["val_accuracy"] >= 0.8 and final["val_loss"] < math.log(2) - 0.25, final  # chance: 0.5, ln 2

    tok = Tokenizer.load(smoke_data)
    model = load_reward_model(ckpt).eval()
    encoded, _ = encode_pairs(tok, prefs.eval_pairs, cfg.seq_len)
    chosen = score_responses(model, [e.chosen for e in encoded], [[]] * len(encoded), tok.pad_id)
    rejected = score_responses(model, [e.rejected for e in encoded], [[]] * len(encoded), tok.pad_id)
    assert (chosen > rejected).float().mean().item() == pytest.approx(final["val_accuracy"])
    assert reward.train(cfg, prefs.train, prefs.eval_pairs, init, tmp_path / "rm", resume=True) == ckpt  # finished
