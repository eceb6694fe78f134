"""How every trainer's `train()` starts: this rank set up, a finished run returned before anything is prepared, and
the model it starts from loaded with its tokenizer and checked against seq_len."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fromzero import checkpoint
from fromzero.data.preference import EncodedPair, PairBatches, describe_encoding, encode_pairs
from fromzero.dist import DistInfo, setup
from fromzero.model import Transformer
from fromzero.tokenizer import Tokenizer
from fromzero.train import loop

if TYPE_CHECKING:
    from fromzero.train.configs import PairConfig


def begin(cfg: loop.TrainConfig, out_dir: Path, resume: bool) -> tuple[DistInfo, Path | None]:
    """This rank's device (and process group under torchrun), and when `resume` finds the stage done its final
    checkpoint, which the trainer returns at once: loading and preparing data would be wasted."""
    info = setup(cfg.device)
    return info, checkpoint.resolve(out_dir) if resume and loop.is_done(out_dir) else None


def length_groups(cfg: loop.TrainConfig, info: DistInfo) -> dict[str, int]:
    """The keyword arguments of a `LengthGroupedBatches` (SFT's, the pair stages'): this rank's micro-batches of one
    process's length groups."""
    return {
        "micro_batch_size": cfg.micro_batch(info.world_size),
        "seed": cfg.seed,
        "rank": info.rank,
        "world_size": info.world_size,
        "group_size": cfg.micro_batch(1),
        "accumulation": cfg.accumulation(info.world_size),
    }


def pair_batches(
    stage: str, cfg: PairConfig, tok: Tokenizer, pairs: list, val_pairs: list, info: DistInfo, log: Callable
) -> tuple[PairBatches, list[EncodedPair], list[EncodedPair]]:
    """The pair stages' (reward, DPO) training batches and encoded pairs, cut to cfg.seq_len as TRL cuts them, with
    every cut and drop of either split logged."""
    encoded, stats = encode_pairs(tok, pairs, cfg.seq_len, cfg.max_prompt_len)
    val_encoded, val_stats = encode_pairs(tok, val_pairs, cfg.seq_len, cfg.max_prompt_len)
    if info.is_main:
        log(describe_encoding(stage, stats, val_stats, cfg.seq_len))
    return PairBatches(encoded, pad_id=tok.pad_id, **length_groups(cfg, info)), encoded, val_encoded


def check_seq_len(stage: str, cfg: loop.TrainConfig, model: Transformer, whose: str = "model") -> None:
    """A one-line error when the stage's sequences are longer than the model's positions."""
    if model.cfg.max_seq_len < cfg.seq_len:
        limit = "model.max_seq_len" if whose == "model" else f"the {whose}'s max_seq_len"
        raise ValueError(f"{stage}.seq_len={cfg.seq_len} exceeds {limit}={model.cfg.max_seq_len}")


def check_same_tokenizer(reward_model: Path, init: Path) -> None:
    """A one-line error when the reward model at `reward_model` reads another tokenizer than the policy at `init`."""
    if checkpoint.tokenizer_file(reward_model).read_bytes() != checkpoint.tokenizer_file(init).read_bytes():
        raise ValueError(f"the reward model at {reward_model} uses another tokenizer than the policy at {init}")


def load_init(
    stage: str,
    cfg: loop.TrainConfig,
    init: Path,
    info: DistInfo,
    tokenizer_file: Path | None = None,
    whose: str = "model",
) -> tuple[Path, Tokenizer, Transformer]:
    """(tokenizer file, tokenizer, model) a stage starts from: the checkpoint at `init` on this rank's device, and
    its tokenizer unless `tokenizer_file` names another (pretraining's, from the data); `whose` names the model in
    the seq_len error."""
    tok_file = tokenizer_file or checkpoint.tokenizer_file(init)
    tok = Tokenizer.load(tok_file)
    model = checkpoint.load_model(init, info.device)
    check_seq_len(stage, cfg, model, whose)
    return tok_file, tok, model
