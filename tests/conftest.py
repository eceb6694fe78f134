import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

# the CLI as the tests run it: the venv's interpreter, whatever the PATH says
FROMZERO = [sys.executable, "-m", "fromzero"]


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory) -> Path:
    """Tokenizer and shards of the smoke preset's built-in world, built once per test session."""
    from fromzero.config import load_config
    from fromzero.data.build import build

    out = tmp_path_factory.mktemp("smoke") / "data"
    build(load_config("smoke"), out, progress=False)
    return out


def cli_environ() -> dict[str, str]:
    """The environment a CLI subprocess runs in: one thread, never a torchrun rank."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env.pop("RANK", None)
    return env


@pytest.fixture()
def cli_env() -> dict[str, str]:
    return cli_environ()


def save_tiny_policy(out: Path):
    """A randomly initialised one-layer model and a small byte-level tokenizer, saved as checkpoint out/init:
    what the RL tests train. Returns (checkpoint, tokenizer, tokenizer file)."""
    from fromzero import checkpoint
    from fromzero.model import ModelConfig, Transformer
    from fromzero.tokenizer import Tokenizer

    tok = Tokenizer.train(["count 1 2 3 4 5 6 7 8 9 10 and say the answer"] * 10, vocab_size=300)
    tok_file = tok.save(out / "tok")
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=48)
    )
    return checkpoint.save(out / "init", 0, model, tokenizer_file=tok_file, meta={"stage": "init"}), tok, tok_file


def save_ending_policy(init: Path, out: Path) -> Path:
    """A copy of the checkpoint at `init` with a large <|end|> row in the output layer, saved as out/init: its
    sampled answers stop after 1 to 12 tokens, where a random model's run on to max_new_tokens."""
    from fromzero import checkpoint
    from fromzero.tokenizer import Tokenizer

    model, tok_file = checkpoint.load_model(init), checkpoint.tokenizer_file(init)
    with torch.no_grad():
        model.lm_head.weight[Tokenizer.load(tok_file).end_id] *= 30
    return checkpoint.save(out / "init", 0, model, tokenizer_file=tok_file, meta={"stage": "init"})
