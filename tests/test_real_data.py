"""The user's own files work the first time: one-file corpora, separate validation text, HH and Alpaca preference
records, pairs longer than seq_len, d1's Countdown records."""

import json
import random

import pytest

from fromzero.config import load_config
from fromzero.data import build as data_build
from fromzero.data.chat import render
from fromzero.data.preference import (
    PreferencePair,
    PreferenceStats,
    describe_encoding,
    encode_pairs,
    iter_preference_pairs,
)
from fromzero.data.shards import CHUNK_CHARS, _is_val, assign_splits, cut_document
from fromzero.data.tasks import iter_tasks
from fromzero.data.world import build_world
from fromzero.rewards import accuracy
from fromzero.tokenizer import Tokenizer


def book(lines: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = "the king said that his horse ran to a far town and wept for the queen".split()
    return "\n".join(f"{i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for i in range(lines))


def split_text(data_dir, split) -> str:
    tok = Tokenizer.load(data_dir)
    shards = data_build.open_split(data_dir, split)
    return tok.decode([t for t in shards.slice(0, len(shards)).tolist() if t != tok.bos_id])


def test_cut_document_keeps_every_character_and_cuts_after_line_breaks():
    text = book(3000)
    pieces = cut_document(text, 5000)
    assert "".join(pieces) == text and max(map(len, pieces)) <= 5000 and len(pieces) > 10
    assert all(p.endswith("\n") for p in pieces[:-1])
    assert cut_document("x" * 12, 5) == ["xxxxx", "xxxxx", "xx"]  # no break anywhere: cut at the limit
    assert cut_document("short", 5000) == ["short"]


def test_a_one_file_corpus_keeps_its_tail_for_validation(tmp_path):
    corpus = tmp_path / "book.txt"
    text = book(12000)  # about 400k characters, no <|endoftext|>
    corpus.write_text(text)
    cfg = load_config("smoke", [f"data.sources=[{corpus}]", "data.val_fraction=0.1", "data.chunk_chars=20000"])
    meta = data_build.build(cfg, tmp_path / "data", progress=False)
    val = split_text(tmp_path / "data", "val")
    assert text.endswith(val) and text[-len(val) - 1] == "\n"  # the tail, from the start of a line
    assert len(val) == pytest.approx(0.1 * len(text), rel=0.02)
    assert split_text(tmp_path / "data", "train") + val == text
    assert meta.splits["train"].documents > 15 and meta.splits["val"].documents >= 2


def test_the_built_in_world_splits_as_before():
    docs = list(build_world(load_config("smoke").world).pretrain_documents())
    assert max(map(len, docs)) < CHUNK_CHARS
    assigned = list(assign_splits(docs, 0.05, seed=3))
    assert [d for d, _ in assigned] == docs
    assert [v for _, v in assigned] == [_is_val(3, i, 0.05) for i in range(len(docs))]


def test_a_single_document_gives_validation_its_tail_and_train_the_rest():
    assert list(assign_splits(["First line.\nSecond line.\nThird one."], 0.3, seed=0)) == [
        ("First line.\nSecond line.\n", False),
        ("Third one.", True),
    ]
    assert list(assign_splits(["x"], 0.5, seed=0)) == [("x", False)]  # nothing to cut: train comes first
    assert list(assign_splits(["no split wanted"], 0.0, seed=0)) == [("no split wanted", False)]


def test_separate_validation_sources_are_scored_whole(tmp_path):
    train_file, val_file = tmp_path / "train.txt", tmp_path / "heldout.jsonl"
    train_file.write_text("<|endoftext|>".join(book(50, seed=s) for s in range(40)))
    held = [book(60, seed=100 + s) for s in range(3)]
    val_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in held))
    cfg = load_config("smoke", [f"data.sources=[{train_file}]", f"data.val_sources=[{val_file}]"])
    meta = data_build.build(cfg, tmp_path / "data", progress=False)
    assert (meta.splits["train"].documents, meta.splits["val"].documents, meta.val_fraction) == (40, 3, 0.0)
    assert split_text(tmp_path / "data", "val") == "".join(held)


# ---------------------------------------------------------------------------
# Preference records


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_hh_transcripts_with_two_assistant_turns_in_a_row_are_merged_and_counted(tmp_path):
    shared = "\n\nHuman: Hi?\n\nAssistant: Hello.\n\nAssistant: Anything else?\n\nHuman: A joke?\n\nAssistant:"
    records = [
        {"chosen": shared + " Knock knock.", "rejected": shared + " No."},
        {"chosen": "\n\nHuman: Hi?\n\nAssistant: Hey.", "rejected": "\n\nHuman: Hi?\n\nAssistant: Go."},
    ]
    stats = PreferenceStats()
    pairs = list(iter_preference_pairs(write_jsonl(tmp_path / "hh.jsonl", records), stats=stats))
    assert pairs[0].messages == [
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello.\n\nAnything else?"},
        {"role": "user", "content": "A joke?"},
    ]
    assert (pairs[0].chosen, pairs[0].rejected) == ("Knock knock.", "No.")
    assert (stats.pairs, stats.merged, stats.skipped) == (2, 1, 0)
    assert stats.describe() == (
        "2 preference records: 2 pairs, 0 ties and 0 'both bad' votes dropped, 0 malformed "
        "records skipped, 1 with consecutive same-speaker turns merged"
    )


