"""The chat template, one for training, evaluation, `fromzero chat`, serving and HF export.

    <|bos|><|system|>You are ...<|end|><|user|>Hi<|end|><|assistant|>Hello!<|end|><|user|>...

Role tokens are special tokens, so no text a user types can forge a turn. The loss mask covers the
assistant's words and the `<|end|>` that closes its turn (so the model learns to stop), nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypedDict

from fromzero.tokenizer import Tokenizer

Role = Literal["system", "user", "assistant"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant")


class Message(TypedDict):
    role: Role
    content: str


def check_messages(messages: Sequence[Message]) -> None:
    """A conversation is an optional system message, then user/assistant turns alternating, user first."""
    if not messages:
        raise ValueError("empty conversation")
    for i, m in enumerate(messages):
        if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} needs a role in {ROLES} and string content, got {m!r}")
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    for i, m in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise ValueError(f"turn {i} should be from the {expected}, got {m['role']} (turns must alternate, user first)")


def render(tok: Tokenizer, messages: Sequence[Message], *, generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
    """Token ids and the per-token loss mask (True on assistant tokens to learn)."""
    check_messages(messages)
    role_ids = {"system": tok.system_id, "user": tok.user_id, "assistant": tok.assistant_id}
    ids, mask = [tok.bos_id], [False]
    for m in messages:
        content = tok.encode(m["content"])
        learn = m["role"] == "assistant"
        ids += [role_ids[m["role"]], *content, tok.end_id]
        mask += [False] + [learn] * (len(content) + 1)
    if generation_prompt:
        ids.append(tok.assistant_id)
        mask.append(False)
    return ids, mask


def prompt_ids(tok: Tokenizer, user: str, system: str | None = None) -> list[int]:
    """The tokens a model sees before answering one user message."""
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    return render(tok, [*messages, {"role": "user", "content": user}], generation_prompt=True)[0]
