import json
import random

import numpy as np
import pytest

from fromzero.data.shards import ShardsMeta, TokenShards, build_shards
from fromzero.tokenizer import Tokenizer

WORDS = "the a cat dog ran saw big red sun tree park home mom said and was to école 東京 🙂".split()


def make_docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"doc {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 80))) for i in range(n)]


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    tok = Tokenizer.train(make_docs(300, seed=99), vocab_size=400)
    return tok.save(tmp_path_factory.mktemp("tok"))


def build(docs, tok_path, out, **kwargs):
    kwargs = {"num_workers": 1, "progress": False, **kwargs}
    return build_shards(docs, tok_path, out, **kwargs)


def split_documents(out, split, tok: Tokenizer) -> list[str]:
    """Decode a split's stream back into documents, cutting at every bos."""
    ts = TokenShards(out, split)
    stream = ts.slice(0, len(ts))
    if len(stream) == 0:
        return []
    assert stream[0] == tok.bos_id
    starts = np.flatnonzero(stream == tok.bos_id).tolist() + [len(stream)]
    return [tok.decode(stream[a + 1 : b].tolist()) for a, b in zip(starts, starts[1:])]


def shard_bytes(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_workers_give_identical_bytes(tok_path, tmp_path):
    docs = make_docs(400)
    build(docs, tok_path, tmp_path / "one", num_workers=1, shard_tokens=3000)
    build(docs, tok_path, tmp_path / "two", num_workers=2, shard_tokens=3000, chunk_docs=37)
    one, two = shard_bytes(tmp_path / "one"), shard_bytes(tmp_path / "two")
    assert one == two
    assert len([n for n in one if n.startswith("train_")]) > 1


def test_seed_determines_split(tok_path, tmp_path):
    docs = make_docs(300)
    a = build(docs, tok_path, tmp_path / "a", seed=1, val_fraction=0.2)
    b = build(docs, tok_path, tmp_path / "b", seed=1, val_fraction=0.2)
    build(docs, tok_path, tmp_path / "c", seed=2, val_fraction=0.2)
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")
    assert a == b
    assert shard_bytes(tmp_path / "a") != shard_bytes(tmp_path / "c")
    assert 30 < a.splits["val"].documents < 90  # ~60 expected


def test_every_document_intact_in_exactly_one_split(tok_path, tmp_path):
    tok = Tokenizer.load(tok_path)
    docs = make_docs(300)
    meta = build(docs, tok_path, tmp_path / "s", val_fraction=0.1, shard_tokens=1000)
    train = split_documents(tmp_path / "s", "train", tok)
    val = split_documents(tmp_path / "s", "val", tok)
    assert sorted(train + val) == sorted(docs)
    assert not set(train) & set(val)
    # order within a split follows the input
    assert train == [d for d in docs if d in set(train)]
    assert (meta.splits["train"].documents, meta.splits["val"].documents) == (len(train), len(val))


def test_meta(tok_path, tmp_path):
    tok = Tokenizer.load(tok_path)
    docs = make_docs(200)
    meta = build(docs, tok_path, tmp_path / "s", shard_tokens=2000, val_fraction=0.1, seed=5)
    assert ShardsMeta.load(tmp_path / "s") == meta
    on_disk = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert on_disk["dtype"] == "uint16" and on_disk["vocab_size"] == tok.vocab_size == 400
    assert on_disk["total_tokens"] == sum(len(tok.encode(d)) + 1 for d in docs)
    assert on_disk["total_documents"] == 200
    assert (on_disk["seed"], on_disk["val_fraction"], on_disk["bos_id"]) == (5, 0.1, 0)
    assert len(on_disk["tokenizer_sha256"]) == 64
    for split, info in meta.splits.items():
        assert info.tokens == sum(s.tokens for s in info.shards)
        assert all(s.tokens == 2000 for s in info.shards[:-1]) and 0 < info.shards[-1].tokens <= 2000
        for i, shard in enumerate(info.shards):
            path = tmp_path / "s" / shard.file
            assert shard.file == f"{split}_{i:06d}.bin"
            assert path.stat().st_size == 2 * shard.tokens  # raw uint16, no header
        assert np.fromfile(tmp_path / "s" / info.shards[0].file, dtype="<u2")[0] == tok.bos_id
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(
        ["meta.json"] + [s.file for info in meta.splits.values() for s in info.shards]
    )


def test_reading_across_shard_boundaries(tok_path, tmp_path):
    build(make_docs(50), tok_path, tmp_path / "small", shard_tokens=7, val_fraction=0.0)
    build(make_docs(50), tok_path, tmp_path / "big", shard_tokens=10**6, val_fraction=0.0)
    small, big = TokenShards(tmp_path / "small", "train"), TokenShards(tmp_path / "big", "train")
    assert len(small.meta.splits["train"].shards) > 10
    assert len(small) == len(big)
    whole = big.slice(0, len(big))
    assert whole.dtype == np.int64
    np.testing.assert_array_equal(small.slice(0, len(small)), whole)
    rng = random.Random(0)
    for _ in range(200):
        start = rng.randrange(len(big))
        length = rng.randrange(len(big) - start + 1)
        np.testing.assert_array_equal(small.slice(start, length), whole[start : start + length])
    assert len(small.slice(len(small), 0)) == 0
    with pytest.raises(IndexError):
        small.slice(len(small) - 3, 4)
    with pytest.raises(IndexError):
        small.slice(-1, 2)
    assert len(TokenShards(tmp_path / "small", "val")) == 0


def test_val_guarantees(tok_path, tmp_path):
    # a tiny val_fraction still yields one val document; a single document gives val its tail
    meta = build(make_docs(5), tok_path, tmp_path / "a", val_fraction=1e-9)
    assert (meta.splits["train"].documents, meta.splits["val"].documents) == (4, 1)
    meta = build(make_docs(1), tok_path, tmp_path / "b", val_fraction=0.5)
    assert (meta.splits["train"].documents, meta.splits["val"].documents) == (1, 1)
    meta = build([], tok_path, tmp_path / "c")
    assert meta.total_tokens == 0 and len(TokenShards(tmp_path / "c", "train")) == 0
    with pytest.raises(ValueError, match="val_fraction"):
        build(make_docs(5), tok_path, tmp_path / "d", val_fraction=1.0)


@pytest.mark.parametrize("num_workers", [1, 2])
def test_atomic_on_failure(tok_path, tmp_path, num_workers):
    def failing_docs():
        yield from make_docs(100)
        raise RuntimeError("source broke")

    out = tmp_path / "s"
    with pytest.raises(RuntimeError, match="source broke"):
        build(failing_docs(), tok_path, out, num_workers=num_workers, chunk_docs=10)
    assert list(tmp_path.iterdir()) == []  # neither the output nor the temp dir remains


def test_rebuild_replaces_previous_build_only(tok_path, tmp_path):
    out = tmp_path / "s"
    build(make_docs(100), tok_path, out, shard_tokens=500)
    meta = build(make_docs(10), tok_path, out, shard_tokens=10**6)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train_000000.bin", "val_000000.bin"]
    assert meta.total_documents == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        build(make_docs(10), tok_path, precious)
    assert (precious / "notes.txt").read_text() == "keep me"
