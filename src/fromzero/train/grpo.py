"""Stage 4: reasoning by RL with verifiable rewards, GRPO (Shao et al. 2024) and its loss variants.

For each prompt the policy samples a group of G completions; reward functions score them (is the final
answer right?) and each completion's advantage is its reward relative to its group, (r - mean) / std,
so no value model is needed. The loss is PPO's clipped surrogate on the per-token probability ratio to
the policy that sampled the completions, plus β times the k3 estimate of the KL divergence to the frozen
reference (the starting model). The variants, with names from the papers and TRL:

- loss_type "grpo": each completion's mean over its tokens, averaged over completions (the paper);
- "dr_grpo": the sum over all tokens divided by a constant, completions × max_new_tokens; with
  scale_rewards=False this is Dr. GRPO (Liu et al. 2025), which removes both of GRPO's biases (short
  right answers and long wrong ones weighted differently, easy and hard prompts scaled up);
- "dapo": every token of the batch weighted the same (DAPO, Yu et al. 2025). DAPO's other parts are
  clip_eps_high ("clip higher"), filter_zero_std (dynamic sampling: groups whose completions all get
  the same reward carry no signal, so more prompts are sampled in their place) and overlong_buffer (a
  soft penalty for completions that run into the length limit).

With ptx_coef > 0 every micro-batch also carries instruction conversations whose SFT loss, times ptx_coef, joins
the objective, as PPO-ptx's does: the KL term holds the policy only on the problems it samples, and this on the
other questions stage 2 taught (language models, small talk, people), which GRPO would otherwise forget. With
ptx_targets "policy" the targets are the starting policy's own answers to those conversations' prompts (greedy by
default, ptx_temperature), made once before training: the ptx term then holds what PPO taught (its style) as well
as what SFT taught.

With num_iterations (μ) = 1 every step samples afresh, the ratio is 1 and clipping never acts; with
μ > 1 a rollout serves μ optimizer steps and the sampling policy's log-probs are kept from rollout time.
Rollouts come from the KV-cache sampler: prompts left-padded, each completion stopped at <|end|>.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from fromzero import checkpoint, lora
from fromzero.data.chat import Message, render
from fromzero.data.tasks import Task, encode_prompt
from fromzero.dist import DistInfo, all_gather_objects, all_reduce_sum
from fromzero.eval.reasoning import grade, sample_completions
from fromzero.generate import Engine, SamplingConfig, row_seed
from fromzero.model import Transformer
from fromzero.rewards import (
    RewardFn,
    RewardStats,
    accuracy,
    load_reward,
    overlong_penalty,
    safe_reward,
    weighted_rewards,
)
from fromzero.tokenizer import Tokenizer
from fromzero.train import common, loop, sft
from fromzero.train.configs import GRPOConfig, LossType
from fromzero.train.reward import load_reward_model
from fromzero.train.rollout import Position, RolloutSource, add_ptx, collate, ptx_examples, token_logps

# ---------------------------------------------------------------------------
# The loss: pure tensor functions


def group_advantages(rewards: torch.Tensor, num_generations: int, scale: bool = True) -> torch.Tensor:
    """Each completion's reward minus its group's mean, divided by the group's std when `scale`.

    rewards: [P·G], the G completions of each prompt next to each other. A group whose rewards are all equal
    gets advantage 0 (the 1e-4 keeps 0/0 away), as in TRL.
    """
    grouped = rewards.view(-1, num_generations)
    advantages = grouped - grouped.mean(1, keepdim=True)
    if scale:
        advantages = advantages / (grouped.std(1, keepdim=True) + 1e-4)
    return advantages.flatten()


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    beta: float = 0.0,
    loss_type: LossType = "grpo",
    max_completion_length: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate loss with a k3 KL penalty, aggregated as `loss_type` says, and its metrics.

    logp, old_logp, ref_logp: [B, T] log-probs of the sampled tokens under the policy being trained, the policy
    that sampled them, and the reference (may be None when beta is 0); advantages: [B]; mask: [B, T], true on
    completion tokens. dr_grpo divides by rows × max_completion_length (default: T). Rows without a completion
    token (groups left out by filter_zero_std) count for nothing.
    """
    mask = mask.to(logp.dtype)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    adv = advantages[:, None]
    per_token = -torch.min(ratio * adv, ratio.clamp(1 - clip_eps, 1 + high) * adv)
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs the reference model's log-probs")
    if ref_logp is not None:
        # k3 (Schulman): exp(q) - q - 1 with q = log π_ref/π, an unbiased KL estimate that is never negative
        delta = ref_logp - logp
        kl = delta.exp() - delta - 1
        per_token = per_token + beta * kl
    lengths = mask.sum(-1)
    rows = (lengths > 0).sum().clamp(min=1)
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / lengths.clamp(min=1)).sum() / rows
    elif loss_type == "dr_grpo":
        loss = (per_token * mask).sum() / (rows * (max_completion_length or mask.size(1)))
    elif loss_type == "dapo":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected 'grpo', 'dr_grpo' or 'dapo'")

    def token_mean(x: torch.Tensor) -> float:
        return ((x.detach() * mask).sum() / mask.sum().clamp(min=1)).item()

    # the clipped branch is the one min() picks: ratio below 1-ε on a worse-than-average completion, or above
    # 1+ε_high on a better one
    clipped = ((ratio < 1 - clip_eps) & (adv < 0)) | ((ratio > 1 + high) & (adv > 0))
    metrics = {"clipfrac": token_mean(clipped.to(mask.dtype)), "approx_kl": token_mean(ratio - 1 - log_ratio)}
    if ref_logp is not None:
        metrics["kl"] = token_mean(kl)
    return loss, metrics


