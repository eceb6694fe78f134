"""`fromzero run` end to end on the smoke preset, the stage commands on its checkpoints, and the CLI's handling of
bad input. One smoke run (about 20 s) is shared by the module's tests; the tests that change a run work on a copy."""

import json
import math
import shutil
import subprocess

import pytest
import yaml
from conftest import FROMZERO, cli_environ

KINDS = {
    "people",
    "towns",
    "animals",
    "objects",
    "comparisons",
    "arithmetic",
    "language_models",
    "small_talk",
    "word_problems",
}


def fromzero(*args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        FROMZERO + [str(a) for a in args], env=cli_environ(), input=stdin, capture_output=True, text=True
    )


def jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The run directory of `fromzero run --preset smoke --preference both` (every stage)."""
    out = tmp_path_factory.mktemp("pipeline") / "run"
    done = fromzero("run", "--preset", "smoke", "--out", out, "--preference", "both")
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def stages(run) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    assert summary["preset"] == "smoke"
    assert summary["seconds"] == pytest.approx(sum(s["seconds"] for s in summary["stages"].values()))
    return summary["stages"]


def test_every_stage_ran_and_every_metric_is_a_number(stages):
    assert list(stages) == ["init", "pretrain", "sft", "synth", "reward", "dpo", "ppo", "grpo"]

    def numbers(value):
        if isinstance(value, dict):
            return [x for v in value.values() for x in numbers(v)]
        return [value]

    for name, metrics in stages.items():
        for key, value in metrics.items():
            for x in numbers(value):  # NaN is what a stage reports when it measured nothing
                assert isinstance(x, (int, float)) and math.isfinite(x), (name, key, value)
        assert metrics["seconds"] > 0


def test_random_weights_score_about_ln_vocab_and_each_language_stage_lowers_its_loss(run, stages):
    init, pre = stages["init"], stages["pretrain"]
    assert abs(init["val_loss"] - init["ln_vocab"]) < 0.5
    assert pre["val_bpb"] < init["val_bpb"] - 0.3 and pre["val_loss"] < init["val_loss"]
    sft = jsonl(run / "sft" / "metrics.jsonl")
    assert [r["val_loss"] for r in sft if "val_loss" in r][-1] < sft[0]["loss"] - 0.5  # on held-out conversations


def test_sft_is_graded_against_the_base_model_from_its_answers_log(run, stages):
    sft = stages["sft"]
    for log, prefix in (("heldout_answers.jsonl", ""), ("base_heldout_answers.jsonl", "base_")):
        rows = jsonl(run / "sft" / log)
        for name in ("heldout_phrasing_acc", "heldout_people_acc"):
            graded = [r["correct"] for r in rows if r["set"] == name]
            assert graded and sft[prefix + name] == sum(graded) / len(graded), (log, name)


def test_synth_stage_that_keeps_nothing_keeps_sfts_model(run, stages):
    synth, sft = stages["synth"], stages["sft"]  # the smoke model writes nothing usable: counted, SFT not continued
    assert synth["chunks"] > 0 and synth["kept"] == 0 and synth["failed"] > 0
    assert synth["generated"] == sum(synth["dropped"].values())
    assert synth["new_people_acc_after"] == synth["new_people_acc_before"]
    assert synth["heldout_phrasing_acc_after"] == sft["heldout_phrasing_acc"]
    assert json.loads((run / "synth" / "result.json").read_text())["checkpoint"].startswith(str(run / "sft"))
    assert (run / "data" / "new_people").is_dir() and (run / "synth" / "pairs.rejected.jsonl").exists()


def test_preference_stages_report_what_their_training_logged(run, stages):
    reward = jsonl(run / "reward" / "metrics.jsonl")
    assert stages["reward"]["heldout_acc"] == [r["val_accuracy"] for r in reward if "val_accuracy" in r][-1]
    # DPO's implicit reward of chosen over rejected starts at 0 (policy = reference) and rises on the pairs it trains
    # on (the smoke model's 24 held-out pairs after 10 steps are a coin toss either way), logged for held-out too
    dpo = jsonl(run / "dpo" / "metrics.jsonl")
    margins = [r["rewards/margins"] for r in dpo if "rewards/margins" in r]
    assert abs(margins[0]) < 1e-5 and sum(margins[len(margins) // 2 :]) > 0
    assert "val_rewards/margins" in [r for r in dpo if "val_loss" in r][-1]
    ppo = stages["ppo"]
    logged = jsonl(run / "ppo" / "metrics.jsonl")
    assert ppo["rm_reward_after"] == pytest.approx([r["val_reward"] for r in logged if "val_reward" in r][-1], 1e-4)
    assert logged[0]["kl"] == 0.0 and ppo["kl"] != 0  # the second rollout is sampled from a policy that moved
    for name in ("dpo", "ppo", "grpo"):
        s = stages[name]
        assert 0.5 <= s["gold_win_rate_ceiling"] <= 1 and 0 <= s["gold_win_rate"] <= s["gold_win_rate_ceiling"]
        # every one judged against SFT's same answers
        assert s["gold_score_before"] == ppo["gold_score_before"]


def test_grpo_is_graded_before_and_after_from_its_answers_log(run, stages):
    grpo = stages["grpo"]
    graded = [r["correct"] for r in jsonl(run / "grpo" / "heldout_answers.jsonl")]
    assert len(graded) == 12 and grpo["pass1_after"] == sum(graded) / len(graded)
    for when in ("before", "after"):
        assert grpo[f"pass@2_{when}"] >= grpo[f"pass1_{when}"]  # two tries find at least what one greedy answer does
    # the policy leaves its reference (KL > 0) from the step after the first whose answers differ in reward; until
    # then every group's advantages are 0 and nothing moves it (the smoke model may find no signal for a few steps)
    logged = [r for r in jsonl(run / "grpo" / "metrics.jsonl") if "kl" in r]
    for i, r in enumerate(logged):
        assert (r["kl"] > 0) == any(x["frac_zero_std"] < 1 for x in logged[:i]), logged
    assert all(r["ptx_loss"] > 0 for r in logged)  # SFT's loss on the conversations the reward model ranked


def test_general_evaluation_grades_every_kind_from_sft_on(run, stages):
    for stage in ("sft", "dpo", "ppo", "grpo"):
        per_kind = stages[stage]["general"]
        assert set(per_kind) == KINDS, per_kind
        assert stages[stage]["general_acc"] == sum(per_kind.values()) / len(per_kind)
        graded = jsonl(run / stage / "general_answers.jsonl")
        assert {g["verdict"] for g in graded} <= {"right", "wrong", "evasive"} and all(g["why"] for g in graded)
        for kind, acc in per_kind.items():
            rows = [g["verdict"] == "right" for g in graded if g["kind"] == kind]
            assert acc == sum(rows) / len(rows), (stage, kind)


def test_fixed_prompts_are_answered_by_every_policy_and_graded(run):
    answers = {s: json.loads((run / s / "result.json").read_text())["answers"] for s in ("init", "sft", "reward")}
    assert answers["reward"] == {}  # the reward model does not answer the fixed prompts
    assert len(answers["init"]) == 5 and all("\ufffd" not in a["answer"] for a in answers["init"].values())
    assert all(a["verdict"] in ("right", "wrong", "evasive") and a["why"] for a in answers["sft"].values())
    assert not any("{" in prompt for prompt in answers["sft"])  # placeholders filled from the world


def test_report_has_every_stage_and_its_plots(run):
    report = (run / "report.md").read_text()
    for stage in ("init", "pretrain", "sft", "synth", "dpo", "ppo", "grpo"):
        assert f"| {stage} |" in report
    assert "What is an LLM?" in report and "{trained_person}" not in report and ("✓" in report or "✗" in report)
    assert "## Every kind of question" in report and "| small_talk |" in report and "general_acc" in report
    assert "loss.png" in report and (run / "loss.png").stat().st_size > 1000 and (run / "rl.png").exists()
    assert "data:image/png;base64," in (run / "report.html").read_text()


def test_chat_on_the_runs_sft_model(run):
    chat = fromzero(
        "chat",
        "--ckpt",
        run / "sft",
        "--max-new-tokens",
        "8",
        stdin="Hello!\nWhere does Tom live?\n/system Be brief.\nHi\n/reset\n/quit\n",
    )
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert chat.stdout.count("bot> ") == 3
    assert "(system prompt: 'Be brief.'; history cleared)" in chat.stdout and "(history cleared)" in chat.stdout


def test_ppo_and_grpo_commands_on_the_runs_checkpoints(run, tmp_path):
    ppo = fromzero(
        "ppo", "--preset", "smoke", "--init", run / "sft", "--reward-model", run / "reward", "--out", tmp_path / "ppo"
    )
    assert ppo.returncode == 0 and "checkpoint:" in ppo.stdout, ppo.stderr[-2000:]
    grpo = fromzero("grpo", "--preset", "smoke", "--init", tmp_path / "ppo", "--out", tmp_path / "grpo")
    assert grpo.returncode == 0, grpo.stderr[-2000:]
    assert '"before"' in grpo.stdout and '"pass@1"' in grpo.stdout and '"pass@2"' in grpo.stdout


@pytest.fixture()
def user_files(tmp_path):
    """An instruction file and a preference file a user might bring: chosen answers state a sum, rejected ones
    refuse."""
    inst, prefs = tmp_path / "instructions.jsonl", tmp_path / "prefs.jsonl"
    rows = [(f"What is {i} plus 1?", f"{i} plus 1 is {i + 1}.") for i in range(40)]
    inst.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
            for q, a in rows
        )
    )
    prefs.write_text(
        "".join(json.dumps({"prompt": q, "chosen": a, "rejected": "I do not know."}) + "\n" for q, a in rows)
    )
    return inst, prefs


def test_sft_command_trains_on_the_users_file(run, user_files, tmp_path):
    done = fromzero(
        "sft", "--preset", "smoke", "--init", run / "pretrain", "--out", tmp_path / "sft", "--data", user_files[0]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[sft] 39 training conversations, 1 for validation" in done.stdout and "checkpoint:" in done.stdout
    rows = jsonl(tmp_path / "sft" / "metrics.jsonl")
    assert [r["val_loss"] for r in rows if "val_loss" in r][-1] < rows[0]["loss"] - 1


def test_reward_and_dpo_commands_learn_the_users_preference(run, user_files, tmp_path):
    for stage, key in (("reward", "val_accuracy"), ("dpo", "val_rewards/accuracies")):
        done = fromzero(
            stage, "--preset", "smoke", "--init", run / "sft", "--out", tmp_path / stage, "--data", user_files[1]
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "40 preference records: 40 pairs" in done.stdout and "38 pairs for training, 2 held out" in done.stdout
        assert [r[key] for r in jsonl(tmp_path / stage / "metrics.jsonl") if key in r][-1] == 1.0, stage


def test_eval_sample_and_config_commands(run, stages):
    done = fromzero("eval", "--preset", "smoke", "--ckpt", run / "pretrain", "--data", run / "data")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["metrics"]["val_loss"] == pytest.approx(stages["pretrain"]["val_loss"], 1e-6)  # the stage's evaluator
    assert set(result["answers"]) == {"What is an LLM?", "What is 3 plus 4?"}  # the prompts with no placeholder

    samples = [fromzero("sample", "--ckpt", run / "pretrain", "The cat", "--max-new-tokens", "6") for _ in range(2)]
    assert samples[0].returncode == 0 and samples[0].stdout.startswith("The cat") and len(samples[0].stdout) > 8
    assert samples[0].stdout == samples[1].stdout  # seeded

    shown = fromzero("config", "--preset", "smoke", "--set", "pretrain.steps=7")
    assert shown.returncode == 0, shown.stderr[-2000:]
    printed = yaml.safe_load(shown.stdout)
    assert printed["pretrain"]["steps"] == 7 and printed["preset"] == "smoke" and printed["plan"]


def test_rerun_skips_finished_stages_and_redoes_what_changed(run, stages, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run, out)
    again = fromzero("run", "--preset", "smoke", "--out", out, "--preference", "both")
    assert again.returncode == 0 and "[pretrain] finished earlier, skipped" in again.stdout
    assert json.loads((out / "summary.json").read_text())["stages"]["pretrain"] == stages["pretrain"]

    # DPO added to a run whose PPO and GRPO finished: they read neither DPO's model nor anything redone, so they stay
    shutil.rmtree(out / "dpo")
    add_dpo = fromzero("run", "--preset", "smoke", "--out", out, "--preference", "both")
    assert add_dpo.returncode == 0, add_dpo.stderr[-3000:]
    assert "[dpo] finished earlier" not in add_dpo.stdout and "[dpo] gold_win_rate=" in add_dpo.stdout
    assert "[ppo] finished earlier" in add_dpo.stdout and "[grpo] finished earlier" in add_dpo.stdout

    # GRPO started from PPO's model; with DPO alone it starts from DPO's, so it is redone (and nothing else)
    dpo_only = fromzero("run", "--preset", "smoke", "--out", out, "--preference", "dpo")
    assert dpo_only.returncode == 0, dpo_only.stderr[-3000:]
    assert "[dpo] finished earlier" in dpo_only.stdout and "[grpo] redone: it now starts from dpo" in dpo_only.stdout
    assert json.loads((out / "grpo" / "result.json").read_text())["from"] == "dpo"
    off = fromzero("run", "--preset", "smoke", "--out", out, "--preference", "dpo", "--redo", "ppo")
    assert off.returncode == 2 and "stage 'ppo' is off under preference_tuning=dpo" in off.stderr

    redo = fromzero("run", "--preset", "smoke", "--out", out, "--redo", "pretrain", "--set", "pretrain.steps=10")
    assert redo.returncode == 0 and "[init] finished earlier" in redo.stdout
    assert "[pretrain] finished earlier" not in redo.stdout


def test_a_stage_started_from_other_data_is_redone():
    from fromzero.config import load_config
    from fromzero.pipeline import Start, inputs, source

    cold = load_config("smoke")
    assert source(cold, "sft") == Start("pretrain", ("reasoning cold start",))
    assert str(source(cold, "sft")) == "pretrain + reasoning cold start"  # what result.json records
    assert source(load_config("smoke", ["reasoning_rl=false"]), "sft") == Start("pretrain")
    assert inputs(cold, "sft") == ["pretrain"] and inputs(cold, "ppo") == ["sft", "reward"]
    assert source(load_config("smoke", ["preference_tuning=dpo"]), "grpo") == Start("dpo")


def test_stage_choice_follows_the_config():
    from fromzero.config import load_config
    from fromzero.pipeline import stage_names

    assert stage_names(load_config("smoke")) == ["init", "pretrain", "sft", "synth", "reward", "ppo", "grpo"]
    both = stage_names(load_config("smoke", ["preference_tuning=both", "synthetic_data=false"]))
    assert both == ["init", "pretrain", "sft", "reward", "dpo", "ppo", "grpo"]
    assert stage_names(load_config("smoke", ["preference_tuning=dpo", "reasoning_rl=false"])) == [
        "init",
        "pretrain",
        "sft",
        "synth",
        "dpo",
    ]
    assert "synth" not in stage_names(load_config("tiny"))


def test_cli_reports_bad_config_in_one_line(tmp_path):
    bad = fromzero("run", "--preset", "smoke", "--out", tmp_path, "--set", "pretrain.lrr=1")
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("error: unknown config key 'pretrain.lrr'; valid keys in 'pretrain': steps,")
    assert "Traceback" not in bad.stderr


def test_cli_reports_malformed_data_file_with_line(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "one fine line"}\n{"text": "another"}\n{"text": broken}\n')
    bad = fromzero("data", "--preset", "smoke", "--out", tmp_path / "d", "--set", f"data.sources=[{corpus}]")
    assert bad.returncode == 2
    assert f"{corpus}:3" in bad.stderr and "Traceback" not in bad.stderr


def test_skipped_records_are_counted_in_the_log(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    good = '{"text": "The cat sat on the mat and looked at the dog."}\n'
    corpus.write_text(good * 30 + '{"text": broken}\n' + good * 30)
    done = fromzero(
        "data",
        "--preset",
        "smoke",
        "--out",
        tmp_path / "d",
        "--set",
        f"data.sources=[{corpus}]",
        "--set",
        "data.on_error=skip",
        "--set",
        "data.val_fraction=0.2",  # 5 % of 60 lines is less than one sequence
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"[data] data.sources: skipped 1 malformed records of 61, e.g. {corpus}:31: invalid JSON" in done.stdout


def test_torchrun_two_processes_run_the_pipeline_as_one_does(tmp_path):
    """`torchrun -m fromzero run` with the preset as it is (its micro-batches derived smaller on two ranks): every
    stage, data sharded, rollouts split, metrics reduced, evaluated on rank 0, gives one process's results (fp32:
    bf16's rounding depends on how a sum is split)."""
    sets = [f"{stage}.precision=fp32" for stage in ("pretrain", "sft", "reward", "dpo", "ppo", "grpo")]
    args = ["run", "--preset", "smoke", "--preference", "both"] + [x for s in sets for x in ("--set", s)]
    one = fromzero(*args, "--out", tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [FROMZERO[0], "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        + FROMZERO[1:]
        + args
        + ["--out", str(tmp_path / "two")],
        env=cli_environ(),
        capture_output=True,
        text=True,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / n / "summary.json").read_text())["stages"] for n in ("one", "two"))
    assert list(a) == list(b) == ["init", "pretrain", "sft", "synth", "reward", "dpo", "ppo", "grpo"]
    for stage, metrics in a.items():
        for key, value in metrics.items():
            if key != "seconds":
                # two ranks sum each step's gradients in another order: fp32's last-digit differences grow through
                # the reward model's training to 1.7e-4 of PPO's reward; a sharding or reduction bug moves percents
                assert b[stage][key] == pytest.approx(value, rel=1e-3, abs=1e-5), (stage, key)
    assert a["ppo"]["kl"] != 0  # a value that moved is among those compared
