"""The `fromzero` command line."""

from __future__ import annotations

import functools
import json
import os
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

Preset = Annotated[
    str, typer.Option("--preset", "-p", help="preset name in configs/ (smoke, tiny, small, gpt2) or a YAML path")
]
Overrides = Annotated[
    Optional[list[str]], typer.Option("--set", "-s", help="override a config key: --set pretrain.steps=100")
]
StageOut = Annotated[Path, typer.Option("--out", help="stage directory for checkpoints and metrics")]
Resume = Annotated[bool, typer.Option("--resume", help="continue the run in --out from its last checkpoint")]
Ckpt = Annotated[Path, typer.Option("--ckpt", help="checkpoint or stage directory")]


DEBUG_ENV = "FROMZERO_DEBUG"
# the config section whose on_error a command's records obey
ON_ERROR_SECTION = {"data": "data", "sft": "sft", "reward": "reward", "dpo": "dpo", "ppo": "reward", "grpo": "grpo"}


def user_errors(fn):
    """Turn the errors a user can fix into one red line and exit code 2, instead of a traceback: bad config, data
    and files, and what reading and writing files raises (a full disk, a corrupt gzip stream). FROMZERO_DEBUG=1
    shows the traceback instead, for when one of them is a bug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import zlib

        from fromzero.config import ConfigError
        from fromzero.data.sources import DataError, RecordError
        from fromzero.train.loop import TrainingDiverged

        try:
            return fn(*args, **kwargs)
        except (
            ConfigError,
            DataError,
            FileExistsError,
            FileNotFoundError,
            ValueError,
            OSError,
            EOFError,
            zlib.error,
        ) as e:
            if os.environ.get(DEBUG_ENV):
                raise
            message = (
                str(e)
                if isinstance(e, (ValueError, FileNotFoundError, FileExistsError))
                else f"{type(e).__name__}: {e} ({DEBUG_ENV}=1 shows the traceback)"
            )
            if isinstance(e, RecordError):
                section = ON_ERROR_SECTION.get(fn.__name__)
                message += (
                    f"; --set {section}.on_error=skip skips and counts such records"
                    if section
                    else "; on_error: skip in the stage's section (data, sft, reward, dpo, grpo) skips and counts "
                    "such records"
                )
            typer.secho(f"error: {message}", fg="red", err=True)
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
    preference: Annotated[
        Optional[str],
        typer.Option(
            help="stage 3: ppo (reward model + RLHF), dpo, both or none; default: the preset's preference_tuning (ppo)"
        ),
    ] = None,
):
    """The whole pipeline on the preset's data: build data, stage 0 (random init), 1 (pretrain), 2 (SFT), 3 (reward
    model + PPO, or DPO), 4 (GRPO on verifiable problems), then summary.json and the report."""
    from fromzero import pipeline

    cfg = _config(preset, list(overrides or []) + ([f"preference_tuning={preference}"] if preference else []))
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
    out: StageOut,
    preset: Preset = "tiny",
    overrides: Overrides = None,
    init: Annotated[Optional[Path], typer.Option(help="checkpoint to start from (default: random init)")] = None,
    resume: Resume = False,
):
    """Stage 1: next-token prediction. Runs under torchrun as well (one process per device)."""
    from fromzero import checkpoint
    from fromzero.pipeline import random_init
    from fromzero.train import pretrain as stage

    cfg = _config(preset, overrides)
    if init is None:
        init = random_init(cfg, data, out / "init")
    elif checkpoint.tokenizer_file(init).read_bytes() != (data / "tokenizer.json").read_bytes():
        # shards hold token ids: another tokenizer's ids would be other words (an imported model's, say)
        raise ValueError(
            f"--init {init} has another tokenizer than {data} was tokenised with; pretraining continues a "
            "model on shards of its own tokenizer (fromzero data trains a new one)"
        )
    ckpt = stage.train(cfg.pretrain, data, out, init=init, val_batches=cfg.eval.val_batches, resume=resume)
    typer.echo(f"checkpoint: {ckpt}")


@app.command()
@user_errors
def sft(
    init: Annotated[Path, typer.Option(help="checkpoint to fine-tune (a pretrain stage directory)")],
    out: StageOut,
    data: Annotated[
        Optional[list[Path]], typer.Option(help="instruction files (repeatable); default: the built-in world's")
    ] = None,
    preset: Preset = "tiny",
    overrides: Overrides = None,
    resume: Resume = False,
):
    """Stage 2: instruction tuning. Formats (auto-detected per file): messages/ShareGPT, Alpaca, Dolly, prompt/response."""
    from fromzero.train import sft as stage

    cfg = _config(preset, overrides)
    ckpt = stage.train(cfg.sft, _instructions(cfg, data), init, out, resume=resume)
    typer.echo(f"checkpoint: {ckpt}")


def _inputs(cfg, device: str = "auto"):
    """What a stage trains on, built as `fromzero run` builds it (`pipeline.StageInputs`)."""
    from fromzero.pipeline import StageInputs

    return StageInputs.of(cfg, device)


def _instructions(cfg, data: list[Path] | None):
    """SFT's conversations: the files given, else sft.data's, else the built-in world's."""
    if data:
        cfg.sft.data = [str(d) for d in data]
    return _inputs(cfg, cfg.sft.device).sft_conversations()


