"""Stage 2: supervised fine-tuning on conversations, loss on the assistant's tokens only."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, NamedTuple

import torch

from fromzero import checkpoint, lora
from fromzero.data.chat import Message, render
from fromzero.data.instruct import iter_conversations
from fromzero.data.loader import LengthGroupedBatches
from fromzero.data.sources import SourceStats
from fromzero.dist import all_reduce_sum
from fromzero.model import Transformer
from fromzero.tokenizer import Tokenizer
from fromzero.train import common, loop
from fromzero.train.configs import SFTConfig
from fromzero.train.loop import next_token_loss

IGNORE = -100


Example = tuple[list[int], list[bool]]


def tokenize(tok: Tokenizer, conversations: list[list[Message]], seq_len: int) -> tuple[list[Example], dict[str, int]]:
    """Rendered examples cut to seq_len + 1 tokens; those left with nothing to learn are dropped."""
    examples, truncated, dropped = [], 0, 0
    for messages in conversations:
        ids, mask = render(tok, messages)
        if len(ids) > seq_len + 1:
            ids, mask = ids[: seq_len + 1], mask[: seq_len + 1]
            truncated += 1
        if not any(mask[1:]):
            dropped += 1
            continue
        examples.append((ids, mask))
    return examples, {"examples": len(examples), "truncated": truncated, "dropped": dropped}


def collate(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded inputs and targets (IGNORE where nothing is learned).

    With right padding and causal attention no real token ever attends to padding, and each row is one
    conversation, so nothing leaks between examples.
    """
    width = max(len(ids) for ids, _ in examples) - 1
    x = torch.full((len(examples), width), pad_id, dtype=torch.long)
    y = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for i, (ids, mask) in enumerate(examples):
        n = len(ids) - 1
        x[i, :n] = torch.tensor(ids[:-1])
        targets = torch.tensor(ids[1:])
        y[i, :n] = torch.where(torch.tensor(mask[1:]), targets, IGNORE)
    return x, y


class SFTBatch(NamedTuple):
    inputs: torch.Tensor
    targets: torch.Tensor
    weight: float | None  # the micro-batch's share of the step (loop.BatchSource); None: an equal one


class ConversationBatches(LengthGroupedBatches):
    """Micro-batches of conversations of similar length, so little of each batch is padding: one process's
    length groups whatever the ranks (`data.loader.LengthGroups`), each part of a group weighted by its targets."""

    items = "conversations"

    def __init__(self, examples: list[Example], micro_batch_size: int, pad_id: int, **grouping: Any):
        self.examples, self.pad_id = examples, pad_id
        lengths, units = [len(ids) for ids, _ in examples], [sum(mask[1:]) for _, mask in examples]
        super().__init__(lengths, units, micro_batch_size, **grouping)

    def collate(self, rows: list[int], share: float | None) -> SFTBatch:
        return SFTBatch(*collate([self.examples[i] for i in rows], self.pad_id), share)


def load_conversations(cfg: SFTConfig) -> tuple[list[list[Message]], SourceStats]:
    stats = SourceStats()
    return list(iter_conversations(cfg.data, on_error=cfg.on_error, stats=stats)), stats


def val_loss_evaluator(examples: list[Example], micro_batch_size: int, pad_id: int, rank: int, world_size: int):
    def evaluate(model: Transformer) -> dict[str, float]:
        device = model.rope_cos.device
        sums = torch.zeros(2, dtype=torch.float64, device=device)
        mine = examples[rank::world_size]
        for i in range(0, len(mine), micro_batch_size):
            x, y = collate(mine[i : i + micro_batch_size], pad_id)
            x, y = x.to(device), y.to(device)
            n = (y != IGNORE).sum()
            sums += torch.stack([model(x, y).double() * n, n.double()])
        all_reduce_sum(sums)
        return {"val_loss": (sums[0] / sums[1]).item()}

    return evaluate


def train(
    cfg: SFTConfig, conversations: list[list[Message]], init: Path, out_dir: Path, *, resume: bool = False, log=print
) -> Path:
    """Fine-tune the checkpoint at `init` on conversations; returns the final checkpoint."""
    info, done = common.begin(cfg, out_dir, resume)
    if done:
        return done
    tok_file, tok, model = common.load_init("sft", cfg, init, info)
    if cfg.lora.enabled:
        lora.inject(model, cfg.lora, base=checkpoint.resolve(init), seed=cfg.seed)
    shuffled = list(conversations)
    random.Random(cfg.seed).shuffle(shuffled)
    n_val = max(1, int(cfg.val_fraction * len(shuffled))) if cfg.val_fraction > 0 else 0
    examples, stats = tokenize(tok, shuffled[n_val:], cfg.seq_len)
    val_examples, _ = tokenize(tok, shuffled[:n_val], cfg.seq_len)
    if info.is_main:
        log(
            f"[sft] {stats['examples']} training conversations, {len(val_examples)} for validation; "
            f"{stats['truncated']} truncated to {cfg.seq_len + 1} tokens, {stats['dropped']} dropped (nothing left to learn)"
        )
    batches = ConversationBatches(examples, pad_id=tok.pad_id, **common.length_groups(cfg, info))
    evaluate = (
        val_loss_evaluator(val_examples, cfg.micro_batch_size, tok.pad_id, info.rank, info.world_size)
        if val_examples
        else None
    )
    stage = loop.Stage("sft", Path(out_dir), tok_file, info)
    return loop.run(cfg, stage, model, batches, next_token_loss, evaluate=evaluate, resume=resume)
