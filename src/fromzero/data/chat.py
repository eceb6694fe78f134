"""The chat template, one for training, evaluation, `fromzero chat`, serving and HF export.

    <|bos|><|system|>You are ...<|end|><|user|>Hi<|end|><|assistant|>Hello!<|end|><|user|>...

Role tokens are special tokens, so no text a user types can forge a turn. The loss mask covers the
assistant's words and the `<|end|>` that closes its turn (so the model learns to stop), nothing else.

An imported tokenizer brings its own Jinja chat template (`Tokenizer.chat_template`), rendered as transformers'
`apply_chat_template` renders it (same ids), and its loss mask is found by rendering prefixes, as TRL did before
`{% generation %}` tags: an assistant turn's tokens are those after the conversation up to it with the generation
prompt, through the first special token that ends the turn (`Tokenizer.end_id`). Content that spells one of its
special tokens stays text there too.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from datetime import datetime
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
            raise ValueError(
                f"turn {i} should be from the {expected}, got {m['role']} (turns must alternate, user first)"
            )


def render(
    tok: Tokenizer, messages: Sequence[Message], *, generation_prompt: bool = False
) -> tuple[list[int], list[bool]]:
    """Token ids and the per-token loss mask (True on assistant tokens to learn)."""
    check_messages(messages)
    if tok.system_id is None:
        return render_template(tok, messages, generation_prompt=generation_prompt)
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


@functools.lru_cache(maxsize=8)
def compiled_template(source: str):
    """A Jinja template compiled the way transformers compiles chat templates (sandboxed, trim_blocks and
    lstrip_blocks, loop controls, raise_exception, strftime_now, a tojson that keeps non-ASCII), so the text is
    the same; `{% generation %}` blocks render their body."""
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    return env.from_string(source)


PLACEHOLDER = re.compile("\ue000(\\d+)\ue001")


def template_ids(tok: Tokenizer, messages: Sequence[Message], generation_prompt: bool) -> list[int]:
    """The ids of an imported chat template rendered on messages (transformers' apply_chat_template's ids)."""
    if tok.chat_template is None:
        raise ValueError(
            "this tokenizer has no chat template (tokenizer_config.json's chat_template or "
            "chat_template.jinja): add one to use it for conversations"
        )
    template = compiled_template(tok.chat_template)

    def text(msgs) -> str:
        return template.render(
            messages=[dict(m) for m in msgs],
            tools=None,
            documents=None,
            add_generation_prompt=generation_prompt,
            **tok.template_vars,
        )

    if not any(s in m["content"] for m in messages for s in tok.special_strings):
        return tok.encode_template(text(messages))
    # content spelling a special token stays text: render placeholders, encode only the template's own text with specials
    marked = [{**m, "content": f"\ue000{i}\ue001"} for i, m in enumerate(messages)]
    ids: list[int] = []
    for k, piece in enumerate(PLACEHOLDER.split(text(marked))):
        ids += tok.encode(messages[int(piece)]["content"]) if k % 2 else tok.encode_template(piece)
    return ids


def render_template(
    tok: Tokenizer, messages: Sequence[Message], *, generation_prompt: bool = False
) -> tuple[list[int], list[bool]]:
    """render() with an imported chat template: every assistant turn is learned from the end of the generation
    prompt before it through the first end_id after it (the rest of its turn, or all of it without one)."""
    ids = template_ids(tok, messages, generation_prompt)
    mask = [False] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(before := template_ids(tok, messages[:i], True))
        if ids[:start] != before:
            raise ValueError(
                "the chat template renders a conversation's start differently once it goes on, so its "
                "assistant turns cannot be found for the loss mask"
            )
        end = len(template_ids(tok, messages[: i + 1], False))
        stop = next((k + 1 for k in range(start, min(end, len(ids))) if ids[k] == tok.end_id), end)
        mask[start:stop] = [True] * (stop - start)
    return ids, mask


def turn_end_id(tok: Tokenizer) -> int | None:
    """The first special token an imported chat template writes after an assistant's words: what ends a turn."""
    probe: list[Message] = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes"}]
    before = template_ids(tok, probe[:1], True)
    after = template_ids(tok, probe, False)[len(before) :]
    return next((t for t in after if t in tok.special_ids), None)
