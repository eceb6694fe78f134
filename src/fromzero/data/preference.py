"""Preference pairs: a conversation, and two answers to its last user turn of which people chose one.

Every source becomes `PreferencePair(messages, chosen, rejected)`. The format is detected per file from
its first record and every record of that file must fit it:

- `explicit`: `prompt`, `chosen`, `rejected`. The prompt is a string or a message list; each answer a
  string, or a message list ending with the assistant's answer (optionally preceded by the prompt, as
  in UltraFeedback-binarized);
- `alpaca`: `instruction`, `input` (optional), `chosen`, `rejected`, as in LLMs-from-scratch ch07;
- `hh`: Anthropic HH-RLHF, `chosen` and `rejected` transcripts in `\\n\\nHuman: ...\\n\\nAssistant: ...`
  turns that share everything but the last assistant turn. Consecutive turns of one speaker (some of HH's
  transcripts have two assistant turns in a row) are joined into one and counted as `merged`;
- `implicit`: `chosen` and `rejected` message lists that share everything but the last assistant turn;
- `rated`: UltraFeedback style, a `prompt` (or `instruction`) and `completions` (or `responses`), each
  an object with its text (`response` / `text` / `content`) and a number (`score` / `overall_score` /
  `rating`). A record gives pairs `best_vs_worst` (one pair) or `best_vs_each` (the best against each
  answer scored lower);
- a SQLite database (`.sqlite`, `.sqlite3`, `.db`, named explicitly) of votes from the arena of
  `fromzero serve`, tables `battles` and `votes` as `create_schema` makes them.

Ties (equal scores, a "tie" or "both bad" vote, identical answers) teach nothing and are dropped and counted.

The second half of the file turns pairs into tokens: each answer rendered after the prompt in the chat
template and cut to seq_len as TRL cuts pairs (the prompt from the left, then the answers), and
length-grouped, resumable micro-batches of pairs that the reward model and DPO train on.
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field

from fromzero.data.chat import Message, check_messages, render
from fromzero.data.instruct import SHAREGPT_ROLES, join_input
from fromzero.data.loader import LengthGroupedBatches
from fromzero.data.sources import DataError, Source, SourceStats, iter_detected, iter_records
from fromzero.tokenizer import Tokenizer

Pairing = Literal["best_vs_worst", "best_vs_each"]
Format = Literal["explicit", "alpaca", "hh", "implicit", "rated"]
SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")


@dataclass
class PreferencePair:
    messages: list[Message]  # the conversation so far, ending with the user's turn
    chosen: str  # the assistant answer people preferred
    rejected: str


@dataclass
class PreferenceStats(SourceStats):
    pairs: int = 0
    ties: int = 0  # comparisons dropped because neither answer was preferred
    both_bad: int = 0  # votes that found both answers bad: no pair between them
    merged: int = 0  # HH records with consecutive turns of one speaker, joined into one turn

    def describe(self) -> str:
        """One line of what the records gave: every record read is a pair source, a tie, or skipped."""
        return (
            f"{self.documents + self.skipped} preference records: {self.pairs} pairs, {self.ties} ties and "
            f"{self.both_bad} 'both bad' votes dropped, {self.skipped} malformed records skipped"
            + (f", {self.merged} with consecutive same-speaker turns merged" if self.merged else "")
        )


class PreferenceSources(BaseModel):
    """Where a preference stage's pairs come from; shared by the reward model and DPO configs."""

    model_config = ConfigDict(extra="forbid")

    data: list[str] = Field(
        default_factory=list,
        description="preference files (jsonl/json/parquet/datasets) or "
        "vote databases (.sqlite/.db); empty: the built-in world's preferences",
    )
    on_error: Literal["raise", "skip"] = Field("raise", description="malformed records: stop, or skip and count")
    pairing: Pairing = Field("best_vs_worst", description="rated completions: best vs worst, or best vs each worse one")
    val_fraction: float = Field(0.05, ge=0, lt=1, description="prompts held out (with all their pairs) for validation")
    max_prompt_len: int | None = Field(
        None,
        ge=2,
        description="a pair longer than seq_len keeps at least this much of "
        "its prompt (its end), the answers cut to the rest (TRL's max_prompt_length); "
        "None: half of seq_len",
    )


