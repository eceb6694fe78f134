"""From sources to a data directory: `tokenizer.json` trained on the corpus, and packed token shards.

The corpus is the built-in world unless `data.sources` names other text; `data.val_sources` names separate
validation text. Building is skipped when the directory is already complete, so re-running a pipeline reuses it.
A corpus with no text, or one that leaves validation less than one sequence, is refused before anything is
trained, with the file and the fix named.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from tqdm import tqdm

from fromzero.config import Config, DataConfig
from fromzero.data.shards import ShardsMeta, TokenShards, build_shards, cut_document
from fromzero.data.sources import DataError, SourceStats, iter_documents
from fromzero.data.world import build_world
from fromzero.tokenizer import Tokenizer


def documents(cfg: Config, stats: SourceStats | None = None) -> Iterator[str]:
    if not cfg.data.sources:
        return build_world(cfg.world).pretrain_documents()
    return iter_documents(cfg.data.sources, text_field=cfg.data.text_field, on_error=cfg.data.on_error, stats=stats)


def val_documents(cfg: Config, stats: SourceStats | None = None) -> Iterator[str]:
    return iter_documents(cfg.data.val_sources, text_field=cfg.data.text_field, on_error=cfg.data.on_error, stats=stats)


def tokenizer_texts(docs: Iterable[str], data: DataConfig, progress: bool = False) -> Iterator[str]:
    """What the tokenizer trainer reads: at most tokenizer_docs documents, cut into pieces of chunk_chars, until
    tokenizer_chars characters (one huge record would otherwise cost the trainer minutes and gigabytes)."""
    if data.tokenizer_docs:
        docs = itertools.islice(docs, data.tokenizer_docs)
    budget = data.tokenizer_chars
    with tqdm(desc="training the tokenizer on", unit=" chars", unit_scale=True, disable=not progress) as bar:
        for doc in docs:
            for piece in cut_document(doc, data.chunk_chars):
                piece = piece[:budget]
                yield piece
                bar.update(len(piece))
                budget -= len(piece)
                if budget <= 0:
                    return


def shards_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "shards"


def is_built(data_dir: Path) -> bool:
    return (Path(data_dir) / "tokenizer.json").exists() and (shards_dir(data_dir) / "meta.json").exists()


def _no_text(sources: list[str], key: str, stats: SourceStats) -> DataError:
    skipped = f" ({stats.skipped} malformed records skipped, e.g. {stats.errors[0]})" if stats.skipped else ""
    return DataError(
        f"{', '.join(sources)}: no text: empty, whitespace only or nothing readable{skipped}; put text "
        f"in it or point {key} at another corpus"
    )


def _check_has_text(cfg: Config) -> None:
    """Refuse an empty corpus (or empty validation sources) by reading its first document only."""
    checks = [(cfg.data.sources, "data.sources", documents)] if cfg.data.sources else []
    checks += [(cfg.data.val_sources, "data.val_sources", val_documents)] if cfg.data.val_sources else []
    for sources, key, read in checks:
        stats = SourceStats()
        if next(read(cfg, stats), None) is None:
            raise _no_text(sources, key, stats)


def _check_validation(cfg: Config, meta: ShardsMeta) -> None:
    need = cfg.pretrain.seq_len + 1
    have = meta.splits["val"].tokens
    if have >= need:
        return
    if not cfg.data.val_sources and cfg.data.val_fraction == 0:
        raise DataError(
            "data.val_fraction is 0 and data.val_sources is empty: there is no validation text; set "
            "data.val_fraction (e.g. 0.05) or name held-out text in data.val_sources"
        )
    names = ", ".join(cfg.data.val_sources or cfg.data.sources) or "the built-in world"
    fix = (
        "name more text in data.val_sources"
        if cfg.data.val_sources
        else f"raise data.val_fraction (now {cfg.data.val_fraction}) or name held-out text in data.val_sources"
    )
    raise DataError(
        f"{names}: the validation split has {have} tokens, fewer than one sequence of pretrain.seq_len + 1 "
        f"= {need}; {fix}"
    )


def build(cfg: Config, data_dir: Path, *, progress: bool = True) -> ShardsMeta:
    """Train the tokenizer and write the shards under data_dir (each step skipped when already done)."""
    data_dir = Path(data_dir)
    tok_file = data_dir / "tokenizer.json"
    shards = shards_dir(data_dir)
    if not tok_file.exists() or not (shards / "meta.json").exists():
        _check_has_text(cfg)
    data_dir.mkdir(parents=True, exist_ok=True)
    if not tok_file.exists():
        texts = tokenizer_texts(documents(cfg), cfg.data, progress)
        Tokenizer.train(texts, cfg.data.vocab_size, progress=progress).save(data_dir)
    if not (shards / "meta.json").exists():
        stats, val_stats = SourceStats(), SourceStats()
        separate = val_documents(cfg, val_stats) if cfg.data.val_sources else None
        meta = build_shards(
            documents(cfg, stats),
            tok_file,
            shards,
            val_documents=separate,
            val_fraction=0.0 if separate else cfg.data.val_fraction,
            seed=cfg.seed,
            num_workers=cfg.data.num_workers,
            chunk_chars=cfg.data.chunk_chars,
            progress=progress,
        )
        for name, s in (("data.sources", stats), ("data.val_sources", val_stats)):
            if s.skipped:
                print(
                    f"[data] {name}: skipped {s.skipped} malformed records of {s.documents + s.skipped}, e.g. "
                    + "; ".join(s.errors)
                )
        try:
            _check_validation(cfg, meta)
        except DataError:
            shutil.rmtree(shards)  # else the next run would find the data built and skip the check
            raise
    return ShardsMeta.load(shards)


def open_split(data_dir: Path, split: str) -> TokenShards:
    return TokenShards(shards_dir(data_dir), split)
