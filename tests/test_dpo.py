"""Stage 3b: the DPO and IPO losses by hand, answer log-probabilities, and a short DPO run."""

import math

import pytest
import torch
import torch.nn.functional as F

from fromzero.model import ModelConfig, Transformer
from fromzero.train.dpo import DPOConfig, dpo_loss, sequence_logps


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def logps(requires_grad: bool = False):
    pol_c = torch.tensor([-1.0, -2.0], requires_grad=requires_grad)
    pol_r = torch.tensor([-3.0, -1.0])
    ref_c, ref_r = torch.tensor([-2.0, -2.0]), torch.tensor([-2.0, -2.0])
    return pol_c, pol_r, ref_c, ref_r  # log-ratio differences z = [2, -1]


def test_dpo_loss_metrics_and_gradient_by_hand():
    pol_c, pol_r, ref_c, ref_r = logps(requires_grad=True)
    beta, z = 0.5, [2.0, -1.0]
    loss, metrics = dpo_loss(pol_c, pol_r, ref_c, ref_r, beta)
    assert loss.item() == pytest.approx(-(math.log(sigmoid(beta * z[0])) + math.log(sigmoid(beta * z[1]))) / 2)
    # implicit rewards β(log π - log π_ref): chosen [0.5, 0], rejected [-0.5, 0.5]
    assert metrics == pytest.approx(
        {
            "rewards/chosen": 0.25,
            "rewards/rejected": 0.0,
            "rewards/accuracies": 0.5,
            "rewards/margins": 0.25,
            "logps/chosen": -1.5,
            "logps/rejected": -2.0,
        }
    )
    loss.backward()
    # d/dz of -log σ(βz) is -β σ(-βz); the mean divides by the batch
    torch.testing.assert_close(pol_c.grad, torch.tensor([-beta * sigmoid(-beta * x) / 2 for x in z]))


def test_label_smoothing_and_ipo_by_hand():
    pol_c, pol_r, ref_c, ref_r = logps(requires_grad=True)
    beta, eps, z = 0.5, 0.1, [2.0, -1.0]
    loss, _ = dpo_loss(pol_c, pol_r, ref_c, ref_r, beta, label_smoothing=eps)
    expected = sum(-(1 - eps) * math.log(sigmoid(beta * x)) - eps * math.log(sigmoid(-beta * x)) for x in z) / 2
    assert loss.item() == pytest.approx(expected)

    loss, _ = dpo_loss(pol_c, pol_r, ref_c, ref_r, beta, "ipo")
    target = 1 / (2 * beta)  # IPO pulls the log-ratio gap to 1/(2β), no further
    assert loss.item() == pytest.approx(sum((x - target) ** 2 for x in z) / 2)
    loss.backward()
    torch.testing.assert_close(pol_c.grad, torch.tensor([2 * (x - target) / 2 for x in z]))
    with pytest.raises(ValueError, match="sigmoid loss only"):
        dpo_loss(pol_c, pol_r, ref_c, ref_r, beta, "ipo", label_smoothing=eps)
    with pytest.raises(ValueError, match="sigmoid loss only"):
        DPOConfig(loss="ipo", label_smoothing=eps)


def test_policy_equal_to_reference_gives_ln2_and_no_margin():
    same = torch.tensor([-4.0, -7.0, -1.0])
    other = torch.tensor([-2.0, -9.0, -3.0])
    loss, metrics = dpo_loss(same, other, same, other, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2)) and metrics["rewards/margins"] == 0.0


def test_sequence_logps_sum_the_answer_tokens_only():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)).eval()
    long, short = [1, 4, 5, 6, 7, 8, 2], [1, 4, 9, 2]
    ids = torch.tensor([long, short + [0] * 3])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        got = sequence_logps(model, ids, mask)
        mean = sequence_logps(model, ids, mask, average=True)
        for row, (seq, start) in enumerate(((long, 3), (short, 2))):
            logp = F.log_softmax(model(torch.tensor([seq[:-1]]))[0], -1)
            expected = sum(logp[t - 1, seq[t]].item() for t in range(start, len(seq)))
            assert got[row].item() == pytest.approx(expected, abs=1e-4)
            assert mean[row].item() == pytest.approx(expected / (len(seq) - start), abs=1e-4)


def test_rpo_adds_the_next_token_loss_of_the_chosen_answers():
    from fromzero.data.preference import EncodedPair, collate_pairs
    from fromzero.train.dpo import dpo_loss_fn

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32))
    encoded = [EncodedPair([1, 4, 5, 6, 2], [1, 4, 7, 2], 2), EncodedPair([1, 3, 8, 9, 9, 2], [1, 3, 2], 2)]
    batch = collate_pairs(encoded, [0, 1], pad_id=0)
    reference = torch.tensor([[-9.0, -5.0], [-12.0, -3.0]])
    with torch.no_grad():
        dpo_only, _ = dpo_loss_fn(DPOConfig(beta=0.2), reference)(model, batch)
        with_nll, metrics = dpo_loss_fn(DPOConfig(beta=0.2, rpo_alpha=0.5), reference)(model, batch)
        per_token = []
        for pair in encoded:
            logp = F.log_softmax(model(torch.tensor([pair.chosen[:-1]]))[0], -1)
            answer = range(pair.prompt_len, len(pair.chosen))
            per_token.append(-sum(logp[t - 1, pair.chosen[t]].item() for t in answer) / len(answer))
    nll = sum(per_token) / 2
    assert metrics["nll_loss"] == pytest.approx(nll, abs=1e-4)
    assert (with_nll - dpo_only).item() == pytest.approx(0.5 * nll, abs=1e-4)


def test_short_dpo_run_raises_the_chosen_vs_rejected_margin(smoke_data, tmp_path):
    from test_reward import smoke_init

    from fromzero.train import dpo
    from fromzero.train.loop import read_metrics

    init, prefs = smoke_init(smoke_data, tmp_path)
    cfg = DPOConfig(
        steps=8,
        lr=3e-3,
        warmup_steps=2,
        beta=0.1,
        micro_batch_size=16,
        batch_tokens=2048,
        seq_len=128,
        precision="fp32",
        eval_every=8,
        checkpoint_every=8,
    )
    dpo.train(cfg, prefs.train, prefs.eval_pairs, init, tmp_path / "dpo", log=lambda _: None)
    metrics = read_metrics(tmp_path / "dpo")
    first, final = metrics[0], metrics[-1]
    # step 1 runs the starting model, which is the reference: no margin yet, loss ln 2
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4) and abs(first["rewards/margins"]) < 1e-3
    assert final["val_rewards/margins"] > 0.5 and final["val_rewards/accuracies"] >= 0.8, final
    assert final["val_loss"] < math.log(2) - 0.2