def _pair(messages: list[Message], chosen: Any, rejected: Any) -> PreferencePair:
    check_messages(messages)
    if messages[-1]["role"] != "user":
        raise ValueError("the prompt conversation must end with a user message (the answers reply to it)")
    for name, answer in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(answer, str):
            raise ValueError(f"'{name}' must be a string, got {type(answer).__name__}")
    return PreferencePair(messages, chosen, rejected)


def _messages(value: Any, name: str) -> list[Message]:
    """A message list (role/content, or ShareGPT from/value) or a string (one user message)."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise ValueError(f"'{name}' must be a string or a list of messages, got {type(value).__name__}")
    return [
        {"role": SHAREGPT_ROLES.get(str(m["from"]).lower(), m["from"]), "content": m.get("value")}
        if "from" in m
        else {"role": m.get("role"), "content": m.get("content")}
        for m in value
    ]


def _answer(value: Any, name: str, prompt: list[Message]) -> Any:
    """An answer string, or the last message of a list that may repeat the prompt before it."""
    if not isinstance(value, list):
        return value
    conversation = _messages(value, name)
    if not conversation or conversation[-1]["role"] != "assistant":
        raise ValueError(f"'{name}' must end with an assistant message")
    if len(conversation) > 1 and conversation[:-1] != prompt:
        raise ValueError(f"the conversation in '{name}' does not start with the prompt")
    return conversation[-1]["content"]


def _from_explicit(r: dict[str, Any]) -> PreferencePair:
    prompt = _messages(r["prompt"], "prompt")
    return _pair(prompt, _answer(r["chosen"], "chosen", prompt), _answer(r["rejected"], "rejected", prompt))


def _split_last_answer(chosen: list[Message], rejected: list[Message]) -> PreferencePair:
    for name, conversation in (("chosen", chosen), ("rejected", rejected)):
        if not conversation or conversation[-1]["role"] != "assistant":
            raise ValueError(f"the '{name}' conversation must end with an assistant turn")
    if chosen[:-1] != rejected[:-1]:
        raise ValueError("'chosen' and 'rejected' differ before their last assistant turn")
    return _pair(chosen[:-1], chosen[-1]["content"], rejected[-1]["content"])


HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")


def parse_hh(transcript: str) -> tuple[list[Message], int]:
    """An HH-RLHF transcript ("\\n\\nHuman: hi\\n\\nAssistant: hello") as messages, consecutive turns of one
    speaker joined by a blank line; and how many turns were joined so."""
    if not isinstance(transcript, str):
        raise ValueError(f"an HH transcript must be a string, got {type(transcript).__name__}")
    text = transcript.lstrip("\n")
    parts = HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise ValueError("not an HH transcript: expected turns starting with '\\n\\nHuman:' and '\\n\\nAssistant:'")
    messages: list[Message] = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role = "user" if speaker == "Human" else "assistant"
        if messages and messages[-1]["role"] == role:
            messages[-1] = {"role": role, "content": f"{messages[-1]['content']}\n\n{content.strip()}"}
        else:
            messages.append({"role": role, "content": content.strip()})
    return messages, len(parts) // 2 - len(messages)


def _from_hh(r: dict[str, Any]) -> tuple[PreferencePair, bool]:
    (chosen, merged_chosen), (rejected, merged_rejected) = parse_hh(r["chosen"]), parse_hh(r["rejected"])
    return _split_last_answer(chosen, rejected), bool(merged_chosen or merged_rejected)


def _from_alpaca(r: dict[str, Any]) -> PreferencePair:
    return _pair(
        [{"role": "user", "content": join_input(r["instruction"], r.get("input"))}], r["chosen"], r["rejected"]
    )


def _from_implicit(r: dict[str, Any]) -> PreferencePair:
    return _split_last_answer(_messages(r["chosen"], "chosen"), _messages(r["rejected"], "rejected"))


TEXT_KEYS = ("response", "text", "content")
SCORE_KEYS = ("score", "overall_score", "rating")


def _from_rated(r: dict[str, Any], pairing: Pairing) -> tuple[list[PreferencePair], int]:
    prompt = _messages(r["prompt"] if "prompt" in r else r["instruction"], "prompt")
    completions = r["completions"] if "completions" in r else r["responses"]
    if not isinstance(completions, list) or len(completions) < 2:
        raise ValueError("'completions' must be a list of at least two rated answers")
    rated: list[tuple[float, str]] = []
    for i, c in enumerate(completions):
        text = next((c[k] for k in TEXT_KEYS if k in c), None) if isinstance(c, dict) else None
        score = next((c[k] for k in SCORE_KEYS if k in c), None) if isinstance(c, dict) else None
        if not isinstance(text, str) or not isinstance(score, (int, float)) or isinstance(score, bool):
            raise ValueError(
                f"completion {i} needs a text ({'/'.join(TEXT_KEYS)}) and a number ({'/'.join(SCORE_KEYS)}), got {c!r}"
            )
        rated.append((float(score), text))
    best = max(rated, key=lambda sc: sc[0])  # the first of equally good answers
    others = [sc for sc in rated if sc is not best]
    if pairing == "best_vs_worst":
        others = [min(others, key=lambda sc: sc[0])]
    worse = [text for score, text in others if score < best[0]]
    return [_pair(prompt, best[1], text) for text in worse], len(others) - len(worse)


# (name, keys that identify it); checked in this order
FORMATS: list[tuple[Format, Any]] = [
    ("rated", lambda r: ("completions" in r or "responses" in r) and ("prompt" in r or "instruction" in r)),
    ("alpaca", lambda r: {"instruction", "chosen", "rejected"} <= r.keys()),
    ("explicit", lambda r: {"prompt", "chosen", "rejected"} <= r.keys()),
    ("hh", lambda r: {"chosen", "rejected"} <= r.keys() and isinstance(r["chosen"], str)),
    ("implicit", lambda r: {"chosen", "rejected"} <= r.keys()),
]
EXPECTED = (
    "prompt+chosen+rejected, instruction+input+chosen+rejected (Alpaca), chosen+rejected (HH transcripts or "
    "message lists), prompt+completions with scores (rated), or a .sqlite/.db vote database"
)


def detect_format(record: dict[str, Any]) -> Format | None:
    return next((name for name, matches in FORMATS if matches(record)), None)


def to_pairs(
    record: dict[str, Any], fmt: Format, pairing: Pairing = "best_vs_worst"
) -> tuple[list[PreferencePair], int, bool]:
    """The pairs a record holds, how many of its comparisons were ties, and whether turns were merged (HH)."""
    if fmt == "rated":
        return *_from_rated(record, pairing), False
    merged = False
    if fmt == "hh":
        pair, merged = _from_hh(record)
    else:
        pair = {"explicit": _from_explicit, "alpaca": _from_alpaca, "implicit": _from_implicit}[fmt](record)
    return ([pair], 0, merged) if pair.chosen != pair.rejected else ([], 1, merged)


# ---------------------------------------------------------------------------
# Votes from the arena (`fromzero serve`). The schema is defined here once: a battle is one prompt and two
# answers (which model wrote which, where each was shown, how they were sampled); a vote is a person's
# choice between them. Both tables are written by the server through the functions below.

SCHEMA = """
CREATE TABLE IF NOT EXISTS battles (
    id TEXT PRIMARY KEY,           -- named by the vote; returned by POST /api/arena
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    messages TEXT NOT NULL,        -- JSON list of {role, content}: the conversation both answers reply to
    model_a TEXT NOT NULL,         -- the model shown on the left (a) and on the right (b), sides drawn at random
    model_b TEXT NOT NULL,
    ckpt_a TEXT,                   -- the sha256 of each model's weights file (its first 16 hex digits)
    ckpt_b TEXT,
    response_a TEXT,               -- NULL until the answer is written
    response_b TEXT,
    sampling TEXT NOT NULL DEFAULT '{}',  -- JSON: temperature, top_p, max_tokens
    seed_a INTEGER,
    seed_b INTEGER,
    session_id TEXT
);
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    battle_id TEXT NOT NULL UNIQUE REFERENCES battles(id),  -- one vote per battle
    choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'both_bad')),
    better TEXT,                   -- an answer the voter wrote instead (optional)
    session_id TEXT,
    idempotency_key TEXT UNIQUE    -- a retried vote is stored once
);
"""
Choice = Literal["a", "b", "tie", "both_bad"]
CHOICES: tuple[Choice, ...] = ("a", "b", "tie", "both_bad")
VOTE_COLUMNS = ("battle_id", "choice", "better", "session_id", "idempotency_key")


def connect(path: str | Path) -> sqlite3.Connection:
    """The vote database, created if missing, in WAL mode (readers never block the writer)."""
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA foreign_keys=ON")
        create_schema(conn)
    except sqlite3.DatabaseError as e:
        conn.close()
        raise DataError(f"{path}: not a vote database ({e})") from None
    except DataError as e:
        conn.close()
        raise DataError(f"{path}: {e}") from None
    return conn


def create_schema(conn: sqlite3.Connection) -> None:
    columns = {row[1] for row in conn.execute("PRAGMA table_info(votes)")}
    if columns and "battle_id" not in columns:
        raise DataError(
            "the vote database has a `votes` table of an older fromzero (no battles); start a new database file"
        )
    conn.executescript(SCHEMA)


def add_battle(
    conn: sqlite3.Connection,
    messages: list[Message],
    model_a: str,
    model_b: str,
    *,
    battle_id: str | None = None,
    ckpt_a: str | None = None,
    ckpt_b: str | None = None,
    response_a: str | None = None,
    response_b: str | None = None,
    sampling: dict[str, Any] | None = None,
    seed_a: int | None = None,
    seed_b: int | None = None,
    session_id: str | None = None,
) -> str:
    """Store a battle (its answers may follow with `set_responses`); returns its id."""
    check_messages(messages)
    if messages[-1]["role"] != "user":
        raise ValueError("the conversation must end with a user message (the answers reply to it)")
    battle_id = battle_id or uuid.uuid4().hex
    with conn:
        conn.execute(
            "INSERT INTO battles (id, messages, model_a, model_b, ckpt_a, ckpt_b, response_a, response_b, "
            "sampling, seed_a, seed_b, session_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                battle_id,
                json.dumps(messages),
                model_a,
                model_b,
                ckpt_a,
                ckpt_b,
                response_a,
                response_b,
                json.dumps(sampling or {}),
                seed_a,
                seed_b,
                session_id,
            ),
        )
    return battle_id


def set_responses(conn: sqlite3.Connection, battle_id: str, response_a: str, response_b: str) -> None:
    with conn:
        conn.execute(
            "UPDATE battles SET response_a = ?, response_b = ? WHERE id = ?", (response_a, response_b, battle_id)
        )


class VoteConflict(ValueError):
    """The battle already has another vote, or the idempotency key was used for another one."""


def add_vote(
    conn: sqlite3.Connection,
    battle_id: str,
    choice: Choice,
    *,
    better: str | None = None,
    session_id: str | None = None,
    idempotency_key: str | None = None,
) -> tuple[int, bool]:
    """Store one vote on a battle whose answers are written; returns (vote id, whether it was stored before).

    Storing is idempotent: the same vote again (same idempotency key, or the same battle and choice) returns the
    stored one. A different vote on a voted battle, or a key reused for another vote, raises VoteConflict."""
    if choice not in CHOICES:
        raise ValueError(f"choice must be one of {', '.join(CHOICES)}, got {choice!r}")
    if better is not None and (not isinstance(better, str) or not better.strip()):
        raise ValueError("better must be a non-empty string when given")
    battle = conn.execute("SELECT response_a, response_b FROM battles WHERE id = ?", (battle_id,)).fetchone()
    if battle is None:
        raise KeyError(battle_id)
    if battle[0] is None or battle[1] is None:
        raise ValueError(f"battle {battle_id} has no answers yet")
    try:
        with conn:
            cursor = conn.execute(
                "INSERT INTO votes (battle_id, choice, better, session_id, idempotency_key) VALUES (?, ?, ?, ?, ?)",
                (battle_id, choice, better, session_id, idempotency_key),
            )
        return int(cursor.lastrowid), False
    except sqlite3.IntegrityError:
        pass
    by_key = (
        conn.execute(
            "SELECT id, battle_id, choice, better FROM votes WHERE idempotency_key = ?", (idempotency_key,)
        ).fetchone()
        if idempotency_key
        else None
    )
    stored = (
        by_key
        or conn.execute("SELECT id, battle_id, choice, better FROM votes WHERE battle_id = ?", (battle_id,)).fetchone()
    )
    if stored is not None and tuple(stored[1:]) == (battle_id, choice, better):
        return int(stored[0]), True
    if by_key is not None:
        raise VoteConflict(f"idempotency_key {idempotency_key!r} was used for another vote")
    raise VoteConflict(f"battle {battle_id} already has a vote ({stored[2] if stored else '?'})")


VOTES_QUERY = (
    "SELECT v.id, b.messages, b.response_a, b.response_b, v.choice, v.better, b.model_a, b.model_b, "
    "v.created_at, v.session_id, b.id FROM votes v JOIN battles b ON b.id = v.battle_id ORDER BY v.id"
)


def _vote_records(path: Path, stats: SourceStats) -> Iterator[tuple[str, str, Any]]:
    """(file, where, row) for each vote, oldest first; the database is opened read-only."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such vote database")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = conn.execute(VOTES_QUERY).fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        raise DataError(
            f"{path}: not a vote database ({e}); expected the tables `battles` and `votes` of "
            f"fromzero.data.preference.create_schema"
        ) from None
    for row in rows:
        stats.documents += 1
        yield str(path), f"{path}: vote {row[0]}", row