def _ptx_conversations(cfg, stage, data: list[Path] | None, on_error: str) -> list:
    """The instruction conversations of an RL stage's ptx term, none when its ptx_coef is 0: the files given, else
    sft.data's, else the built-in world's, read under the command's on_error (the key its error line names)."""
    if stage.ptx_coef <= 0:
        return []
    if data:
        cfg.sft.data = [str(d) for d in data]
    cfg.sft.on_error = on_error
    return _inputs(cfg, stage.device).sft_conversations()


def _preference_pairs(cfg, sources, data: list[Path] | None, init: Path | None = None):
    """(train, val) preference pairs: from files split by prompt, or the built-in world's, with labelled pairs of
    the sampled answers of `init` when `preference.sampled_questions` asks for them."""
    if data:
        sources.data = [str(d) for d in data]
    return _inputs(cfg, sources.device).preference_pairs(sources, init)


PreferenceData = Annotated[
    Optional[list[Path]],
    typer.Option(help="preference files or .sqlite/.db vote databases (repeatable); default: the built-in world's"),
]


@app.command()
@user_errors
def reward(
    init: Annotated[Path, typer.Option(help="checkpoint to start from (an SFT stage directory)")],
    out: StageOut,
    data: PreferenceData = None,
    preset: Preset = "tiny",
    overrides: Overrides = None,
    resume: Resume = False,
):
    """Stage 3a: a reward model, Bradley–Terry on chosen/rejected pairs. Formats (auto-detected per file):
    prompt/chosen/rejected, HH transcripts, chosen/rejected message lists, rated completions, vote databases."""
    from fromzero.train import reward as stage

    cfg = _config(preset, overrides)
    ckpt = stage.train(cfg.reward, *_preference_pairs(cfg, cfg.reward, data, init), init, out, resume=resume)
    typer.echo(f"checkpoint: {ckpt}")


@app.command()
@user_errors
def dpo(
    init: Annotated[Path, typer.Option(help="checkpoint to tune (an SFT stage directory); also the reference")],
    out: StageOut,
    data: PreferenceData = None,
    preset: Preset = "tiny",
    overrides: Overrides = None,
    resume: Resume = False,
):
    """Stage 3b: direct preference optimisation on chosen/rejected pairs (IPO with --set dpo.loss=ipo)."""
    from fromzero.train import dpo as stage

    cfg = _config(preset, overrides)
    ckpt = stage.train(cfg.dpo, *_preference_pairs(cfg, cfg.dpo, data, init), init, out, resume=resume)
    typer.echo(f"checkpoint: {ckpt}")


