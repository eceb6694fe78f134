"""The `fromzero` command line."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml

app = typer.Typer(
    help="Train a language model from random weights: pretraining, instruction tuning, preference tuning, reasoning RL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Preset = Annotated[str, typer.Option("--preset", "-p", help="preset name in configs/ (smoke, tiny, small, gpt2) or a YAML path")]
Overrides = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="override a config key: --set pretrain.steps=100")]


def user_errors(fn):
    """Turn the errors a user can fix into one red line and exit code 2, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from fromzero.config import ConfigError
        from fromzero.data.sources import DataError
        from fromzero.train.loop import TrainingDiverged

        try:
            return fn(*args, **kwargs)
        except (ConfigError, DataError, FileExistsError, FileNotFoundError, ValueError) as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2) from None
        except TrainingDiverged as e:
            typer.secho(f"diverged: {e}", fg="red", err=True)
            raise typer.Exit(3) from None

    return wrapper


def _config(preset: str, overrides: list[str] | None):
    from fromzero.config import load_config

    return load_config(preset, overrides)


@app.command()
@user_errors
def run(
    preset: Preset = "tiny",
    out: Annotated[Optional[Path], typer.Option(help="run directory (default runs/PRESET)")] = None,
    overrides: Overrides = None,
    redo: Annotated[Optional[str], typer.Option(help="redo this stage and every later one")] = None,
):
    """The whole pipeline on the preset's data: build data, stage 0 (random init), stage 1 (pretrain), report."""
    from fromzero import pipeline

    cfg = _config(preset, overrides)
    out = out or Path("runs") / cfg.preset
    summary = pipeline.run(cfg, out, redo=redo)
    typer.echo(json.dumps(summary, indent=2))
    typer.echo(f"report: {out / 'report.md'} and {out / 'report.html'}")


@app.command()
@user_errors
def data(
    out: Annotated[Path, typer.Option(help="data directory to write (tokenizer.json, shards/)")],
    preset: Preset = "tiny",
    overrides: Overrides = None,
):
    """Train the tokenizer and tokenise the corpus (data.sources, or the built-in world) into shards."""
    from fromzero.data.build import build

    meta = build(_config(preset, overrides), out)
    typer.echo(meta.model_dump_json(indent=2))


@app.command()
@user_errors
def pretrain(
    data: Annotated[Path, typer.Option(help="data directory made by `fromzero data`")],
    out: Annotated[Path, typer.Option(help="stage directory for checkpoints and metrics")],
    preset: Preset = "tiny",
    overrides: Overrides = None,
    init: Annotated[Optional[Path], typer.Option(help="checkpoint to start from (default: random init)")] = None,
    resume: Annotated[bool, typer.Option(help="continue the run in --out from its last checkpoint")] = False,
):
    """Stage 1: next-token prediction. Runs under torchrun as well (one process per device)."""
    from fromzero import checkpoint, dist
    from fromzero.tokenizer import Tokenizer
    from fromzero.train import pretrain as stage

    cfg = _config(preset, overrides)
    if init is None:
        init = out / "init"
        info = dist.setup(cfg.pretrain.device)
        if info.is_main and not checkpoint.exists(init):
            model = stage.init_model(cfg.model, Tokenizer.load(data), cfg.seed)
            checkpoint.save(init, 0, model, tokenizer_file=data / "tokenizer.json", meta={"stage": "init"})
        dist.barrier()
    ckpt = stage.train(cfg.pretrain, data, out, init=init, val_batches=cfg.eval.val_batches, resume=resume)
    typer.echo(f"checkpoint: {ckpt}")


@app.command("eval")
@user_errors
def evaluate(
    ckpt: Annotated[Path, typer.Option(help="checkpoint or stage directory")],
    data: Annotated[Path, typer.Option(help="data directory (for the validation split)")],
    preset: Preset = "tiny",
    overrides: Overrides = None,
):
    """Validation loss, bits per byte, and answers to the fixed prompts."""
    import torch

    from fromzero import checkpoint
    from fromzero.eval.samples import complete
    from fromzero.tokenizer import Tokenizer
    from fromzero.train.pretrain import lm_evaluator

    cfg = _config(preset, overrides)
    model = checkpoint.load_model(ckpt).eval()
    tok = Tokenizer.load(data)
    with torch.no_grad():
        metrics = lm_evaluator(data, tok, cfg.pretrain, cfg.eval.val_batches)(model)
    prompts = [p for p in cfg.eval.prompts if "{" not in p]
    answers = complete(model, tok, prompts, max_new_tokens=cfg.eval.max_new_tokens, temperature=cfg.eval.temperature)
    typer.echo(json.dumps({"metrics": metrics, "answers": dict(zip(prompts, answers))}, indent=2, ensure_ascii=False))


@app.command()
@user_errors
def sample(
    ckpt: Annotated[Path, typer.Option(help="checkpoint or stage directory")],
    prompt: Annotated[str, typer.Argument(help="text to continue")],
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    seed: int = 0,
):
    """Continue a text with a (pretrained) checkpoint."""
    from fromzero import checkpoint
    from fromzero.eval.samples import complete
    from fromzero.tokenizer import Tokenizer

    model = checkpoint.load_model(ckpt)
    tok = Tokenizer.load(checkpoint.tokenizer_file(ckpt))
    typer.echo(prompt + complete(model, tok, [prompt], max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)[0])


@app.command()
@user_errors
def config(preset: Preset = "tiny", overrides: Overrides = None):
    """Print the resolved config and the plan it makes (model size, tokens per step, total tokens)."""
    from fromzero.plan import describe

    cfg = _config(preset, overrides)
    typer.echo(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    typer.echo(yaml.safe_dump({"plan": describe(cfg)}, sort_keys=False))