def vote_pairs(row: Sequence[Any]) -> tuple[list[PreferencePair], str | None]:
    """The pairs one vote gives, and why it gives none of its own answers ("tie", "both_bad", or None).

    a/b: the chosen answer over the other. tie and both_bad: no pair between the two. A `better` answer the voter
    wrote is preferred to each shown answer that differs from it."""
    _, messages_json, a, b, choice, better = row[:6]
    try:
        messages = json.loads(messages_json)
    except (TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"messages is not valid JSON ({e})") from None
    if choice not in CHOICES:
        raise ValueError(f"choice must be one of {', '.join(CHOICES)}, got {choice!r}")
    conversation = _messages(messages, "messages")
    pair = _pair(conversation, a, b)
    pairs = [PreferencePair(conversation, better, x) for x in (a, b) if better and better != x]
    if choice in ("tie", "both_bad"):
        return pairs, choice
    if a == b:
        return pairs, "tie"
    return [pair if choice == "a" else PreferencePair(conversation, b, a), *pairs], None


def export_preferences(conn: sqlite3.Connection) -> Iterator[dict[str, Any]]:
    """TRL's conversational preference records (`prompt` messages, `chosen` and `rejected` assistant turns), the
    pairs training reads from the same votes: ties and both-bad votes give none, a written better answer gives
    its own."""
    for row in conn.execute(VOTES_QUERY):
        for pair in vote_pairs(tuple(row))[0]:
            yield {
                "prompt": pair.messages,
                "chosen": [{"role": "assistant", "content": pair.chosen}],
                "rejected": [{"role": "assistant", "content": pair.rejected}],
            }