# ---------------------------------------------------------------------------
# Rollouts


@dataclass
class Group:
    """One prompt's G completions and their rewards."""

    prompt: list[int]
    completions: list[list[int]]
    rewards: list[float]  # the weighted sum
    scores: dict[str, list[float]]  # each reward function's own
    correct: list[float]  # the accuracy reward, logged whether or not it is trained on

    @property
    def zero_std(self) -> bool:
        return max(self.rewards) == min(self.rewards)


class GRPOMicroBatch(NamedTuple):
    input_ids: torch.Tensor  # [B, T] prompt + completion, right-padded
    completion_mask: torch.Tensor  # [B, T] completion tokens (off for groups left out)
    advantages: torch.Tensor  # [B]
    old_logps: torch.Tensor | None  # [B, T-1] under the sampling policy; None with num_iterations = 1
    ref_logps: torch.Tensor | None  # [B, T-1] under the reference; None with beta = 0
    weight: float | None  # the share of the step's objective (loop.BatchSource); None: an equal share
    metrics: dict[str, float]  # the rollout's
    ptx: tuple[torch.Tensor, torch.Tensor] | None = None  # instruction inputs and targets, drawn when served
    ptx_share: float = 0.0  # the factor on the ptx loss that gives every micro-batch the same share (PtxRows.share)


