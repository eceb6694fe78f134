"""Stage 1: next-token prediction on packed token shards."""

from __future__ import annotations

from pathlib import Path

import torch

from fromzero.data.build import open_split
from fromzero.data.loader import PackedBatches, eval_batches
from fromzero.eval.lm import lm_metrics
from fromzero.model import ModelConfig, Transformer
from fromzero.tokenizer import Tokenizer
from fromzero.train import common, loop
from fromzero.train.loop import TrainConfig, next_token_loss


def init_model(model_cfg: ModelConfig, tokenizer: Tokenizer, seed: int) -> Transformer:
    """The stage-0 model: random weights, vocabulary sized by the tokenizer."""
    torch.manual_seed(seed)
    return Transformer(model_cfg.model_copy(update={"vocab_size": tokenizer.vocab_size}))


def lm_evaluator(
    data_dir: Path, tokenizer: Tokenizer, cfg: TrainConfig, val_batches: int, rank: int = 0, world_size: int = 1
):
    val = open_split(data_dir, "val")
    if len(val) < cfg.seq_len + 1:  # data built with another seq_len, or by hand: one sequence is the least to score
        raise ValueError(
            f"{data_dir}: the validation split has {len(val)} tokens, fewer than one sequence of seq_len + 1 "
            f"= {cfg.seq_len + 1}; rebuild the data with a larger data.val_fraction or data.val_sources"
        )
    token_bytes = torch.as_tensor(tokenizer.token_bytes())

    def evaluate(model: Transformer) -> dict[str, float]:
        batches = eval_batches(val, cfg.seq_len, cfg.micro_batch_size, val_batches, rank=rank, world_size=world_size)
        return lm_metrics(model, batches, token_bytes)

    return evaluate


def train(
    cfg: TrainConfig, data_dir: Path, out_dir: Path, *, init: Path, val_batches: int = 16, resume: bool = False
) -> Path:
    """Pretrain the checkpoint at `init` on data_dir's shards; returns the final checkpoint."""
    info, done = common.begin(cfg, out_dir, resume)
    if done:
        return done
    tok_file, tokenizer, model = common.load_init("pretrain", cfg, init, info, Path(data_dir) / "tokenizer.json")
    batches = PackedBatches(
        open_split(data_dir, "train"),
        cfg.seq_len,
        cfg.micro_batch(info.world_size),
        seed=cfg.seed,
        rank=info.rank,
        world_size=info.world_size,
    )
    stage = loop.Stage("pretrain", Path(out_dir), tok_file, info)
    evaluate = lm_evaluator(data_dir, tokenizer, cfg, val_batches, info.rank, info.world_size)
    return loop.run(cfg, stage, model, batches, next_token_loss, evaluate=evaluate, resume=resume)
