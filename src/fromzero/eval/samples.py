"""Answers to the report's fixed prompts, decoded for people to read."""

from __future__ import annotations

from fromzero.generate import SamplingConfig, generate, seeded_generator
from fromzero.model import Transformer
from fromzero.tokenizer import Tokenizer


def complete(model: Transformer, tok: Tokenizer, prompts: list[str], *, max_new_tokens: int,
             temperature: float = 0.0, seed: int = 0) -> list[str]:  # fmt: skip
    """Continue each prompt as raw text, the way a pretrained (not yet chat-tuned) model sees it."""
    ids = [[tok.bos_id] + tok.encode(p) for p in prompts]
    cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=50 if temperature else None,
                         stop_tokens=(tok.bos_id,))  # fmt: skip
    was_training = model.training
    model.eval()
    generator = seeded_generator(model, seed)
    out = generate(model, ids, cfg, pad_id=tok.pad_id, generator=generator)
    model.train(was_training)
    return [tok.decode([t for t in o if t != tok.bos_id]) for o in out]
