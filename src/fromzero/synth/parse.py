"""Question/answer pairs out of what a model wrote: JSON (a list, or an object holding one), tagged blocks
(<question>…</question>), labelled lines (Question: … Answer: …, Q: … A: …) or a numbered list of questions each
followed by its answer. Small models write all of these, half-finished ones too: a pair cut off by the token limit is
dropped, and output with no complete pair is a failure with a reason, kept with the raw text."""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

Pair = tuple[str, str]
QUESTION_KEYS = ("question", "q", "instruction", "prompt", "query")
ANSWER_KEYS = ("answer", "a", "response", "output", "completion")


class Parsed(NamedTuple):
    pairs: list[Pair]
    reason: str | None  # why nothing was parsed: empty, no_pairs, unfinished; None when pairs were found
    style: str | None  # which of the formats the pairs were read in


def parse_pairs(text: str) -> Parsed:
    text = (text or "").strip()
    if not text:
        return Parsed([], "empty", None)
    for style, reader in (
        ("json", _json_pairs),
        ("tagged", _tagged_pairs),
        ("labelled", _labelled_pairs),
        ("numbered", _numbered_pairs),
    ):
        pairs = [(q, a) for q, a in reader(text) if q and a]
        if pairs:
            return Parsed(pairs, None, style)
    unfinished = re.search(r"(?im)^\s*(question|q)\s*[:.]", text) or "<question>" in text.lower()
    return Parsed([], "unfinished" if unfinished else "no_pairs", None)


def _clean(s: Any) -> str:
    return re.sub(r"\s+", " ", str(s)).strip().strip('"').strip()


def _from_obj(obj: Any) -> list[Pair]:
    if isinstance(obj, list):
        return [p for item in obj for p in _from_obj(item)]
    if not isinstance(obj, dict):
        return []
    lower = {str(k).lower(): v for k, v in obj.items()}
    q = next((lower[k] for k in QUESTION_KEYS if isinstance(lower.get(k), str)), None)
    a = next((lower[k] for k in ANSWER_KEYS if isinstance(lower.get(k), str)), None)
    if q is not None and a is not None:
        return [(_clean(q), _clean(a))]
    return [p for v in obj.values() if isinstance(v, (list, dict)) for p in _from_obj(v)]  # {"pairs": [...]}


def _json_pairs(text: str) -> list[Pair]:
    fenced = re.findall(r"```(?:json)?\s*(.*?)```", text, flags=re.S)
    decoder = json.JSONDecoder()
    for candidate in fenced + [text]:
        for i, ch in enumerate(candidate):
            if ch in "[{":
                try:
                    obj, _ = decoder.raw_decode(candidate, i)
                except json.JSONDecodeError:
                    continue
                pairs = _from_obj(obj)
                if pairs:
                    return pairs
    return []


def _tagged_pairs(text: str) -> list[Pair]:
    qs = re.findall(r"<question>(.*?)</question>\s*<answer>(.*?)</answer>", text, flags=re.S | re.I)
    return [(_clean(q), _clean(a)) for q, a in qs]


LABEL = re.compile(r"(?im)^\s*(?:\d+[.)]\s*)?(?:\*\*)?(question|q|answer|a)(?:\s*\d+)?(?:\*\*)?\s*[:.]\s*(?:\*\*)?\s*")


def _labelled_pairs(text: str) -> list[Pair]:
    marks = list(LABEL.finditer(text))
    pairs, question = [], None
    for i, m in enumerate(marks):
        body = _clean(text[m.end() : marks[i + 1].start() if i + 1 < len(marks) else len(text)])
        if m[1].lower().startswith("q"):
            question = body
        elif question is not None:
            pairs.append((question, body))
            question = None
    return pairs


def _numbered_pairs(text: str) -> list[Pair]:
    items = re.split(r"(?m)^\s*\d+[.)]\s+", text)
    pairs = []
    for item in items:
        item = item.strip()
        if "?" in item:
            q, a = item.split("?", 1)
            pairs.append((_clean(q + "?"), _clean(a)))
    return pairs


def parse_question(text: str) -> tuple[str | None, str | None]:
    """(question, None) from a reply that should be one question (a "Question:" label and quotes dropped; its first
    line only), or (None, reason)."""
    for line in (text or "").strip().splitlines():
        q = _clean(re.sub(r"(?i)^\s*(?:\d+[.)]\s*)?(?:\*\*)?(?:question|q)\s*\d*\s*[:.]\s*(?:\*\*)?", "", line))
        if q:
            return (q, None) if q.endswith("?") or len(q.split()) >= 3 else (None, "no_question")
    return None, "empty"
