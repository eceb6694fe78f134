"""Stage 3c: RLHF, PPO against the reward model (Ziegler et al. 2019, Ouyang et al. 2022; the implementation
details of Huang et al. 2024, "The N+ implementation details of RLHF with PPO", as TRL follows them).

Each rollout, the policy answers a batch of prompts with the KV-cache sampler, each answer stopped at <|end|>. The
reward model scores a whole answer at its last token, and every answer token pays β times the KL to the frozen
reference (the starting SFT model), estimated per token as log π(y_t) - log π_ref(y_t) (k1; k3 on request): the
reward of token t is -β·kl_t, plus the score on the answer's last token. A value model, started from the reward
model and read at every position, estimates the return to come; GAE(γ, λ) turns rewards and values into
advantages (whitened over the rollout) and the value model's targets. The rollout then serves ppo_epochs passes,
each cut into num_minibatches shuffled minibatches, an optimizer step each, on PPO's clipped surrogate plus vf_coef
times the clipped value loss. β is fixed, or steered towards a target KL by Ziegler's proportional controller.
Answers that never close with <|end|> can be docked missing_eos_penalty: the reward model only ever read finished
answers. With ptx_coef > 0 every micro-batch also carries instruction conversations whose SFT loss, times ptx_coef,
joins the objective (PPO-ptx, Ouyang et al. 2022): on questions the reward model judges poorly, the policy keeps
what SFT taught instead of drifting towards whatever the reward model happens to like.

Policy and value model in the one loop. The loop trains one module with one AdamW, so `PolicyValue` holds both
(TRL's PolicyAndValueWrapper does the same) and its forward runs both, so DDP sees every trained parameter used.
Its state_dict is the policy's alone: every checkpoint the loop writes is a plain language-model checkpoint, which
`checkpoint.load_model`, `fromzero chat`, GRPO and export read as they are. The value model's weights, which only a
resumed PPO run needs, travel with the rollout state (`PPOBatches.state_dict`), which the loop saves in
trainer_state.pt beside the optimizer's moments for both models; resume is exact.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn as nn

from fromzero import checkpoint
from fromzero.data.chat import Message, render
from fromzero.data.world_pref import GoldFn
from fromzero.dist import DistInfo, all_gather_objects, all_reduce_sum
from fromzero.generate import Engine, row_seed
from fromzero.model import Transformer
from fromzero.tokenizer import Tokenizer
from fromzero.train import common, loop, sft
from fromzero.train.configs import KLEstimator, PPOConfig
from fromzero.train.reward import RewardModel, answer_rewards, last_token_rewards, load_reward_model
from fromzero.train.rollout import (
    Position,
    RolloutSource,
    add_ptx,
    collate,
    logits_logps,
    ptx_examples,
    token_logps,
)

# ---------------------------------------------------------------------------
# The loss: pure tensor functions. Per-token tensors are [B, T]; mask is true on answer tokens.


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """x shifted and scaled to mean 0 and (Bessel-corrected) std 1 over the masked entries; 0 elsewhere."""
    mask = mask.to(x.dtype)
    centred = (x - masked_mean(x, mask)) * mask
    var = (centred**2).sum() / (mask.sum() - 1).clamp(min=1)
    return centred * torch.rsqrt(var + eps)


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016) over each row's answer, one contiguous masked span.

    δ_t = r_t + γ·V_{t+1} - V_t and A_t = δ_t + γλ·A_{t+1}, with V and A zero after the answer's last token (the
    episode has ended). Returns (advantages, returns = advantages + values, the value model's targets), both zero
    off the mask.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    advantages = torch.zeros_like(values)
    next_value = next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.size(1))):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, advantages + values


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: KLEstimator = "k1") -> torch.Tensor:
    """Per-token estimates of KL(π ‖ π_ref) from tokens sampled from π (Schulman, "Approximating KL divergence").

    k1 = log π/π_ref is unbiased but negative on tokens the reference likes better; k3 = (r - 1) - log r with
    r = π_ref/π is unbiased too, never negative, and has lower variance while π stays close to π_ref.
    """
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; expected 'k1' or 'k3'")


def ppo_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_eps: float = 0.2
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate (Schulman et al. 2017), the token mean over the mask, and its metrics.

    Per token, with ratio r = π/π_old: max(-A·r, -A·clip(r, 1-ε, 1+ε)). Once r has moved past the clip range in
    the direction the advantage pushes it, the clipped term is the larger and the token gives no gradient: each
    update stays near the policy that sampled the rollout. clipfrac is the share of such tokens; approx_kl the k3
    estimate of KL(π_old ‖ π).
    """
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_eps, 1 + clip_eps)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    metrics = {
        "clipfrac": masked_mean((clipped > unclipped).float(), mask).item(),
        "approx_kl": masked_mean((ratio - 1 - log_ratio).detach(), mask).item(),
    }
    return loss, metrics


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> tuple[torch.Tensor, dict[str, float]]:
    """Half the squared error to the returns, the larger of the prediction's and of the prediction clipped to
    old ± clip (PPO's value clipping, as in OpenAI's baselines and TRL): a value that has already moved more than
    `clip` from the rollout's estimate in the direction that lowers its error gets no further gradient."""
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(error, clipped_error), mask)
    return loss, {"value_clipfrac": masked_mean((clipped_error > error).float(), mask).item()}


