"""Typed configuration: YAML presets in `configs/` plus dotted `--set a.b=c` overrides.

Every section is a pydantic model that forbids unknown keys, so a typo fails loudly with the list of
valid keys instead of being ignored.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fromzero.data.shards import CHUNK_CHARS
from fromzero.data.tasks import ReasoningConfig
from fromzero.data.world import WorldConfig
from fromzero.data.world_chat import InstructConfig
from fromzero.data.world_pref import PreferenceConfig
from fromzero.model import ModelConfig
from fromzero.synth.config import SynthConfig
from fromzero.tokenizer import SPECIAL_TOKENS
from fromzero.train.configs import DPOConfig, GRPOConfig, PPOConfig, RewardConfig, SFTConfig
from fromzero.train.loop import TrainConfig


class ConfigError(ValueError):
    """A bad preset, key or value; the message is one line meant for the user."""


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sources: list[str] = Field(
        default_factory=list,
        description="pretraining sources (.txt/.jsonl/.json/.parquet files, dirs, globs, saved HF datasets, "
        "hf:owner/name[:config][@split]); empty: the built-in world",
    )
    val_sources: list[str] = Field(
        default_factory=list,
        description="separate validation text, any kind of source "
        "`sources` takes, all of it scored; then nothing of `sources` is held out and "
        "val_fraction is not used",
    )
    text_field: str = Field("text", description="field holding the text in jsonl/json/parquet/HF records")
    on_error: Literal["raise", "skip"] = Field(
        "raise", description="malformed records: stop with an error, or skip and count"
    )
    vocab_size: int = Field(
        4096, ge=len(SPECIAL_TOKENS) + 256, description="BPE vocabulary size, special tokens and the 256 bytes included"
    )
    tokenizer_docs: int | None = Field(None, ge=1, description="train the tokenizer on at most this many documents")
    tokenizer_chars: int = Field(1_000_000_000, ge=1, description="train the tokenizer on at most this many characters")
    val_fraction: float = Field(
        0.02,
        ge=0,
        lt=1,
        description="fraction of documents held out for validation (of a document longer than chunk_chars, its tail)",
    )
    chunk_chars: int = Field(
        CHUNK_CHARS,
        ge=1000,
        description="documents longer than this are cut at line breaks into "
        "pieces of at most this many characters, packed as documents of their own, and their "
        "last val_fraction held out (a one-file corpus gets a validation tail)",
    )
    num_workers: int = Field(2, ge=0, description="tokenisation worker processes (0 or 1: in this process)")


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompts: list[str] = Field(
        default_factory=lambda: [
            "What is an LLM?",
            "Where does {trained_person} live?",
            "Which country is {town} in?",
            "What is 3 plus 4?",
            "{word_problem}",
        ],
        description="fixed prompts answered after every stage and graded where the built-in world knows the answer; "
        "{trained_person}, {heldout_person} and {town} are filled from the built-in world, {word_problem} with a "
        "held-out reasoning problem",
    )
    max_new_tokens: int = Field(48, ge=1, description="tokens sampled per prompt")
    temperature: float = Field(0.0, ge=0, description="0: greedy, so the report is reproducible")
    val_batches: int = Field(16, ge=1, description="micro-batches of validation data for val loss / bits per byte")
    qa_max_new_tokens: int = Field(40, ge=1, description="tokens sampled per held-out question")
    preference_temperature: float = Field(
        1.0,
        gt=0,
        description="sampling temperature of the answers judged for the "
        "gold win rate (one answer per model and prompt)",
    )
    pass_k: int = Field(
        8,
        ge=1,
        description="reasoning: pass@k from this many sampled answers per held-out problem (1: greedy pass@1 only)",
    )

    def preference_sampling(self) -> dict[str, Any]:
        """How answers to preference prompts are sampled, for the gold win rate and for labelled pairs of a model's
        own answers alike (keyword arguments of `eval.qa.answer` and `eval.qa.sampler`)."""
        return {"max_new_tokens": self.qa_max_new_tokens, "temperature": self.preference_temperature}


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    preset: str = Field("custom", description="name of the preset this config came from")
    seed: int = Field(0, description="seed for model init and data order")
    world: WorldConfig = Field(default_factory=WorldConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: TrainConfig = Field(default_factory=TrainConfig)
    instruct: InstructConfig = Field(default_factory=InstructConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    synthetic_data: bool = Field(
        False,
        description="run the synth stage in `fromzero run`: the SFT model writes "
        "question/answer pairs from synth.docs (or the built-in world's new people) and SFT "
        "continues on the kept ones",
    )
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    preference_tuning: Literal["ppo", "dpo", "both", "none"] = Field(
        "ppo",
        description="stage 3 of `fromzero run`: RLHF with PPO against the reward model, DPO, both (the "
        "reasoning stage then starts from PPO's model), or none",
    )
    reasoning: ReasoningConfig = Field(default_factory=ReasoningConfig)
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    reasoning_rl: bool = Field(True, description="run stage 4 (GRPO on the reasoning tasks) in `fromzero run`")
    eval: EvalConfig = Field(default_factory=EvalConfig)
    report_to: Literal["none", "tensorboard", "wandb"] | None = Field(
        None,
        description="every training stage's report_to, unless the stage sets its own: also log the metrics to "
        "TensorBoard or Weights & Biases",
    )

    @model_validator(mode="after")
    def _report_to_every_stage(self) -> Config:
        for name in training_sections():
            section = getattr(self, name)
            if self.report_to is not None and "report_to" not in section.model_fields_set:
                section.report_to = self.report_to
        return self


def training_sections() -> list[str]:
    """The sections that configure a run of the shared training loop."""
    return [
        name
        for name, field in Config.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, TrainConfig)
    ]


def presets_dir() -> Path:
    packaged = Path(__file__).parent / "configs"  # where a wheel puts them
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "configs"


def preset_names() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for i, key in enumerate(parents):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set '{dotted}': '{'.'.join(parents[: i + 1])}' is a value, not a section")
        node = child
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.path=value, e.g. pretrain.steps=100")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def _model_at(path: tuple[Any, ...]) -> type[BaseModel] | None:
    model: Any = Config
    for key in path:
        field = model.model_fields.get(key) if isinstance(key, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def _explain(err: ValidationError) -> str:
    """One line per problem: the dotted key, what is wrong, and for unknown keys the valid ones."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            section = _model_at(loc[:-1])
            valid = ", ".join(section.model_fields) if section else "?"
            where = f"'{'.'.join(map(str, loc[:-1]))}'" if loc[:-1] else "the top level"
            # a key of another section (ppo.lora): say where it does belong
            elsewhere = [
                name
                for name, field in Config.model_fields.items()
                if len(loc) == 2
                and name != loc[0]
                and isinstance(field.annotation, type)
                and issubclass(field.annotation, BaseModel)
                and loc[1] in field.annotation.model_fields
            ]
            hint = f"; '{loc[1]}' is a key of {', '.join(elsewhere)} only" if elsewhere else ""
            lines.append(f"unknown config key '{key}'; valid keys in {where}: {valid}{hint}")
        else:
            lines.append(f"config key '{key}': {e['msg']} (got {e.get('input')!r})")
    return "; ".join(lines)


def load_config(preset: str | Path = "tiny", overrides: list[str] | None = None) -> Config:
    """Load a preset by name (configs/NAME.yaml) or path, then apply `key.path=value` overrides."""
    path = Path(preset)
    if not path.suffix:
        path = presets_dir() / f"{preset}.yaml"
    if not path.exists():
        raise ConfigError(f"no preset '{preset}'; available: {', '.join(preset_names())} (or a path to a YAML file)")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a preset must be a mapping of sections, got {type(tree).__name__}")
    tree.setdefault("preset", path.stem)
    for text in overrides or []:
        _set_dotted(tree, *parse_override(text))
    try:
        config = Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_explain(e)) from None
    for name in training_sections():
        reporter = getattr(config, name).report_to
        if reporter != "none" and importlib.util.find_spec(reporter) is None:
            raise ConfigError(f"config key '{name}.report_to': {reporter} is not installed (pip install {reporter})")
    return config