class GRPOBatches(RolloutSource):
    """The loop's batch source: samples completions from the policy being trained, scores them and serves them
    as micro-batches, a fresh rollout every num_iterations optimizer steps.

    Under torchrun each rank samples whole groups for its share of the step's prompts, each completion seeded by
    what it is (run seed, rollout, round, prompt row, sample), and the groups are gathered: every rank holds the
    step's rollout as one process would (dynamic sampling decides on all groups, metrics are over all of them),
    cuts it into the same micro-batches, and trains on its share of them (micro-batch j·ranks + rank).

    Its state (for exact resume) is the prompt order's position, the calls served and the current rollout.
    """

    def __init__(
        self,
        cfg: GRPOConfig,
        policy: Transformer,
        reference: Transformer | None,
        tok: Tokenizer,
        tasks: list[Task],
        rewards: Mapping[str, RewardFn],
        weights: Mapping[str, float],
        info: DistInfo,
        ptx: list[sft.Example] = (),
    ):
        super().__init__(cfg, len(tasks), cfg.prompts_per_step, cfg.num_iterations, tok, info, ptx)
        self.cfg: GRPOConfig = cfg
        self.policy, self.reference, self.tasks = policy, reference, tasks
        self.engine = Engine(policy, tok)
        self.rewards, self.weights = rewards, weights
        self.prompts = [encode_prompt(tok, t, cfg.system_prompt) for t in tasks]
        self.stats = RewardStats()
        self.rollout: list[GRPOMicroBatch] = []

    def _serve(self, at: Position) -> GRPOMicroBatch:
        batch = self.rollout[at.micro]
        if self.ptx is None:
            return batch
        return batch._replace(ptx=self.ptx.next(self.policy), ptx_share=self.ptx.share(batch.weight))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.rollout = [GRPOMicroBatch(*batch) for batch in self.rollout]

    def _sample(self, indices: list[int], round_: int) -> list[Group]:
        """This rank's groups for `indices`, then every rank's, in rank order (the order of one process)."""
        G, first = self.cfg.num_generations, self.info.rank * len(indices)
        rollout = self.position().rollout
        tasks = [self.tasks[i] for i in indices for _ in range(G)]
        prompts = [self.prompts[i] for i in indices for _ in range(G)]
        seeds = [
            row_seed(self.cfg.seed, rollout, round_, first + j, g, i) for j, i in enumerate(indices) for g in range(G)
        ]
        with loop.autocast(self.cfg, self.device, self.cfg.rollout_precision):
            sampled = self.engine.generate(prompts, self.sampling, row_seeds=seeds)
        completions, texts = [c.tokens for c in sampled], [c.text for c in sampled]
        self.spend(self.policy, sum(len(p) + len(c) for p, c in zip(prompts, completions)))
        rewards, scores = weighted_rewards(texts, tasks, self.rewards, self.weights, self.stats)
        if self.cfg.overlong_buffer:
            limit, buffer = self.cfg.max_new_tokens, self.cfg.overlong_buffer
            scores["overlong"] = [overlong_penalty(len(c), limit, buffer) for c in completions]
            rewards = [r + p for r, p in zip(rewards, scores["overlong"])]
        correct = scores.get("accuracy") or [
            safe_reward("accuracy", accuracy, x, t, self.stats) for x, t in zip(texts, tasks)
        ]
        groups = [
            Group(
                prompts[j],
                completions[j : j + G],
                rewards[j : j + G],
                {k: v[j : j + G] for k, v in scores.items()},
                correct[j : j + G],
            )
            for j in range(0, len(prompts), G)
        ]
        return [g for part in all_gather_objects(groups) for g in part]

    @torch.no_grad()
    def _rollout(self) -> list[GRPOMicroBatch]:
        start, failures = time.perf_counter(), self.stats.failures
        was_training = self.policy.training
        self.policy.eval()
        sampled: list[Group] = []
        for round_ in range(self.cfg.max_sampling_rounds if self.cfg.filter_zero_std else 1):
            sampled += self._sample(self.order.next_indices(), round_)
            if sum(not g.zero_std for g in sampled) >= self.cfg.prompts_per_step:
                break
        # dynamic sampling trains on the groups that carry signal first; any left over fill up the step but
        # are masked out (the batch geometry is fixed)
        groups = sorted(sampled, key=lambda g: g.zero_std) if self.cfg.filter_zero_std else sampled
        groups = groups[: self.cfg.prompts_per_step]
        rewards = torch.tensor([r for g in groups for r in g.rewards])
        advantages = group_advantages(rewards, self.cfg.num_generations, self.cfg.scale_rewards)
        rows = [(g.prompt, c, not (self.cfg.filter_zero_std and g.zero_std)) for g in groups for c in g.completions]
        lengths = [len(prompt) + len(completion) for prompt, completion, _ in rows]
        order = sorted(range(len(rows)), key=lengths.__getitem__)  # less padding per micro-batch
        metrics = self._metrics(sampled)
        failed = sum(all_gather_objects(self.stats.failures - failures))
        metrics.update({"reward/failures": float(failed), "rollout_time": time.perf_counter() - start})
        mb, world = self.micro_batch, self.info.world_size
        # "dapo" weighs every completion token of the step the same: each micro-batch's token mean counts by its
        # share of the step's tokens (with none left, every micro-batch's loss is 0: equal shares then)
        tokens = [len(c) if keep else 0 for _, c, keep in rows]
        total = sum(tokens)
        batches: list[GRPOMicroBatch] = []
        for micro in range(self.accumulation):
            part = micro * world + self.info.rank  # this rank's share of the step's micro-batches
            chosen = order[part * mb : (part + 1) * mb]
            weight = sum(tokens[j] for j in chosen) / total if self.cfg.loss_type == "dapo" and total else None
            ids, mask = collate([rows[j] for j in chosen], self.tok.pad_id)
            old = ref = None
            ids_d, keep = ids.to(self.device), mask[:, 1:].to(self.device)
            with loop.autocast(self.cfg, self.device):
                if self.cfg.num_iterations > 1:  # with μ = 1 the sampling policy is the current one: no pass needed
                    old = token_logps(self.policy, ids_d, self.cfg.temperature, keep)[0]
                    self.spend(self.policy, ids.numel())
                if self.reference is not None:
                    ref = token_logps(self.reference, ids_d, self.cfg.temperature, keep)[0]
                    self.spend(self.reference, ids.numel())
            batches.append(GRPOMicroBatch(ids, mask, advantages[chosen], old, ref, weight, metrics))
        self.policy.train(was_training)
        return batches

    def _metrics(self, groups: list[Group]) -> dict[str, float]:
        """What the policy did in this rollout (every group sampled, also those left out)."""
        rewards = torch.tensor([g.rewards for g in groups])
        metrics = {
            "reward/mean": rewards.mean().item(),
            "reward/std": rewards.std(1).mean().item(),  # within groups: what the advantages are made of
            "accuracy": sum(sum(g.correct) for g in groups) / rewards.numel(),
            "response_length": sum(len(c) for g in groups for c in g.completions) / rewards.numel(),
            "clipped_ratio": sum(c[-1:] != [self.tok.end_id] for g in groups for c in g.completions) / rewards.numel(),
            "frac_zero_std": sum(g.zero_std for g in groups) / len(groups),
        }
        for name in groups[0].scores:
            metrics[f"reward/{name}"] = sum(sum(g.scores[name]) for g in groups) / rewards.numel()
        return metrics


