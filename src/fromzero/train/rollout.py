"""What the RL stages (PPO, GRPO) share: their config's rollout shape, the schedule of a batch source that serves
each rollout for several optimizer steps, the instruction rows whose SFT loss either can mix in (ptx), padding
prompts and answers into one batch, and the log-probabilities of the tokens a model was given (DPO's sequence
log-probs are built on them too)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import torch
import torch.nn as nn
from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveInt, model_validator

from fromzero.data.chat import Message
from fromzero.data.loader import GlobalOrder
from fromzero.dist import DistInfo
from fromzero.generate import SamplingConfig
from fromzero.tokenizer import Tokenizer
from fromzero.train.loop import TrainConfig

if TYPE_CHECKING:  # sft's and reward's configs are defined beside this module's RolloutConfig subclasses: imported
    # where used
    from fromzero.train import sft
    from fromzero.train.reward import RewardModel


class RolloutConfig(TrainConfig, ABC):
    """Answers sampled after each prompt within seq_len, and an optimizer step whose batch_tokens follow from the
    rollout's shape (`step_shape`), never set by hand."""

    temperature: float = Field(1.0, gt=0, description="sampling temperature; log-probs are taken at the same one")
    rollout_precision: Literal["auto", "fp32", "bf16"] | None = Field(
        None,
        description="precision of sampling the answers; None: `precision`. On CPU a decode step of a few "
        "rows is all per-op overhead, to which bf16 autocast adds casts: fp32 rollouts are faster there (BENCHMARKS.md)",
    )
    max_new_tokens: int = Field(64, ge=1, description="longest answer")
    seq_len: int = Field(128, ge=2, description="longest prompt + answer; longer prompts are dropped")
    micro_batch_size: int = Field(16, ge=1, description="answers per forward pass on one rank")
    batch_tokens: int = Field(0, description="set from the rollout's shape; leave it unset")
    steps: PositiveInt = 100
    warmup_steps: NonNegativeInt = 5
    schedule: Literal["cosine", "wsd", "constant"] = "constant"
    weight_decay: NonNegativeFloat = 0.0
    dropout: float = Field(0.0, ge=0, le=0, description="none: the ratio to the rollout's log-probs must not be noise")
    eval_every: PositiveInt = 25
    checkpoint_every: PositiveInt = 25
    ptx_coef: float = Field(
        0.0,
        ge=0,
        description="weight of the SFT loss on instruction conversations added to every "
        "micro-batch's loss (PPO-ptx, Ouyang et al. 2022); 0: the RL loss alone",
    )
    ptx_batch_size: int = Field(8, ge=1, description="ptx: instruction conversations per micro-batch on one rank")
    ptx_keep: float = Field(
        1.0,
        gt=0,
        le=1,
        description="ptx: the share of the instruction conversations it learns from, those the reward model scores "
        "highest (reward-ranked, as RAFT filters samples); 1: all of them",
    )

    @abstractmethod
    def step_shape(self) -> tuple[int, str]:
        """(tokens per optimizer step over all ranks, how they are made up, for the error message)."""

    def _split_error(self, world_size: int) -> str:
        rows = self.batch_tokens // self.seq_len
        keys = self.step_shape()[1].split(" × seq_len")[0]
        return f"{keys} = {rows} answers per step do not split over {world_size} ranks"

    @model_validator(mode="after")
    def _rollout_shape(self) -> RolloutConfig:
        if self.max_new_tokens >= self.seq_len:
            raise ValueError(
                f"max_new_tokens ({self.max_new_tokens}) leaves no room for a prompt in seq_len ({self.seq_len})"
            )
        tokens, made_of = self.step_shape()
        if "batch_tokens" in self.model_fields_set and self.batch_tokens != tokens:
            raise ValueError(f"batch_tokens is {made_of} = {tokens}; leave it unset")
        self.batch_tokens = tokens
        return self


class Position(NamedTuple):
    """Where the loop's n-th micro-batch falls: which rollout, which optimizer step of it, which micro-batch of the
    step (this rank's accumulation index)."""

    rollout: int
    step: int
    micro: int


def position(calls: int, steps_per_rollout: int, accumulation: int) -> Position:
    """The position of micro-batch number `calls` (0-based) when each rollout serves steps_per_rollout optimizer
    steps of `accumulation` micro-batches each."""
    rollout, call = divmod(calls, steps_per_rollout * accumulation)
    return Position(rollout, *divmod(call, accumulation))