@app.command()
@user_errors
def ppo(
    init: Annotated[Path, typer.Option(help="checkpoint to tune (an SFT stage directory); also the KL reference")],
    reward_model: Annotated[Path, typer.Option("--reward-model", help="reward model checkpoint (`fromzero reward`)")],
    out: StageOut,
    data: PreferenceData = None,
    ptx_data: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--ptx-data",
            help="instruction files for ppo.ptx_coef's "
            "SFT loss (repeatable); default: sft.data, else the built-in world's",
        ),
    ] = None,
    preset: Preset = "tiny",
    overrides: Overrides = None,
    resume: Resume = False,
):
    """Stage 3 (RLHF): PPO against a reward model, on the prompts of the preference data (default: the built-in
    world's); the gold preference function's mean score is logged for the built-in prompts. With ppo.ptx_coef > 0,
    SFT's loss on instruction conversations is mixed in (PPO-ptx)."""
    from fromzero.train import ppo as stage

    cfg = _config(preset, overrides)
    if data:
        cfg.reward.data = [str(d) for d in data]
    ptx = _ptx_conversations(cfg, cfg.ppo, ptx_data, cfg.reward.on_error)
    p = _inputs(cfg, cfg.ppo.device).ppo_prompts()
    ckpt = stage.train(cfg.ppo, p.prompts, init, reward_model, out, gold=p.gold, resume=resume, ptx=ptx)
    typer.echo(f"checkpoint: {ckpt}")


@app.command()
@user_errors
def grpo(
    init: Annotated[
        Path, typer.Option(help="checkpoint to tune (an SFT, PPO or DPO stage directory); also the reference")
    ],
    out: StageOut,
    data: Annotated[
        Optional[list[Path]],
        typer.Option(
            help="task files (repeatable): GSM8K, SVAMP, Countdown or "
            "prompt/answer records; default: the built-in word problems"
        ),
    ] = None,
    ptx_data: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--ptx-data",
            help="instruction files for grpo.ptx_coef's SFT loss (repeatable); default: sft.data, else the "
            "built-in world's",
        ),
    ] = None,
    reward_model: Annotated[
        Optional[Path],
        typer.Option(
            "--reward-model",
            help="reward model (`fromzero reward`) that ranks the ptx conversations for grpo.ptx_keep; "
            "without it GRPO-ptx learns from all of them",
        ),
    ] = None,
    preset: Preset = "tiny",
    overrides: Overrides = None,
    resume: Resume = False,
):
    """Stage 4: reasoning by RL with verifiable rewards (GRPO): answers checked against the known result; pass@1 on
    held-out problems before and after. With grpo.ptx_coef > 0, SFT's loss on instruction conversations is mixed
    in, so the other kinds of question hold (with grpo.ptx_keep < 1, only on those --reward-model scores highest)."""
    from fromzero import checkpoint, dist
    from fromzero.data.sources import SourceStats
    from fromzero.data.tasks import load_tasks
    from fromzero.data.world import build_world
    from fromzero.eval import reasoning
    from fromzero.tokenizer import Tokenizer
    from fromzero.train import grpo as stage

    cfg = _config(preset, overrides)
    if data:
        cfg.grpo.data = [str(d) for d in data]
    ptx = _ptx_conversations(cfg, cfg.grpo, ptx_data, cfg.grpo.on_error)
    stats = SourceStats()
    train, heldout = load_tasks(cfg.grpo, cfg.reasoning, build_world(cfg.world), cfg.seed, stats)
    if stats.skipped:
        typer.secho(f"skipped {stats.skipped} malformed records, e.g. {stats.errors[0]}", fg="yellow", err=True)
    ckpt = stage.train(cfg.grpo, train, heldout, init, out, resume=resume, ptx=ptx, reward_model=reward_model)
    info = dist.setup(cfg.grpo.device)
    if heldout and info.is_main:
        tok = Tokenizer.load(checkpoint.tokenizer_file(ckpt))
        options = reasoning.options(cfg)
        before, _ = reasoning.evaluate(checkpoint.load_model(init, info.device), tok, heldout, **options)
        after, _ = reasoning.evaluate(checkpoint.load_model(ckpt, info.device), tok, heldout, **options)
        typer.echo(json.dumps({"before": before, "after": after}, indent=2))
    typer.echo(f"checkpoint: {ckpt}")


