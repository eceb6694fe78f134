"""The checks a generated pair must pass, in the order they run; each drop is counted under its reason."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from datasketch import MinHash, MinHashLSH

WORD = re.compile(r"[a-z0-9]+")
# words that carry no content: an answer made of them alone says nothing the chunk could ground
STOP_WORDS = frozenset(
    "a an the is are was were be been am i you he she it we they his her its their my your our of in on at to for "
    "from by with and or but not no yes this that these those there here what which who whom whose when where why how "
    "do does did has have had as so than then very um well sure".split()
)
REASONS = (
    "truncated",
    "too_short",
    "too_long",
    "duplicate",
    "near_duplicate",
    "ungrounded",
    "contaminated",
    "judge_failed",
    "judge_below_threshold",
)


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def normalise(text: str) -> str:
    return " ".join(words(text))


def length_reason(q: str, a: str, min_q: int, max_q: int, min_a: int, max_a: int) -> str | None:
    if len(q) < min_q or len(a) < min_a:
        return "too_short"
    if len(q) > max_q or len(a) > max_a:
        return "too_long"
    return None


def grounding(answer: str, chunk: str) -> float:
    """The fraction of the answer's content words that occur in the chunk (1.0 for an answer with none, such as a
    bare number the chunk spells the same way: numbers count as content)."""
    content = [w for w in words(answer) if w not in STOP_WORDS]
    if not content:
        return 1.0
    in_chunk = set(words(chunk))
    return sum(w in in_chunk for w in content) / len(content)


NAME = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][A-Za-z0-9]*")


def unknown_names(question: str, chunk: str) -> list[str]:
    """Capitalised words of the question (not its first word) that the chunk never uses: a question about someone or
    somewhere the text does not mention (a small model swaps in a name it knows)."""
    in_chunk = set(WORD.findall(chunk.lower()))
    return [w for w in NAME.findall(question.strip()) if w.lower() not in in_chunk]


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)} if len(w) >= n else ({tuple(w)} if w else set())


class NearDuplicates:
    """MinHash LSH over word 3-grams of a pair's text: `seen(text)` says whether a kept text is at least `threshold`
    similar (estimated Jaccard) and otherwise remembers this one."""

    def __init__(self, threshold: float, num_perm: int = 128):
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.num_perm, self.count = num_perm, 0

    def minhash(self, text: str) -> MinHash:
        m = MinHash(num_perm=self.num_perm, seed=1)
        m.update_batch([" ".join(g).encode() for g in ngrams(text, 3)] or [b""])
        return m

    def seen(self, text: str) -> bool:
        m = self.minhash(text)
        if self.lsh.query(m):
            return True
        self.lsh.insert(str(self.count), m)
        self.count += 1
        return False


class Contamination:
    """Word n-grams of evaluation texts: a question sharing one with them (or, shorter than n words, equal to one of
    them) is contaminated."""

    def __init__(self, texts: Iterable[str], n: int):
        self.n = n
        self.grams: set[tuple[str, ...]] = set()
        self.short: set[str] = set()
        for t in texts:
            self.grams |= ngrams(t, n)
            self.short.add(normalise(t))

    def __bool__(self) -> bool:
        return bool(self.grams)

    def hit(self, text: str) -> bool:
        return normalise(text) in self.short or bool(ngrams(text, self.n) & self.grams)


def eval_texts(sources: Sequence[str]) -> list[str]:
    """Every text of evaluation files: each string in each record of structured files (any instruction, preference or
    task format: questions, answers, messages), each document of plain-text ones."""
    from fromzero.data.sources import iter_documents, iter_records

    def strings(value) -> Iterable[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)

    texts: list[str] = []
    for src in sources:
        plain = str(src).lower().removesuffix(".gz").endswith((".txt", ".md"))
        texts += list(iter_documents(src)) if plain else [t for r in iter_records(src) for t in strings(r.record)]
    return texts
