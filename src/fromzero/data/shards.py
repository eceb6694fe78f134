"""Tokenise documents into packed token shards on disk, and read them back.

Layout of a shard directory:

    meta.json            ShardsMeta: dtype, vocab, per-split shard files with token counts, ...
    train_000000.bin     raw little-endian uint16 tokens (uint32 when the vocab exceeds 65536)
    train_000001.bin     ...
    val_000000.bin

Each split is one token stream in which every document is `<|bos|>` followed by
its tokens; shards are plain cuts of that stream every `shard_tokens` tokens, so
a document may continue from one shard into the next.

Documents are assigned to train or val whole, by a hash of (seed, document
index). A document longer than `chunk_chars` characters (a book, a whole
corpus in one file) is first cut at line breaks into pieces of at most that
many, each then packed as a document of its own, and its last `val_fraction`
goes to val: the tail of the file, as nanoGPT holds out the end of
tinyshakespeare. So does the tail of a corpus's only document, however short.
Separate validation documents (`val_documents`) go to val whole instead, and
nothing of `documents` is held out.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import closing
from itertools import chain
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
from pydantic import BaseModel, computed_field
from tqdm import tqdm

from fromzero.tokenizer import Tokenizer, tokenizer_file

META_FILE = "meta.json"
# about 16k tokens: pieces a tokenizer trainer and a worker handle in a moment; a book still gives dozens
CHUNK_CHARS = 65536
# the most text in one batch sent to a worker: 512 whole pieces of a huge record would be 32 MB in flight per worker
BATCH_CHARS = 1 << 22
SPLITS = ("train", "val")
Split = Literal["train", "val"]
# Stored little-endian whatever the machine, so shards are portable.
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


class ShardFile(BaseModel):
    file: str
    tokens: int


class SplitMeta(BaseModel):
    shards: list[ShardFile]
    tokens: int
    documents: int


class ShardsMeta(BaseModel):
    dtype: Literal["uint16", "uint32"]
    vocab_size: int
    bos_id: int
    tokenizer_sha256: str  # of the tokenizer.json file the tokens were made with
    seed: int
    val_fraction: float
    shard_tokens: int
    splits: dict[Split, SplitMeta]

    @computed_field
    @property
    def total_tokens(self) -> int:
        return sum(s.tokens for s in self.splits.values())

    @computed_field
    @property
    def total_documents(self) -> int:
        return sum(s.documents for s in self.splits.values())

    @classmethod
    def load(cls, out_dir: str | Path) -> ShardsMeta:
        return cls.model_validate_json((Path(out_dir) / META_FILE).read_text())

    def save(self, out_dir: str | Path) -> None:
        (Path(out_dir) / META_FILE).write_text(self.model_dump_json(indent=2) + "\n")


def build_shards(
    documents: Iterable[str],
    tokenizer_path: str | Path,
    out_dir: str | Path,
    *,
    val_fraction: float = 0.05,
    val_documents: Iterable[str] | None = None,
    seed: int = 0,
    shard_tokens: int = 2**24,
    num_workers: int = 2,
    chunk_docs: int = 512,
    chunk_chars: int = CHUNK_CHARS,
    progress: bool | None = None,
) -> ShardsMeta:
    """Tokenise `documents` into train/val shards in `out_dir`, streaming (the split: see the module docstring).

    Chunks of `chunk_docs` documents are tokenised by `num_workers` processes
    (in this process when `num_workers <= 1`); the output is byte-identical
    whatever the worker count or chunk size. Memory stays bounded by a few
    chunks in flight; nothing else is buffered beyond the file writes.

    The directory appears atomically: shards are written to a hidden sibling
    temp directory that is renamed to `out_dir` only once complete (a build
    killed outright can leave that hidden temp directory behind, never a
    partial `out_dir`). An existing `out_dir` is replaced if it is empty or a
    previous shard build, and refused otherwise.

    With `val_fraction > 0` val is never empty (a single document gives it its
    tail), and train always gets at least one document. With `val_documents`
    val holds them and nothing else, and `val_fraction` must be 0.
    `progress=None` shows a progress bar only when stderr is a terminal. Worker processes are spawned,
    so a script calling this needs the usual `if __name__ == "__main__":` guard.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if shard_tokens < 1 or chunk_docs < 1 or chunk_chars < 1:
        raise ValueError(
            f"shard_tokens, chunk_docs and chunk_chars must be positive, got {shard_tokens}, {chunk_docs} "
            f"and {chunk_chars}"
        )
    if val_documents is not None and val_fraction:
        raise ValueError(
            f"separate validation documents hold nothing out of the others: val_fraction must be 0, got {val_fraction}"
        )
    tokenizer_path = tokenizer_file(tokenizer_path)
    tokenizer = Tokenizer.load(tokenizer_path)
    dtype_name = "uint16" if tokenizer.vocab_size <= 2**16 else "uint32"
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        writers = {split: _ShardWriter(tmp_dir, split, DTYPES[dtype_name], shard_tokens) for split in SPLITS}
        pieces = assign_splits(documents, val_fraction, seed, chunk_chars)
        if val_documents is not None:
            pieces = chain(pieces, ((piece, True) for doc in val_documents for piece in cut_document(doc, chunk_chars)))
        chunks = _tokenized_chunks(pieces, tokenizer, tokenizer_path, DTYPES[dtype_name], num_workers, chunk_docs)
        # closing() shuts the worker pool down at once if writing fails.
        bar = tqdm(desc="tokenising", unit=" docs", disable=None if progress is None else not progress)
        with closing(chunks), bar:
            for flat, lengths, to_val in chunks:
                for doc, val in zip(np.split(flat, np.cumsum(lengths)[:-1]), to_val):
                    writers["val" if val else "train"].write_document(doc)
                bar.update(len(lengths))
                bar.set_postfix(tokens=f"{sum(w.tokens for w in writers.values()):,}", refresh=False)
        meta = ShardsMeta(
            dtype=dtype_name,
            vocab_size=tokenizer.vocab_size,
            bos_id=tokenizer.bos_id,
            tokenizer_sha256=hashlib.sha256(tokenizer_path.read_bytes()).hexdigest(),
            seed=seed,
            val_fraction=val_fraction,
            shard_tokens=shard_tokens,
            splits={split: writer.close() for split, writer in writers.items()},
        )
        meta.save(tmp_dir)
        _move_into_place(tmp_dir, out_dir)
        return meta
    finally:
        # After a successful move this is a no-op; after a failure it removes the partial build.
        shutil.rmtree(tmp_dir, ignore_errors=True)


