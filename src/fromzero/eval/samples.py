"""Answers to the report's fixed prompts, decoded for people to read."""

from __future__ import annotations

from fromzero.generate import Engine, SamplingConfig
from fromzero.model import Transformer
from fromzero.tokenizer import Tokenizer


def complete(model: Transformer, tok: Tokenizer, prompts: list[str], *, max_new_tokens: int,
             temperature: float = 0.0, seed: int = 0) -> list[str]:  # fmt: skip
    """Continue each prompt as raw text, the way a pretrained (not yet chat-tuned) model sees it."""
    engine = Engine(model, tok)
    cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=50 if temperature else None,
                         stop_tokens=(tok.bos_id,))  # fmt: skip
    completions = engine.generate([engine.encode(p, chat=False) for p in prompts], cfg, seed=seed)
    return [c.text for c in completions]
