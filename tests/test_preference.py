"""Stage 3 data: preference formats, the vote database, pair batches, and the built-in world's preferences."""

import json
import math
import random
import sqlite3

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fromzero.data.preference import (
    PairBatches,
    PreferencePair,
    PreferenceStats,
    VoteConflict,
    add_battle,
    add_vote,
    collate_pairs,
    connect,
    create_schema,
    encode_pairs,
    iter_preference_pairs,
    split_pairs,
)
from fromzero.data.sources import DataError
from fromzero.data.world import ATTRIBUTES, WorldConfig, build_world
from fromzero.data.world_chat import (
    SMALL_TALK,
    STYLES,
    Question,
    _chat_ask,
    _residents,
    _world_qa,
    fact_sentence,
    styled,
)
from fromzero.data.world_pref import (
    CONTENTS,
    GoldPreference,
    PreferenceConfig,
    answer_style,
    ask_candidate,
    build_preferences,
    candidate,
    prompts_and_gold,
    sampled_pairs,
)

USER = [{"role": "user", "content": "Hi?"}]
HELLO = PreferencePair(USER, "Hello.", "Go away.")


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def pairs_of(path, **kwargs):
    return list(iter_preference_pairs(path, **kwargs))


@pytest.mark.parametrize(
    "record",
    [
        {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."},
        {
            "prompt": USER,
            "chosen": [{"role": "assistant", "content": "Hello."}],
            "rejected": [{"role": "assistant", "content": "Go away."}],
        },
        # UltraFeedback-binarized: each answer repeats the prompt
        {
            "prompt": "Hi?",
            "chosen": [*USER, {"role": "assistant", "content": "Hello."}],
            "rejected": [*USER, {"role": "assistant", "content": "Go away."}],
            "score_chosen": 8.0,
            "score_rejected": 2.0,
        },
        {"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello.", "rejected": "\n\nHuman: Hi?\n\nAssistant: Go away."},
        {
            "chosen": [*USER, {"role": "assistant", "content": "Hello."}],
            "rejected": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Go away."}],
        },
        {
            "instruction": "Hi?",
            "completions": [{"response": "Go away.", "overall_score": 1.5}, {"response": "Hello.", "overall_score": 9}],
        },
    ],
)
def test_every_format_is_detected(tmp_path, record):
    assert pairs_of(write_jsonl(tmp_path / "p.jsonl", [record, record])) == [HELLO, HELLO]


def test_hh_multi_turn_keeps_the_shared_conversation(tmp_path):
    history = "\n\nHuman: Hi?\n\nAssistant: Hello.\n\nHuman: Where is Tom?"
    record = {"chosen": history + "\n\nAssistant: At home.", "rejected": history + "\n\nAssistant: No idea."}
    (pair,) = pairs_of(write_jsonl(tmp_path / "hh.jsonl", [record]))
    assert [m["role"] for m in pair.messages] == ["user", "assistant", "user"]
    assert pair.messages[-1]["content"] == "Where is Tom?" and (pair.chosen, pair.rejected) == ("At home.", "No idea.")


@pytest.mark.parametrize(
    "pairing, expected, ties",
    [
        ("best_vs_worst", [("A", "D")], 1),
        ("best_vs_each", [("A", "C"), ("A", "D")], 2),  # B ties with the best: dropped
    ],
)
def test_rated_completions_pair_the_best_and_drop_ties(tmp_path, pairing, expected, ties):
    record = {
        "prompt": "Hi?",
        "completions": [
            {"text": "A", "score": 5},
            {"text": "B", "score": 5},
            {"text": "C", "score": 3},
            {"text": "D", "score": 1},
        ],
    }
    all_equal = {"prompt": "Hi?", "completions": [{"text": "A", "rating": 2}, {"text": "B", "rating": 2}]}
    stats = PreferenceStats()
    pairs = pairs_of(write_jsonl(tmp_path / "r.jsonl", [record, all_equal]), stats=stats, pairing=pairing)
    assert [(p.chosen, p.rejected) for p in pairs] == expected
    assert (stats.pairs, stats.ties) == (len(expected), ties)  # the all-equal record is one tie


def test_identical_answers_are_ties(tmp_path):
    stats = PreferenceStats()
    assert (
        pairs_of(write_jsonl(tmp_path / "t.jsonl", [{"prompt": "Hi?", "chosen": "x", "rejected": "x"}]), stats=stats)
        == []
    )
    assert stats.ties == 1 and stats.skipped == 0


def test_json_parquet_and_saved_dataset_sources(tmp_path):
    import datasets

    records = [{"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."}] * 3
    (tmp_path / "d.json").write_text(json.dumps(records))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "d.parquet")
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "saved"))
    for source in ("d.json", "d.parquet", "saved"):
        assert pairs_of(str(tmp_path / source)) == [HELLO] * 3


