"""The real public files of ../shared/data load with default settings, and report the counts their README gives.

Skipped where the folder is absent (a fresh clone elsewhere); `pytest -m shared_data` runs these alone.
"""

from pathlib import Path

import pytest

from fromzero.config import load_config
from fromzero.data import build as data_build
from fromzero.data.instruct import iter_conversations
from fromzero.data.preference import PreferenceStats, encode_pairs, iter_preference_pairs, split_pairs
from fromzero.data.sources import SourceStats, iter_documents
from fromzero.data.tasks import iter_tasks
from fromzero.tokenizer import Tokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
pytestmark = [pytest.mark.shared_data, pytest.mark.skipif(not SHARED.is_dir(), reason=f"no {SHARED}")]


@pytest.mark.parametrize(
    "path, documents, chars",
    [
        ("tinystories/tinystories_sample.txt", 2317, 2_058_546),  # 2,316 stories and the one the 2 MiB cut ends in
        ("tinystories/tinystories_val.txt", 1, 793_449),  # no separators: one document
        ("tinystories/cs336-fixture/tinystories_sample.txt", 5, 3709),
        ("gutenberg/pg1342.txt", 1, 748_147),  # BOM dropped, CRLF read as LF
        ("tinyshakespeare/input.txt", 1, 1_115_393),
    ],
)
def test_pretraining_text(path, documents, chars):
    docs = list(iter_documents(SHARED / path))
    assert (len(docs), sum(map(len, docs))) == (documents, chars)
    assert not any("\r" in d or d.startswith("\ufeff") for d in docs)


def test_tinyshakespeare_keeps_its_tail_for_validation(tmp_path):
    corpus = SHARED / "tinyshakespeare" / "input.txt"
    cfg = load_config("smoke", [f"data.sources=[{corpus}]", "data.val_fraction=0.1", "data.vocab_size=300"])
    meta = data_build.build(cfg, tmp_path / "data", progress=False)
    tok = Tokenizer.load(tmp_path / "data")
    val = data_build.open_split(tmp_path / "data", "val")
    text = tok.decode([t for t in val.slice(0, len(val)).tolist() if t != tok.bos_id])
    assert corpus.read_text().rstrip().endswith(text) and not text.startswith("\n")
    assert len(text) == pytest.approx(111_539, rel=0.01)  # the last tenth, as nanoGPT holds out
    assert meta.splits["train"].documents == 16 and meta.splits["val"].documents == 2


def test_alpaca_instructions():
    stats = SourceStats()
    assert (
        len(list(iter_conversations(SHARED / "llms-from-scratch-ch07" / "instruction-data.json", stats=stats))) == 1100
    )
    assert (stats.documents, stats.skipped) == (1100, 0)


@pytest.mark.parametrize(
    "path, pairs, ties, merged",
    [
        (
            "hh-rlhf/harmless-base/test.jsonl.gz",
            2312,
            0,
            9,
        ),  # 4 transcripts with two assistant turns in a row, and 5 more
        ("llms-from-scratch-ch07/instruction-data-with-preference.json", 1094, 6, 0),  # 6 with chosen == rejected
    ],
)
def test_preference_pairs(path, pairs, ties, merged):
    stats = PreferenceStats()
    assert len(list(iter_preference_pairs(str(SHARED / path), stats=stats))) == pairs
    assert (stats.pairs, stats.ties, stats.merged, stats.skipped, stats.documents) == (
        pairs,
        ties,
        merged,
        0,
        pairs + ties,
    )


def test_hh_pairs_are_cut_not_dropped_for_a_128_token_reward_model():
    tok = Tokenizer.train(iter_documents(SHARED / "tinystories" / "tinystories_sample.txt"), vocab_size=2048)
    train, val = split_pairs(list(iter_preference_pairs(str(SHARED / "hh-rlhf/harmless-base/test.jsonl.gz"))), 0.05)
    encoded, counts = encode_pairs(tok, train, seq_len=128)
    val_encoded, val_counts = encode_pairs(tok, val, seq_len=128)
    assert counts["pairs"] + counts["dropped"] == len(train) and val_counts["pairs"] + val_counts["dropped"] == len(val)
    assert counts["dropped"] <= 5 and counts["truncated"] > len(train) / 2  # most are longer than 128 tokens
    assert max(len(e.chosen) for e in encoded + val_encoded) == 128


@pytest.mark.parametrize(
    "path, tasks, kind",
    [
        ("gsm8k/test.jsonl", 1319, "math"),
        ("gsm8k/train.jsonl.gz", 7473, "math"),
        ("svamp/SVAMP.json", 1000, "math"),
        ("math500/test.jsonl", 500, "math"),
        ("countdown/countdown_cd3_test.jsonl", 256, "countdown"),
        ("countdown/tinyzero-pr93/train.parquet", 8001, "countdown"),
        ("countdown/tinyzero-pr93/test.parquet", 2001, "countdown"),
    ],
)
def test_reasoning_tasks(path, tasks, kind):
    stats = SourceStats()
    loaded = list(iter_tasks(SHARED / path, stats=stats))
    assert (len(loaded), stats.skipped) == (tasks, 0) and {t.kind for t in loaded} == {kind}
    assert all(t.answer and "\n" not in t.answer for t in loaded)
