"""GRPO step throughput: `fromzero grpo` against TRL's GRPOTrainer on the same model, prompts and settings.

Both start from the same random weights of the tiny preset's shape (--shape 1m: a ≈1M-parameter model) (ours,
and HF `LlamaForCausalLM` loaded from a copy of them), the same tokenizer (ours, wrapped as a
`PreTrainedTokenizerFast`), the same built-in word problems rendered in our chat template, and the same GRPO
settings: P prompts × G completions per optimizer step in micro-batches of 16, up to N new tokens sampled at
temperature 1 and stopped at <|end|>, β = 0.04 against a frozen reference (--beta 0: no reference), the "grpo"
loss with std-scaled advantages, μ = 1, fp32 (--precision bf16: bf16 autocast for both; --rollout-precision
fp32: fromzero samples in fp32 all the same), and no gradient
checkpointing (--trl-checkpointing: TRL's default; fromzero has none). A random model rarely samples <|end|>, so
both generate close to N tokens per completion (reported).

Measured: seconds per optimizer step (rollout + reference log-probs + forward/backward + AdamW), median
over the steps after the first of each window; windows alternate ours, TRL, ours, TRL, ... Needs `trl`
(`.venv/bin/pip install trl`); without it only ours is measured.

    .venv/bin/python bench/grpo_throughput.py
    .venv/bin/python bench/grpo_throughput.py --steps 6 --windows 3 --new-tokens 64 --prompts 8 --generations 8
    .venv/bin/python bench/grpo_throughput.py --precision bf16 --trl-checkpointing     # TRL's CPU defaults
    .venv/bin/python bench/grpo_throughput.py --shape 1m --prompts 2 --new-tokens 32 --beta 0   # the issue's setting
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import OtherLoad, hf_llama, machine_info, median, print_table, warn_if_busy, write_json  # noqa: E402

from fromzero import checkpoint  # noqa: E402
from fromzero.config import load_config  # noqa: E402
from fromzero.data.tasks import ReasoningConfig, Task, builtin_tasks, encode_prompt  # noqa: E402
from fromzero.data.world import build_world  # noqa: E402
from fromzero.model import ModelConfig, Transformer  # noqa: E402
from fromzero.rewards import accuracy  # noqa: E402
from fromzero.tokenizer import Tokenizer  # noqa: E402
from fromzero.train import grpo  # noqa: E402
from fromzero.train.loop import read_metrics  # noqa: E402

# model shapes: the tiny preset's, and a ≈1M-parameter one (the orientation figure for TRL)
SHAPES = {
    "tiny": dict(dim=256, n_layers=6, n_heads=4, n_kv_heads=4, max_seq_len=256),
    "1m": dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=4, max_seq_len=256),
}
MICRO_BATCH = 16


def setup(work: Path, args) -> tuple[Path, Tokenizer, list[Task]]:
    """A random tiny-shape checkpoint with a tokenizer trained on the smoke world's corpus, and word problems."""
    cfg = load_config("smoke")
    world = build_world(cfg.world)
    tok = Tokenizer.train(world.pretrain_documents(), vocab_size=2048)
    tok_file = tok.save(work / "tokenizer.json")
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, **SHAPES[args.shape]))
    init = checkpoint.save(work / "init", 0, model, tokenizer_file=tok_file, meta={"stage": "init"})
    tasks, _ = builtin_tasks(ReasoningConfig(n_train=2000, n_eval=10, max_steps=3), world)
    return init, tok, tasks


def grpo_config(args, steps: int) -> grpo.GRPOConfig:
    return grpo.GRPOConfig(
        steps=steps,
        prompts_per_step=args.prompts,
        num_generations=args.generations,
        micro_batch_size=MICRO_BATCH,
        max_new_tokens=args.new_tokens,
        seq_len=256,
        lr=1e-5,
        warmup_steps=0,
        beta=args.beta,
        loss_type="grpo",
        precision=args.precision,
        rollout_precision=args.rollout_precision,
        checkpoint_every=10**6,
        eval_every=10**6,
        eval_problems=0,
    )


def run_ours(init: Path, tasks: list[Task], work: Path, args, window: int) -> dict:
    out = work / f"ours-{window}"
    grpo.train(grpo_config(args, args.steps), tasks, [], init, out, log=lambda *_: None)
    records = read_metrics(out)
    times = [b["time"] - a["time"] for a, b in zip(records, records[1:])]  # the first step (warm-up) is dropped
    return {
        "step_s": times,
        "rollout_s": [r["rollout_time"] for r in records[1:]],
        "completion_tokens": median([r["response_length"] for r in records]),
    }