class RolloutSource(ABC):
    """What the RL batch sources share: a seeded order of the prompts, of which each rank samples its share of a
    rollout's; answers sampled up to <|end|>; a rollout made every steps_per_rollout optimizer steps, each step
    served as this rank's accumulation micro-batches (`_serve`); and, given ptx examples, their rows (`PtxRows`).
    Its state, for exact resume, is the prompt order, the micro-batches served, the current rollout and the ptx
    rows' order."""

    def __init__(
        self,
        cfg: RolloutConfig,
        n_prompts: int,
        prompts_per_rollout: int,
        steps_per_rollout: int,
        tok: Tokenizer,
        info: DistInfo,
        ptx: Sequence[sft.Example] = (),
    ):
        self.cfg, self.tok, self.info, self.device = cfg, tok, info, info.device
        self.steps_per_rollout = steps_per_rollout
        self.prompts_per_rank = prompts_per_rollout // info.world_size
        self.micro_batch, self.accumulation = cfg.micro_batch(info.world_size), cfg.accumulation(info.world_size)
        self.order = GlobalOrder(
            n_prompts, self.prompts_per_rank, seed=cfg.seed, rank=info.rank, world_size=info.world_size
        )
        self.sampling = SamplingConfig(
            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, stop_tokens=(tok.end_id,)
        )
        self.calls = 0
        self.rollout: Any = None
        self._spent = 0.0
        self.ptx = PtxRows(list(ptx), self) if ptx else None

    def spend(self, model: nn.Module, tokens: int, backward: bool = False) -> None:
        """Count a pass of `model` over `tokens` tokens outside the loop's own input ids: a forward (sampling
        answers, the frozen models' log-probs and scores) is a third of its training FLOPs per token, a forward and
        backward (PPO's ptx rows) all of them."""
        self._spent += model.cfg.flops_per_token(self.cfg.seq_len) / (1 if backward else 3) * tokens

    def extra_flops(self) -> float:
        """The FLOPs counted by `spend` since the last call (loop.BatchSource: the step's MFU counts them)."""
        spent, self._spent = self._spent, 0.0
        return spent

    def position(self) -> Position:
        """Where the next micro-batch falls in the schedule."""
        return position(self.calls, self.steps_per_rollout, self.accumulation)

    def next_batch(self) -> Any:
        at = self.position()
        if at.step == at.micro == 0:
            self.rollout = self._rollout()
        self.calls += 1
        return self._serve(at)

    @abstractmethod
    def _rollout(self) -> Any:
        """Sample and score a rollout (self.position() is its first micro-batch)."""

    @abstractmethod
    def _serve(self, at: Position) -> Any:
        """The micro-batch at `at` of the current rollout."""

    def state_dict(self) -> dict[str, Any]:
        ptx = self.ptx.state_dict() if self.ptx is not None else None
        return {"order": self.order.state_dict(), "calls": self.calls, "rollout": self.rollout, "ptx_order": ptx}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state["order"])
        self.calls, self.rollout = state["calls"], state["rollout"]
        if self.ptx is not None:
            self.ptx.load_state_dict(state.get("ptx_order"))


def ptx_examples(
    stage: str,
    cfg: RolloutConfig,
    tok: Tokenizer,
    conversations: Sequence[Sequence[Message]],
    scorer: RewardModel | None = None,
) -> tuple[list[sft.Example], dict[str, int]]:
    """The instruction conversations of ptx_coef's SFT loss, tokenized within seq_len, with ptx_keep < 1 and a
    reward model (`scorer`) only the share it ranks highest (`reward_ranked`); and the counts of `sft.tokenize`,
    plus "kept". A one-line error when there are none to learn from."""
    if not conversations:
        raise ValueError(
            f"{stage}.ptx_coef > 0 needs instruction conversations for its SFT loss (--ptx-data FILE); none were given"
        )
    from fromzero.train.sft import tokenize

    examples, counts = tokenize(tok, [list(c) for c in conversations], cfg.seq_len)
    if not examples:
        raise ValueError(
            f"{stage}.ptx_coef: none of the instruction conversations has an answer to learn within seq_len"
        )
    if cfg.ptx_keep < 1 and scorer is not None:
        examples = reward_ranked(scorer, examples, cfg.ptx_keep, tok.pad_id, cfg.micro_batch_size)
    return examples, {**counts, "kept": len(examples)}


