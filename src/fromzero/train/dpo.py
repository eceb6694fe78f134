"""Stage 3b: direct preference optimisation, the offline alternative to a reward model + PPO.

DPO (Rafailov et al. 2023) trains the policy on the preference pairs themselves: the implicit reward of
an answer is β·(log π(y|x) - log π_ref(y|x)), and the loss is the Bradley–Terry loss on the difference
of the two implicit rewards. The reference is the starting (SFT) model; since it never changes, its
log-probabilities are computed once, before training. Log-probabilities are sums over the answer's
tokens only (the chat template's mask; the closing <|end|> included). IPO (Azar et al. 2023) replaces
the log-sigmoid with a squared loss that keeps the log-ratio gap at 1/(2β) instead of pushing it to
infinity, on per-token averages of the log-probabilities as in TRL. A small model tuned with DPO tends
to lower the likelihood of the chosen answers too and drift to answers no one wrote; `rpo_alpha` adds the
next-token loss on the chosen answers (RPO, Pang et al. 2024; Llama 3 did the same) to hold it in place.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from fromzero import checkpoint, lora
from fromzero.data.preference import (
    EncodedPair,
    PairBatch,
    PreferencePair,
    eval_batches,
)
from fromzero.dist import DistInfo, all_reduce_sum
from fromzero.model import Transformer
from fromzero.train import common, loop
from fromzero.train.configs import DPOConfig, DPOLoss
from fromzero.train.rollout import token_logps


def dpo_loss(
    pol_chosen_logp: torch.Tensor,
    pol_rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    beta: float,
    loss: DPOLoss = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The batch-mean DPO (or IPO) loss and the metrics TRL logs, from per-pair sequence log-probs [B]."""
    logits = (pol_chosen_logp - pol_rejected_logp) - (ref_chosen_logp - ref_rejected_logp)
    if loss == "sigmoid":
        # label smoothing: the label is wrong with probability ε, so the loss is the expected one
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * logits) - label_smoothing * F.logsigmoid(-beta * logits)
    elif loss == "ipo":
        if label_smoothing:
            raise ValueError("label_smoothing applies to the sigmoid loss only")
        losses = (logits - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss {loss!r}; expected 'sigmoid' or 'ipo'")
    chosen_rewards = beta * (pol_chosen_logp - ref_chosen_logp).detach()
    rejected_rewards = beta * (pol_rejected_logp - ref_rejected_logp).detach()
    metrics = {
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
        "logps/chosen": pol_chosen_logp.detach().mean().item(),
        "logps/rejected": pol_rejected_logp.detach().mean().item(),
    }
    return losses.mean(), metrics


def sequence_logps(
    model: nn.Module, ids: torch.Tensor, answer_mask: torch.Tensor, average: bool = False
) -> torch.Tensor:
    """log π(answer | prompt) of each row [B]: the sum (or mean) over the masked answer tokens."""
    mask = answer_mask[:, 1:]
    total = (token_logps(model, ids)[0] * mask).sum(-1)
    return total / mask.sum(-1) if average else total


def _batch_logps(model: nn.Module, batch: PairBatch, average: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) sequence log-probs [B] of a batch of B pairs (data.preference.collate_pairs)."""
    device = next(model.parameters()).device
    logps = sequence_logps(model, batch.input_ids.to(device), batch.answer_mask.to(device), average)
    return logps[: len(batch.index)], logps[len(batch.index) :]


@torch.no_grad()
def reference_logps(
    cfg: DPOConfig,
    model: Transformer,
    encoded: list[EncodedPair],
    pad_id: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> torch.Tensor:
    """[N, 2] log-probs of each pair's (chosen, rejected) answer under the reference model; each rank computes its
    share of the pairs and the sum over ranks fills in the rest."""
    was_training = model.training
    model.eval()
    out = torch.zeros(len(encoded), 2, device=device)
    with loop.autocast(cfg, device):
        for batch in eval_batches(encoded, cfg.micro_batch_size, pad_id, rank, world_size):
            chosen, rejected = _batch_logps(model, batch, cfg.loss == "ipo")
            out[batch.index.to(device)] = torch.stack([chosen, rejected], dim=1).float()
    model.train(was_training)
    return all_reduce_sum(out) if world_size > 1 else out


def dpo_loss_fn(cfg: DPOConfig, reference: torch.Tensor):
    average = cfg.loss == "ipo"

    def loss_fn(model: nn.Module, batch: PairBatch) -> tuple[torch.Tensor, dict[str, float]]:
        chosen, rejected = _batch_logps(model, batch, average)
        ref = reference[batch.index.to(reference.device)]
        loss, metrics = dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], cfg.beta, cfg.loss, cfg.label_smoothing)
        if cfg.rpo_alpha:
            n_tokens = batch.answer_mask[: len(chosen), 1:].sum(-1).to(chosen.device)
            nll = -(chosen if average else chosen / n_tokens).mean()
            loss = loss + cfg.rpo_alpha * nll
            metrics["nll_loss"] = nll.item()
        return loss, metrics

    return loss_fn


def dpo_evaluator(cfg: DPOConfig, encoded: list[EncodedPair], reference: torch.Tensor, pad_id: int, info: DistInfo):
    """The loss and implicit-reward metrics on held-out pairs."""
    names = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")

    def evaluate(model: Transformer) -> dict[str, float]:
        sums = torch.zeros(len(names) + 1, dtype=torch.float64, device=reference.device)
        for batch in eval_batches(encoded, cfg.micro_batch_size, pad_id, info.rank, info.world_size):
            chosen, rejected = _batch_logps(model, batch, cfg.loss == "ipo")
            ref = reference[batch.index.to(reference.device)]
            loss, metrics = dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], cfg.beta, cfg.loss, cfg.label_smoothing)
            n = len(chosen)
            sums += torch.tensor(
                [loss.item() * n, *(metrics[k] * n for k in names[1:]), n], dtype=torch.float64, device=sums.device
            )
        all_reduce_sum(sums)
        return {f"val_{k}": (sums[i] / sums[-1]).item() for i, k in enumerate(names)}

    return evaluate


def train(
    cfg: DPOConfig,
    pairs: list[PreferencePair],
    val_pairs: list[PreferencePair],
    init: Path,
    out_dir: Path,
    *,
    resume: bool = False,
    log=print,
) -> Path:
    """Tune the (SFT) checkpoint at `init` on preference pairs with DPO; returns the final checkpoint."""
    info, done = common.begin(cfg, out_dir, resume)
    if done:
        return done
    tok_file, tok, model = common.load_init("dpo", cfg, init, info)
    if cfg.lora.enabled:  # B starts at zero: the reference log-probs below are the starting model's either way
        lora.inject(model, cfg.lora, base=checkpoint.resolve(init), seed=cfg.seed)
    batches, encoded, val_encoded = common.pair_batches("dpo", cfg, tok, pairs, val_pairs, info, log)
    # the reference is the starting model: on resume `model` is reloaded from the checkpoint by the loop,
    # after these are computed from `init`
    reference = reference_logps(cfg, model, encoded, tok.pad_id, info.device, info.rank, info.world_size)
    evaluate = None
    if val_encoded:
        val_reference = reference_logps(cfg, model, val_encoded, tok.pad_id, info.device, info.rank, info.world_size)
        evaluate = dpo_evaluator(cfg, val_encoded, val_reference, tok.pad_id, info)
    stage = loop.Stage("dpo", Path(out_dir), tok_file, info)
    return loop.run(cfg, stage, model, batches, dpo_loss_fn(cfg, reference), evaluate=evaluate, resume=resume)