def test_formats_are_detected_per_file(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."}])
    b = write_jsonl(
        tmp_path / "b.jsonl",
        [{"chosen": "Human: Hi?\n\nAssistant: Hello.", "rejected": "Human: Hi?\n\nAssistant: Go away."}],
    )
    assert pairs_of([a, b]) == [HELLO, HELLO]


GOOD = {
    "explicit": {"prompt": "Hi?", "chosen": "a", "rejected": "b"},
    "hh": {"chosen": "Human: Hi?\n\nAssistant: a", "rejected": "Human: Hi?\n\nAssistant: b"},
    "implicit": {
        "chosen": [*USER, {"role": "assistant", "content": "a"}],
        "rejected": [*USER, {"role": "assistant", "content": "b"}],
    },
    "rated": {"prompt": "Hi?", "completions": [{"text": "a", "score": 2}, {"text": "b", "score": 1}]},
}


@pytest.mark.parametrize(
    "fmt, bad, error",
    [
        ("explicit", {"prompt": "Hi?", "chosen": "Hello."}, "missing field 'rejected'"),
        ("explicit", {"prompt": "Hi?", "chosen": 3, "rejected": "x"}, "'chosen' must be a string, got int"),
        (
            "explicit",
            {"prompt": [{"role": "assistant", "content": "Hi?"}], "chosen": "a", "rejected": "b"},
            "turn 0 should be from the user",
        ),
        (
            "explicit",
            {
                "prompt": "Hi?",
                "chosen": [{"role": "user", "content": "Other?"}, {"role": "assistant", "content": "a"}],
                "rejected": "b",
            },
            "the conversation in 'chosen' does not start with the prompt",
        ),
        (
            "hh",
            {"chosen": "Human: Hi?\n\nAssistant: a", "rejected": "Human: Bye?\n\nAssistant: b"},
            "'chosen' and 'rejected' differ before their last assistant turn",
        ),
        ("hh", {"chosen": "Hello there", "rejected": "Human: Hi?\n\nAssistant: b"}, "not an HH transcript"),
        (
            "hh",
            {"chosen": "Human: Hi?", "rejected": "Human: Hi?\n\nAssistant: b"},
            "the 'chosen' conversation must end with an assistant turn",
        ),
        (
            "implicit",
            {"chosen": [*USER], "rejected": [*USER, {"role": "assistant", "content": "b"}]},
            "the 'chosen' conversation must end with an assistant turn",
        ),
        (
            "rated",
            {"prompt": "Hi?", "completions": [{"text": "a", "score": "high"}, {"text": "b", "score": 1}]},
            r"completion 0 needs a text \(response/text/content\) and a number",
        ),
        (
            "rated",
            {"prompt": "Hi?", "completions": [{"text": "a", "score": 1}]},
            "'completions' must be a list of at least two",
        ),
    ],
)
def test_malformed_records_name_file_and_line(tmp_path, fmt, bad, error):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD[fmt], GOOD[fmt], bad])
    with pytest.raises(DataError, match=rf"{path}:3: bad {fmt} record: {error}"):
        pairs_of(path)
    stats = PreferenceStats()
    assert len(pairs_of(path, on_error="skip", stats=stats)) == 2 and stats.skipped == 1