@app.command()
@user_errors
def chat(
    ckpt: Annotated[Path, typer.Option(help="checkpoint or stage directory of an instruction-tuned model")],
    system: Annotated[Optional[str], typer.Option(help="system prompt")] = None,
    temperature: float = 0.7,
    top_k: Optional[int] = 50,
    top_p: Optional[float] = None,
    max_new_tokens: int = 128,
    seed: int = 0,
):
    """Chat in the terminal, tokens streamed as they are sampled. /reset clears the history, /system TEXT
    sets the system prompt, /quit leaves."""
    from fromzero import checkpoint
    from fromzero.generate import Engine, SamplingConfig, seeded_generator
    from fromzero.tokenizer import Tokenizer

    model = checkpoint.load_model(ckpt).eval()
    tok = Tokenizer.load(checkpoint.tokenizer_file(ckpt))
    engine = Engine(model, tok)
    sampling = SamplingConfig(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, stop_tokens=(tok.end_id,)
    )
    generator = seeded_generator(model, seed)
    history: list = []
    typer.echo("fromzero chat — /reset, /system TEXT, /quit")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line:
            continue
        if line == "/quit":
            break
        if line == "/reset":
            history = []
            typer.echo("(history cleared)")
            continue
        if line.startswith("/system"):
            system = line[len("/system") :].strip() or None
            history = []
            typer.echo(f"(system prompt: {system!r}; history cleared)")
            continue
        history.append({"role": "user", "content": line})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        ids = engine.encode(messages)
        if len(ids) >= model.cfg.max_seq_len:
            typer.echo("(the conversation no longer fits the context window: /reset)")
            history.pop()
            continue
        typer.echo("bot> ", nl=False)
        reply: list[int] = []
        shown = [""]

        def show(_row: int, token: int) -> None:
            reply.append(token)
            text = engine.decode(reply, sampling.stop_tokens)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                typer.echo(text[len(shown[0]) :], nl=False)
                shown[0] = text

        answer = engine.generate([ids], sampling, generator=generator, on_token=show)[0].text
        typer.echo(answer[len(shown[0]) :])
        history.append({"role": "assistant", "content": answer})


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@app.command()
@user_errors
def serve(
    ckpt: Annotated[
        list[Path],
        typer.Option(
            help="checkpoint, stage or run directory (repeatable); a run directory "
            "serves every stage with a language model in it"
        ),
    ],
    db: Annotated[Path, typer.Option(help="SQLite file the arena's votes go to (created if missing)")] = Path(
        "votes.sqlite"
    ),
    host: Annotated[str, typer.Option(help="address to bind; anything but loopback needs an API key")] = "127.0.0.1",
    port: int = 8000,
    api_key: Annotated[
        Optional[str],
        typer.Option(
            envvar="FROMZERO_API_KEY",
            help="require 'Authorization: Bearer KEY' on the API (default: $FROMZERO_API_KEY)",
        ),
    ] = None,
    max_batch: Annotated[int, typer.Option(help="requests sharing one decode step (1: one at a time)")] = 16,
    max_tokens: Annotated[int, typer.Option(help="the most new tokens a request may ask for")] = 512,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | mps")] = "auto",
):
    """Serve models: chat and a blind A/B arena in the browser (votes go to --db, which `fromzero reward --data`
    trains on), a leaderboard, and an OpenAI-compatible API at /v1."""
    import uvicorn

    from fromzero.dist import pick_device
    from fromzero.serve import models as served
    from fromzero.serve.app import Limits, create_app

    if not is_loopback(host) and not api_key:
        raise ValueError(
            f"--host {host} is reachable from other machines: set --api-key or FROMZERO_API_KEY (or bind 127.0.0.1)"
        )
    if max_batch < 1 or max_tokens < 1:
        raise ValueError("--max-batch and --max-tokens must be at least 1")
    import torch

    # the event loop gets one thread: an OpenMP team of its own would spin against the batchers' (BENCHMARKS.md)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    loaded = served.load(ckpt, device=str(pick_device(device)), max_batch=max_batch, threads=threads)
    application = create_app(loaded, db, api_key=api_key, limits=Limits(max_tokens=max_tokens))
    base = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    for m in loaded:
        typer.echo(f"model {m.name}: {m.path} (sha {m.sha})")
    typer.echo(f"chat {base}/chat · arena {base}/arena · leaderboard {base}/leaderboard · API {base}/v1 · votes {db}")
    uvicorn.run(application, host=host.strip("[]"), port=port, log_level="warning")


