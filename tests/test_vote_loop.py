"""The human loop, closed: a voter votes through the arena's API by a clear rule, the reward model learns the rule
from the vote database, and PPO against that reward model moves the policy the way the votes pointed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FROMZERO
from serving import make_policies, serving

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import rule_voter  # noqa: E402

PROMPTS = [f"Question {i}?" for i in range(12)]


@pytest.mark.slow
def test_votes_train_a_reward_model_that_ppo_follows(tmp_path, cli_env):
    policies = make_policies(tmp_path, {"a": 0.5, "b": 0.3})
    db = tmp_path / "votes.sqlite"
    with serving(list(policies.values()), db) as base:
        counts = rule_voter.vote(base, PROMPTS, 160, "shorter", max_tokens=32)
    assert sum(counts.values()) == 160 and counts["a"] + counts["b"] >= 50, counts

    def fromzero(*args: str) -> str:
        done = subprocess.run(FROMZERO + [*args, "--preset", "smoke"], env=cli_env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout + done.stderr

    log = fromzero(
        "reward",
        "--init",
        str(policies["a"]),
        "--data",
        str(db),
        "--out",
        str(tmp_path / "rm"),
        "--set",
        "reward.steps=30",
        "--set",
        "reward.seq_len=64",
        "--set",
        "reward.val_fraction=0.25",
        "--set",
        "reward.eval_every=30",
    )
    assert "ties and" in log  # the ties the rule could not break are counted, not silently dropped
    evals = [json.loads(line) for line in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
    accuracy = [e["val_accuracy"] for e in evals if "val_accuracy" in e][-1]
    assert accuracy >= 0.8  # held-out prompts' votes: the rule was learned

    fromzero(
        "ppo",
        "--init",
        str(policies["a"]),
        "--reward-model",
        str(tmp_path / "rm"),
        "--data",
        str(db),
        "--out",
        str(tmp_path / "ppo"),
        "--set",
        "ppo.steps=12",
        "--set",
        "ppo.max_new_tokens=32",
        "--set",
        "ppo.seq_len=64",
        "--set",
        "ppo.eval_every=12",
        "--set",
        "ppo.checkpoint_every=12",
    )
    with serving([policies["a"], tmp_path / "ppo"], tmp_path / "judge.sqlite") as base:
        verdict = rule_voter.judge(base, PROMPTS * 6, "a", "ppo", "shorter")
    assert verdict["after_preferred"] >= 0.6 and verdict["words_after"] < verdict["words_before"], verdict