def grpo_loss_fn(cfg: GRPOConfig):
    def loss_fn(model: nn.Module, batch: GRPOMicroBatch) -> tuple[torch.Tensor, dict[str, float]]:
        device = next(model.parameters()).device
        ids, mask = batch.input_ids.to(device), batch.completion_mask[:, 1:].to(device)
        logp, log_probs = token_logps(model, ids, cfg.temperature, mask)  # log_probs: [completion tokens, V]
        loss, metrics = grpo_loss(
            logp,
            logp.detach() if batch.old_logps is None else batch.old_logps,
            batch.ref_logps,
            batch.advantages.to(device),
            mask,
            cfg.clip_eps,
            cfg.clip_eps_high,
            cfg.beta,
            cfg.loss_type,
            cfg.max_new_tokens,
        )
        with torch.no_grad():
            metrics["entropy"] = -(log_probs.exp() * log_probs).sum(-1).mean().item() if len(log_probs) else 0.0
        if batch.ptx is not None:
            loss = add_ptx(loss, model(*batch.ptx), cfg.ptx_coef, batch.ptx_share, metrics)
        return loss, {**batch.metrics, **metrics}

    return loss_fn


# ---------------------------------------------------------------------------
# Training


def pass_at_1_evaluator(cfg: GRPOConfig, tok: Tokenizer, heldout: list[Task], info: DistInfo):
    """Greedy accuracy on the first eval_problems held-out tasks, each rank answering its share."""
    mine = heldout[: cfg.eval_problems][info.rank :: info.world_size]

    def evaluate(model: Transformer) -> dict[str, float]:
        answers = sample_completions(model, tok, mine, max_new_tokens=cfg.max_new_tokens, system=cfg.system_prompt)
        right = sum(ok[0] for ok in grade(answers, mine))
        sums = all_reduce_sum(torch.tensor([float(right), float(len(mine))], device=info.device))
        return {"pass@1": (sums[0] / sums[1].clamp(min=1)).item()}

    return evaluate