def test_unknown_format_and_bad_json_name_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "Hi?", "answer": "Hello."}])
    with pytest.raises(DataError, match=rf"{path}:1: no preference format fits the keys \['answer', 'question'\].*HH"):
        pairs_of(path)
    bad_json = tmp_path / "j.jsonl"
    bad_json.write_text(json.dumps({"prompt": "Hi?", "chosen": "a", "rejected": "b"}) + "\n{oops\n")
    with pytest.raises(DataError, match=rf"{bad_json}:2: invalid JSON"):
        pairs_of(str(bad_json))


def _voted(conn, messages, a, b, choice, **battle):
    return add_vote(conn, add_battle(conn, messages, "x", "y", response_a=a, response_b=b, **battle), choice)[0]


def test_votes_round_trip_through_sqlite(tmp_path):
    db = tmp_path / "votes.sqlite"
    conn = connect(db)
    create_schema(conn)  # idempotent: the server calls it on every start
    conversation = [{"role": "system", "content": "Be kind."}, *USER]
    ids = [
        _voted(conn, conversation, "Hello.", "Go away.", "a", seed_a=1, seed_b=2),
        _voted(conn, USER, "Go away.", "Hello.", "b"),
        _voted(conn, USER, "Hi.", "Hey.", "tie"),
        _voted(conn, USER, "Meh.", "Hmm.", "both_bad"),
    ]
    assert ids == [1, 2, 3, 4]
    battle = add_battle(conn, USER, "x", "y", response_a="Hi.", response_b="Yo.")
    with pytest.raises(ValueError, match="choice must be"):
        add_vote(conn, battle, "both")
    with pytest.raises(ValueError, match="should be from the user"):
        add_battle(conn, [{"role": "assistant", "content": "x"}], "x", "y")
    pending = add_battle(conn, USER, "x", "y")
    with pytest.raises(ValueError, match="no answers yet"):
        add_vote(conn, pending, "a")
    with pytest.raises(KeyError):
        add_vote(conn, "no-such-battle", "a")
    # a written better answer is preferred to both shown ones
    assert add_vote(conn, battle, "tie", better="Hello there!", idempotency_key="k1") == (5, False)
    assert add_vote(conn, battle, "tie", better="Hello there!", idempotency_key="k1") == (5, True)  # retried
    with pytest.raises(VoteConflict, match="already has a vote"):
        add_vote(conn, battle, "a")
    row = conn.execute(
        "SELECT v.created_at, b.model_a, b.model_b, b.seed_a FROM votes v JOIN battles b "
        "ON b.id = v.battle_id WHERE v.id = 1"
    ).fetchone()
    assert row[0].startswith("20") and tuple(row[1:]) == ("x", "y", 1)
    conn.close()
    stats = PreferenceStats()
    assert pairs_of(str(db), stats=stats) == [
        PreferencePair(conversation, "Hello.", "Go away."),
        HELLO,
        PreferencePair(USER, "Hello there!", "Hi."),
        PreferencePair(USER, "Hello there!", "Yo."),
    ]
    assert (stats.pairs, stats.ties, stats.both_bad) == (4, 2, 1)


def test_malformed_votes_name_the_database_and_vote(tmp_path):
    db = tmp_path / "votes.db"
    conn = connect(db)
    _voted(conn, USER, "a", "b", "a")
    with conn:
        conn.execute(
            "INSERT INTO battles (id, messages, model_a, model_b, response_a, response_b) "
            "VALUES ('bad', '[oops', 'x', 'y', 'a', 'b')"
        )
    add_vote(conn, "bad", "a")
    conn.close()
    with pytest.raises(DataError, match=rf"{db}: vote 2: bad votes record: messages is not valid JSON"):
        pairs_of(str(db))
    not_db = tmp_path / "empty.sqlite"
    sqlite3.connect(not_db).close()
    with pytest.raises(DataError, match=rf"{not_db}: not a vote database .*no such table"):
        pairs_of(str(not_db))
    old = tmp_path / "old.sqlite"
    with sqlite3.connect(old) as c:
        c.execute("CREATE TABLE votes (id INTEGER PRIMARY KEY, messages TEXT)")
    with pytest.raises(DataError, match="older fromzero"):
        connect(old)


