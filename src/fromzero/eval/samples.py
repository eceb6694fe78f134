"""Answers to the report's fixed prompts, decoded for people to read."""

from __future__ import annotations

from fromzero.generate import Engine, SamplingConfig
from fromzero.model import Transformer
from fromzero.tokenizer import Tokenizer


def non_text_ids(tok: Tokenizer, vocab_size: int) -> tuple[int, ...]:
    """Ids that are not text on their own: pieces of a character, the tokenizer's special tokens but bos (the stop),
    and embedding rows past the tokenizer's vocabulary (an imported Qwen2 model has a few hundred)."""
    # the tokenizer's own specials: an imported one's are not fromzero's ids 0-5
    specials = tuple(sorted(i for i in tok.special_ids if i != tok.bos_id))
    return tuple(tok.partial_ids()) + specials + tuple(range(tok.vocab_size, vocab_size))


def complete(
    model: Transformer,
    tok: Tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    text_only: bool = False,
) -> list[str]:
    """Continue each prompt as raw text, the way a pretrained (not yet chat-tuned) model sees it. `text_only`: never
    sample a token that is not text on its own (a random model's answers are then gibberish made of words and
    pieces of words, not U+FFFD replacement characters) nor a special token but the stop."""
    engine = Engine(model, tok)
    banned = non_text_ids(tok, model.cfg.vocab_size) if text_only else ()
    cfg = SamplingConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=50 if temperature else None,
        stop_tokens=(tok.bos_id,),
        banned_tokens=banned,
    )
    completions = engine.generate([engine.encode(p, chat=False) for p in prompts], cfg, seed=seed)
    return [c.text for c in completions]