def policy_answers(
    cfg: GRPOConfig,
    policy: Transformer,
    tok: Tokenizer,
    conversations: Sequence[Sequence[Message]],
    info: DistInfo,
) -> list[list[Message]]:
    """ptx_targets "policy": the conversations, up to their last answer, each ending with the answer the policy
    gives instead, at ptx_temperature (seeded per conversation; each rank samples its share and all ranks get every
    one). Only as many as the run's ptx rows use, a seeded choice; those whose prompt leaves no room for
    max_new_tokens, or whose answer runs into it, are left out."""
    needed = cfg.steps * cfg.accumulation(info.world_size) * info.world_size * cfg.ptx_batch_size
    room = cfg.seq_len - cfg.max_new_tokens
    prompts: list[list[Message]] = []
    ids: list[list[int]] = []
    for messages in random.Random(f"{cfg.seed}:ptx").sample(list(conversations), len(conversations)):
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        encoded = render(tok, messages[:last], generation_prompt=True)[0] if last is not None else []
        if encoded and len(encoded) <= room:
            prompts.append(list(messages[:last]))
            ids.append(encoded)
        if len(prompts) == needed:
            break
    mine = list(range(info.rank, len(prompts), info.world_size))
    sampling = SamplingConfig(
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.ptx_temperature, stop_tokens=(tok.end_id,)
    )
    was_training = policy.training
    policy.eval()
    with torch.no_grad(), loop.autocast(cfg, info.device, cfg.rollout_precision):
        sampled = Engine(policy, tok).generate(
            [ids[i] for i in mine], sampling, row_seeds=[row_seed(cfg.seed, -1, i) for i in mine]
        )
    policy.train(was_training)
    # an answer cut off at max_new_tokens would teach the policy to stop there
    answers = {i: c.text for i, c in zip(mine, sampled) if c.finish_reason == "stop"}
    gathered = {i: a for part in all_gather_objects(answers) for i, a in part.items()}
    return [prompts[i] + [{"role": "assistant", "content": gathered[i]}] for i in sorted(gathered)]


def load_rewards(cfg: GRPOConfig) -> tuple[dict[str, RewardFn], dict[str, float]]:
    """The reward functions by metric name, and their weights."""
    funcs = dict(load_reward(spec) for spec in cfg.reward_funcs)
    if len(funcs) != len(cfg.reward_funcs):
        raise ValueError(f"reward_funcs {cfg.reward_funcs} name two functions the same; rename one")
    weights = cfg.reward_weights or [1.0] * len(funcs)
    return funcs, dict(zip(funcs, weights))


def fit_prompts(cfg: GRPOConfig, tok: Tokenizer, tasks: list[Task]) -> list[Task]:
    """The tasks whose prompt leaves room for max_new_tokens within seq_len."""
    room = cfg.seq_len - cfg.max_new_tokens
    return [t for t in tasks if len(encode_prompt(tok, t, cfg.system_prompt)) <= room]


