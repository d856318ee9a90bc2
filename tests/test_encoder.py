"""Our BPE against OpenAI's tokenizer as tiktoken implements it, on the real vocabulary files."""

import glob
import os
import random
import string

import pytest
from helpers import PROMPT, PROMPT_IDS, REPO_DIR
from hypothesis import given, settings
from hypothesis import strategies as st

import encoder as encoder_module

CORPUS = [
    "",
    " ",
    "Hello world",
    "Not all heroes wear capes.",
    "I'm sure they'll say we've done what you'd've done; it's HIS and HE'S and 'Tis, o'clock.",
    "   leading spaces, trailing spaces   ",
    "line one\nline two\n\n\nline five\r\nwindows\ttab\t\tdouble tab",
    "\n\n\n",
    "       \n    \n  x  ",
    "def f(x):\n    return {'a': [1, 2.5e-3, 0x1F]}  # comment\n\tif x != y and z >= 3: pass",
    'int main(void) { printf("%d\\n", a[i++] << 2); return 0; }',
    "0 1 12 123 1234 12345 3.14159 1,000,000 +49 (0)30 2026-11-25 10:30:00",
    "日本語のテキストと中文文本，还有한국어 텍스트.",
    "Emoji: 🤗👍🏽👩‍👩‍👧‍👦🇩🇪 ✨🔥 and a heart ❤️",
    "Ελληνικά, русский текст, עברית, العربية, हिन्दी, ไทย",
    "Combining: e\u0301 a\u0308 n\u0303 — em dash – en dash … ellipsis «quotes» “curly” ‘single’",
    "Zero\u200bwidth\u00a0nbsp\u2028line sep\u3000ideographic space",
    "<|endoftext|> is plain text here",
    "$$$ !!! ??? ... --- *** ___ ### @@@ %%% ^^^ &&& |||",
    "https://example.com/path?query=1&b=two#frag user@example.org",
    "A" * 300 + " " + "ab" * 200,
    "\x00\x01\x7f control \x1b[31mred\x1b[0m",
]


def source_texts():
    """Real prose and code: this repository's own files."""
    paths = sorted(glob.glob(os.path.join(REPO_DIR, "*.py")) + glob.glob(os.path.join(REPO_DIR, "*.md")))
    return [open(p, encoding="utf-8").read() for p in paths]


def test_published_ids(encoder):
    assert encoder.encode(PROMPT) == PROMPT_IDS
    assert encoder.encode("Not all heroes wear capes.") == [3673, 477, 10281, 5806, 1451, 274, 13]


def test_matches_tiktoken_on_corpus(encoder, tiktoken_gpt2):
    for text in CORPUS + source_texts():
        assert encoder.encode(text) == tiktoken_gpt2.encode_ordinary(text), text[:80]


def test_round_trip_on_corpus(encoder):
    for text in CORPUS + source_texts():
        assert encoder.decode(encoder.encode(text)) == text


def test_decode_matches_tiktoken(encoder, tiktoken_gpt2):
    ids = list(range(0, 50257, 7))
    assert encoder.decode(ids) == tiktoken_gpt2.decode(ids)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_matches_tiktoken_on_random_text(encoder, tiktoken_gpt2, text):
    ids = encoder.encode(text)
    assert ids == tiktoken_gpt2.encode_ordinary(text)
    assert encoder.decode(ids) == text


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list(" \n\t'sdtmlvreA1é日🤗.,!-")), max_size=40))
def test_matches_tiktoken_on_tricky_alphabet(encoder, tiktoken_gpt2, text):
    """Whitespace runs, contractions and mixed classes, where the split pattern's corner cases live."""
    assert encoder.encode(text) == tiktoken_gpt2.encode_ordinary(text)


def test_word_cache_stays_bounded(encoder, monkeypatch):
    monkeypatch.setattr(encoder_module, "MAX_CACHED_WORDS", 1000)
    encoder.cache.clear()
    text = " ".join(f"w{i}x" for i in range(5000))  # 5000 distinct words
    ids = encoder.encode(text)
    assert len(encoder.cache) <= 1000
    assert encoder.decode(ids) == text


TRICKY_TEXT = "Emoji 🤗👍🏽👩‍👩‍👧 and 日本語のテキスト, 한국어, ελληνικά."


def test_stream_holds_back_split_characters(encoder):
    ids = encoder.encode(TRICKY_TEXT)
    assert any("\ufffd" in encoder.decode([i]) for i in ids)  # some characters are split over tokens
    pieces = list(encoder.decode_stream(ids))
    assert "".join(pieces) == TRICKY_TEXT == encoder.decode(ids)
    assert not any("\ufffd" in piece for piece in pieces)
    assert len(pieces) > 10


def test_stream_of_invalid_bytes_equals_decode(encoder):
    ids = [encoder.encode("日")[0], 220, encoder.encode("🤗")[0]]  # lone first bytes of characters
    assert "".join(encoder.decode_stream(ids)) == encoder.decode(ids)
    assert "".join(encoder.decode_stream(ids[:1])) == encoder.decode(ids[:1])


class CountingRanks(dict):
    """bpe_ranks that count how often they are consulted: the work BPE does on a word."""

    lookups = 0

    def get(self, *args):
        CountingRanks.lookups += 1
        return super().get(*args)

    def __contains__(self, key):
        CountingRanks.lookups += 1
        return super().__contains__(key)


@pytest.mark.slow
def test_long_words_cost_work_in_proportion_to_their_length(encoder, tiktoken_gpt2, monkeypatch):
    """A client can send one word of a megabyte: merging must not rescan the word after each merge
    (quadratic: half a minute for 40,000 letters), yet give tiktoken's ids."""
    letters = "".join(random.Random(0).choices(string.ascii_letters, k=40_000))
    monkeypatch.setattr(encoder, "bpe_ranks", CountingRanks(encoder.bpe_ranks))
    for word in (letters, " " + letters[:20_000], "ab" * 20_000, "🤗" * 5_000):
        CountingRanks.lookups = 0
        encoder.cache.clear()
        assert encoder.encode(word) == tiktoken_gpt2.encode_ordinary(word)
        assert CountingRanks.lookups < 10 * len(word.encode())
