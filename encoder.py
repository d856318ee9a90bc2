"""OpenAI's byte-level BPE tokenizer for GPT-2.

Encoding happens in three steps:
1. A regex splits the text into "words": letters, digits, punctuation and whitespace runs, each
   usually carrying the space in front of it (" world").
2. Each word's UTF-8 bytes are spelled with printable stand-in characters (see bytes_to_unicode).
3. Byte pair encoding merges adjacent symbols of each word, always the pair ranked best in
   vocab.bpe (the leftmost of equals), until no ranked pair is left; each resulting symbol is one
   token id in encoder.json.
Decoding joins the symbols and turns the stand-in characters back into bytes.
"""

import codecs
import heapq
import json
import os

import regex

# Why no re.IGNORECASE: OpenAI's pattern is case sensitive, so "'S" in "HE'S" is not split off like
# "'s" is. We must reproduce that quirk to get the same ids. \p{L} and \p{N} are Unicode letters and
# numbers, which is why this needs the `regex` package and not `re`. `\s+(?!\S)` keeps the last space
# of a whitespace run for the word that follows it, so " world" stays one token.
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

END_OF_TEXT = "<|endoftext|>"  # the token between documents, the last of GPT-2's vocabulary and of bytes_only's

# Distinct words remembered between calls; a long text with many rare words must not grow the cache
# forever, so it is emptied when it gets this big (common words come back quickly).
MAX_CACHED_WORDS = 100_000


def bytes_to_unicode():
    """Map each of the 256 byte values to a printable unicode character.

    BPE works on strings, and vocab.bpe is a text file, so every byte needs a visible character that
    is not whitespace or a control code (those would break the file format and the regex). Printable
    latin-1 bytes stand for themselves; the other 68 bytes are shifted to characters from 256 up.
    That is why a leading space appears as "Ġ" (256 + 32) in encoder.json.
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    byte_to_char, shift = {}, 0
    for b in range(256):
        if b in printable:
            byte_to_char[b] = chr(b)
        else:
            byte_to_char[b] = chr(256 + shift)
            shift += 1
    return byte_to_char


class Encoder:
    def __init__(self, encoder, bpe_merges):
        self.encoder = encoder  # symbol string -> token id
        self.decoder = {v: k for k, v in self.encoder.items()}
        self.bpe_ranks = dict(zip(bpe_merges, range(len(bpe_merges))))
        byte_to_char = bytes_to_unicode()
        # str.translate tables: a word's UTF-8 bytes read as latin-1 characters (one per byte) are
        # translated to their stand-ins in one C call, and back when decoding.
        self.byte_encoder = str.maketrans({chr(b): c for b, c in byte_to_char.items()})
        self.byte_decoder = str.maketrans({c: chr(b) for b, c in byte_to_char.items()})
        self.pattern = regex.compile(PATTERN)
        self.cache = {}  # word -> list of token ids
        self.end_of_text = encoder.get(END_OF_TEXT)  # its id; None in a vocabulary without it

    def bpe(self, word):
        """Merge the symbols of one word (a string of stand-in characters) into BPE tokens.

        The plain way rescans the whole word after each merge, which is quadratic in its length: one
        40,000-letter word would take half a minute. Here the symbols are a linked list (each knows the
        next and the previous one still there) and the ranked pairs wait in a heap, best rank first and
        leftmost among equals, as tiktoken does. A merge changes only the pairs on either side of it, so
        those two are pushed; entries that a merge made stale are skipped when they come out."""
        symbols = list(word)
        if len(symbols) < 2:
            return symbols
        ranks = self.bpe_ranks
        following = [*range(1, len(symbols)), -1]  # the index of the next symbol still there, -1 at the end
        preceding = list(range(-1, len(symbols) - 1))
        heap = [(ranks[pair], i) for i, pair in enumerate(zip(word, word[1:])) if pair in ranks]
        heapq.heapify(heap)
        while heap:
            rank, i = heapq.heappop(heap)
            j = following[i]
            if j < 0 or symbols[i] is None or ranks.get((symbols[i], symbols[j])) != rank:
                continue  # stale: the pair at i has changed since it was pushed
            symbols[i], symbols[j] = symbols[i] + symbols[j], None
            k = following[i] = following[j]
            if k >= 0:
                preceding[k] = i
                if (pair_rank := ranks.get((symbols[i], symbols[k]))) is not None:
                    heapq.heappush(heap, (pair_rank, i))
            h = preceding[i]
            if h >= 0 and (pair_rank := ranks.get((symbols[h], symbols[i]))) is not None:
                heapq.heappush(heap, (pair_rank, h))
        return [symbol for symbol in symbols if symbol is not None]

    def encode_word(self, word):
        ids = self.cache.get(word)
        if ids is None:
            symbols = self.bpe(word.encode("utf-8").decode("latin-1").translate(self.byte_encoder))
            ids = [self.encoder[symbol] for symbol in symbols]
            if len(self.cache) >= MAX_CACHED_WORDS:
                self.cache.clear()
            self.cache[word] = ids
        return ids

    def encode(self, text):
        """Text -> list of token ids. Special tokens such as <|endoftext|> are encoded as plain text."""
        ids = []
        for word in self.pattern.findall(text):
            ids.extend(self.encode_word(word))
        return ids

    def decode_bytes(self, ids):
        """List of token ids -> the UTF-8 bytes they stand for."""
        symbols = "".join(self.decoder[i] for i in ids)
        return symbols.translate(self.byte_decoder).encode("latin-1")

    def decode(self, ids):
        """List of token ids -> text. Bytes that are not valid UTF-8 on their own (part of a character
        split across tokens) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_stream(self, ids):
        """Yield the text of an iterable of token ids piece by piece, as they come. A character whose
        bytes are spread over several tokens (many emoji and CJK characters are) is held back until
        complete, so the pieces add up to exactly decode(ids)."""
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for token_id in ids:
            piece = utf8.decode(self.decode_bytes([token_id]))
            if piece:
                yield piece
        rest = utf8.decode(b"", final=True)
        if rest:
            yield rest


