"""The user's documents, cut into overlapping chunks of tokens: a generator is asked about one chunk at a time."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from fromzero.data.sources import Source, iter_named_documents


class Spans(Protocol):
    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]: ...


class WordSpans:
    """Words as the unit of chunking, where the generator's tokenizer is not at hand (an endpoint's): a word is about
    1.3 tokens of English for a BPE tokenizer."""

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        spans = [m.span() for m in re.finditer(r"\S+", text)]
        return list(range(len(spans))), spans


@dataclass(frozen=True)
class Chunk:
    source: str  # the document's file (with #i for the i-th of a file holding several)
    index: int  # the chunk's place in its document, from 0
    start: int  # character offsets of the chunk in the document
    end: int
    text: str


def read_documents(sources: Source, text_field: str = "text") -> list[tuple[str, str]]:
    """(name, text) of every document: the readers `fromzero data` uses (txt/md/jsonl/json/parquet, dirs, globs)."""
    docs = list(iter_named_documents(sources, text_field))
    if not docs:
        raise ValueError(f"synth: {sources} holds no documents with text")
    return docs


def chunk_documents(docs: Sequence[tuple[str, str]], tok: Spans, chunk_tokens: int, overlap: int) -> list[Chunk]:
    """Windows of chunk_tokens tokens, each sharing `overlap` tokens with the one before; a document that fits is one
    chunk. Cut at token boundaries and given as the document's own characters (no re-decoding)."""
    if not 0 <= overlap < chunk_tokens:
        raise ValueError(f"chunk overlap ({overlap}) must be at least 0 and less than chunk_tokens ({chunk_tokens})")
    chunks = []
    for name, text in docs:
        _, spans = tok.encode_with_offsets(text)
        starts = range(0, max(1, len(spans) - overlap), chunk_tokens - overlap)
        for index, first in enumerate(starts):
            window = spans[first : first + chunk_tokens]
            if not window:
                continue
            start, end = window[0][0], window[-1][1]
            piece = text[start:end]
            lead = len(piece) - len(piece.lstrip())  # a byte-level token carries the space before its word
            piece = piece.strip()
            if piece:
                chunks.append(Chunk(name, index, start + lead, start + lead + len(piece), piece))
    return chunks