def cut_document(text: str, max_chars: int) -> list[str]:
    """`text` in consecutive pieces of at most max_chars characters (all of it, nothing added), each cut after a
    line break where the second half of its window has one, else after a space, else exactly at max_chars."""
    pieces, start = [], 0
    while len(text) - start > max_chars:
        end = _break_before(text, start + max_chars, start + max_chars // 2)
        pieces.append(text[start:end])
        start = end
    pieces.append(text[start:])
    return pieces


def _break_before(text: str, limit: int, floor: int) -> int:
    """The position just after the last line break (else space) in text[floor:limit], or limit when none."""
    for sep in ("\n", " "):
        at = text.rfind(sep, floor, limit)
        if at >= 0:
            return at + 1
    return limit


def split_tail(text: str, val_fraction: float) -> tuple[str, str]:
    """(head, tail) of a document, the tail about val_fraction of it (at least one character) and starting at a line
    break when there is one near the cut."""
    cut = len(text) - max(1, round(val_fraction * len(text)))
    at = _break_before(text, cut, cut // 2) if cut > 1 else cut
    return text[:at], text[at:]


def assign_splits(
    documents: Iterable[str], val_fraction: float, seed: int, chunk_chars: int = CHUNK_CHARS
) -> Iterator[tuple[str, bool]]:
    """(piece, whether it goes to val) for every piece of every document, in order (see the module docstring)."""
    counts = {False: 0, True: 0}
    held: tuple[str, bool] | None = None  # the last short document, which may still fill an empty split
    index = 0

    def tail_split(doc: str) -> Iterator[tuple[str, bool]]:
        head, tail = split_tail(doc, val_fraction) if val_fraction > 0 else (doc, "")
        for part, to_val in ((head, False), (tail, True)):
            for piece in cut_document(part, chunk_chars) if part else []:
                counts[to_val] += 1
                yield piece, to_val

    for doc in documents:
        if held is not None:
            counts[held[1]] += 1
            yield held
            held = None
        if len(doc) > chunk_chars:
            yield from tail_split(doc)
        else:
            held = (doc, _is_val(seed, index, val_fraction))
        index += 1
    if held is not None:
        doc, to_val = held
        if val_fraction > 0 and not counts[True] and index == 1 and len(doc) > 1:
            yield from tail_split(doc)
            return
        if val_fraction > 0 and not counts[True] and index >= 2:
            to_val = True
        elif not counts[False]:
            to_val = False
        yield doc, to_val


def _is_val(seed: int, index: int, val_fraction: float) -> bool:
    """A document's split depends only on (seed, its index): not on chunking or worker count."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


def _check_replaceable(out_dir: Path) -> None:
    if out_dir.exists() and not (out_dir.is_dir() and (not any(out_dir.iterdir()) or (out_dir / META_FILE).is_file())):
        raise FileExistsError(f"{out_dir} exists and is not a token shard directory; refusing to replace it")


def _move_into_place(tmp_dir: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        tmp_dir.rename(out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    out_dir.rename(old / out_dir.name)
    tmp_dir.rename(out_dir)
    shutil.rmtree(old)


class _ShardWriter:
    """Appends documents to one split's stream, starting a new shard file every `shard_tokens` tokens."""

    def __init__(self, out_dir: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.out_dir, self.split, self.dtype, self.shard_tokens = out_dir, split, dtype, shard_tokens
        self.shards: list[ShardFile] = []
        self.documents = 0
        self.tokens = 0
        self._file: BinaryIO | None = None

    def write_document(self, tokens: np.ndarray) -> None:
        self.documents += 1
        self.tokens += len(tokens)
        while len(tokens):
            if self._file is None:
                name = f"{self.split}_{len(self.shards):06d}.bin"
                self._file = open(self.out_dir / name, "wb", buffering=1 << 20)
                self.shards.append(ShardFile(file=name, tokens=0))
            shard = self.shards[-1]
            n = min(len(tokens), self.shard_tokens - shard.tokens)
            self._file.write(tokens[:n].tobytes())
            shard.tokens += n
            tokens = tokens[n:]
            if shard.tokens == self.shard_tokens:
                self._file.close()
                self._file = None

    def close(self) -> SplitMeta:
        if self._file is not None:
            self._file.close()
            self._file = None
        return SplitMeta(shards=self.shards, tokens=self.tokens, documents=self.documents)


def _tokenized_chunks(
    pieces: Iterable[tuple[str, bool]],
    tokenizer: Tokenizer,
    tokenizer_path: Path,
    dtype: np.dtype,
    num_workers: int,
    chunk_docs: int,
) -> Iterator[tuple[np.ndarray, np.ndarray, list[bool]]]:
    """(tokens, per-document lengths, whether each goes to val) for each chunk of documents, in input order."""
    chunks = ((list(docs), list(to_val)) for docs, to_val in (zip(*c) for c in _batched(pieces, chunk_docs)))
    if num_workers <= 1:
        for docs, to_val in chunks:
            yield *_tokenize(tokenizer, docs, dtype), to_val
        return
    # spawn, not fork: forking a process whose tokenizer threads have run can deadlock.
    ctx = mp.get_context("spawn")
    with ctx.Pool(num_workers, initializer=_init_worker, initargs=(str(tokenizer_path),)) as pool:
        # Pool.imap would read the whole input ahead into its task queue; keeping a
        # bounded window of chunks in flight keeps memory flat on any corpus size.
        in_flight: deque = deque()
        for docs, to_val in chunks:
            in_flight.append((pool.apply_async(_tokenize_in_worker, (docs, dtype)), to_val))
            if len(in_flight) >= 2 * num_workers:
                result, to_val = in_flight.popleft()
                yield *result.get(), to_val
        while in_flight:
            result, to_val = in_flight.popleft()
            yield *result.get(), to_val


def _batched(pieces: Iterable[tuple[str, bool]], chunk_docs: int) -> Iterator[list[tuple[str, bool]]]:
    """Consecutive batches of at most chunk_docs pieces and about BATCH_CHARS characters."""
    batch: list[tuple[str, bool]] = []
    chars = 0
    for piece in pieces:
        batch.append(piece)
        chars += len(piece[0])
        if len(batch) == chunk_docs or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _tokenize(tokenizer: Tokenizer, docs: list[str], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Each document as [bos, *tokens], all concatenated, plus each one's length."""
    encoded = tokenizer.encode_batch(docs)
    lengths = np.array([len(ids) + 1 for ids in encoded], dtype=np.int64)
    flat = np.fromiter(
        chain.from_iterable(chain((tokenizer.bos_id,), ids) for ids in encoded), dtype=dtype, count=int(lengths.sum())
    )
    return flat, lengths


_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer_path: str) -> None:
    global _worker_tokenizer
    # Parallelism comes from the worker processes; threads inside each would oversubscribe the cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tokenizer = Tokenizer.load(tokenizer_path)


def _tokenize_in_worker(docs: list[str], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    assert _worker_tokenizer is not None, "worker not initialised"
    return _tokenize(_worker_tokenizer, docs, dtype)


class TokenShards:
    """One split's token stream, memory-mapped read-only across its shard files."""

    def __init__(self, out_dir: str | Path, split: Split = "train"):
        out_dir = Path(out_dir)
        self.meta = ShardsMeta.load(out_dir)
        if split not in self.meta.splits:
            raise KeyError(f"{out_dir}: no split {split!r} (splits: {list(self.meta.splits)})")
        dtype = DTYPES[self.meta.dtype]
        self._shards: list[np.memmap] = []
        for shard in self.meta.splits[split].shards:
            tokens = np.memmap(out_dir / shard.file, dtype=dtype, mode="r")
            if len(tokens) != shard.tokens:
                raise ValueError(f"{out_dir / shard.file}: {len(tokens)} tokens on disk, meta.json says {shard.tokens}")
            self._shards.append(tokens)
        # starts[i] is the stream offset of shard i; starts[-1] the total length.
        self._starts = np.cumsum([0] + [len(s) for s in self._shards])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def slice(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the stream as int64, across shard boundaries."""
        if start < 0 or length < 0 or start + length > len(self):
            raise IndexError(f"slice [{start}, {start + length}) out of range for {len(self)} tokens")
        out = np.empty(length, dtype=np.int64)
        i = int(np.searchsorted(self._starts, start, side="right")) - 1
        done = 0
        while done < length:
            offset = start + done - int(self._starts[i])
            n = min(length - done, len(self._shards[i]) - offset)
            out[done : done + n] = self._shards[i][offset : offset + n]
            done += n
            i += 1
        return out
