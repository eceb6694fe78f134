"""Does llama.cpp run fromzero's GGUF export as fromzero runs the checkpoint? (Not part of the test suite: building
llama-cpp-python compiles llama.cpp, minutes of C++.)

    pip install llama-cpp-python        # compiles llama.cpp; a C/C++ compiler and cmake are needed
    python bench/interop_llamacpp.py [--ckpt DIR] [--dtype f32|f16]

Without --ckpt it makes tiny random fromzero checkpoints (3 layers, 6 heads, 2 KV heads: tied, untied with llama3
rope scaling, tied with linear rope scaling)
and, with transformers installed, a random Qwen2 model imported as hf:DIR (q/k/v biases: llama.cpp's qwen2 path):
a random model is the sharpest test of the layout, since any wrong permutation or name changes every token. For
each prompt it prints the largest logit difference on the prompt, whether llama.cpp's tokenizer gives fromzero's
ids, and whether the greedy continuations are token-identical.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from fromzero import checkpoint
from fromzero.data.chat import render
from fromzero.generate import Engine, SamplingConfig
from fromzero.interop import gguf
from fromzero.model import ModelConfig, RopeScaling, Transformer
from fromzero.tokenizer import Tokenizer

PROMPTS = ["Mia Landry lives in", "The quick brown fox", "What is 3 plus 4? It is", "Numbers: 12345, 678 and"]
TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Mia Landry lives in Oakridge and has a cat named Pip.",
    "What is 3 plus 4? It is 7.",
    "Numbers: 12345, 678 and 9.",
] * 40


def tiny_checkpoint(root: Path, name: str, tied: bool, scaling: RopeScaling | None = None) -> Path:
    tok = Tokenizer.train(TEXT, vocab_size=400)
    tok_file = tok.save(root / "tokenizer.json")
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(
            vocab_size=tok.vocab_size,
            dim=48,
            n_layers=3,
            n_heads=6,
            n_kv_heads=2,
            hidden_dim=80,
            max_seq_len=128,
            tie_embeddings=tied,
            rope_scaling=scaling,
        )
    )
    with torch.no_grad():  # weights large enough that every layer moves the logits
        for param_name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in param_name else 0.15 * torch.randn_like(p))
    return checkpoint.save(root / name, 1, model, tokenizer_file=tok_file, meta={"stage": "sft"})


def tiny_qwen2(root: Path) -> Path | None:
    """A random transformers Qwen2 model (q/k/v biases: llama.cpp's qwen2 architecture) with fromzero's tokenizer,
    imported as hf:DIR; None without transformers."""
    try:
        import transformers
    except ModuleNotFoundError:
        return None
    out = root / "qwen2"
    tok = Tokenizer.train(TEXT, vocab_size=400)
    tok.save(out)
    transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(out / "tokenizer.json"), bos_token="<|bos|>", eos_token="<|end|>", pad_token="<|pad|>"
    ).save_pretrained(out)
    config = transformers.Qwen2Config(
        vocab_size=tok.vocab_size,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.15 * torch.randn_like(p))
    model.save_pretrained(out)
    return out


def compare(ckpt: Path, out: Path, dtype: str, new_tokens: int = 24) -> bool:
    from llama_cpp import GGML_TYPE_F32, Llama

    path = gguf.export(ckpt, out, dtype)
    model, tok = checkpoint.load_model(ckpt).eval(), Tokenizer.load(checkpoint.tokenizer_file(ckpt))
    if dtype == "f16":  # compare against the weights the file holds: matrices rounded to f16, as the export rounds them
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.copy_(p.half().float())
    engine = Engine(model, tok)
    # an f32 KV cache: llama.cpp's default f16 one rounds keys and values (logits then differ by ~3e-3)
    llm = Llama(
        model_path=str(path),
        n_ctx=model.cfg.max_seq_len,
        logits_all=True,
        verbose=False,
        n_threads=2,
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
    )
    chat = render(
        tok,
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where does Mia live?"}],
        generation_prompt=True,
    )[0]
    all_same = True
    for prompt, ids in [(p, engine.encode(p, chat=False)) for p in PROMPTS] + [("(chat template)", chat)]:
        same_tokens = prompt == "(chat template)" or llm.tokenize(prompt.encode(), add_bos=True, special=False) == ids
        llm.reset()
        llm.eval(ids)
        with torch.no_grad():
            ours_logits = model(torch.tensor([ids]))[0]
        diff = (torch.tensor(llm.scores[: len(ids)]) - ours_logits).abs().max().item()
        ours = engine.generate([ids], SamplingConfig(max_new_tokens=new_tokens, temperature=0))[0].tokens
        theirs = []
        for token in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            theirs.append(token)
            if len(theirs) == new_tokens:
                break
        same = ours == theirs
        all_same &= same
        print(
            f"  {prompt!r}: max |logit diff| {diff:.2e}; tokenizer {'same ids' if same_tokens else 'DIFFERENT ids'}; "
            f"greedy {new_tokens} tokens {'identical' if same else 'DIFFER'}"
        )
        if not same:
            print(f"    fromzero  {ours}\n    llama.cpp {theirs}")
    return all_same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, help="a language-model checkpoint (default: tiny random ones)")
    parser.add_argument("--dtype", default="f32", choices=gguf.FILE_TYPES)
    args = parser.parse_args()
    try:
        import llama_cpp
    except ModuleNotFoundError:
        print(
            "llama_cpp is not installed: pip install llama-cpp-python (it compiles llama.cpp: a C/C++ compiler and "
            "cmake are needed, and a few minutes)"
        )
        return 1
    print(f"llama-cpp-python {llama_cpp.__version__}")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        ckpts = (
            [args.ckpt]
            if args.ckpt
            else [
                tiny_checkpoint(Path(tmp), "tied", True),
                tiny_checkpoint(
                    Path(tmp),
                    "untied-llama3-rope",
                    False,
                    RopeScaling(type="llama3", factor=4.0, original_max_position_embeddings=32),
                ),
                tiny_checkpoint(Path(tmp), "tied-linear-rope", True, RopeScaling(type="linear", factor=2.0)),
            ]
        )
        if not args.ckpt and (qwen2 := tiny_qwen2(Path(tmp))) is not None:
            ckpts.append(f"hf:{qwen2}")
        for i, ckpt in enumerate(ckpts):
            print(f"{ckpt} ({args.dtype}):")
            ok &= compare(ckpt, Path(tmp) / f"model{i}.gguf", args.dtype)
    print("all greedy continuations identical" if ok else "some greedy continuations differ")
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