def test_split_keeps_every_pair_of_a_prompt_on_one_side():
    pairs = [PreferencePair([{"role": "user", "content": f"q{i % 10}"}], f"a{i}", f"b{i}") for i in range(50)]
    train, val = split_pairs(pairs, 0.2, seed=0)
    assert len(train) + len(val) == 50 and len(val) == 10
    assert not {p.messages[0]["content"] for p in train} & {p.messages[0]["content"] for p in val}


def test_pair_batches_mask_exactly_the_answer_and_resume(smoke_data):
    from fromzero.data.chat import render
    from fromzero.tokenizer import Tokenizer

    tok = Tokenizer.load(smoke_data)
    pairs = [PreferencePair(USER, "Hello." * (i % 5 + 1), "No.") for i in range(20)]
    encoded, stats = encode_pairs(tok, [*pairs, PreferencePair(USER, "word " * 200, "No.")], seq_len=64)
    assert stats == {"pairs": 21, "truncated": 1, "dropped": 0} and len(encoded[20].chosen) == 64  # cut, not dropped
    ids, mask, lengths, index, _ = collate_pairs(encoded, [3, 0], tok.pad_id)
    full, _ = render(tok, [*USER, {"role": "assistant", "content": pairs[3].chosen}])
    answer = tok.encode(pairs[3].chosen) + [tok.end_id]
    assert ids[0, : len(full)].tolist() == full and lengths[0] == len(full)
    assert ids[0, mask[0]].tolist() == answer and ids[3, mask[3]].tolist() == tok.encode("No.") + [tok.end_id]
    assert (ids[2, lengths[2] :] == tok.pad_id).all() and index.tolist() == [3, 0]
    a = PairBatches(encoded, 4, tok.pad_id, seed=1)
    for _ in range(3):
        a.next_batch()
    b = PairBatches(encoded, 4, tok.pad_id, seed=1)
    b.load_state_dict(a.state_dict())
    x, y = a.next_batch(), b.next_batch()
    assert all(torch.equal(u, v) for u, v in zip(x[:4], y[:4])) and x.weight == y.weight


@pytest.fixture(scope="module")
def world():
    return build_world(WorldConfig(n_people=40, bios_per_person=1, n_stories=0, n_arithmetic=0))


def test_world_preferences_use_trained_people_and_hold_out_phrasings(world):
    data = build_preferences(world, PreferenceConfig(eval_questions=50, questions_per_kind=0))
    text = json.dumps([p.__dict__ for p in data.train + data.eval_pairs])
    assert not any(p.name in text for p in world.heldout_people)
    assert len(data.train) == len(world.trained_people) * 8 * 2 and len(data.eval_pairs) == 50
    train_prompts = {p.messages[0]["content"] for p in data.train}
    assert not train_prompts & {q.question for q in data.eval_questions}
    gold = GoldPreference(world)
    assert all(
        gold.score(q, p.chosen) > gold.score(q, p.rejected) for q, p in zip(data.eval_questions, data.eval_pairs)
    )


def test_more_pairs_per_phrasing_and_a_clear_error_past_the_phrasings(world):
    data = build_preferences(
        world, PreferenceConfig(questions_per_fact=1, pairs_per_question=3, eval_questions=10, questions_per_kind=0)
    )
    assert len(data.train) == len(world.trained_people) * 8 * 3
    assert len({p.messages[0]["content"] for p in data.train}) == len(world.trained_people) * 8
    with pytest.raises(ValueError, match="only 10 training phrasings; raise preference.pairs_per_question"):
        build_preferences(world, PreferenceConfig(questions_per_fact=11))


