"""Stage 2: instruction formats, the chat template's loss mask, batching, and a short SFT run."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fromzero.data.chat import prompt_ids, render
from fromzero.data.instruct import iter_conversations
from fromzero.data.sources import DataError, SourceStats
from fromzero.data.world import WorldConfig, build_world
from fromzero.data.world_chat import InstructConfig, Question, build_instructions, fact_sentence, is_correct
from fromzero.train.loop import read_metrics
from fromzero.train.sft import IGNORE, ConversationBatches, collate, tokenize

EXPECTED = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize(
    "record",
    [
        {"messages": EXPECTED},
        {"conversations": EXPECTED},
        {"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]},
        {"instruction": "Hi?", "input": "", "output": "Hello."},
        {"instruction": "Hi?", "context": "", "response": "Hello."},
        {"prompt": "Hi?", "response": "Hello."},
        {"prompt": "Hi?", "completion": "Hello."},
    ],
)
def test_every_format_is_detected(tmp_path, record):
    path = write_jsonl(tmp_path / "d.jsonl", [record, record])
    assert list(iter_conversations(str(path))) == [EXPECTED, EXPECTED]


def test_alpaca_input_and_dolly_context_join_the_instruction(tmp_path):
    alpaca = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Fix:", "input": "teh", "output": "the"}])
    dolly = write_jsonl(tmp_path / "b.jsonl", [{"instruction": "Sum up.", "context": "A text.", "response": "Short."}])
    (a,), (b,) = list(iter_conversations(str(alpaca))), list(iter_conversations(str(dolly)))
    assert a[0]["content"] == "Fix:\n\nteh" and b[0]["content"] == "Sum up.\n\nA text."


def test_system_and_multi_turn_sharegpt(tmp_path):
    turns = [
        {"from": "system", "value": "Be nice."},
        {"from": "human", "value": "a"},
        {"from": "gpt", "value": "b"},
        {"from": "human", "value": "c"},
        {"from": "gpt", "value": "d"},
    ]
    (conv,) = iter_conversations(str(write_jsonl(tmp_path / "s.jsonl", [{"conversations": turns}])))
    assert [m["role"] for m in conv] == ["system", "user", "assistant", "user", "assistant"]


def test_json_parquet_and_saved_dataset_sources(tmp_path):
    import datasets

    records = [{"instruction": "Hi?", "input": "", "output": "Hello."}] * 3
    (tmp_path / "d.json").write_text(json.dumps(records))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "d.parquet")
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "saved"))
    for source in ("d.json", "d.parquet", "saved"):
        assert list(iter_conversations(str(tmp_path / source))) == [EXPECTED] * 3


def test_formats_are_detected_per_file(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "Hi?", "response": "Hello."}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"messages": EXPECTED}])
    assert list(iter_conversations([str(a), str(b)])) == [EXPECTED, EXPECTED]


def test_unknown_format_names_file_line_and_formats(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "Hi?", "answer": "Hello."}])
    with pytest.raises(
        DataError, match=rf"{path}:1: no instruction format fits the keys \['answer', 'question'\].*Alpaca"
    ):
        list(iter_conversations(str(path)))


def test_malformed_records_name_file_and_line(tmp_path):
    good = {"instruction": "Hi?", "input": "", "output": "Hello."}
    path = write_jsonl(tmp_path / "d.jsonl", [good, good, {"instruction": "Hi?"}])
    with pytest.raises(DataError, match=rf"{path}:3: bad alpaca record: missing field 'output'"):
        list(iter_conversations(str(path)))
    roles = write_jsonl(tmp_path / "r.jsonl", [{"messages": [{"role": "assistant", "content": "x"}]}])
    with pytest.raises(DataError, match=rf"{roles}:1: .*should be from the user"):
        list(iter_conversations(str(roles)))
    bad_json = tmp_path / "j.jsonl"
    bad_json.write_text(json.dumps(good) + "\n{oops\n")
    with pytest.raises(DataError, match=rf"{bad_json}:2: invalid JSON"):
        list(iter_conversations(str(bad_json)))
    stats = SourceStats()
    assert len(list(iter_conversations([str(path), str(bad_json)], on_error="skip", stats=stats))) == 3
    assert stats.skipped == 2


def test_plain_text_is_not_instruction_data(tmp_path):
    (tmp_path / "t.txt").write_text("just text")
    with pytest.raises(DataError, match="plain text holds no records"):
        list(iter_conversations(str(tmp_path / "t.txt")))


def test_loss_mask_covers_exactly_the_assistant_tokens(smoke_data):
    from fromzero.tokenizer import Tokenizer

    tok = Tokenizer.load(smoke_data)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where is Tom?"},
        {"role": "assistant", "content": "At home."},
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "He is ill."},
    ]
    ids, mask = render(tok, messages)
    enc = tok.encode
    expected = (
        [(tok.bos_id, False), (tok.system_id, False)]
        + [(t, False) for t in enc("Be brief.")]
        + [(tok.end_id, False)]
        + [(tok.user_id, False)]
        + [(t, False) for t in enc("Where is Tom?")]
        + [(tok.end_id, False)]
        + [(tok.assistant_id, False)]
        + [(t, True) for t in enc("At home.")]
        + [(tok.end_id, True)]
        + [(tok.user_id, False)]
        + [(t, False) for t in enc("Why?")]
        + [(tok.end_id, False)]
        + [(tok.assistant_id, False)]
        + [(t, True) for t in enc("He is ill.")]
        + [(tok.end_id, True)]
    )
    assert list(zip(ids, mask)) == expected
    assert prompt_ids(tok, "Why?") == [tok.bos_id, tok.user_id, *enc("Why?"), tok.end_id, tok.assistant_id]
    assert (
        tok.decode(ids) == "<|bos|><|system|>Be brief.<|end|><|user|>Where is Tom?<|end|><|assistant|>At home.<|end|>"
        "<|user|>Why?<|end|><|assistant|>He is ill.<|end|>"
    )


def test_truncation_is_counted_and_empty_examples_dropped(smoke_data):
    from fromzero.tokenizer import Tokenizer

    tok = Tokenizer.load(smoke_data)
    long_answer = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "word " * 100}]
    long_question = [{"role": "user", "content": "word " * 100}, {"role": "assistant", "content": "ok"}]
    examples, stats = tokenize(tok, [long_answer, long_question, EXPECTED], seq_len=32)
    assert stats == {"examples": 2, "truncated": 2, "dropped": 1}
    assert all(len(ids) <= 33 for ids, _ in examples)


def test_padding_does_not_leak_between_examples():
    from fromzero.model import ModelConfig, Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)).eval()
    short = ([1, 7, 8, 9], [False, False, True, True])
    long = ([1, 3, 4, 5, 6, 10, 11, 12], [False] * 4 + [True] * 4)
    x, y = collate([short, long], pad_id=0)
    assert x[0].tolist() == [1, 7, 8, 0, 0, 0, 0] and y[0].tolist() == [IGNORE, 8, 9] + [IGNORE] * 4
    assert y[1].tolist() == [IGNORE] * 3 + [6, 10, 11, 12]
    with torch.no_grad():
        alone = model(torch.tensor([short[0][:-1]]))
        batched = model(x)
    torch.testing.assert_close(batched[0, :3], alone[0])


def test_batches_group_similar_lengths_and_resume():
    examples = [([1] * n, [False] + [True] * (n - 1)) for n in range(2, 66)]
    a = ConversationBatches(examples, 8, pad_id=0, seed=1)
    widths = [a.next_batch()[0].shape[1] for _ in range(8)]
    assert sorted(widths) == [8 * k + 8 for k in range(8)]  # one epoch: each length group once
    b = ConversationBatches(examples, 8, pad_id=0, seed=1)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.next_batch()[0], b.next_batch()[0])


@pytest.mark.parametrize("world_size, micro", [(2, 4), (4, 2), (2, 8)])
def test_ranks_train_on_one_process_steps_and_objective(world_size, micro):
    """N ranks with a smaller micro-batch see, step by step, one process's examples, and the shares of the parts
    rebuild one process's objective: each group's token mean, the groups counted alike."""
    from fromzero.data.loader import LengthGroups

    lengths = [(7 * i) % 23 + 2 for i in range(59)]  # 59: a last group of 3, fewer than its 4 parts at micro 2
    units = [n - 1 for n in lengths]
    one = LengthGroups(lengths, units, 8, 8, 4, seed=3)
    accum = 32 // (micro * world_size)
    ranks = [LengthGroups(lengths, units, 8, micro, accum, seed=3, rank=r, world_size=world_size) for r in range(4)]
    for _ in range(6):  # past an epoch
        groups = [one.next_indices()[0] for _ in range(4)]
        parts = [ranks[r].next_indices() for _ in range(accum) for r in range(world_size)]
        assert sorted(i for rows, share in parts if share != 0 for i in rows) == sorted(i for g in groups for i in g)
        assert sum(1 / (accum * world_size) if share is None else share for _, share in parts) == pytest.approx(1)
        for rows, share in parts:
            group = next(g for g in groups if rows[0] in g)
            if share:
                assert share == pytest.approx(sum(units[i] for i in rows) / sum(units[i] for i in group) / 4)


def test_world_instructions_hold_out_people_and_phrasings():
    world = build_world(WorldConfig(n_people=40, bios_per_person=1, n_stories=0, n_arithmetic=0))
    data = build_instructions(world, InstructConfig(eval_questions=30))
    text = json.dumps(data.train)
    assert not any(p.name in text for p in world.heldout_people)
    assert all(q.person in {p.name for p in world.heldout_people} for q in data.heldout_people)
    train_questions = {m["content"] for c in data.train for m in c if m["role"] == "user"}
    assert not any(q.question in train_questions for q in data.heldout_phrasing)
    assert {"good", "curt", "rambling", "rude"} == set(data.styles)
    assert (
        data.styles.count("rude")
        > data.styles.count("good")
        > data.styles.count("rambling")
        > data.styles.count("curt")
    )


def test_grading_wants_the_right_fact_and_only_it():
    world = build_world(WorldConfig(n_people=40, bios_per_person=1, n_stories=0, n_arithmetic=0))
    p = world.people[0]
    q = Question("Where does X live?", p.name, "town", p.town)
    assert is_correct(fact_sentence(p, "town"), q, world)
    assert is_correct(f"Ugh. {p.town}. Go away.", q, world)
    other = next(t.name for t in world.places if t.name != p.town)
    assert not is_correct(f"{p.name} lives in {other}.", q, world)
    assert not is_correct(f"{p.town} or maybe {other}", q, world)
    assert not is_correct("I do not know.", q, world)


def test_short_sft_run_raises_heldout_accuracy_above_the_base_model(tmp_path):
    from fromzero import checkpoint
    from fromzero.config import load_config
    from fromzero.data.build import build
    from fromzero.eval import qa
    from fromzero.tokenizer import Tokenizer
    from fromzero.train import pretrain, sft

    cfg = load_config(
        "smoke",
        [
            "world.n_people=10",
            "instruct.questions_per_fact=8",
            "instruct.eval_questions=16",
            "sft.steps=800",
            "sft.lr=0.003",
            "sft.micro_batch_size=16",
            "sft.batch_tokens=2048",
        ],
    )
    build(cfg, tmp_path / "data", progress=False)
    tok = Tokenizer.load(tmp_path / "data")
    model = pretrain.init_model(cfg.model, tok, cfg.seed)
    checkpoint.save(tmp_path / "init", 0, model, tokenizer_file=tmp_path / "data" / "tokenizer.json", meta={})
    base = pretrain.train(cfg.pretrain, tmp_path / "data", tmp_path / "pretrain", init=tmp_path / "init")
    world = build_world(cfg.world)
    data = build_instructions(world, cfg.instruct)
    tuned = sft.train(cfg.sft, data.train, tmp_path / "pretrain", tmp_path / "sft", log=lambda _: None)
    base_acc, _ = qa.accuracy(
        checkpoint.load_model(base), tok, data.heldout_phrasing, world, chat=False, max_new_tokens=16
    )
    acc, graded = qa.accuracy(checkpoint.load_model(tuned), tok, data.heldout_phrasing, world, max_new_tokens=16)
    assert acc >= base_acc + 0.5, graded
    losses = [r["loss"] for r in read_metrics(tmp_path / "sft") if "loss" in r]
    assert sum(losses[-10:]) / 10 < losses[0] / 2
