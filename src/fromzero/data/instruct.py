"""Instruction data in the formats people have, turned into conversations (lists of messages).

The format is detected per file from its first record and every record of that file must fit it:

- `messages`: OpenAI style `{"messages": [{"role", "content"}, ...]}`, also under `conversations`, and
  ShareGPT style with `from`/`value` (`human`/`gpt`/`system`);
- Alpaca: `instruction`, `input` (optional), `output`;
- Dolly: `instruction`, `context` (optional), `response`;
- `prompt` / `response` (or `completion`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal

from fromzero.data.chat import Message, check_messages
from fromzero.data.sources import Source, SourceStats, iter_detected, iter_records

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "system": "system",
}


def join_input(instruction: str, extra: str | None) -> str:
    """An instruction and its optional input (Alpaca) or context (Dolly) as one user message."""
    return f"{instruction}\n\n{extra}" if extra else instruction


def _from_messages(r: dict[str, Any]) -> list[Message]:
    turns = r.get("messages", r.get("conversations"))
    if not isinstance(turns, list):
        raise ValueError("'messages' must be a list")
    out: list[Message] = []
    for t in turns:
        if not isinstance(t, dict):
            raise ValueError(f"a message must be an object, got {t!r}")
        if "from" in t:
            role = SHAREGPT_ROLES.get(str(t["from"]).lower())
            if role is None:
                raise ValueError(f"unknown ShareGPT speaker {t['from']!r}; known: {sorted(SHAREGPT_ROLES)}")
            out.append({"role": role, "content": t.get("value")})
        else:
            out.append({"role": t.get("role"), "content": t.get("content")})
    return out


def _from_alpaca(r: dict[str, Any]) -> list[Message]:
    return [
        {"role": "user", "content": join_input(r["instruction"], r.get("input"))},
        {"role": "assistant", "content": r["output"]},
    ]


def _from_dolly(r: dict[str, Any]) -> list[Message]:
    return [
        {"role": "user", "content": join_input(r["instruction"], r.get("context"))},
        {"role": "assistant", "content": r["response"]},
    ]


def _from_prompt_response(r: dict[str, Any]) -> list[Message]:
    answer = r["response"] if "response" in r else r["completion"]
    return [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": answer}]


Format = Literal["messages", "alpaca", "dolly", "prompt_response"]
# (name, keys that identify it, converter); checked in this order
FORMATS: list[tuple[Format, Callable[[dict[str, Any]], bool], Callable[[dict[str, Any]], list[Message]]]] = [
    ("messages", lambda r: "messages" in r or "conversations" in r, _from_messages),
    ("alpaca", lambda r: "instruction" in r and "output" in r, _from_alpaca),
    ("dolly", lambda r: "instruction" in r and "response" in r, _from_dolly),
    ("prompt_response", lambda r: "prompt" in r and ("response" in r or "completion" in r), _from_prompt_response),
]
EXPECTED = (
    "messages (or conversations), instruction+input+output (Alpaca), instruction+context+response (Dolly), "
    "prompt+response"
)


def detect_format(record: dict[str, Any]) -> Format | None:
    return next((name for name, matches, _ in FORMATS if matches(record)), None)


def to_messages(record: dict[str, Any], fmt: Format) -> list[Message]:
    convert = next(c for name, _, c in FORMATS if name == fmt)
    messages = convert(record)
    check_messages(messages)
    if messages[-1]["role"] != "assistant":
        raise ValueError("the conversation must end with an assistant message (there is nothing to learn otherwise)")
    return messages


def iter_conversations(
    source: Source, on_error: Literal["raise", "skip"] = "raise", stats: SourceStats | None = None
) -> Iterator[list[Message]]:
    """Conversations from instruction files, the format detected per file."""
    stats = stats if stats is not None else SourceStats()
    yield from iter_detected(
        iter_records(source, on_error, stats),
        lambda _, r: detect_format(r),
        to_messages,
        "instruction",
        EXPECTED,
        on_error,
        stats,
    )