def export_battles(conn: sqlite3.Connection) -> Iterator[dict[str, Any]]:
    """A battle log in Chatbot Arena's shape: model_a, model_b, winner (model_a | model_b | tie | tie (bothbad))."""
    winner = {"a": "model_a", "b": "model_b", "tie": "tie", "both_bad": "tie (bothbad)"}
    for row in conn.execute(VOTES_QUERY):
        vote_id, messages, _, _, choice, _, model_a, model_b, created_at, session_id, battle_id = tuple(row)
        yield {
            "vote_id": vote_id,
            "battle_id": battle_id,
            "model_a": model_a,
            "model_b": model_b,
            "winner": winner[choice],
            "tstamp": created_at,
            "session_id": session_id,
            "turns": sum(m["role"] == "user" for m in json.loads(messages)),
        }


# ---------------------------------------------------------------------------
# Reading any source


def _is_sqlite(source: str | Path) -> bool:
    return str(source).lower().endswith(SQLITE_SUFFIXES)


def iter_preference_pairs(
    source: Source,
    on_error: Literal["raise", "skip"] = "raise",
    stats: PreferenceStats | None = None,
    pairing: Pairing = "best_vs_worst",
) -> Iterator[PreferencePair]:
    """Preference pairs from files and vote databases, the format detected per file."""
    stats = stats if stats is not None else PreferenceStats()
    for item in [source] if isinstance(source, (str, Path)) else source:
        records = _vote_records(Path(item), stats) if _is_sqlite(item) else iter_records(item, on_error, stats)
        yield from _convert(records, on_error, stats, pairing)


