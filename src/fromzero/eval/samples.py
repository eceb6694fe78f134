"""Answers to the report's fixed prompts, decoded for people to read."""

from __future__ import annotations

from fromzero.generate import Engine, SamplingConfig
from fromzero.model import Transformer
from fromzero.tokenizer import SPECIAL_TOKENS, Tokenizer


def complete(model: Transformer, tok: Tokenizer, prompts: list[str], *, max_new_tokens: int,
             temperature: float = 0.0, seed: int = 0, text_only: bool = False) -> list[str]:  # fmt: skip
    """Continue each prompt as raw text, the way a pretrained (not yet chat-tuned) model sees it. `text_only`: never
    sample a token that is not text on its own (a random model's answers are then gibberish made of words and
    pieces of words, not U+FFFD replacement characters) nor a special token but the stop."""
    engine = Engine(model, tok)
    specials = tuple(i for i in range(len(SPECIAL_TOKENS)) if i != tok.bos_id)
    banned = tuple(tok.partial_ids()) + specials if text_only else ()
    cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=50 if temperature else None,
                         stop_tokens=(tok.bos_id,), banned_tokens=banned)  # fmt: skip
    completions = engine.generate([engine.encode(p, chat=False) for p in prompts], cfg, seed=seed)
    return [c.text for c in completions]