def train(
    cfg: GRPOConfig,
    tasks: list[Task],
    heldout: list[Task],
    init: Path,
    out_dir: Path,
    *,
    resume: bool = False,
    ptx: Sequence[Sequence[Message]] = (),
    reward_model: Path | None = None,
    log=print,
) -> Path:
    """Tune the checkpoint at `init` with GRPO on tasks; returns the final checkpoint. ptx are the instruction
    conversations of ptx_coef's SFT loss (usually stage 2's own); with ptx_keep < 1 the reward model at
    `reward_model` keeps the share of them it scores highest."""
    info, done = common.begin(cfg, out_dir, resume)
    if done:
        return done
    if cfg.prompts_per_step % info.world_size:  # each rank samples whole groups
        raise ValueError(
            f"grpo.prompts_per_step ({cfg.prompts_per_step}) must split evenly over {info.world_size} "
            "ranks, each rank sampling whole groups of num_generations"
        )
    if cfg.parallel == "fsdp" and info.world_size > 1:
        raise ValueError(
            "grpo.parallel=fsdp is not supported: rollouts sample a different number of tokens on each "
            "rank, which sharded parameters (gathered per forward, every rank in step) cannot; "
            "use parallel=ddp"
        )
    tok_file, tok, model = common.load_init("grpo", cfg, init, info)
    if cfg.lora.enabled:
        lora.inject(model, cfg.lora, base=checkpoint.resolve(init), seed=cfg.seed)
    # the reference is the starting model (with LoRA the frozen base, adapters off: no second copy); on resume the
    # loop reloads `model` from the checkpoint, not this
    reference = None
    if cfg.beta > 0:
        reference = (
            lora.WithoutAdapters(model)
            if cfg.lora.enabled
            else checkpoint.load_model(init, info.device).eval().requires_grad_(False)
        )
    funcs, weights = load_rewards(cfg)
    fitting = fit_prompts(cfg, tok, tasks)
    if not fitting:
        raise ValueError(f"no prompt fits in seq_len - max_new_tokens = {cfg.seq_len - cfg.max_new_tokens} tokens")
    if info.is_main:
        log(
            f"[grpo] {len(fitting)} training prompts ({len(tasks) - len(fitting)} too long dropped), {len(heldout)} "
            f"held out; rewards {weights}"
        )
    examples: list[sft.Example] = []
    if cfg.ptx_coef > 0:
        whose = ""
        if ptx and cfg.ptx_targets == "policy":
            start = time.perf_counter()
            answered = policy_answers(cfg, model, tok, ptx, info)
            whose = f", the starting policy's answers (sampled in {time.perf_counter() - start:.0f} s)"
            if not answered:
                raise ValueError(
                    f"grpo.ptx_targets=policy: the starting policy finished none of its answers to the {len(ptx)} ptx "
                    f"conversations within max_new_tokens ({cfg.max_new_tokens}); raise grpo.max_new_tokens, or set "
                    "grpo.ptx_targets=data"
                )
            ptx = answered
        scorer = None
        if cfg.ptx_keep < 1 and reward_model is not None:
            common.check_same_tokenizer(reward_model, init)
            scorer = load_reward_model(reward_model, info.device).eval().requires_grad_(False)
        examples, counts = ptx_examples("grpo", cfg, tok, ptx, scorer)
        if cfg.ptx_keep < 1:  # without stage 3 (or --reward-model) nothing ranks them: all are kept, and said so
            whose += (
                f", the {counts['kept']} of {counts['examples']} the reward model scores highest"
                if scorer is not None
                else f", all of them: grpo.ptx_keep={cfg.ptx_keep} ranks by a reward model, and none was given"
            )
        del scorer
        if info.is_main:
            log(
                f"[grpo] ptx: SFT loss × {cfg.ptx_coef} on {counts['examples']} conversations{whose}, "
                f"{cfg.ptx_batch_size} per micro-batch ({counts['truncated']} cut to seq_len)"
            )
    batches = GRPOBatches(cfg, model, reference, tok, fitting, funcs, weights, info, examples)
    evaluate = pass_at_1_evaluator(cfg, tok, heldout, info) if heldout and cfg.eval_problems else None
    stage = loop.Stage("grpo", Path(out_dir), tok_file, info)
    return loop.run(cfg, stage, model, batches, grpo_loss_fn(cfg), evaluate=evaluate, resume=resume)
