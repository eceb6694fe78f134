"""`fromzero run` end to end on the smoke preset, and the CLI's handling of bad input."""

import json
import shutil
import subprocess

from conftest import FROMZERO


def test_run_writes_summary_report_and_skips_finished_stages(tmp_path, cli_env):
    out = tmp_path / "run"
    first = subprocess.run(
        FROMZERO + ["run", "--preset", "smoke", "--out", str(out), "--preference", "both"],
        env=cli_env,
        capture_output=True,
        text=True,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["preset"] == "smoke"
    init, pre = summary["stages"]["init"], summary["stages"]["pretrain"]
    assert abs(init["val_loss"] - init["ln_vocab"]) < 0.5  # random weights: about ln(vocab)
    assert pre["val_bpb"] < init["val_bpb"] and pre["seconds"] > 0
    assert summary["seconds"] >= pre["seconds"]

    report = (out / "report.md").read_text()
    assert "| init |" in report and "| pretrain |" in report and "What is an LLM?" in report
    assert "{trained_person}" not in report and "loss.png" in report and (out / "loss.png").stat().st_size > 1000
    assert "data:image/png;base64," in (out / "report.html").read_text()
    sft = summary["stages"]["sft"]
    for key in ("heldout_phrasing_acc", "heldout_people_acc", "base_heldout_phrasing_acc", "base_heldout_people_acc"):
        assert 0.0 <= sft[key] <= 1.0
    assert "| sft |" in report
    synth = summary["stages"]["synth"]  # the smoke model writes nothing usable: counted, and SFT does not continue
    assert synth["chunks"] > 0 and synth["kept"] == 0 and synth["seconds"] > 0
    assert synth["generated"] == sum(synth["dropped"].values()) and synth["failed"] > 0
    assert synth["new_people_acc_after"] == synth["new_people_acc_before"]
    assert synth["heldout_phrasing_acc_after"] == sft["heldout_phrasing_acc"]
    assert (out / "data" / "new_people").is_dir() and (out / "synth" / "pairs.rejected.jsonl").exists()
    assert "| synth |" in report
    assert 0.0 <= summary["stages"]["reward"]["heldout_acc"] <= 1.0
    assert 0.0 <= summary["stages"]["dpo"]["gold_win_rate"] <= 1.0
    ppo = summary["stages"]["ppo"]
    assert 0.5 <= ppo["gold_win_rate_ceiling"] <= 1.0 and 0.0 <= ppo["gold_win_rate"] <= ppo["gold_win_rate_ceiling"]
    for key in ("rm_reward_before", "rm_reward_after", "kl"):
        assert isinstance(ppo[key], float)
    grpo = summary["stages"]["grpo"]
    for key in ("pass1_before", "pass1_after", "sft_heldout_phrasing_acc_after"):
        assert 0.0 <= grpo[key] <= 1.0
    assert grpo["seconds"] > 0 and "| grpo |" in report and (out / "rl.png").exists()
    reward_result = json.loads((out / "reward" / "result.json").read_text())
    assert reward_result["answers"] == {}  # the reward model does not answer the fixed prompts
    for stage in ("sft", "dpo", "ppo", "grpo"):  # the general evaluation: every kind, each stage from SFT on
        per_kind = summary["stages"][stage]["general"]
        assert set(per_kind) == {
            "people",
            "towns",
            "animals",
            "objects",
            "comparisons",
            "arithmetic",
            "language_models",
            "small_talk",
            "word_problems",
        }, per_kind
        assert summary["stages"][stage]["general_acc"] == sum(per_kind.values()) / len(per_kind)
        graded = [json.loads(line) for line in (out / stage / "general_answers.jsonl").read_text().splitlines()]
        assert {g["verdict"] for g in graded} <= {"right", "wrong", "evasive"} and all(g["why"] for g in graded)
    assert "## Every kind of question" in report and "| small_talk |" in report and "general_acc" in report
    init_answers = json.loads((out / "init" / "result.json").read_text())["answers"]
    assert len(init_answers) == 5 and all("\ufffd" not in a["answer"] for a in init_answers.values())
    sft_answers = json.loads((out / "sft" / "result.json").read_text())["answers"]
    assert all(a["verdict"] in ("right", "wrong", "evasive") and a["why"] for a in sft_answers.values()), sft_answers
    assert "✓" in report or "✗" in report

    chat = subprocess.run(
        FROMZERO + ["chat", "--ckpt", str(out / "sft"), "--max-new-tokens", "8"],
        env=cli_env,
        input="Hello!\nWhere does Tom live?\n/system Be brief.\nHi\n/reset\n/quit\n",
        capture_output=True,
        text=True,
    )
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert chat.stdout.count("bot> ") == 3
    assert "(system prompt: 'Be brief.'; history cleared)" in chat.stdout and "(history cleared)" in chat.stdout

    # the stage commands on the run's checkpoints
    ppo_cli = subprocess.run(
        FROMZERO
        + [
            "ppo",
            "--preset",
            "smoke",
            "--init",
            str(out / "sft"),
            "--reward-model",
            str(out / "reward"),
            "--out",
            str(tmp_path / "ppo"),
        ],
        env=cli_env,
        capture_output=True,
        text=True,
    )
    assert ppo_cli.returncode == 0 and "checkpoint:" in ppo_cli.stdout, ppo_cli.stderr[-2000:]
    grpo_cli = subprocess.run(
        FROMZERO + ["grpo", "--preset", "smoke", "--init", str(tmp_path / "ppo"), "--out", str(tmp_path / "grpo")],
        env=cli_env,
        capture_output=True,
        text=True,
    )
    assert grpo_cli.returncode == 0, grpo_cli.stderr[-2000:]
    assert '"before"' in grpo_cli.stdout and '"pass@1"' in grpo_cli.stdout and '"pass@2"' in grpo_cli.stdout

    again = subprocess.run(
        FROMZERO + ["run", "--preset", "smoke", "--out", str(out), "--preference", "both"],
        env=cli_env,
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0 and "[pretrain] finished earlier, skipped" in again.stdout
    assert json.loads((out / "summary.json").read_text())["stages"]["pretrain"] == pre

    # DPO added to a run whose PPO and GRPO finished: they read neither DPO's model nor anything redone, so they stay
    shutil.rmtree(out / "dpo")
    add_dpo = subprocess.run(
        FROMZERO + ["run", "--preset", "smoke", "--out", str(out), "--preference", "both"],
        env=cli_env,
        capture_output=True,
        text=True,
    )
    assert add_dpo.returncode == 0, add_dpo.stderr[-3000:]
    assert "[dpo] finished earlier" not in add_dpo.stdout and "[dpo] gold_win_rate=" in add_dpo.stdout
    assert "[ppo] finished earlier" in add_dpo.stdout and "[grpo] finished earlier" in add_dpo.stdout

    # GRPO started from PPO's model; with DPO alone it starts from DPO's, so it is redone (and nothing else)
    dpo_only = subprocess.run(
        FROMZERO + ["run", "--preset", "smoke", "--out", str(out), "--preference", "dpo"],
        env=cli_env,
        capture_output=True,
        text=True,
    )
    assert dpo_only.returncode == 0, dpo_only.stderr[-3000:]
    assert "[dpo] finished earlier" in dpo_only.stdout and "[grpo] redone: it now starts from dpo" in dpo_only.stdout
    assert json.loads((out / "grpo" / "result.json").read_text())["from"] == "dpo"
    off = subprocess.run(
        FROMZERO + ["run", "--preset", "smoke", "--out", str(out), "--preference", "dpo", "--redo", "ppo"],
        env=cli_env,
        capture_output=True,
        text=True,
    )
    assert off.returncode == 2 and "stage 'ppo' is off under preference_tuning=dpo" in off.stderr

    redo = subprocess.run(
        FROMZERO + ["run", "--preset", "smoke", "--out", str(out), "--redo", "pretrain", "--set", "pretrain.steps=10"],
        env=cli_env,
        capture_output=True,
        text=True,
    )
    assert redo.returncode == 0 and "[init] finished earlier" in redo.stdout
    assert "[pretrain] finished earlier" not in redo.stdout


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


def test_cli_reports_bad_config_in_one_line(tmp_path, cli_env):
    bad = subprocess.run(
        FROMZERO + ["run", "--preset", "smoke", "--out", str(tmp_path), "--set", "pretrain.lrr=1"],
        env=cli_env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("error: unknown config key 'pretrain.lrr'; valid keys in 'pretrain': steps,")
    assert "Traceback" not in bad.stderr


def test_cli_reports_malformed_data_file_with_line(tmp_path, cli_env):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "one fine line"}\n{"text": "another"}\n{"text": broken}\n')
    bad = subprocess.run(
        FROMZERO + ["data", "--preset", "smoke", "--out", str(tmp_path / "d"), "--set", f"data.sources=[{corpus}]"],
        env=cli_env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert f"{corpus}:3" in bad.stderr and "Traceback" not in bad.stderr


def test_help_reads_well(cli_env):
    out = subprocess.run(FROMZERO + ["--help"], env=cli_env, capture_output=True, text=True).stdout
    for command in ("run", "data", "pretrain", "eval", "sample", "config"):
        assert command in out


def test_skipped_records_are_counted_in_the_log(tmp_path, cli_env):
    corpus = tmp_path / "corpus.jsonl"
    good = '{"text": "The cat sat on the mat and looked at the dog."}\n'
    corpus.write_text(good * 30 + '{"text": broken}\n' + good * 30)
    done = subprocess.run(
        FROMZERO
        + [
            "data",
            "--preset",
            "smoke",
            "--out",
            str(tmp_path / "d"),
            "--set",
            f"data.sources=[{corpus}]",
            "--set",
            "data.on_error=skip",
            "--set",
            "data.val_fraction=0.2",
        ],  # 5 % of 60 lines is less than one sequence
        env=cli_env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"[data] data.sources: skipped 1 malformed records of 61, e.g. {corpus}:31: invalid JSON" in done.stdout