def test_ppo_prompts_are_distinct_questions_with_their_gold_score(world):
    data = build_preferences(
        world, PreferenceConfig(questions_per_fact=1, pairs_per_question=2, eval_questions=5, questions_per_kind=0)
    )
    prompts, gold = prompts_and_gold(world, data.train_questions)
    assert len(prompts) == len(data.train_questions) // 2  # two pairs per question, one prompt
    q = next(q for q in data.train_questions if q.question == prompts[3][0]["content"])
    right = GoldPreference(world).score(q, f"The answer is {q.expected}.")
    assert gold(3, f"The answer is {q.expected}.") == right > gold(3, "Sorry, I don't know that.")


def test_sampled_answers_are_labelled_like_written_pairs_and_ties_dropped(world):
    """Pairs of a model's own answers: each sampled question answered twice (two seeds), the labellers' choice
    kept, a pair the gold function cannot tell apart dropped. The 'model' answers from the world: with one seed
    right, with the other right or evasive by the question's parity, so half the pairs are ties."""
    cfg = PreferenceConfig(
        questions_per_fact=2, eval_questions=5, temperature=0.0, sampled_questions=30, questions_per_kind=0
    )
    data, by_text = build_preferences(world, cfg), {}
    for q in data.train_questions:
        by_text[q.question] = q
    calls = []

    def sample(questions: list[str], seed: int) -> list[str]:
        calls.append(seed)
        first = seed == calls[0]
        return [
            f"It is {by_text[t].expected}." if first or i % 2 else "Sorry, I don't know that."
            for i, t in enumerate(questions)
        ]

    pairs = sampled_pairs(world, data, cfg, sample)
    assert len(calls) == 2 and calls[0] != calls[1]
    assert len(pairs) == 15  # the 15 odd questions' answers are the same right one: ties, dropped
    gold = GoldPreference(world)
    for pair in pairs:
        q = by_text[pair.messages[0]["content"]]
        assert gold.content(q, pair.chosen) == "right" and pair.rejected == "Sorry, I don't know that."
    assert sampled_pairs(world, data, cfg.model_copy(update={"sampled_questions": 0}), sample) == []


def test_gold_function_orders_content_then_style(world):
    gold, rng = GoldPreference(world), random.Random(0)
    p = world.trained_people[0]
    q = Question("What is the job of X?", p.name, "job", p.job)
    ranking = []
    for content in CONTENTS:
        for style in STYLES:
            answer = candidate(world, gold, p, "job", content, style, rng)
            assert (gold.content(q, answer), answer_style(answer)) == (content, style), answer
            ranking.append(gold.score(q, answer))
    assert ranking == sorted(ranking, reverse=True) and len(set(ranking)) == len(ranking)
    # a curt answer is the bare value after a filler, which is not counted as a word: the value keeps the leading space
    # it has inside a sentence (the same token), and a three-word value stays curt
    assert styled("Her hobby is playing the piano.", "playing the piano", "curt", rng) == "Um, playing the piano."
    assert answer_style("Um, playing the piano.") == "curt" and answer_style("Um, he lives in Oakton.") == "good"
    other = min(gold.values["job"] - {p.job})
    assert gold.content(q, f"{p.name} is a {other}.") == "wrong"
    assert gold.content(q, f"Maybe a {p.job}, or a {other}.") == "wrong"
    right = f"He works as a {p.job}."
    assert gold.win_rate([q, q, q], [right, "No idea.", "x"], ["No idea.", "No idea.", right]) == 0.5  # win, tie, loss
    # the best a policy can do against these references: win against the two evasive ones, tie with the right one
    assert (
        gold.score(q, right) == gold.best
        and gold.win_rate_ceiling([q, q, q], ["No idea.", "No idea.", right]) == 2.5 / 3
    )


