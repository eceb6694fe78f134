"""Prompt templates: plain files the user can copy and edit. A template's sha is recorded with every record it made,
so a changed template is a new setting (resume does not mix its output with the old one's)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

TEMPLATES = Path(__file__).parent / "templates"


def load_template(
    path: str | Path | None, default: str = "instruct.txt", fields: tuple[str, ...] = ("{chunk}",)
) -> tuple[str, str]:
    """(text, short sha) of a template file (default: one of synth/templates/); every field must appear in it."""
    file = Path(path) if path else TEMPLATES / default
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such prompt template")
    text = file.read_text(encoding="utf-8")
    missing = [f for f in fields if f not in text]
    if missing:
        raise ValueError(f"{file}: the template must contain {', '.join(missing)} (where the text goes)")
    return text, hashlib.sha256(text.encode()).hexdigest()[:12]


DEFAULT_TEMPLATE = load_template(None)[0]
QUESTION_TEMPLATE = load_template(None, "question.txt", ("{chunk}", "{sentence}"))[0]


def sentences(text: str) -> list[str]:
    """A text's sentences: cut after . ! or ? before whitespace."""
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def fill(template: str, **values: str | int) -> str:
    """The template with {name} fields filled in one pass (a filled-in text holding braces is left as it is)."""
    return re.sub(r"\{(\w+)\}", lambda m: str(values[m[1]]) if m[1] in values else m[0], template).strip()


def render_prompt(template: str, chunk: str, n: int = 1) -> str:
    """The generation prompt for one chunk: {chunk} and {n} (pairs asked for) filled in."""
    return fill(template, chunk=chunk.strip(), n=n)


def render_question_prompt(template: str, chunk: str, sentence: str) -> str:
    """The backtranslation prompt: a chunk, and the sentence of it whose question the generator writes."""
    return fill(template, chunk=chunk.strip(), sentence=sentence.strip())


def render_judge(template: str, chunk: str, question: str, answer: str) -> str:
    return fill(template, chunk=chunk.strip(), question=question, answer=answer)
