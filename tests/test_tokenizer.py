import random

import numpy as np
import pytest

from fromzero.tokenizer import SPECIAL_TOKENS, Tokenizer

WORDS = "the a little girl boy cat dog ran saw big red happy sun tree park home mom said and was to".split()

SAMPLES = [
    "Nel mezzo del cammin di nostra vita mi ritrovai per una selva oscura, ché la diritta via era smarrita.",
    "Tiếng Việt có dấu: Xin chào, bạn khỏe không? Người Việt Nam.",
    "Україна: Привіт, як справи? Ґанок, їжак, єнот.",
    "日本語のテキストです。東京は大きい都市です。カタカナ、ひらがな。",
    "L'élève français a mangé des crêpes à Noël, où ça? « Très bien » — naïve façade.",
    "emoji 😀🎉 family 👨‍👩‍👧‍👦 skin 👍🏽👋🏿 flag 🇮🇹 coder 👩🏽‍💻 heart ❤️",
    "   leading spaces, runs    of     spaces, trailing   ",
    "tabs\tand\t\ttabs\nnewlines\n\n\nand\r\nwindows\r\nendings\n",
    "",
    " ",
    "\n",
    "ΑΒΓ αβγ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u200b zero-width \ufeff BOM \x00 nul \x7f del",
    "numbers 1234567890 3.14159 -42 1e10 0xDEADBEEF",
    "code: def f(x):\n    return x ** 2  # square\n",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    rng = random.Random(0)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "dre", "qua"]
    made_up = ["".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(300)]
    corpus = [" ".join(rng.choice(WORDS + made_up) for _ in range(60)) + "." for _ in range(300)]
    corpus += ["Il gatto è sul tavolo. Привіт світ. こんにちは世界。"] * 20
    return Tokenizer.train(corpus, vocab_size=400)


def random_text(rng: random.Random, n: int) -> str:
    # code points from all planes, skipping surrogates (not encodable as UTF-8)
    chars = []
    for _ in range(n):
        low, high = rng.choice([(0x20, 0x7F), (0x80, 0xD800), (0xE000, 0x110000)])
        chars.append(chr(rng.randrange(low, high)))
    return "".join(chars)


def test_special_ids(tok):
    assert [tok.special_id(s) for s in SPECIAL_TOKENS] == list(range(6))
    assert (tok.bos_id, tok.pad_id, tok.system_id, tok.user_id, tok.assistant_id, tok.end_id) == tuple(range(6))
    with pytest.raises(KeyError):
        tok.special_id("<|nope|>")


def test_vocab_size(tok):
    assert tok.vocab_size == 400
    assert tok.token_bytes().shape == (400,)
    with pytest.raises(ValueError, match="at least 262"):
        Tokenizer.train(["abc"], vocab_size=100)


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_round_trip_random_unicode(tok):
    rng = random.Random(1)
    for _ in range(50):
        text = random_text(rng, rng.randrange(1, 200))
        assert tok.decode(tok.encode(text)) == text


def test_token_bytes_exact(tok):
    token_bytes = tok.token_bytes()
    assert token_bytes[: len(SPECIAL_TOKENS)].tolist() == [0] * len(SPECIAL_TOKENS)
    assert (token_bytes[len(SPECIAL_TOKENS) :] >= 1).all()
    rng = random.Random(2)
    for text in SAMPLES + [random_text(rng, 300) for _ in range(10)]:
        ids = tok.encode(text)
        assert int(token_bytes[ids].sum()) == len(text.encode("utf-8"))
    # tokens that decode to whole characters on their own can be checked one by one
    for i in range(len(SPECIAL_TOKENS), tok.vocab_size):
        text = tok.decode([i])
        if "\ufffd" not in text:
            assert token_bytes[i] == len(text.encode("utf-8"))


def test_special_strings_in_text_are_text(tok):
    text = "hi <|bos|> there <|end|><|user|>"
    ids = tok.encode(text)
    assert not set(ids) & set(range(len(SPECIAL_TOKENS)))
    assert tok.decode(ids) == text


def test_decode_specials(tok):
    ids = [tok.bos_id, *tok.encode("hello"), tok.end_id]
    assert tok.decode(ids) == "<|bos|>hello<|end|>"
    assert tok.decode(ids, skip_special=True) == "hello"


def test_encode_batch_matches_encode(tok):
    assert tok.encode_batch(SAMPLES) == [tok.encode(s) for s in SAMPLES]


def test_save_load(tok, tmp_path):
    path = tok.save(tmp_path / "tok")
    assert path == tmp_path / "tok" / "tokenizer.json"
    for source in (tmp_path / "tok", path):
        loaded = Tokenizer.load(source)
        assert loaded.vocab_size == tok.vocab_size
        assert loaded.encode_batch(SAMPLES) == tok.encode_batch(SAMPLES)
        # the "specials are text" setting isn't stored in tokenizer.json; load must restore it
        assert loaded.encode("<|bos|>") == tok.encode("<|bos|>") != [0]
        np.testing.assert_array_equal(loaded.token_bytes(), tok.token_bytes())
    with pytest.raises(FileNotFoundError):
        Tokenizer.load(tmp_path / "missing")


def test_small_corpus_gives_smaller_vocab():
    tok = Tokenizer.train(["ab ab ab"], vocab_size=1000)
    assert 262 <= tok.vocab_size < 1000
    assert tok.decode(tok.encode("ab ba 🙂")) == "ab ba 🙂"