@app.command()
@user_errors
def votes(
    db: Annotated[Path, typer.Option(help="vote database written by `fromzero serve`")],
    out: Annotated[Path, typer.Option(help="JSONL file to write")],
    format: Annotated[
        str, typer.Option(help="trl (prompt/chosen/rejected) or battles (model_a, model_b, winner)")
    ] = "trl",
):
    """Export the arena's votes: TRL preference JSONL (what `fromzero reward|dpo --data` trains on, also read
    straight from the .sqlite file) or a battle log for rankings."""
    from fromzero.checkpoint import write_text_atomic
    from fromzero.data import preference as store

    exporters = {"trl": store.export_preferences, "battles": store.export_battles}
    if format not in exporters:
        raise ValueError(f"--format {format!r}: use one of {', '.join(exporters)}")
    if not db.is_file():
        raise FileNotFoundError(f"{db}: no such vote database")
    conn = store.connect(db)
    try:
        rows = list(exporters[format](conn))
    finally:
        conn.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    typer.echo(f"{len(rows)} records to {out}")


@app.command("eval")
@user_errors
def evaluate(
    ckpt: Ckpt,
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
    ckpt: Ckpt,
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
    typer.echo(
        prompt + complete(model, tok, [prompt], max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)[0]
    )


@app.command()
@user_errors
def export(
    ckpt: Annotated[Path, typer.Option(help="checkpoint or stage directory of a language model (or hf:DIR)")],
    out: Annotated[Path, typer.Option(help="directory (hf) or .gguf file (gguf) to write; must not exist")],
    format: Annotated[
        str, typer.Option(help="hf (transformers: AutoModelForCausalLM, AutoTokenizer) or gguf (llama.cpp, Ollama)")
    ] = "hf",
    dtype: Annotated[
        Optional[str],
        typer.Option(help="hf: float32, bfloat16 or float16 (default float32); gguf: f32 or f16 (default f16)"),
    ] = None,
):
    """Write a checkpoint as a transformers model directory or a GGUF file, tokenizer and chat template included."""
    if format == "hf":
        from fromzero.interop import hf

        written = hf.export(ckpt, out, dtype or "float32")
    elif format == "gguf":
        from fromzero.interop import gguf

        written = gguf.export(ckpt, out, dtype or "f16")
    else:
        raise ValueError(f"--format {format!r}: use hf or gguf")
    typer.echo(f"exported {ckpt} to {written}")


@app.command()
@user_errors
def config(preset: Preset = "tiny", overrides: Overrides = None):
    """Print the resolved config and the plan it makes (model size, tokens per step, total tokens)."""
    from fromzero.plan import describe

    cfg = _config(preset, overrides)
    typer.echo(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    typer.echo(yaml.safe_dump({"plan": describe(cfg)}, sort_keys=False))


synth_app = typer.Typer(
    help="Write your own fine-tuning data, locally: instruction pairs from documents, preference pairs from prompts.",
    no_args_is_help=True,
)
app.add_typer(synth_app, name="synth")
GenCkpt = Annotated[
    Optional[Path], typer.Option("--ckpt", help="generator: a fromzero or hf:DIR checkpoint, run in this process")
]
Endpoint = Annotated[
    Optional[str],
    typer.Option(
        help="generator: an OpenAI-compatible server (fromzero serve, "
        "Ollama, llama.cpp, vLLM), e.g. http://127.0.0.1:8000/v1"
    ),
]
ModelName = Annotated[Optional[str], typer.Option("--model", help="the endpoint's model name")]
ApiKey = Annotated[Optional[str], typer.Option(envvar="FROMZERO_SYNTH_API_KEY", help="the endpoint's API key")]
Judge = Annotated[
    Optional[str],
    typer.Option(
        help="none, llm (the generator rates each pair 1-10) or reward "
        "(--judge-ckpt's reward model); default synth.judge"
    ),
]
JudgeCkpt = Annotated[Optional[Path], typer.Option(help="reward model checkpoint for --judge reward")]


def _synth_setup(preset, overrides, ckpt, endpoint, model, api_key, device, **settings):
    from fromzero.dist import pick_device
    from fromzero.synth.generators import make_generator

    extra = [f"synth.{k}={json.dumps(v)}" for k, v in settings.items() if v is not None]
    cfg = _config(preset, list(overrides or []) + extra)
    dev = str(pick_device(device))
    return (
        cfg,
        make_generator(ckpt=ckpt, endpoint=endpoint, model=model, api_key=api_key, cfg=cfg.synth, device=dev),
        dev,
    )


@synth_app.command("instruct")
@user_errors
def synth_instruct(
    docs: Annotated[
        list[str], typer.Option(help="documents (txt/md/jsonl/json/parquet files, dirs, globs; repeatable)")
    ],
    out: Annotated[
        Path, typer.Option(help="SFT JSONL to write (messages format; beside it .raw, .rejected and .report files)")
    ],
    ckpt: GenCkpt = None,
    endpoint: Endpoint = None,
    model: ModelName = None,
    api_key: ApiKey = None,
    pairs_per_chunk: Annotated[
        Optional[int], typer.Option(help="pairs asked for per chunk (synth.pairs_per_chunk)")
    ] = None,
    template: Annotated[Optional[Path], typer.Option(help="prompt template with {chunk} and {n}")] = None,
    judge: Judge = None,
    judge_ckpt: JudgeCkpt = None,
    decontaminate: Annotated[
        Optional[list[str]],
        typer.Option(help="evaluation file whose n-grams kept questions must not share (repeatable)"),
    ] = None,
    preset: Preset = "tiny",
    overrides: Overrides = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | mps (for --ckpt and a reward judge)")] = "auto",
):
    """Question/answer pairs about every chunk of your documents, filtered, as SFT data. Re-running with the same
    settings skips the requests already answered."""
    from fromzero import synth
    from fromzero.synth.judges import make_judge

    cfg, gen, dev = _synth_setup(
        preset,
        overrides,
        ckpt,
        endpoint,
        model,
        api_key,
        device,
        docs=docs,
        pairs_per_chunk=pairs_per_chunk,
        template=str(template) if template else None,
        judge=judge,
        judge_ckpt=str(judge_ckpt) if judge_ckpt else None,
        decontaminate=decontaminate,
    )
    s = cfg.synth
    # chunks are counted in the generator's tokens, or for an endpoint in words (its tokenizer is the server's)
    tok = gen.engine.tok if isinstance(gen, synth.EngineGenerator) else synth.WordSpans()
    chunks = synth.chunk_documents(synth.read_documents(s.docs, s.text_field), tok, s.chunk_tokens, s.chunk_overlap)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = synth.synth_instructions(
        chunks, gen, s, out, judge=make_judge(s.judge, gen, ckpt=s.judge_ckpt, template=s.judge_template, device=dev)
    )
    typer.echo(f"{len(chunks)} chunks\n{report.table()}\nkept pairs: {out} (train on them: fromzero sft --data {out})")


@synth_app.command("prefs")
@user_errors
def synth_prefs(
    prompts: Annotated[
        Path,
        typer.Option(
            help="prompts: instruction JSONL (e.g. what synth instruct wrote), records "
            "with prompt/question, or one per line of a .txt"
        ),
    ],
    out: Annotated[Path, typer.Option(help="preference JSONL to write (prompt/chosen/rejected)")],
    ckpt: GenCkpt = None,
    endpoint: Endpoint = None,
    model: ModelName = None,
    api_key: ApiKey = None,
    k: Annotated[int, typer.Option(help="answers sampled per prompt")] = 4,
    judge: Judge = "llm",
    judge_ckpt: JudgeCkpt = None,
    preset: Preset = "tiny",
    overrides: Overrides = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | mps")] = "auto",
):
    """k answers per prompt, ranked by a judge: the best and the worst are a preference pair for fromzero
    reward|dpo --data. Ties and unscored prompts are dropped and counted."""
    from fromzero import synth
    from fromzero.synth.judges import make_judge

    cfg, gen, dev = _synth_setup(
        preset,
        overrides,
        ckpt,
        endpoint,
        model,
        api_key,
        device,
        judge=judge,
        judge_ckpt=str(judge_ckpt) if judge_ckpt else None,
    )
    s = cfg.synth
    scorer = make_judge(
        s.judge, gen, ckpt=s.judge_ckpt, template=s.judge_template, device=dev, default="prefs_judge.txt"
    )
    if scorer is None:
        raise ValueError("synth prefs needs a judge: --judge llm or --judge reward --judge-ckpt DIR")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = synth.synth_preferences(synth.read_prompts(prompts), gen, scorer, s, out, k=k)
    typer.echo(f"{report.table()}\npreference pairs: {out} (train on them: fromzero reward --data {out})")