def bytes_only():
    """GPT-2's tokenizer with no merges: each byte is a token (its stand-in character, as in GPT-2's
    vocabulary), and <|endoftext|> is id 256. Any UTF-8 text is 257 tokens' worth of characters with
    nothing to learn first: a character-level model, as nanoGPT's Shakespeare, for any language."""
    byte_to_char = bytes_to_unicode()
    return Encoder(encoder={**{byte_to_char[b]: b for b in range(256)}, END_OF_TEXT: 256}, bpe_merges=[])


def get_encoder(model_name, models_dir):
    """Read models_dir/model_name/encoder.json and vocab.bpe."""
    model_dir = os.path.join(models_dir, model_name)
    return read_encoder(os.path.join(model_dir, "encoder.json"), os.path.join(model_dir, "vocab.bpe"))


def read_encoder(vocabulary_path, merges_path):
    """The tokenizer from OpenAI's encoder.json and vocab.bpe, or the same files under HuggingFace's
    names, vocab.json and merges.txt."""
    with open(vocabulary_path, encoding="utf-8") as f:
        encoder = json.load(f)
    with open(merges_path, encoding="utf-8") as f:
        bpe_data = f.read()
    # The first line is a version header; the file ends with a newline.
    bpe_merges = [tuple(line.split()) for line in bpe_data.split("\n")[1:-1]]
    return Encoder(encoder=encoder, bpe_merges=bpe_merges)


def read_tokenizer_json(path):
    """The tokenizer from HuggingFace's tokenizer.json, whose "model" section holds the same vocabulary
    and merges (each merge as "a b" or as ["a", "b"])."""
    with open(path, encoding="utf-8") as f:
        model = json.load(f)["model"]
    merges = [tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) for merge in model["merges"]]
    return Encoder(encoder=model["vocab"], bpe_merges=merges)
