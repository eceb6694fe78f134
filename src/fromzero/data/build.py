"""From sources to a data directory: `tokenizer.json` trained on the corpus, and packed token shards.

The corpus is the built-in world unless `data.sources` names other text. Building is skipped when the
directory is already complete, so re-running a pipeline reuses it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

from fromzero.config import Config
from fromzero.data.shards import ShardsMeta, TokenShards, build_shards
from fromzero.data.sources import SourceStats, iter_documents
from fromzero.data.world import build_world
from fromzero.tokenizer import Tokenizer


def documents(cfg: Config, stats: SourceStats | None = None) -> Iterator[str]:
    if not cfg.data.sources:
        return build_world(cfg.world).pretrain_documents()
    return iter_documents(cfg.data.sources, text_field=cfg.data.text_field, on_error=cfg.data.on_error, stats=stats)


def shards_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "shards"


def is_built(data_dir: Path) -> bool:
    return (Path(data_dir) / "tokenizer.json").exists() and (shards_dir(data_dir) / "meta.json").exists()


def build(cfg: Config, data_dir: Path, *, progress: bool = True) -> ShardsMeta:
    """Train the tokenizer and write the shards under data_dir (each step skipped when already done)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    tok_file = data_dir / "tokenizer.json"
    if not tok_file.exists():
        docs = documents(cfg)
        if cfg.data.tokenizer_docs:
            docs = itertools.islice(docs, cfg.data.tokenizer_docs)
        Tokenizer.train(docs, cfg.data.vocab_size).save(data_dir)
    if not (shards_dir(data_dir) / "meta.json").exists():
        stats = SourceStats()
        build_shards(documents(cfg, stats), tok_file, shards_dir(data_dir), val_fraction=cfg.data.val_fraction,
                     seed=cfg.seed, num_workers=cfg.data.num_workers, progress=progress)  # fmt: skip
        if stats.skipped:
            print(f"[data] skipped {stats.skipped} malformed records of {stats.documents + stats.skipped}, e.g. "
                  + "; ".join(stats.errors))  # fmt: skip
    return ShardsMeta.load(shards_dir(data_dir))


def open_split(data_dir: Path, split: str) -> TokenShards:
    return TokenShards(shards_dir(data_dir), split)
