"""Byte-level BPE tokenizer, trained from scratch with HF `tokenizers`.

Byte-level means the base alphabet is the 256 possible bytes, so any Unicode
string can be encoded and `decode(encode(s)) == s` holds exactly (there is no
normalizer and no prefix space). Special tokens come first in the vocabulary:

    0 <|bos|>        document boundary, prepended to every document when packing
    1 <|pad|>        padding
    2 <|system|>     chat roles (the chat template is built on these in stage 2)
    3 <|user|>
    4 <|assistant|>
    5 <|end|>        end of a chat turn

`encode` treats its input purely as text: a literal "<|bos|>" typed by a user
is encoded as ordinary bytes, never as the special id. Special ids only enter a
sequence when code puts them there (`bos_id`, `special_id(...)`).

An imported tokenizer (a Hugging Face checkpoint's `tokenizer.json` with its
`tokenizer_config.json`, and `chat_template.jinja` where it has one) keeps its own
special tokens and Jinja chat template: `bos_id`, `pad_id` and `end_id` come from
its config and template, the role ids are None, and data/chat.py renders
conversations with the template.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|bos|>",
    "<|pad|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
)

# GPT-4 style pre-tokenization split (as in nanochat): words with their leading
# space, numbers in groups of at most 3 digits, punctuation runs, and newlines
# kept apart from other whitespace. Merges never cross these boundaries.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}|"""
    r""" ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)

TOKENIZER_FILE = "tokenizer.json"
# an imported tokenizer's special tokens and chat template, which travel beside tokenizer.json from stage to stage
SIDECAR_FILES = ("tokenizer_config.json", "chat_template.jinja")


def tokenizer_file(path: str | Path) -> Path:
    """Resolve a `tokenizer.json` path or a directory holding one to the file itself."""
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: tokenizer file not found")
    return path


def is_builtin(hf: HFTokenizer) -> bool:
    """Whether a tokenizer has fromzero's special tokens at their ids (then the built-in chat template applies)."""
    return all(hf.token_to_id(name) == i for i, name in enumerate(SPECIAL_TOKENS))