def test_off_topic_answers_state_another_fact_and_count_as_evasive(world):
    """An off-topic candidate is a true fact about the person, but not the one asked for: the gold function
    scores it like "I don't know", so pairs teach the reward model that answering something else is no answer."""
    gold, rng = GoldPreference(world), random.Random(0)
    p = world.trained_people[0]
    q = Question("What is the job of X?", p.name, "job", p.job)
    answers = [candidate(world, gold, p, "job", "off_topic", "good", rng) for _ in range(40)]
    facts = {fact_sentence(p, attr) for attr in ATTRIBUTES if attr != "job"}
    assert set(answers) <= facts and len(set(answers)) > 3
    assert all(
        gold.content(q, x) == "evasive" and gold.score(q, x) == gold.score(q, "Sorry, I don't know that.")
        for x in answers
    )
    data = build_preferences(
        world,
        PreferenceConfig(
            questions_per_fact=2,
            eval_questions=50,
            content_weights={"right": 0.5, "off_topic": 0.5},
            style_weights={"good": 1.0},
        ),
    )
    # right or off-topic, said well: every pair the gold function tells apart is right over off-topic
    for q, pair in zip(data.eval_questions, data.eval_pairs):
        assert gold.content(q, pair.chosen) == "right" and gold.content(q, pair.rejected) == "evasive"
    with pytest.raises(
        ValueError, match="unknown content kinds \\['typo'\\]; kinds: right, evasive, wrong, off_topic, off_subject"
    ):
        build_preferences(world, PreferenceConfig(content_weights={"typo": 1.0}))


def test_off_subject_answers_state_the_asked_fact_of_another_subject(world):
    """An off-subject answer to a question about a town, animal, object or a town's residents is the same fact of
    another subject ("Keseton is in Baria." to "Which country is Barvenford in?"): the true sentence PPO learned
    to say when the reward model had only seen a person's fact as off topic. The gold function grades it wrong,
    even where the other subject shares the value; to a question with no subject it is a person's fact, to one about
    a person a wrong value."""
    gold, rng = GoldPreference(world), random.Random(0)
    ask = _world_qa(world, rng)
    about_others = [ask_candidate(world, ask, "off_subject", "good", random.Random(i)) for i in range(40)]
    assert len(set(about_others)) > 5 and not any(ask.q.person.lower() in x.lower() for x in about_others)
    assert {gold.content(ask.q, x) for x in about_others} == {"wrong"}
    people = {fact_sentence(p, attr) for p in world.trained_people for attr in ATTRIBUTES}
    hello = _chat_ask(SMALL_TALK[0])
    assert ask_candidate(world, hello, "off_subject", "good", rng) in people
    p = world.trained_people[0]
    q = Question("What is the job of X?", p.name, "job", p.job)
    assert gold.content(q, candidate(world, gold, p, "job", "off_subject", "good", rng)) == "wrong"
    town = world.trained_people[0].town
    residents = _residents(world, town)
    sentence, names = residents.elsewhere(random.Random(1))
    assert town not in sentence and names in sentence and gold.content(residents.q, sentence) == "wrong"


@pytest.mark.parametrize("temperature, noise", [(0.0, 0.0), (0.0, 0.2), (1.0, 0.0), (1.0, 0.1)])
def test_labels_follow_bradley_terry_with_noise(world, temperature, noise):
    data = build_preferences(
        world, PreferenceConfig(questions_per_fact=6, temperature=temperature, label_noise=noise, eval_questions=1)
    )
    gold = GoldPreference(world)
    flipped, expected = 0, 0.0
    for q, pair in zip(data.train_questions, data.train):
        gap = gold.score(q, pair.chosen) - gold.score(q, pair.rejected)
        assert gap != 0 and q.question == pair.messages[0]["content"]
        flipped += gap < 0
        # P(the labeller picks the worse one): Bradley–Terry, then a share `noise` flipped
        p_worse = 1 / (1 + math.exp(abs(gap) / temperature)) if temperature else 0.0
        expected += p_worse * (1 - noise) + (1 - p_worse) * noise
    n = len(data.train)
    assert abs(flipped - expected) <= 3 * math.sqrt(n * 0.25)
    if temperature == noise == 0:
        assert flipped == 0
