"""The configs of the training stages after pretraining (pretraining's is loop.TrainConfig itself), in a module
of their own: `fromzero.config` assembles them without importing the algorithms."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from fromzero.data.preference import PreferenceSources
from fromzero.data.tasks import TaskSources
from fromzero.lora import LoRAConfig
from fromzero.train.loop import TrainConfig
from fromzero.train.rollout import RolloutConfig


class SFTConfig(TrainConfig):
    data: list[str] = Field(
        default_factory=list,
        description="instruction files (jsonl/json/parquet/datasets); empty: the built-in world's instructions",
    )
    on_error: Literal["raise", "skip"] = Field("raise", description="malformed records: stop, or skip and count")
    val_fraction: float = Field(0.02, ge=0, lt=1, description="conversations held out for the validation loss")
    lora: LoRAConfig = Field(
        default_factory=LoRAConfig,
        description="low-rank adapters on the frozen model (r > 0) instead of full fine-tuning",
    )
    steps: PositiveInt = 300
    lr: PositiveFloat = 1e-3
    warmup_steps: NonNegativeInt = 20
    eval_every: PositiveInt = 100
    checkpoint_every: PositiveInt = 100


class PairConfig(TrainConfig, PreferenceSources):
    """What the reward model and DPO share: batches of preference pairs."""

    batch_tokens: int = Field(
        4096, ge=1, description="pairs per step × seq_len, over all ranks (accumulation fills it)"
    )
    micro_batch_size: int = Field(
        16, ge=1, description="pairs per forward pass on one rank (a chosen and a rejected sequence each)"
    )
    seq_len: int = Field(
        128,
        ge=4,
        description="longest sequence; longer pairs are cut to it (the prompt's start, "
        "then the answers' ends: see max_prompt_len)",
    )
    steps: PositiveInt = 200
    warmup_steps: NonNegativeInt = 20
    eval_every: PositiveInt = 100
    checkpoint_every: PositiveInt = 100


class RewardConfig(PairConfig):
    margin: float = Field(
        0.0, ge=0, description="Bradley–Terry margin: the chosen answer must win by at least this much"
    )
    likelihood: bool = Field(
        True,
        description="add the answer tokens' surprise under the backbone's LM head "
        "(log-prob + entropy), weighted by a learned per-token gate, to the last-token score (lets "
        "the reward model check a stated fact against what the backbone knows; see "
        "train/reward.py)",
    )
    lora: LoRAConfig = Field(
        default_factory=LoRAConfig,
        description="low-rank adapters on the frozen model (r > 0) "
        "instead of full fine-tuning; the fresh heads (score, gate) train in full",
    )
    lr: PositiveFloat = 5e-4


DPOLoss = Literal["sigmoid", "ipo"]


class DPOConfig(PairConfig):
    beta: float = Field(0.1, gt=0, description="strength of the pull towards the reference model (KL coefficient)")
    loss: DPOLoss = Field("sigmoid", description="sigmoid: DPO; ipo: IPO's squared loss on per-token averages")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="sigmoid only: assumed share of flipped labels (cDPO)"
    )
    rpo_alpha: float = Field(
        0.0,
        ge=0,
        description="weight of the next-token loss on chosen answers (RPO), which keeps "
        "DPO from lowering their likelihood along with the rejected ones'",
    )
    lora: LoRAConfig = Field(
        default_factory=LoRAConfig,
        description="low-rank adapters on the frozen model (r > 0) instead of full fine-tuning",
    )
    lr: PositiveFloat = 2e-4

    @model_validator(mode="after")
    def _smoothing_is_for_sigmoid(self) -> DPOConfig:
        if self.loss == "ipo" and self.label_smoothing:
            raise ValueError("label_smoothing applies to the sigmoid loss only")
        return self


KLEstimator = Literal["k1", "k3"]


class PPOConfig(RolloutConfig):
    prompts_per_rollout: int = Field(
        32,
        ge=1,
        description="prompts answered per rollout over all ranks, one answer "
        "each; a rollout serves ppo_epochs × num_minibatches optimizer steps",
    )
    max_new_tokens: int = Field(48, ge=1, description="longest answer")
    kl_coef: float = Field(
        0.05,
        ge=0,
        description="β: weight of the per-token KL to the reference in the reward (the "
        "first value with adaptive_kl); 0 drops the reference",
    )
    kl_estimator: KLEstimator = Field(
        "k1",
        description="per-token KL in the reward: k1 = log π/π_ref (unbiased, "
        "negative on some tokens) or k3 = (r - 1) - log r, r = π_ref/π (never negative)",
    )
    adaptive_kl: bool = Field(False, description="steer β after each rollout towards kl_target (Ziegler et al. 2019)")
    kl_target: float = Field(6.0, gt=0, description="adaptive_kl: the KL per answer (nats) that β steers towards")
    kl_horizon: int = Field(
        10000, ge=1, description="adaptive_kl: answers over which β changes by at most a factor of about e^0.2"
    )
    gamma: float = Field(1.0, ge=0, le=1, description="discount per answer token")
    lam: float = Field(
        0.95,
        ge=0,
        le=1,
        description="GAE λ: 0 bootstraps from the next value (low variance, biased "
        "by the value model), 1 is the whole return minus the value",
    )
    whiten_advantages: bool = Field(True, description="shift and scale each rollout's advantages to mean 0, std 1")
    clip_eps: float = Field(0.2, gt=0, description="clip range ε: ratios beyond [1-ε, 1+ε] give no gradient")
    clip_eps_value: float = Field(
        0.2, gt=0, description="value predictions further than this from the rollout's are clipped in the value loss"
    )
    vf_coef: float = Field(0.1, ge=0, description="weight of the value loss beside the policy loss")
    ppo_epochs: int = Field(2, ge=1, description="passes over each rollout")
    num_minibatches: int = Field(2, ge=1, description="minibatches per pass, an optimizer step each")
    missing_eos_penalty: float | None = Field(
        None, ge=0, description="subtracted from the score of answers that never close with <|end|>; None: no penalty"
    )
    lr: PositiveFloat = 3e-5

    def step_shape(self) -> tuple[int, str]:
        return (
            self.prompts_per_rollout // self.num_minibatches * self.seq_len,
            "prompts_per_rollout / num_minibatches × seq_len (a minibatch per step)",
        )

    @model_validator(mode="after")
    def _consistent(self) -> PPOConfig:
        if self.prompts_per_rollout % self.num_minibatches:
            raise ValueError(
                f"prompts_per_rollout ({self.prompts_per_rollout}) must split into num_minibatches "
                f"({self.num_minibatches}) equal minibatches"
            )
        if self.adaptive_kl and self.kl_coef == 0:
            raise ValueError("adaptive_kl scales kl_coef, which is 0; start it above 0")
        return self


LossType = Literal["grpo", "dr_grpo", "dapo"]


class GRPOConfig(RolloutConfig, TaskSources):
    num_generations: int = Field(8, ge=2, description="completions sampled per prompt (G): the group")
    prompts_per_step: int = Field(
        8,
        ge=1,
        description="prompts per optimizer step over all ranks; a step trains "
        "on prompts_per_step × num_generations completions",
    )
    max_new_tokens: int = Field(64, ge=1, description="longest completion")
    beta: float = Field(0.04, ge=0, description="KL coefficient towards the reference model; 0 drops the reference")
    ptx_targets: Literal["data", "policy"] = Field(
        "data",
        description="ptx: learn the conversations' own answers (data), or answers the starting policy samples "
        "to their prompts before training (policy: it keeps what the stages before taught, their style too)",
    )
    ptx_temperature: float = Field(
        0.0,
        ge=0,
        description="ptx_targets=policy: the temperature of those answers; 0: greedy, the answer the policy gives "
        "when asked (sampled ones carry its mistakes)",
    )
    clip_eps: float = Field(0.2, gt=0, description="clip range ε: ratios beyond [1-ε, 1+ε] give no gradient")
    clip_eps_high: float | None = Field(None, gt=0, description="upper clip ε_high (DAPO clip-higher); None: clip_eps")
    scale_rewards: bool = Field(True, description="divide advantages by their group's std (Dr. GRPO: off)")
    loss_type: LossType = Field(
        "grpo",
        description="grpo: token mean per completion; dr_grpo: token sum over "
        "completions × max_new_tokens; dapo: token mean over the batch",
    )
    num_iterations: int = Field(1, ge=1, description="optimizer steps per rollout (μ)")
    filter_zero_std: bool = Field(
        False,
        description="leave out groups whose rewards are all equal, sampling more "
        "prompts in their place (DAPO dynamic sampling)",
    )
    max_sampling_rounds: int = Field(3, ge=1, description="filter_zero_std: most rounds of prompts sampled per rollout")
    reward_funcs: list[str] = Field(
        default_factory=lambda: ["accuracy"],
        description="reward functions: accuracy, "
        "equations (share of true equations in the working), format (<think>/<answer> "
        "tags), or package.module:function",
    )
    reward_weights: list[float] | None = Field(None, description="weight of each reward function; None: all 1")
    overlong_buffer: int = Field(
        0, ge=0, description="DAPO soft overlong penalty over the last N tokens before max_new_tokens; 0: off"
    )
    system_prompt: str | None = Field(None, description="system message before every problem")
    lora: LoRAConfig = Field(
        default_factory=LoRAConfig,
        description="low-rank adapters on the frozen model (r > 0) "
        "instead of full fine-tuning; the KL reference is then the base with the adapters off",
    )
    eval_problems: int = Field(
        100, ge=0, description="held-out problems answered greedily for pass@1 at each evaluation"
    )
    seq_len: int = Field(256, ge=2, description="longest prompt + completion; longer prompts are dropped")
    lr: PositiveFloat = 2e-5

    def step_shape(self) -> tuple[int, str]:
        return (
            self.prompts_per_step * self.num_generations * self.seq_len,
            "prompts_per_step × num_generations × seq_len",
        )

    @model_validator(mode="after")
    def _consistent(self) -> GRPOConfig:
        if self.clip_eps_high is not None and self.clip_eps_high < self.clip_eps:
            raise ValueError(f"clip_eps_high ({self.clip_eps_high}) is below clip_eps ({self.clip_eps})")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_funcs):
            raise ValueError(f"{len(self.reward_weights)} reward_weights for {len(self.reward_funcs)} reward_funcs")
        return self