def token_content(token: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken dict with its content."""
    return token.get("content") if isinstance(token, dict) else token


def read_sidecars(directory: Path) -> tuple[dict[str, Any], str | None]:
    """tokenizer_config.json (or {}) and the chat template: chat_template.jinja, else the config's chat_template
    (a string, or a list of named templates of which "default" is the one used)."""
    config_file = directory / SIDECAR_FILES[0]
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    template = config.get("chat_template")
    if (directory / SIDECAR_FILES[1]).is_file():
        template = (directory / SIDECAR_FILES[1]).read_text()
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default")
    return config, template


class Tokenizer:
    """A thin wrapper around `tokenizers.Tokenizer` with the project's conventions."""

    def __init__(self, hf: HFTokenizer, config: dict[str, Any] | None = None, chat_template: str | None = None):
        """`config` and `chat_template` describe an imported tokenizer's special tokens and template; without them
        the tokenizer must have fromzero's special tokens."""
        self._hf = hf
        # Never match special-token strings inside user text (not persisted
        # in tokenizer.json, so it is set on every construction).
        self._hf.encode_special_tokens = True
        self.chat_template: str | None = None
        self.template_vars: dict[str, str] = {}
        if config is None or is_builtin(hf):
            for i, name in enumerate(SPECIAL_TOKENS):
                if hf.token_to_id(name) != i:
                    raise ValueError(f"special token {name!r} must have id {i}, has {hf.token_to_id(name)}")
            self.special_ids = frozenset(range(len(SPECIAL_TOKENS)))
            self.special_strings = SPECIAL_TOKENS
            self.bos_id = self.special_id("<|bos|>")
            self.pad_id = self.special_id("<|pad|>")
            self.system_id: int | None = self.special_id("<|system|>")
            self.user_id: int | None = self.special_id("<|user|>")
            self.assistant_id: int | None = self.special_id("<|assistant|>")
            self.end_id = self.special_id("<|end|>")
            self.eos_id = self.end_id
            return
        self._imported(config, chat_template)

    def _imported(self, config: dict[str, Any], chat_template: str | None) -> None:
        """Special ids of an imported tokenizer: bos (else eos, for a family without one, e.g. Qwen2: its documents
        are separated by it), pad (else eos), and end: the first special token after an assistant's words in the
        chat template (<|im_end|>, <|eot_id|>, </s>), else eos."""
        # template text is encoded with special tokens recognised, as transformers' apply_chat_template does
        self._template_hf = HFTokenizer.from_str(self._hf.to_str())
        self._template_hf.encode_special_tokens = False
        added = self._hf.get_added_tokens_decoder()
        self.special_ids = frozenset(i for i, t in added.items() if t.special)
        self.special_strings = tuple(sorted((added[i].content for i in self.special_ids), key=len, reverse=True))
        names = ("bos_token", "eos_token", "pad_token", "unk_token")
        self.template_vars = {n: token_content(config[n]) for n in names if token_content(config.get(n))}
        ids = {n: i for n, t in self.template_vars.items() if (i := self._hf.token_to_id(t)) is not None}
        eos = ids.get("eos_token")
        if eos is None:
            raise ValueError(
                "the imported tokenizer names no eos_token in tokenizer_config.json (or it is not in "
                "its vocabulary): fromzero needs one to end answers"
            )
        self.bos_id = ids.get("bos_token", eos)
        self.pad_id = ids.get("pad_token", eos)
        self.system_id = self.user_id = self.assistant_id = None
        self.end_id = self.eos_id = eos
        self.chat_template = chat_template
        self._config = config
        if chat_template is not None:
            from fromzero.data.chat import turn_end_id

            self.end_id = turn_end_id(self) or eos

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, progress: bool = False) -> Tokenizer:
        """Train a byte-level BPE with `vocab_size` tokens (specials and the 256 bytes included).

        `texts` is consumed as a stream. A corpus too small to support that
        many merges yields a smaller vocabulary. `progress` shows the trainer's
        own progress bars (counting pairs, merging) in a terminal.
        """
        minimum = len(SPECIAL_TOKENS) + 256
        if vocab_size < minimum:
            raise ValueError(f"vocab_size must be at least {minimum} (specials + 256 bytes), got {vocab_size}")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            # Seed with all 256 bytes, not just those seen in training, so
            # text from any script or emoji is still encodable.
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            # its bars go to stdout, and leave blank lines there when it is not a terminal (piped JSON)
            show_progress=progress and sys.stdout.isatty(),
        )
        hf.train_from_iterator(texts, trainer)
        return cls(hf)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load from a `tokenizer.json` file or a directory containing one; an imported tokenizer's
        tokenizer_config.json (and chat_template.jinja) are read from beside it."""
        file = tokenizer_file(path)
        hf = HFTokenizer.from_file(str(file))
        if is_builtin(hf):
            return cls(hf)
        config, template = read_sidecars(file.parent)
        if not config:
            raise ValueError(
                f"{file}: not a fromzero tokenizer (its first tokens are not {', '.join(SPECIAL_TOKENS)}) "
                f"and no {SIDECAR_FILES[0]} beside it names its special tokens"
            )
        return cls(hf, config, template)

    def save(self, path: str | Path) -> Path:
        """Write `tokenizer.json` into a directory, or to `path` if it names a .json file."""
        path = Path(path)
        if path.suffix != ".json":
            path = path / TOKENIZER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        self._hf.save(str(path))
        if self.system_id is None:  # imported: its special tokens and template go along
            config = {**self._config, "chat_template": self.chat_template}
            (path.parent / SIDECAR_FILES[0]).write_text(json.dumps(config, indent=2, ensure_ascii=False))
            (path.parent / SIDECAR_FILES[1]).unlink(missing_ok=True)
        return path

    @property
    def vocab_size(self) -> int:
        return self._hf.get_vocab_size(with_added_tokens=True)

    def special_id(self, name: str) -> int:
        if name not in SPECIAL_TOKENS:
            raise KeyError(f"unknown special token {name!r}; known: {list(SPECIAL_TOKENS)}")
        return SPECIAL_TOKENS.index(name)

    def encode(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and each token's (start, end) character span in `text` (how text is cut at token boundaries)."""
        e = self._hf.encode(text, add_special_tokens=False)
        return e.ids, e.offsets

    def encode_template(self, text: str) -> list[int]:
        """A rendered chat template's text: special-token strings in it are the special tokens (imported tokenizers)."""
        return self._template_hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # The fast variant skips computing character offsets, which we never use.
        return [e.ids for e in self._hf.encode_batch_fast(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Ids back to text; special tokens appear as their strings unless `skip_special`."""
        return self._hf.decode(list(ids), skip_special_tokens=skip_special)

    def partial_ids(self) -> list[int]:
        """Tokens that are not text on their own: pieces of a multi-byte character, which decode to U+FFFD."""
        return [i for i in range(self.vocab_size) if "\ufffd" in self.decode([i])]

    def token_bytes(self) -> np.ndarray:
        """UTF-8 byte length of every token (0 for specials), for bits-per-byte.

        Exact: a byte-level token is spelled with one stand-in character per
        byte (GPT-2's byte <-> unicode table), so its length in characters is
        its length in bytes, and the lengths of an encoding sum to the UTF-8
        length of the text it came from.
        """
        alphabet = set(pre_tokenizers.ByteLevel.alphabet())
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        for token, i in self._hf.get_vocab(with_added_tokens=False).items():
            if i in self.special_ids:
                continue
            if not alphabet.issuperset(token):
                raise ValueError(f"token {i} ({token!r}) is not a byte-level token")
            lengths[i] = len(token)
        return lengths

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size})"