@torch.no_grad()
def reward_ranked(
    scorer: RewardModel, examples: Sequence[sft.Example], keep: float, pad_id: int, batch_size: int
) -> list[sft.Example]:
    """The `keep` share of the examples the reward model scores highest, in their order: SFT's data holds answers
    of every style, and its loss on all of them would pull the policy back towards the styles PPO moves away from."""
    from fromzero.train.reward import score_responses

    scores: list[float] = []
    for i in range(0, len(examples), batch_size):
        # an example holds up to seq_len + 1 tokens (inputs and targets), one more than a model of seq_len reads
        ids = [list(e[0])[: scorer.cfg.max_seq_len] for e in examples[i : i + batch_size]]
        scores += score_responses(scorer, ids, [[] for _ in ids], pad_id).tolist()
    n = max(1, round(keep * len(examples)))
    best = sorted(range(len(examples)), key=lambda i: (-scores[i], i))[:n]
    return [examples[i] for i in sorted(best)]


class PtxRows:
    """The instruction rows of a micro-batch's ptx term: ptx_batch_size examples on each rank, in a seeded order
    shared by the ranks (so N ranks see what one process sees), their SFT loss times ptx_coef added to the RL loss.
    Every micro-batch's ptx loss counts the same: `share` undoes the loop's weighting of the micro-batch."""

    def __init__(self, examples: list[sft.Example], source: RolloutSource):
        cfg, info = source.cfg, source.info
        self.examples, self.source = examples, source
        self.order = GlobalOrder(
            len(examples), cfg.ptx_batch_size, seed=cfg.seed, rank=info.rank, world_size=info.world_size
        )

    def next(self, policy: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """The next micro-batch's (inputs, targets) on the source's device; its forward and backward are counted."""
        from fromzero.train.sft import collate as sft_collate

        x, y = sft_collate([self.examples[i] for i in self.order.next_indices()], self.source.tok.pad_id)
        self.source.spend(policy, x.numel(), backward=True)
        return x.to(self.source.device), y.to(self.source.device)

    def share(self, weight: float | None) -> float:
        """The factor on a micro-batch's ptx loss that makes it 1 / (accumulation × ranks) of the step's, whatever
        the loop weighs the micro-batch by (`weight`, its share of the RL objective; None: an equal share)."""
        if weight is None:
            return 1.0
        return 1 / (self.source.accumulation * self.source.info.world_size) / weight

    def state_dict(self) -> dict[str, Any]:
        return self.order.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is not None:
            self.order.load_state_dict(state)


def add_ptx(
    loss: torch.Tensor, ptx_loss: torch.Tensor, coef: float, share: float, metrics: dict[str, float]
) -> torch.Tensor:
    """An RL micro-batch's loss with its ptx term, coef × the SFT loss times `share` (`PtxRows.share`: the loop
    scales all of the loss by the micro-batch's share of the step, which the ptx term must not take); its metric
    "ptx_loss" is logged at the same share, so the step's log holds the SFT loss itself."""
    metrics["ptx_loss"] = ptx_loss.item() * share
    return loss + coef * ptx_loss * share


def collate(rows: Sequence[tuple[list[int], list[int], bool]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt + answer right-padded ([B, T] ids) from (prompt, answer, keep) rows, and the mask of answer tokens
    (off for rows whose keep is false)."""
    width = max(len(p) + len(c) for p, c, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (prompt, completion, keep) in enumerate(rows):
        ids[i, : len(prompt) + len(completion)] = torch.tensor(prompt + completion)
        mask[i, len(prompt) : len(prompt) + len(completion)] = keep
    return ids, mask


def logits_logps(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) at each position from logits [..., V] at `temperature` (float32), and the log-softmax
    [..., V] it came from (for the entropy)."""
    log_probs = (logits.float() / temperature).log_softmax(-1)
    return log_probs.gather(-1, targets[..., None]).squeeze(-1), log_probs


def token_logps(
    model: nn.Module, ids: torch.Tensor, temperature: float = 1.0, keep: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(token | prefix) [B, T-1] of each next token at the sampling temperature, and the log-softmax it
    came from: [B, T-1, V], or with `keep` (bool [B, T-1], the tokens that count) [N, V] at those tokens only, in
    row-major order. With `keep` the LM head and the softmax skip the other positions (a prompt's), whose
    log-probs are returned as 0."""
    targets = ids[:, 1:]
    logits = model(ids[:, :-1], keep=keep)
    if keep is None:
        return logits_logps(logits, targets, temperature)
    chosen, log_probs = logits_logps(logits, targets[keep], temperature)
    return torch.zeros(targets.shape, dtype=chosen.dtype, device=chosen.device).masked_scatter(keep, chosen), log_probs