def test_alpaca_preference_records_are_their_own_format(tmp_path):
    records = [
        {
            "instruction": "Fix the spelling.",
            "input": "freind",
            "output": "friend",
            "chosen": "friend",
            "rejected": "Get it together: friend.",
        },
        {"instruction": "Say hi.", "input": "", "chosen": "Hi!", "rejected": "Hi!"},
    ]
    path = tmp_path / "prefs.json"
    path.write_text(json.dumps(records))
    stats = PreferenceStats()
    pairs = list(iter_preference_pairs(str(path), stats=stats))
    assert pairs == [
        PreferencePair(
            [{"role": "user", "content": "Fix the spelling.\n\nfreind"}], "friend", "Get it together: friend."
        )
    ]
    assert (stats.pairs, stats.ties) == (1, 1)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train([book(400)], vocab_size=300)


def test_long_pairs_are_cut_as_trl_cuts_them(tok):
    history = [
        {"role": "user", "content": book(30, seed=1)},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": "And the end of the story?"},
    ]
    long_pair = PreferencePair(history, book(20, seed=2), book(20, seed=3))
    short_pair = PreferencePair([{"role": "user", "content": "Hi?"}], "Hello.", "No.")
    (cut, short), counts = encode_pairs(tok, [long_pair, short_pair], seq_len=64)
    assert counts == {"pairs": 2, "truncated": 1, "dropped": 0}
    prompt = render(tok, history, generation_prompt=True)[0]
    # the prompt keeps <|bos|> and its end (the last question), down to half of seq_len; the answers keep their start
    assert cut.prompt_len == 32 and cut.chosen[:32] == prompt[:1] + prompt[-31:] == cut.rejected[:32]
    chosen = render(tok, [*history, {"role": "assistant", "content": long_pair.chosen}])[0][len(prompt) :]
    assert len(cut.chosen) == len(cut.rejected) == 64 and cut.chosen[32:] == chosen[:32]
    assert short.chosen == render(tok, [*short_pair.messages, {"role": "assistant", "content": "Hello."}])[0]
    # a short answer after a long prompt: the prompt keeps all that the answer leaves
    (only_prompt,), _ = encode_pairs(tok, [PreferencePair(history, "Yes.", "No.")], seq_len=64)
    assert len(only_prompt.chosen) == 64 and only_prompt.chosen[only_prompt.prompt_len :] == tok.encode("Yes.") + [
        tok.end_id
    ]
    (kept,), _ = encode_pairs(tok, [long_pair], seq_len=64, max_prompt_len=48)
    assert kept.prompt_len == 48
    # answers that differ only past the cut teach nothing
    same_start = PreferencePair(history, book(20, seed=4) + " yes", book(20, seed=4) + " no")
    encoded, counts = encode_pairs(tok, [same_start], seq_len=64)
    assert encoded == [] and counts == {"pairs": 0, "truncated": 1, "dropped": 1}
    with pytest.raises(ValueError, match=r"max_prompt_len \(64\) must be at least 2 and below seq_len \(64\)"):
        encode_pairs(tok, [long_pair], seq_len=64, max_prompt_len=64)


def test_the_pair_counts_name_every_cut_and_drop_of_both_splits():
    line = describe_encoding(
        "reward", {"pairs": 2196, "truncated": 1600, "dropped": 1}, {"pairs": 115, "truncated": 80, "dropped": 0}, 128
    )
    assert line == (
        "[reward] pairs: training 2196 (1600 cut to 128 tokens, 1 dropped as identical once cut), "
        "validation 115 (80 cut to 128 tokens, 0 dropped as identical once cut)"
    )


# ---------------------------------------------------------------------------
# Task records


def test_countdown_input_output_records(tmp_path):
    path = write_jsonl(
        tmp_path / "cd3.jsonl", [{"input": "30,100,93", "output": "23"}, {"input": "1,2", "output": "x"}]
    )
    with pytest.raises(ValueError, match=r"cd3.jsonl:2: bad countdown_text record: expected input like"):
        list(iter_tasks(path))
    (task,) = iter_tasks(path, on_error="skip")
    assert task.kind == "countdown" and task.metadata == {"numbers": [30, 100, 93], "target": 23}
    assert (
        accuracy("<answer>30 - (100 - 93)</answer>", task) == 1.0 and accuracy("<answer>30 - 7</answer>", task) == 0.0
    )
