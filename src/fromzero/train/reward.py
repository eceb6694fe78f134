"""Stage 3a: a reward model that learns to predict which of two answers people prefer.

The reward model is the SFT model with its language-model head set aside and a scalar head `score`
reading the final hidden state of the last token (the `<|end|>` closing the answer), trained with the
Bradley–Terry loss -log σ(r_chosen - r_rejected - margin). It is a `Transformer` subclass whose extra
parameter is named as in HF's `LlamaForSequenceClassification` (`score.weight`), so its checkpoint is an
ordinary checkpoint directory written by the shared loop: `model.safetensors` holds backbone and head.

For PPO: `score_responses()` rewards a batch of (prompt, response) token sequences, and a value model
is this same module loaded from the reward checkpoint (`load_reward_model`), read at every position.
`answer_rewards()` scores a policy's own answers to prompts: how much the reward model likes a policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from fromzero import checkpoint
from fromzero.data.chat import Message, render
from fromzero.data.preference import EncodedPair, PairBatch, PairBatches, PreferencePair, PreferenceSources, \
    encode_pairs, eval_batches  # fmt: skip
from fromzero.dist import all_reduce_sum, setup
from fromzero.generate import SamplingConfig, generate
from fromzero.model import ModelConfig, Transformer
from fromzero.tokenizer import Tokenizer
from fromzero.train import loop
from fromzero.train.loop import TrainConfig


class RewardConfig(TrainConfig, PreferenceSources):
    margin: float = Field(0.0, description="Bradley–Terry margin: the chosen answer must win by at least this much")
    batch_tokens: int = Field(4096, description="pairs per step × seq_len, over all ranks (accumulation fills it)")
    micro_batch_size: int = Field(16, description="pairs per forward pass on one rank (a chosen and a rejected sequence each)")
    seq_len: int = Field(128, description="longest sequence; longer pairs are dropped")
    steps: int = 200
    lr: float = 5e-4
    warmup_steps: int = 20
    eval_every: int = 100
    checkpoint_every: int = 100


class RewardModel(Transformer):
    """A Transformer with a scalar head on its final hidden states."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.score = nn.Linear(cfg.dim, 1, bias=False)
        # zero: every answer starts at reward 0, so the first loss is exactly ln 2
        nn.init.zeros_(self.score.weight)
        if not cfg.tie_embeddings:  # an untied LM head gets no gradient; keep it out of the optimizer and DDP
            self.lm_head.requires_grad_(False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """The head's scalar at every position [B, T]: the reward at a sequence's last token, the value
        estimate at each position when used as a PPO value model."""
        return self.score(self.hidden_states(idx)).squeeze(-1).float()

    @classmethod
    def from_lm(cls, lm: Transformer) -> RewardModel:
        """A reward model with the backbone of a language model and a fresh head."""
        model = cls(lm.cfg)
        missing, unexpected = model.load_state_dict(lm.state_dict(), strict=False)
        if missing != ["score.weight"] or unexpected:
            raise ValueError(f"cannot start a reward model from this model: missing {missing}, unexpected {unexpected}")
        return model


def load_reward_model(path: str | Path, device: str | torch.device = "cpu") -> RewardModel:
    """A reward checkpoint (or stage directory) written by `train`."""
    ckpt = checkpoint.resolve(path)
    model = RewardModel(ModelConfig.model_validate_json((ckpt / "config.json").read_text()))
    checkpoint.load_model_weights(model, ckpt)  # a language model's checkpoint fails here: it has no score.weight
    return model.to(device)


def last_token_rewards(model: nn.Module, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The head's value at each right-padded sequence's last real token [B]."""
    values = model(ids)
    return values.gather(1, (lengths - 1)[:, None].to(values.device)).squeeze(1)


@torch.no_grad()
def score_responses(model: RewardModel, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                    pad_id: int) -> torch.Tensor:  # fmt: skip
    """Rewards [B] of (prompt, response) token sequences, e.g. a PPO rollout (a response normally ends with
    <|end|>, where the reward model learned to read the whole answer)."""
    device = model.rope_cos.device
    rows = [list(p) + list(r) for p, r in zip(prompts, responses)]
    ids = torch.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return last_token_rewards(model, ids.to(device), torch.tensor([len(r) for r in rows], device=device))


@torch.no_grad()
def answer_rewards(policy: Transformer, reward_model: RewardModel, tok: Tokenizer, prompts: Sequence[Sequence[Message]],
                   *, max_new_tokens: int = 64, temperature: float = 0.0, batch_size: int = 64,
                   seed: int = 0) -> tuple[list[str], list[float]]:  # fmt: skip
    """A policy's answers to conversations ending with a user turn (greedy by default) and the reward model's score
    of each: the reward a tuned policy earns against the one it started from. Answers cut off at max_new_tokens are
    scored as they are (without <|end|>, where the reward model learned to read an answer)."""
    was_training = policy.training
    policy.eval()
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, stop_tokens=(tok.end_id,))
    generator = torch.Generator(device=policy.rope_cos.device).manual_seed(seed)
    texts: list[str] = []
    scores: list[float] = []
    for i in range(0, len(prompts), batch_size):
        ids = [render(tok, p, generation_prompt=True)[0] for p in prompts[i : i + batch_size]]
        answers = generate(policy, ids, sampling, pad_id=tok.pad_id, generator=generator)
        scores += score_responses(reward_model, ids, answers, tok.pad_id).tolist()
        texts += [tok.decode([t for t in a if t != tok.end_id], skip_special=True).strip() for a in answers]
    policy.train(was_training)
    return texts, scores


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: float | torch.Tensor = 0.0) -> torch.Tensor:
    """-log σ(r_chosen - r_rejected - margin), averaged: the negative log-likelihood of people's choices
    when P(chosen over rejected) = σ(r_chosen - r_rejected)."""
    return -F.logsigmoid(chosen - rejected - margin).mean()


def pair_rewards(model: nn.Module, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen, r_rejected) of a batch of pairs, both answers in one forward pass."""
    ids, _, lengths, index = batch
    device = next(model.parameters()).device
    rewards = last_token_rewards(model, ids.to(device), lengths.to(device))
    return rewards[: len(index)], rewards[len(index) :]


def reward_loss(margin: float):
    def loss_fn(model: nn.Module, batch: PairBatch) -> tuple[torch.Tensor, dict[str, float]]:
        chosen, rejected = pair_rewards(model, batch)
        metrics = {"accuracy": (chosen > rejected).float().mean().item(), "reward/chosen": chosen.mean().item(),
                   "reward/rejected": rejected.mean().item(), "reward/margin": (chosen - rejected).mean().item()}  # fmt: skip
        return bradley_terry_loss(chosen, rejected, margin), metrics

    return loss_fn


def pairwise_evaluator(encoded: list[EncodedPair], micro_batch_size: int, pad_id: int, rank: int, world_size: int):
    """Held-out pairs: how often the chosen answer gets the higher reward, and the Bradley–Terry loss."""

    def evaluate(model: Transformer) -> dict[str, float]:
        device = model.rope_cos.device
        sums = torch.zeros(3, dtype=torch.float64, device=device)
        for batch in eval_batches(encoded, micro_batch_size, pad_id, rank, world_size):
            chosen, rejected = pair_rewards(model, batch)
            sums += torch.stack([(chosen > rejected).sum().double(), -F.logsigmoid(chosen - rejected).sum().double(),
                                 torch.tensor(len(chosen), dtype=torch.float64, device=device)])  # fmt: skip
        all_reduce_sum(sums)
        return {"val_accuracy": (sums[0] / sums[2]).item(), "val_loss": (sums[1] / sums[2]).item()}

    return evaluate


def train(cfg: RewardConfig, pairs: list[PreferencePair], val_pairs: list[PreferencePair], init: Path, out_dir: Path,
          *, resume: bool = False, log=print) -> Path:  # fmt: skip
    """Train a reward model from the (SFT) checkpoint at `init`; returns the final checkpoint."""
    info = setup(cfg.device)
    tok_file = checkpoint.tokenizer_file(init)
    tok = Tokenizer.load(tok_file)
    model = RewardModel.from_lm(checkpoint.load_model(init))
    if model.cfg.max_seq_len < cfg.seq_len:
        raise ValueError(f"reward.seq_len={cfg.seq_len} exceeds model.max_seq_len={model.cfg.max_seq_len}")
    encoded, stats = encode_pairs(tok, pairs, cfg.seq_len)
    val_encoded, _ = encode_pairs(tok, val_pairs, cfg.seq_len)
    if info.is_main:
        log(f"[reward] {stats['pairs']} training pairs, {len(val_encoded)} for validation; "
            f"{stats['dropped']} longer than {cfg.seq_len} tokens dropped")  # fmt: skip
    batches = PairBatches(encoded, cfg.micro_batch_size, tok.pad_id, seed=cfg.seed, rank=info.rank,
                          world_size=info.world_size)  # fmt: skip
    evaluate = None
    if val_encoded:
        evaluate = pairwise_evaluator(val_encoded, cfg.micro_batch_size, tok.pad_id, info.rank, info.world_size)
    stage = loop.Stage("reward", Path(out_dir), tok_file, info)
    return loop.run(cfg, stage, model, batches, reward_loss(cfg.margin), evaluate=evaluate, resume=resume)
