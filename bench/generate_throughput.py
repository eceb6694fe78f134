"""Generation throughput: our KV-cache sampler against HF `model.generate` on the same weights.

Both models get the tiny preset's shape and the same weights (our state dict copied into HF's
`LlamaForCausalLM`: the parameter names are identical), the same random prompts and greedy decoding of
exactly --new-tokens tokens (HF: min_new_tokens = max_new_tokens, no eos; use_cache=True). Throughput is
new tokens per second (batch × new tokens / wall time of the whole call, prompt prefill included);
repeats alternate ours, HF, ours, HF, ... and the median is reported. A sanity check first confirms that
greedy outputs of the two are identical in fp32.

    .venv/bin/python bench/generate_throughput.py
    .venv/bin/python bench/generate_throughput.py --batch 1 16 64 --new-tokens 128 --precision fp32 bf16
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import fmt_k, hf_llama, interleaved, load_notes, machine_info, median, print_table, warn_if_busy, write_json  # noqa: E402

from fromzero.generate import SamplingConfig, generate  # noqa: E402
from fromzero.model import ModelConfig, Transformer  # noqa: E402

TINY = dict(dim=256, n_layers=6, n_heads=4, n_kv_heads=4, vocab_size=2048, max_seq_len=256)


def build(seed: int = 0):
    cfg = ModelConfig(**TINY)
    torch.manual_seed(seed)
    ours = Transformer(cfg).eval()
    hf = hf_llama(cfg).eval()
    hf.load_state_dict(ours.state_dict())
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    return cfg, ours, hf


def amp(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def run_ours(model, prompts: torch.Tensor, new_tokens: int, precision: str) -> torch.Tensor:
    with amp(precision):
        out = generate(model, prompts.tolist(), SamplingConfig(max_new_tokens=new_tokens, temperature=0))
    return torch.tensor(out)


@torch.inference_mode()
def run_hf(model, prompts: torch.Tensor, new_tokens: int, precision: str) -> torch.Tensor:
    with amp(precision):
        out = model.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            use_cache=True,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[:, prompts.size(1) :]


def check_greedy_equal(ours, hf, cfg, args) -> dict:
    """Greedy continuations of both models in fp32, token for token."""
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, cfg.vocab_size, (16, args.prompt_len), generator=g)
    a = run_ours(ours, prompts, args.new_tokens, "fp32")
    b = run_hf(hf, prompts, args.new_tokens, "fp32")
    with torch.inference_mode():
        full = torch.cat([prompts, a], dim=1)
        diff = (ours(full) - hf(full).logits).abs().max().item()
    same_rows = int((a == b).all(1).sum())
    return {
        "rows": a.size(0),
        "identical_rows": same_rows,
        "tokens_equal": bool(torch.equal(a, b)),
        "max_abs_logit_diff": diff,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", nargs="+", type=int, default=[1, 16, 64])
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"])
    p.add_argument("--repeats", type=int, default=5, help="timed calls per implementation (median reported)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    p.add_argument("--no-json", action="store_true", help="do not write bench/results/generate-*.json")
    args = p.parse_args()
    if args.prompt_len + args.new_tokens > TINY["max_seq_len"]:
        p.error(f"--prompt-len + --new-tokens must fit max_seq_len={TINY['max_seq_len']}")

    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    info = machine_info(args.threads)
    print(
        f"{info['cpu']} · {info['logical_cpus']} CPUs · {args.threads} threads · torch {info['torch']} · "
        f"transformers {info['transformers']}"
    )
    warn_if_busy(info)
    cfg, ours, hf = build()

    check = check_greedy_equal(ours, hf, cfg, args)
    print(
        f"greedy fp32, ours vs HF on the same weights: {check['identical_rows']}/{check['rows']} rows identical "
        f"over {args.new_tokens} tokens; max |logit diff| {check['max_abs_logit_diff']:.2e}"
    )

    cases = []
    for precision in args.precision:
        for batch in args.batch:
            prompts = torch.randint(
                0, cfg.vocab_size, (batch, args.prompt_len), generator=torch.Generator().manual_seed(batch)
            )
            n_tokens = batch * args.new_tokens

            def timed(fn, model):
                def run() -> float:
                    t = time.perf_counter()
                    out = fn(model, prompts, args.new_tokens, precision)
                    dt = time.perf_counter() - t
                    assert out.shape == (batch, args.new_tokens), out.shape
                    return n_tokens / dt

                return run

            t0 = time.perf_counter()
            tok_s, load = interleaved(
                {"ours": timed(run_ours, ours), "hf": timed(run_hf, hf)}, windows=args.repeats, warmup=1
            )
            case = {
                "precision": precision,
                "batch": batch,
                "prompt_len": args.prompt_len,
                "new_tokens": args.new_tokens,
                "other_cpus": load["other_cpus"],
                "rounds_dropped_for_load": load["dropped"],
            }
            for name, xs in tok_s.items():
                case[name] = {
                    "tokens_per_s": median(xs),
                    "ms_per_step": 1000 * batch / median(xs),
                    "runs_tokens_per_s": xs,
                }
            case["speedup"] = case["ours"]["tokens_per_s"] / case["hf"]["tokens_per_s"]
            cases.append(case)
            print(
                f"  {precision} batch {batch:3d}: ours {fmt_k(case['ours']['tokens_per_s'])} tok/s, "
                f"HF {fmt_k(case['hf']['tokens_per_s'])} tok/s ({time.perf_counter() - t0:.0f}s)" + load_notes(case),
                flush=True,
            )

    print()
    headers = ["prec", "batch", "ours tok/s", "HF tok/s", "ours/HF", "ours ms/step", "HF ms/step"]
    rows = [
        [
            c["precision"],
            c["batch"],
            fmt_k(c["ours"]["tokens_per_s"]),
            fmt_k(c["hf"]["tokens_per_s"]),
            f"{c['speedup']:.2f}×",
            f"{c['ours']['ms_per_step']:.2f}",
            f"{c['hf']['ms_per_step']:.2f}",
        ]
        for c in cases
    ]
    table = print_table(headers, rows)
    print(
        f"\nmodel d{cfg.dim} L{cfg.n_layers} H{cfg.n_heads}/{cfg.n_kv_heads} V{cfg.vocab_size}; prompt "
        f"{args.prompt_len} tokens, {args.new_tokens} new tokens, greedy; median of {args.repeats} alternating calls; "
        "ms/step = one decoding step for the whole batch, prefill amortised"
    )
    if not args.no_json:
        path = write_json(
            "generate",
            {"machine": info, "args": vars(args), "model": TINY, "greedy_check": check, "cases": cases, "table": table},
        )
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
