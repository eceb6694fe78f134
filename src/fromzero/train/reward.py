"""Stage 3a: a reward model that learns to predict which of two answers people prefer.

The reward model is the SFT model with a scalar head `score` reading the final hidden state of the last token
(the `<|end|>` closing the answer), trained with the Bradley–Terry loss -log σ(r_chosen - r_rejected - margin).
It is a `Transformer` subclass whose head is named as in HF's `LlamaForSequenceClassification` (`score.weight`),
so its checkpoint is an ordinary checkpoint directory written by the shared loop: `model.safetensors` holds
backbone and heads.

With `likelihood` (the default) it also keeps the backbone's language-model head and adds, over the answer's
tokens, how much less likely the backbone found each one than it expected, weighted by a learned per-token gate:

    r = score(h_last) + Σ_{t in answer} gate(h_t) · surprise_t,
    surprise_t = log p(x_t | x_<t) + H(p(· | x_<t))     (zero on average over the backbone's own samples)

A last-token head alone learns style readily but hardly learns to check a stated fact: the last position would
have to recall the fact and compare it with the answer. The LM head already holds what the backbone expects at
every position, so a wrong value is a token it finds very unlikely; the gate learns which tokens' surprise
matters (a value the question asks for) and which not (a rambling aside). Centring on the entropy keeps the
term near zero for a backbone that knows nothing (raw log-probs of a random model made training diverge) and
charges nothing for open choices. Both heads start at zero, so every answer starts at reward 0. The answer is
what follows the last `<|assistant|>` token (the whole sequence when there is none); with an imported chat template,
what follows the last copy of the tokens that end every rendered prompt whatever the question (`answer_marker`:
ChatML's `<|im_end|>\n<|im_start|>assistant\n`, Mistral's ` [/INST]`), where data/chat.py's loss mask starts the
answer too. A checkpoint with a `gate.weight` is loaded as such a model, its marker read from its tokenizer.

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
from safetensors import safe_open

from fromzero import checkpoint, lora
from fromzero.data.chat import Message, prompt_ids
from fromzero.data.preference import (
    EncodedPair,
    PairBatch,
    PreferencePair,
    eval_batches,
)
from fromzero.dist import all_reduce_sum
from fromzero.generate import Engine, SamplingConfig
from fromzero.model import ModelConfig, Transformer
from fromzero.tokenizer import SIDECAR_FILES, SPECIAL_TOKENS, Tokenizer
from fromzero.train import common, loop
from fromzero.train.configs import RewardConfig

ASSISTANT_ID = SPECIAL_TOKENS.index("<|assistant|>")


def answer_marker(tok: Tokenizer) -> tuple[int, ...]:
    """The tokens after which an answer starts: `<|assistant|>`, or for an imported chat template the longest run
    of tokens that ends a rendered prompt whatever the question (the end of the user's turn and the generation
    prompt)."""
    if tok.assistant_id is not None:
        return (tok.assistant_id,)
    a, b = prompt_ids(tok, "Hi"), prompt_ids(tok, "Yes")
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    if n == 0:
        raise ValueError(
            "the chat template's prompts end in no tokens shared by every question, so the reward "
            "model cannot tell where an answer starts: use --set reward.likelihood=false"
        )
    return tuple(a[-n:])


def marker_ends(idx: torch.Tensor, marker: Sequence[int]) -> torch.Tensor:
    """[B, T] True where a copy of `marker` ends (for one token: where that token is)."""
    hit = idx == marker[-1]
    for back, token in enumerate(reversed(marker[:-1]), 1):
        hit[:, back:] &= idx[:, :-back] == token
        hit[:, :back] = False
    return hit


class RewardModel(Transformer):
    """A Transformer with a scalar head on its final hidden states, and with `likelihood` a gate on the surprise of
    the answer's tokens under its LM head (see the module docstring)."""

    def __init__(self, cfg: ModelConfig, likelihood: bool = False, marker: Sequence[int] = (ASSISTANT_ID,)):
        super().__init__(cfg)
        # not a buffer: it comes from the tokenizer, so checkpoints stay as they were
        self.answer_marker = tuple(marker)
        self.score = nn.Linear(cfg.dim, 1, bias=False)
        # zero: every answer starts at reward 0, so the first loss is exactly ln 2
        nn.init.zeros_(self.score.weight)
        self.gate = nn.Linear(cfg.dim, 1) if likelihood else None
        if self.gate is not None:
            nn.init.zeros_(self.gate.weight)
            nn.init.zeros_(self.gate.bias)
        elif not cfg.tie_embeddings:  # an unused untied LM head gets no gradient; keep it out of the optimizer and DDP
            self.lm_head.requires_grad_(False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """The reward of every prefix [B, T]: at a sequence's last token the reward of the whole answer, at each
        position the value estimate when used as a PPO value model."""
        h = self.hidden_states(idx)
        values = self.score(h).squeeze(-1).float()
        if self.gate is None:
            return values
        logps = torch.log_softmax(self.lm_head(h[:, :-1]).float(), dim=-1)
        # surprise: how much less likely each token is than the backbone expected (its log-prob plus the entropy there)
        surprise = logps.gather(2, idx[:, 1:, None]).squeeze(2) - (logps.exp() * logps).sum(-1)
        # answer tokens: no <|assistant|> (no answer marker) at or after them
        answer = (marker_ends(idx, self.answer_marker).flip(1).cumsum(1).flip(1) == 0)[:, 1:]
        # the gate reads each token's own position: it knows which token it weighs (a value the question asks for, or
        # the first word of a rambling aside), which a gate read one position earlier cannot tell apart
        gated = self.gate(h[:, 1:]).squeeze(-1).float() * surprise * answer
        return values + F.pad(gated.cumsum(1), (1, 0))

    @classmethod
    def from_lm(cls, lm: Transformer, likelihood: bool = False, marker: Sequence[int] = (ASSISTANT_ID,)) -> RewardModel:
        """A reward model with the backbone of a language model and fresh heads."""
        model = cls(lm.cfg, likelihood, marker)
        missing, unexpected = model.load_state_dict(lm.state_dict(), strict=False)
        fresh = ["score.weight"] + (["gate.weight", "gate.bias"] if likelihood else [])
        if sorted(missing) != sorted(fresh) or unexpected:
            raise ValueError(f"cannot start a reward model from this model: missing {missing}, unexpected {unexpected}")
        return model


def load_reward_model(path: str | Path, device: str | torch.device = "cpu") -> RewardModel:
    """A reward checkpoint (or stage directory) written by `train`."""
    ckpt = checkpoint.resolve(path)
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        likelihood = "gate.weight" in f.keys()
    marker: tuple[int, ...] = (ASSISTANT_ID,)
    tok_file = ckpt / "tokenizer.json"
    if likelihood and (ckpt / SIDECAR_FILES[0]).is_file():  # an imported tokenizer, whose template marks answers
        marker = answer_marker(Tokenizer.load(tok_file))
    model = RewardModel(ModelConfig.model_validate_json((ckpt / "config.json").read_text()), likelihood, marker)
    checkpoint.load_model_weights(model, ckpt)  # a language model's checkpoint fails here: it has no score.weight
    return model.to(device)


def last_token_rewards(model: nn.Module, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The head's value at each right-padded sequence's last real token [B]."""
    values = model(ids)
    return values.gather(1, (lengths - 1)[:, None].to(values.device)).squeeze(1)


@torch.no_grad()
def score_responses(
    model: RewardModel, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int
) -> torch.Tensor:
    """Rewards [B] of (prompt, response) token sequences, e.g. a PPO rollout (a response normally ends with
    <|end|>, where the reward model learned to read the whole answer)."""
    device = model.rope_cos.device
    rows = [list(p) + list(r) for p, r in zip(prompts, responses)]
    ids = torch.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return last_token_rewards(model, ids.to(device), torch.tensor([len(r) for r in rows], device=device))


@torch.no_grad()
def answer_rewards(
    policy: Transformer,
    reward_model: RewardModel,
    tok: Tokenizer,
    prompts: Sequence[Sequence[Message]],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    batch_size: int = 64,
    seed: int = 0,
) -> tuple[list[str], list[float]]:
    """A policy's answers to conversations ending with a user turn (greedy by default) and the reward model's score
    of each: the reward a tuned policy earns against the one it started from. Answers cut off at max_new_tokens are
    scored as they are (without <|end|>, where the reward model learned to read an answer)."""
    engine = Engine(policy, tok)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, stop_tokens=(tok.end_id,))
    ids = [engine.encode(p) for p in prompts]
    answers = engine.generate(ids, sampling, seed=seed, batch_size=batch_size)
    scores: list[float] = []
    for i in range(0, len(ids), batch_size):
        chunk = [a.tokens for a in answers[i : i + batch_size]]
        scores += score_responses(reward_model, ids[i : i + batch_size], chunk, tok.pad_id).tolist()
    return [a.text.strip() for a in answers], scores


def bradley_terry_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: float | torch.Tensor = 0.0
) -> torch.Tensor:
    """-log σ(r_chosen - r_rejected - margin), averaged: the negative log-likelihood of people's choices
    when P(chosen over rejected) = σ(r_chosen - r_rejected)."""
    return -F.logsigmoid(chosen - rejected - margin).mean()


def pair_rewards(model: nn.Module, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen, r_rejected) of a batch of pairs, both answers in one forward pass."""
    device = next(model.parameters()).device
    rewards = last_token_rewards(model, batch.input_ids.to(device), batch.lengths.to(device))
    return rewards[: len(batch.index)], rewards[len(batch.index) :]


def reward_loss(margin: float):
    def loss_fn(model: nn.Module, batch: PairBatch) -> tuple[torch.Tensor, dict[str, float]]:
        chosen, rejected = pair_rewards(model, batch)
        metrics = {
            "accuracy": (chosen > rejected).float().mean().item(),
            "reward/chosen": chosen.mean().item(),
            "reward/rejected": rejected.mean().item(),
            "reward/margin": (chosen - rejected).mean().item(),
        }
        return bradley_terry_loss(chosen, rejected, margin), metrics

    return loss_fn


def pairwise_evaluator(encoded: list[EncodedPair], micro_batch_size: int, pad_id: int, rank: int, world_size: int):
    """Held-out pairs: how often the chosen answer gets the higher reward, and the Bradley–Terry loss."""

    def evaluate(model: Transformer) -> dict[str, float]:
        device = model.rope_cos.device
        sums = torch.zeros(3, dtype=torch.float64, device=device)
        for batch in eval_batches(encoded, micro_batch_size, pad_id, rank, world_size):
            chosen, rejected = pair_rewards(model, batch)
            sums += torch.stack(
                [
                    (chosen > rejected).sum().double(),
                    -F.logsigmoid(chosen - rejected).sum().double(),
                    torch.tensor(len(chosen), dtype=torch.float64, device=device),
                ]
            )
        all_reduce_sum(sums)
        return {"val_accuracy": (sums[0] / sums[2]).item(), "val_loss": (sums[1] / sums[2]).item()}

    return evaluate


def train(
    cfg: RewardConfig,
    pairs: list[PreferencePair],
    val_pairs: list[PreferencePair],
    init: Path,
    out_dir: Path,
    *,
    resume: bool = False,
    log=print,
) -> Path:
    """Train a reward model from the (SFT) checkpoint at `init`; returns the final checkpoint."""
    info, done = common.begin(cfg, out_dir, resume)
    if done:
        return done
    tok_file, tok, lm = common.load_init("reward", cfg, init, info)
    model = RewardModel.from_lm(lm, cfg.likelihood, answer_marker(tok) if cfg.likelihood else (ASSISTANT_ID,))
    del lm  # copied into the reward model: not held through training
    if cfg.lora.enabled:
        heads = ("score", "gate") if model.gate is not None else ("score",)
        lora.inject(model, cfg.lora, base=checkpoint.resolve(init), seed=cfg.seed, modules_to_save=heads)
    batches, encoded, val_encoded = common.pair_batches("reward", cfg, tok, pairs, val_pairs, info, log)
    evaluate = None
    if val_encoded:
        evaluate = pairwise_evaluator(val_encoded, cfg.micro_batch_size, tok.pad_id, info.rank, info.world_size)
    stage = loop.Stage("reward", Path(out_dir), tok_file, info)
    return loop.run(cfg, stage, model, batches, reward_loss(cfg.margin), evaluate=evaluate, resume=resume)
