import math

import pytest
import torch

from fromzero.generate import SamplingConfig, filter_logits, generate, sample_next
from fromzero.model import ModelConfig, Transformer


def tiny_model(seed=0, **kw) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64, **kw)
    return Transformer(cfg).eval()


def test_param_count_matches_config():
    for tie in (True, False):
        m = tiny_model(tie_embeddings=tie)
        assert sum(p.numel() for p in m.parameters()) == m.cfg.num_params()


def test_random_init_loss_is_near_log_vocab():
    m = tiny_model()
    x, y = torch.randint(0, 97, (2, 4, 32))
    loss = m(x, y)
    assert abs(loss.item() - math.log(97)) < 0.3


def test_causality_future_tokens_do_not_change_past_logits():
    m = tiny_model()
    x = torch.randint(0, 97, (2, 20))
    y = x.clone()
    y[:, 10:] = torch.randint(0, 97, (2, 10))
    torch.testing.assert_close(m(x)[:, :10], m(y)[:, :10])


def naive_greedy(model, prompt, n, stop=()):
    """Recompute the whole sequence at every step, no cache, no padding."""
    seq = list(prompt)
    out = []
    for _ in range(n):
        logits = model(torch.tensor([seq]))[0, -1]
        tok = int(logits.argmax())
        out.append(tok)
        seq.append(tok)
        if tok in stop:
            break
    return out


def test_kv_cache_generation_equals_full_recomputation_ragged_batch():
    m = tiny_model(seed=1)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (5, 1, 12, 8)]
    cached = generate(m, prompts, SamplingConfig(max_new_tokens=20, temperature=0))
    for prompt, got in zip(prompts, cached):
        assert got == naive_greedy(m, prompt, 20)


def test_kv_cache_logits_match_full_forward():
    m = tiny_model(seed=2)
    seq = torch.randint(0, 97, (1, 30))
    from fromzero.model import KVCache

    cache = KVCache(m.cfg, 1, 30, torch.float32, torch.device("cpu"))
    with torch.no_grad():
        first = m(seq[:, :10], cache=cache)
        steps = [m(seq[:, i : i + 1], cache=cache) for i in range(10, 30)]
        full = m(seq)
    torch.testing.assert_close(torch.cat([first] + steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_stop_tokens_end_rows_independently():
    m = tiny_model(seed=3)
    prompts = [[1, 2, 3], [4, 5]]
    free = generate(m, prompts, SamplingConfig(max_new_tokens=10, temperature=0))
    stop = free[0][2]
    stopped = generate(m, prompts, SamplingConfig(max_new_tokens=10, temperature=0, stop_tokens=(stop,)))
    assert stopped[0] == free[0][: free[0].index(stop) + 1]
    expected_1 = free[1][: free[1].index(stop) + 1] if stop in free[1] else free[1]
    assert stopped[1] == expected_1


def test_sampling_is_seeded_and_respects_max_len():
    m = tiny_model(seed=4)
    cfg = SamplingConfig(max_new_tokens=100, temperature=1.0, top_k=10, top_p=0.9)
    a = generate(m, [[1, 2]], cfg, generator=torch.Generator().manual_seed(7))
    b = generate(m, [[1, 2]], cfg, generator=torch.Generator().manual_seed(7))
    assert a == b
    assert len(a[0]) == m.cfg.max_seq_len - 2  # capped by the context window


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    k = filter_logits(logits, top_k=2, top_p=None)
    assert torch.isinf(k[0, 2:]).all() and torch.isfinite(k[0, :2]).all()
    p = filter_logits(logits, top_k=None, top_p=0.7)  # 0.5 alone < 0.7, 0.5+0.3 >= 0.7: keep two
    assert torch.isfinite(p[0, :2]).all() and torch.isinf(p[0, 2:]).all()
    p1 = filter_logits(logits, top_k=None, top_p=0.1)  # the top token always survives
    assert torch.isfinite(p1[0, 0]) and torch.isinf(p1[0, 1:]).all()


def test_sampled_tokens_follow_the_tempered_filtered_distribution():
    probs = torch.tensor([0.1, 0.0, 0.2, 0.05, 0.65])
    logits = probs.log().expand(100_000, 5)  # rows drawn independently, as a batch is
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(sample_next(logits, SamplingConfig(temperature=1.0), g), minlength=5) / 100_000
    torch.testing.assert_close(counts, probs, atol=0.005, rtol=0)  # 5 standard errors at most
    # temperature 0.5 squares and renormalises the probabilities; top_k=2 keeps only the two likeliest
    squared = probs**2 / (probs**2).sum()
    counts = torch.bincount(sample_next(logits, SamplingConfig(temperature=0.5), g), minlength=5) / 100_000
    torch.testing.assert_close(counts, squared, atol=0.005, rtol=0)
    top2 = sample_next(logits, SamplingConfig(temperature=1.0, top_k=2), g)
    assert set(top2.tolist()) == {2, 4} and abs((top2 == 4).float().mean().item() - 0.65 / 0.85) < 0.005


def test_sequence_longer_than_context_is_a_clear_error():
    m = tiny_model()
    with pytest.raises(ValueError, match="max_seq_len"):
        m(torch.zeros(1, 65, dtype=torch.long))


def test_dropout_acts_only_while_training():
    m = tiny_model()
    x = torch.randint(0, 97, (2, 16))
    plain = m(x)
    m.dropout = 0.3
    assert torch.equal(m(x), plain)  # eval mode: no dropout
    m.train()
    torch.manual_seed(1)
    a = m(x)
    torch.manual_seed(1)
    assert torch.equal(m(x), a) and not torch.allclose(a, plain)  # seeded, and it drops
    m.dropout = 0.0
    assert torch.allclose(m(x), plain, atol=1e-6)