def trl_trainer(init: Path, tok: Tokenizer, tasks: list[Task], work: Path, args, window: int):
    from datasets import Dataset
    from transformers import PreTrainedTokenizerFast, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    model_dir = work / "hf"
    if not model_dir.exists():
        hf = hf_llama(checkpoint.load_model(init).cfg)
        hf.load_state_dict(checkpoint.load_model(init).state_dict())
        hf.save_pretrained(model_dir)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_file=str(checkpoint.tokenizer_file(init)),
        bos_token="<|bos|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        padding_side="left",
    )
    # our chat template as text: its special tokens are special tokens of the HF tokenizer too
    texts = [tok.decode(encode_prompt(tok, t)) for t in tasks]
    assert hf_tok(texts[0], add_special_tokens=False)["input_ids"] == encode_prompt(tok, tasks[0]), (
        "tokenizers disagree"
    )
    dataset = Dataset.from_list([{"prompt": x, "answer": t.answer} for x, t in zip(texts, tasks)])

    def correctness(prompts, completions, answer, **_) -> list[float]:
        return [accuracy(c, Task("", a)) for c, a in zip(completions, answer)]

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []

        def on_step_end(self, *_, **__):
            self.ends.append(time.perf_counter())

    timer = StepTimes()
    config = GRPOConfig(
        output_dir=str(work / f"trl-{window}"),
        max_steps=args.steps,
        per_device_train_batch_size=MICRO_BATCH,
        gradient_accumulation_steps=args.prompts * args.generations // MICRO_BATCH,
        num_generations=args.generations,
        max_completion_length=args.new_tokens,
        temperature=1.0,
        beta=args.beta,
        loss_type="grpo",
        scale_rewards="group",
        num_iterations=1,
        learning_rate=1e-5,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        use_cpu=True,
        bf16=args.precision == "bf16",
        gradient_checkpointing=args.trl_checkpointing,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        disable_dropout=True,
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(
        model=str(model_dir),
        reward_funcs=correctness,
        args=config,
        train_dataset=dataset,
        processing_class=hf_tok,
        callbacks=[timer],
    )
    return trainer, timer


def run_trl(init: Path, tok: Tokenizer, tasks: list[Task], work: Path, args, window: int) -> dict:
    trainer, timer = trl_trainer(init, tok, tasks, work, args, window)
    start = time.perf_counter()
    trainer.train()
    ends = [start, *timer.ends]
    lengths = [r["completions/mean_length"] for r in trainer.state.log_history if "completions/mean_length" in r]
    return {"step_s": [b - a for a, b in zip(ends[1:], ends[2:])], "completion_tokens": median(lengths)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per window (the first is warm-up)")
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny", help="model shape (1m: ≈1M parameters)")
    parser.add_argument("--beta", type=float, default=0.04, help="KL coefficient (0: no reference model)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="both trainers (TRL's bf16 flag)")
    parser.add_argument("--trl-checkpointing", action="store_true", help="TRL with gradient checkpointing, its default")
    parser.add_argument(
        "--rollout-precision",
        choices=["fp32", "bf16"],
        default=None,
        help="fromzero's grpo.rollout_precision (default: --precision)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import trl  # noqa: F401

        have_trl = True
    except ImportError:
        have_trl = False
        print("trl is not installed: measuring fromzero only (.venv/bin/pip install trl to compare)", file=sys.stderr)
    info = machine_info(args.threads)
    warn_if_busy(info)
    results: dict[str, dict[str, list[float]]] = {"fromzero": {"step_s": [], "rollout_s": []}, "trl": {"step_s": []}}
    lengths: dict[str, list[float]] = {"fromzero": [], "trl": []}
    other_cpus = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        init, tok, tasks = setup(work, args)
        for window in range(args.windows):
            for name in ("fromzero", "trl") if have_trl else ("fromzero",):
                with OtherLoad() as load:
                    if name == "fromzero":
                        measured = run_ours(init, tasks, work, args, window)
                    else:
                        measured = run_trl(init, tok, tasks, work, args, window)
                other_cpus = max(other_cpus, load.cpus)
                lengths[name].append(measured.pop("completion_tokens"))
                for key, values in measured.items():
                    results[name][key] += values
    completions = args.prompts * args.generations
    rows, payload = [], {}
    for name, measured in results.items():
        if not measured["step_s"]:
            continue
        step = median(measured["step_s"])
        payload[name] = {
            "step_s_median": step,
            "completions_per_s": completions / step,
            "completion_tokens": median(lengths[name]),
            **measured,
        }
        rollout = f"{median(measured['rollout_s']):.2f}" if measured.get("rollout_s") else "n/a"
        rows.append([name, f"{step:.2f}", rollout, f"{completions / step:.1f}", f"{median(lengths[name]):.1f}"])
    table = print_table(["trainer", "s/step", "of which rollout s", "completions/s", "tokens/completion"], rows)
    if "trl" in payload:
        print(f"fromzero is {payload['trl']['step_s_median'] / payload['fromzero']['step_s_median']:.2f}x TRL per step")
    if other_cpus > 0.3:
        print(f"warning: other processes kept {other_cpus:.1f} CPUs busy during a window", file=sys.stderr)
    path = write_json(
        "grpo", {"machine": info, "args": vars(args), "other_cpus": other_cpus, "results": payload, "table": table}
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
