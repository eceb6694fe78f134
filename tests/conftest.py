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


@pytest.fixture()
def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env.pop("RANK", None)
    return env