def _convert(
    records: Iterator[tuple[str, str, Any]],
    on_error: Literal["raise", "skip"],
    stats: PreferenceStats,
    pairing: Pairing,
) -> Iterator[PreferencePair]:
    def detect(file: str, record: dict[str, Any]) -> str | None:
        return "votes" if _is_sqlite(file) else detect_format(record)

    def convert(record: Any, fmt: str) -> tuple[list[PreferencePair], int, bool]:
        if fmt != "votes":
            return to_pairs(record, fmt, pairing)  # type: ignore[arg-type]
        pairs, unpaired = vote_pairs(record)
        stats.both_bad += unpaired == "both_bad"
        return pairs, unpaired == "tie", False

    for pairs, ties, merged in iter_detected(records, detect, convert, "preference", EXPECTED, on_error, stats):
        stats.pairs += len(pairs)
        stats.ties += ties
        stats.merged += merged
        yield from pairs


def load_pairs(sources: PreferenceSources) -> tuple[list[PreferencePair], PreferenceStats]:
    stats = PreferenceStats()
    return list(iter_preference_pairs(sources.data, sources.on_error, stats, sources.pairing)), stats


def split_pairs(
    pairs: list[PreferencePair], val_fraction: float, seed: int = 0
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, val) split by prompt, so no prompt of the validation pairs is trained on."""
    prompts = list(dict.fromkeys(json.dumps(p.messages) for p in pairs))
    random.Random(seed).shuffle(prompts)
    n_val = max(1, int(val_fraction * len(prompts))) if val_fraction > 0 else 0
    held = set(prompts[:n_val])
    return [p for p in pairs if json.dumps(p.messages) not in held], [
        p for p in pairs if json.dumps(p.messages) in held
    ]


# ---------------------------------------------------------------------------
# Tokens and batches


@dataclass(frozen=True)
class EncodedPair:
    chosen: list[int]  # prompt then chosen answer, in the chat template
    rejected: list[int]
    prompt_len: int  # tokens before the answer, the same in both


def encode_pairs(
    tok: Tokenizer, pairs: Sequence[PreferencePair], seq_len: int, max_prompt_len: int | None = None
) -> tuple[list[EncodedPair], dict[str, int]]:
    """Pairs rendered in the chat template, each cut to seq_len tokens as TRL's DPO trainer cuts them.

    The prompt loses its start (its <|bos|> stays): only as much as the longer answer needs, and never below
    max_prompt_len tokens (default half of seq_len; all of it when shorter); then both answers are cut to what is
    left, their start kept. The reward model then reads a cut answer at its last kept token, and DPO compares the
    kept tokens. A pair whose answers are the same once cut teaches nothing and is dropped.
    Returns the pairs and the counts {"pairs", "truncated", "dropped"}.
    """
    max_prompt = seq_len // 2 if max_prompt_len is None else max_prompt_len
    if not 2 <= max_prompt < seq_len:
        raise ValueError(f"max_prompt_len ({max_prompt}) must be at least 2 and below seq_len ({seq_len})")
    encoded, truncated, dropped = [], 0, 0
    for p in pairs:
        prompt = render(tok, p.messages, generation_prompt=True)[0]
        chosen, rejected = (
            render(tok, [*p.messages, {"role": "assistant", "content": answer}])[0][len(prompt) :]
            for answer in (p.chosen, p.rejected)
        )
        longer = max(len(chosen), len(rejected))
        if len(prompt) + longer > seq_len:
            truncated += 1
            keep = min(len(prompt), max(max_prompt, seq_len - longer))
            prompt = prompt[:1] + prompt[len(prompt) - keep + 1 :]
            chosen, rejected = chosen[: seq_len - keep], rejected[: seq_len - keep]
            if chosen == rejected:
                dropped += 1
                continue
        encoded.append(EncodedPair(prompt + chosen, prompt + rejected, len(prompt)))
    return encoded, {"pairs": len(encoded), "truncated": truncated, "dropped": dropped}


def describe_encoding(stage: str, train: dict[str, int], val: dict[str, int], seq_len: int) -> str:
    """The one line a preference stage logs about its pairs, every cut and drop counted for both splits."""

    def part(counts: dict[str, int]) -> str:
        return (
            f"{counts['pairs']} ({counts['truncated']} cut to {seq_len} tokens, {counts['dropped']} dropped as "
            "identical once cut)"
        )

    return f"[{stage}] pairs: training {part(train)}, validation {part(val)}"


class PairBatch(NamedTuple):
    """B pairs in one batch: rows 0..B-1 of input_ids are the chosen sequences, B..2B-1 the rejected ones."""

    input_ids: torch.Tensor  # [2B, T], right-padded
    answer_mask: torch.Tensor  # [2B, T]: each answer's tokens, its closing <|end|> included
    lengths: torch.Tensor  # [2B]: real tokens per row
    index: torch.Tensor  # [B]: which pairs these are
    weight: float | None = None  # the micro-batch's share of the step (loop.BatchSource); None: an equal one


def collate_pairs(encoded: Sequence[EncodedPair], indices: Sequence[int], pad_id: int) -> PairBatch:
    """The `PairBatch` of B pairs, right-padded (causal attention keeps real tokens from ever seeing padding)."""
    rows = [encoded[i].chosen for i in indices] + [encoded[i].rejected for i in indices]
    starts = [encoded[i].prompt_len for i in indices] * 2
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    lengths = torch.tensor([len(r) for r in rows])
    position = torch.arange(width)
    mask = (position >= torch.tensor(starts)[:, None]) & (position < lengths[:, None])
    return PairBatch(ids, mask, lengths, torch.tensor(list(indices)))


class PairBatches(LengthGroupedBatches):
    """Micro-batches of pairs of similar length, so little of each batch is padding; resumable. As for SFT: one
    process's length groups whatever the ranks (`data.loader.LengthGroups`), each part of a group weighted by its
    pairs."""

    items = "preference pairs"

    def __init__(self, encoded: list[EncodedPair], micro_batch_size: int, pad_id: int, **grouping: Any):
        self.encoded, self.pad_id = encoded, pad_id
        lengths = [max(len(p.chosen), len(p.rejected)) for p in encoded]
        super().__init__(lengths, [1] * len(encoded), micro_batch_size, **grouping)

    def collate(self, rows: list[int], share: float | None) -> PairBatch:
        return collate_pairs(self.encoded, rows, self.pad_id)._replace(weight=share)


def eval_batches(
    encoded: list[EncodedPair], micro_batch_size: int, pad_id: int, rank: int = 0, world_size: int = 1
) -> Iterator[PairBatch]:
    """This rank's share of the validation pairs, in order, in micro-batches."""
    mine = list(range(rank, len(encoded), world_size))
    for i in range(0, len(mine), micro_batch_size):
        yield collate_pairs(encoded, mine[i : i + micro_batch_size], pad_id)