class AdaptiveKLController:
    """β steered towards a target KL (Ziegler et al. 2019): with e = clip(KL / target - 1, -0.2, 0.2), each
    update multiplies β by 1 + e·n/horizon, n the answers the KL was measured on. Too far from the reference: β
    grows; closer than the target: β shrinks and lets the policy move."""

    def __init__(self, kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon


# ---------------------------------------------------------------------------
# The trained module: policy and value model


class PolicyValue(nn.Module):
    """The policy and the value model as the one module the loop trains (see the module docstring): forward runs
    both; state_dict and load_state_dict are the policy's alone, so checkpoints are plain policy checkpoints."""

    def __init__(self, policy: Transformer, value: RewardModel):
        super().__init__()
        self.policy, self.value = policy, value
        self.cfg = policy.cfg  # the checkpoint's config.json

    def flops_per_token(self, seq_len: int) -> float:
        """Both models' passes over the rollout's ids (the ptx rows and the sampling: PPOSource.spend)."""
        return self.policy.cfg.flops_per_token(seq_len) + self.value.cfg.flops_per_token(seq_len)

    def forward(
        self, idx: torch.Tensor, ptx: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Policy logits [B, T, vocab], value estimates [B, T] and, given ptx (inputs, targets), the policy's SFT loss
        on them (inside forward, so DDP sees it)."""
        return self.policy(idx), self.value(idx), self.policy(*ptx) if ptx is not None else None

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.policy.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return self.policy.load_state_dict(state_dict, strict, assign)


# ---------------------------------------------------------------------------
# Rollouts


@dataclass
class Rollout:
    """One rollout, rows of prompt + answer right-padded to one width W. Per-token tensors are [N, W-1], aligned
    with the predictions of ids[:, 1:]; lengths and answer lengths are kept as lists, read without a device sync."""

    ids: torch.Tensor
    mask: torch.Tensor  # answer tokens
    logps: torch.Tensor  # log π_old of each token
    values: torch.Tensor  # the value model's estimate before each token
    advantages: torch.Tensor
    returns: torch.Tensor
    lengths: list[int]
    answer_lengths: list[int]
    metrics: dict[str, float]


class PPOMicroBatch(NamedTuple):
    """Rows of a rollout cut to their longest: per-token tensors are [B, W-1], aligned with input_ids[:, 1:]."""

    input_ids: torch.Tensor  # [B, W]
    answer_mask: torch.Tensor
    old_logps: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    weight: float  # the share of the step's objective: of the minibatch's answer tokens (loop.BatchSource)
    metrics: dict[str, float]  # the rollout's
    ptx: tuple[torch.Tensor, torch.Tensor] | None  # instruction inputs and targets (sft.collate)
    ptx_share: float  # the factor on the ptx loss that gives every micro-batch the same share (PtxRows.share)


class _Answered(NamedTuple):
    """A rollout row as the ranks exchange it: the prompt (index, ids), the answer, the reward model's score, and
    the per-token log-probs, values and (with a reference) reference log-probs, cut to the row's length."""

    prompt: tuple[int, list[int]]
    answer: list[int]
    score: float
    per_token: list[torch.Tensor]


class PPOBatches(RolloutSource):
    """The loop's batch source: answers prompts with the policy, scores and rewards the answers, and serves the
    rollout as micro-batches, ppo_epochs × num_minibatches optimizer steps per rollout.

    Under torchrun each rank samples and scores its share of the rollout's prompts, each answer seeded by what it
    is (run seed, rollout, row, prompt), and the rows are gathered: every rank then holds the whole rollout, whose
    rewards, GAE, whitening and metrics are those of one process, and trains on its share of each minibatch's
    micro-batches (global micro-batch j·ranks + rank). Within a pass the rollout's rows are shuffled (seeded by the
    rollout and pass), cut into minibatches, and each minibatch, sorted by length for less padding, into
    micro-batches. Every micro-batch carries its share of the
    minibatch's answer tokens, so each token weighs the same however micro_batch_size cuts the minibatch. Its
    state (for exact resume) is the prompt order, the calls served, the current rollout, β and the value model's
    weights.
    """

    def __init__(
        self,
        cfg: PPOConfig,
        model: PolicyValue,
        reference: Transformer | None,
        reward_model: RewardModel,
        tok: Tokenizer,
        prompts: list[tuple[int, list[int]]],
        gold: GoldFn | None,
        info: DistInfo,
        ptx: list[sft.Example] = (),
    ):
        steps = cfg.ppo_epochs * cfg.num_minibatches
        super().__init__(cfg, len(prompts), cfg.prompts_per_rollout, steps, tok, info, ptx)
        self.cfg: PPOConfig = cfg
        self.model, self.reference, self.reward_model = model, reference, reward_model
        self.prompts, self.gold = prompts, gold
        self.minibatch_size = cfg.prompts_per_rollout // cfg.num_minibatches
        self.kl = AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)  # only updated with adaptive_kl
        self.rollout: Rollout | None = None

    def _serve(self, at: Position) -> PPOMicroBatch:
        r = self.rollout
        assert r is not None
        # the rollout's steps: ppo_epochs passes over its shuffled rows, each cut into num_minibatches minibatches
        epoch, minibatch = divmod(at.step, self.cfg.num_minibatches)
        shuffled = np.random.default_rng([self.cfg.seed, at.rollout, epoch]).permutation(self.cfg.prompts_per_rollout)
        rows = shuffled.tolist()[minibatch * self.minibatch_size : (minibatch + 1) * self.minibatch_size]
        rows.sort(key=r.lengths.__getitem__)
        world = self.info.world_size
        part = at.micro * world + self.info.rank  # this rank's share of the minibatch's micro-batches
        chosen = rows[part * self.micro_batch : (part + 1) * self.micro_batch]
        share = sum(r.answer_lengths[i] for i in chosen) / sum(r.answer_lengths[i] for i in rows)
        idx, cut = torch.tensor(chosen, device=r.ids.device), max(r.lengths[i] for i in chosen) - 1
        return PPOMicroBatch(
            input_ids=r.ids[idx, : cut + 1],
            answer_mask=r.mask[idx, :cut],
            old_logps=r.logps[idx, :cut],
            old_values=r.values[idx, :cut],
            advantages=r.advantages[idx, :cut],
            returns=r.returns[idx, :cut],
            weight=share,
            metrics=r.metrics,
            ptx=self.ptx.next(self.model.policy) if self.ptx is not None else None,
            ptx_share=self.ptx.share(share) if self.ptx is not None else 0.0,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "kl_coef": self.kl.value,
            "value_model": self.model.value.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.kl.value = state["kl_coef"]
        self.model.value.load_state_dict(state["value_model"])

    @torch.no_grad()
    def _rollout(self) -> Rollout:
        start = time.perf_counter()
        cfg, tok, policy, value = self.cfg, self.tok, self.model.policy, self.model.value
        first = self.info.rank * self.prompts_per_rank
        index = self.position().rollout
        was_training = self.model.training
        self.model.eval()
        chosen = [self.prompts[i] for i in self.order.next_indices()]
        prompts = [ids for _, ids in chosen]
        seeds = [row_seed(cfg.seed, index, first + j, i) for j, (i, _) in enumerate(chosen)]
        with loop.autocast(cfg, self.device, cfg.rollout_precision):
            answers = [c.tokens for c in Engine(policy, tok).generate(prompts, self.sampling, row_seeds=seeds)]
        self.spend(policy, sum(len(p) + len(a) for p, a in zip(prompts, answers)))
        ids = collate([(p, a, True) for p, a in zip(prompts, answers)], tok.pad_id)[0].to(self.device)
        lengths = [len(p) + len(a) for p, a in zip(prompts, answers)]
        length_t = torch.tensor(lengths, device=self.device)
        logps, ref_logps, values, scores = [], [], [], []
        with loop.autocast(cfg, self.device):
            for i in range(0, len(ids), cfg.micro_batch_size):
                part = ids[i : i + cfg.micro_batch_size]
                logps.append(token_logps(policy, part, cfg.temperature)[0])
                values.append(value(part[:, :-1]).float())
                if self.reference is not None:
                    ref_logps.append(token_logps(self.reference, part, cfg.temperature)[0])
                scores.append(last_token_rewards(self.reward_model, part, length_t[i : i + cfg.micro_batch_size]))
                for model in (policy, value, self.reference, self.reward_model):
                    if model is not None:
                        self.spend(model, part.numel())
        self.model.train(was_training)
        # this rank's rows, each cut to its own length, gathered in rank order: the rollout one process would make
        per_token = [torch.cat(x).cpu() for x in (logps, values, ref_logps) if x]
        score_list = torch.cat(scores).float().cpu().tolist()
        mine = [
            _Answered(c, a, score_list[j], [t[j, : n - 1] for t in per_token])
            for j, (c, a, n) in enumerate(zip(chosen, answers, lengths))
        ]
        rows = [row for part in all_gather_objects(mine) for row in part]
        chosen, answers = [r.prompt for r in rows], [r.answer for r in rows]
        prompts = [ids for _, ids in chosen]
        ids, mask = collate([(p, a, True) for p, a in zip(prompts, answers)], tok.pad_id)
        ids, mask = ids.to(self.device), mask[:, 1:].to(self.device)
        score = torch.tensor([r.score for r in rows], device=self.device)
        lengths = [len(p) + len(a) for p, a in zip(prompts, answers)]
        length_t = torch.tensor(lengths, device=self.device)

        def stacked(k: int) -> torch.Tensor:
            out = torch.zeros(mask.shape, dtype=torch.float32)
            for j, r in enumerate(rows):
                out[j, : len(r.per_token[k])] = r.per_token[k].float()
            return out.to(self.device)

        old_logps, old_values = stacked(0), stacked(1)
        if self.reference is not None:
            kl = kl_penalty(old_logps, stacked(2), cfg.kl_estimator) * mask
        else:
            kl = torch.zeros_like(old_logps)
        ended = torch.tensor([a[-1:] == [tok.end_id] for a in answers], device=self.device)
        penalized = score
        if cfg.missing_eos_penalty is not None:
            penalized = score - cfg.missing_eos_penalty * (~ended).float()
        beta = self.kl.value
        rewards = -beta * kl
        rows_t = torch.arange(len(answers), device=self.device)
        rewards[rows_t, length_t - 2] += penalized  # the prediction of the answer's last token
        advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:  # over the whole rollout: every rank's rows
            advantages = whiten(advantages, mask)
        kl_sums = kl.sum(1)
        n = len(answers)
        # reward/mean is the reward model's own score; reward/rlhf what PPO maximises, the score (less any missing-
        # <|end|> penalty) minus β·KL; kl the KL per answer, the sum over its tokens
        metrics = {
            "reward/mean": score.mean().item(),
            "reward/std": score.std().item() if n > 1 else 0.0,
            "reward/rlhf": (penalized - beta * kl_sums).mean().item(),
            "kl": kl_sums.mean().item(),
            "kl_coef": beta,
            "response_length": sum(len(a) for a in answers) / n,
            "clipped_ratio": 1 - ended.float().mean().item(),  # answers cut off at max_new_tokens
            "value/mean": masked_mean(old_values, mask).item(),
        }
        if self.gold is not None:
            texts = [tok.decode([t for t in a if t != tok.end_id], skip_special=True).strip() for a in answers]
            metrics["gold/mean"] = sum(self.gold(i, text) for (i, _), text in zip(chosen, texts)) / n
        if cfg.adaptive_kl:
            self.kl.update(kl_sums.mean().item(), n)
        metrics["rollout_time"] = time.perf_counter() - start
        answer_lengths = [len(a) for a in answers]
        return Rollout(ids, mask, old_logps, old_values, advantages, returns, lengths, answer_lengths, metrics)


def ppo_loss_fn(cfg: PPOConfig):
    def loss_fn(model: nn.Module, batch: PPOMicroBatch) -> tuple[torch.Tensor, dict[str, float]]:
        ids, mask = batch.input_ids, batch.answer_mask
        logits, values, ptx_loss = model(ids[:, :-1], batch.ptx)
        logps, log_probs = logits_logps(logits, ids[:, 1:], cfg.temperature)
        policy_loss, metrics = ppo_policy_loss(logps, batch.old_logps, batch.advantages, mask, cfg.clip_eps)
        vf_loss, vf_metrics = value_loss(values, batch.old_values, batch.returns, mask, cfg.clip_eps_value)
        with torch.no_grad():
            entropy = masked_mean(-(log_probs.exp() * log_probs).sum(-1), mask)
        metrics.update(vf_metrics, policy_loss=policy_loss.item(), value_loss=vf_loss.item(), entropy=entropy.item())
        loss = policy_loss + cfg.vf_coef * vf_loss
        if ptx_loss is not None:
            loss = add_ptx(loss, ptx_loss, cfg.ptx_coef, batch.ptx_share, metrics)
        return loss, {**batch.metrics, **metrics}

    return loss_fn


# ---------------------------------------------------------------------------
# Training


def reward_evaluator(
    reward_model: RewardModel,
    tok: Tokenizer,
    prompts: Sequence[Sequence[Message]],
    *,
    max_new_tokens: int,
    gold: GoldFn | None = None,
    rank: int = 0,
    world_size: int = 1,
):
    """Greedy answers to held-out prompts: the reward model's mean score (val_reward) and, with a gold scorer
    (prompt index, answer) -> score, the gold mean (val_gold). Each rank answers its share."""
    mine = list(range(rank, len(prompts), world_size))

    def evaluate(policy: Transformer) -> dict[str, float]:
        asked = [prompts[i] for i in mine]
        texts, scores = answer_rewards(policy, reward_model, tok, asked, max_new_tokens=max_new_tokens)
        gold_sum = sum(gold(i, text) for i, text in zip(mine, texts)) if gold is not None else 0.0
        sums = all_reduce_sum(torch.tensor([sum(scores), gold_sum, float(len(mine))], device=policy.rope_cos.device))
        result = {"val_reward": (sums[0] / sums[2].clamp(min=1)).item()}
        if gold is not None:
            result["val_gold"] = (sums[1] / sums[2].clamp(min=1)).item()
        return result

    return evaluate


def train(
    cfg: PPOConfig,
    prompts: Sequence[Sequence[Message]],
    init: Path,
    reward_model: Path,
    out_dir: Path,
    *,
    gold: GoldFn | None = None,
    evaluate: loop.EvalFn | None = None,
    resume: bool = False,
    ptx: Sequence[Sequence[Message]] = (),
    log=print,
) -> Path:
    """Tune the (SFT) checkpoint at `init` with PPO against the reward model at `reward_model`, on prompts
    (conversations ending with a user turn); returns the final checkpoint, a plain policy checkpoint.

    gold(i, answer) scores an answer to prompts[i] for the gold/mean metric only; evaluate(policy) runs every
    eval_every steps (e.g. `reward_evaluator` on held-out prompts); ptx are the instruction conversations of
    ptx_coef's SFT loss (usually SFT's own).
    """
    info, done = common.begin(cfg, out_dir, resume)
    if done:
        return done
    cfg.micro_batch(info.world_size)  # each minibatch must split over the ranks: a one-line error before any loading
    if cfg.parallel == "fsdp" and info.world_size > 1:
        raise ValueError(
            "ppo.parallel=fsdp is not supported: rollouts sample a different number of tokens on each "
            "rank, which sharded parameters (gathered per forward, every rank in step) cannot; "
            "use parallel=ddp"
        )
    common.check_same_tokenizer(reward_model, init)
    tok_file, tok, policy = common.load_init("ppo", cfg, init, info, whose="policy")
    value = load_reward_model(reward_model, info.device)
    common.check_seq_len("ppo", cfg, value, "reward model")
    scorer = load_reward_model(reward_model, info.device).eval().requires_grad_(False)
    # the reference is the starting model: on resume the loop reloads the policy from the checkpoint, not this
    reference = checkpoint.load_model(init, info.device).eval().requires_grad_(False) if cfg.kl_coef > 0 else None
    room = cfg.seq_len - cfg.max_new_tokens
    encoded = [(i, render(tok, p, generation_prompt=True)[0]) for i, p in enumerate(prompts)]
    fitting = [(i, ids) for i, ids in encoded if len(ids) <= room]
    if not fitting:
        raise ValueError(f"no prompt fits in seq_len - max_new_tokens = {room} tokens")
    if info.is_main:
        log(
            f"[ppo] {len(fitting)} prompts ({len(encoded) - len(fitting)} longer than {room} tokens dropped); "
            f"{cfg.ppo_epochs} × {cfg.num_minibatches} steps per rollout of {cfg.prompts_per_rollout} answers"
        )
    examples: list[sft.Example] = []
    if cfg.ptx_coef > 0:
        examples, counts = ptx_examples("ppo", cfg, tok, ptx, scorer)
        ranked = ""
        if cfg.ptx_keep < 1:
            ranked = f", the {counts['kept']} of {counts['examples']} the reward model scores highest"
        if info.is_main:
            log(
                f"[ppo] ptx: SFT loss × {cfg.ptx_coef} on {counts['examples']} conversations{ranked}, "
                f"{cfg.ptx_batch_size} per micro-batch ({counts['truncated']} cut to seq_len)"
            )
    model = PolicyValue(policy, value)
    batches = PPOBatches(cfg, model, reference, scorer, tok, fitting, gold, info, examples)
    stage = loop.Stage("ppo", Path(out_dir), tok_file, info)
    policy_eval = (lambda m: evaluate(m.policy)) if evaluate is not None else None
    # the loop types its model as a Transformer; PolicyValue has what it uses of one (cfg, state_dict)
    return loop.run(
        cfg,
        stage,
        model,
        batches,
        ppo_loss_fn(cfg),
        evaluate=policy_eval,  # type: ignore[arg-type]
        resume=resume,
    )
