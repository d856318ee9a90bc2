"""The data of a training run, of one kind or another, each kind one type that reads, tokenizes once,
batches to (ids, mask), holds out and samples:

- Texts: documents joined with <|endoftext|>, windows at random offsets, every prediction counted;
- Pairs: a prompt and its completion in each row, only the completion's predictions counted.

read_data() reads the files and chooses the kind; a third kind is one more type with the same methods
(tokenize, micro_batch, held_out, sample), and the loop does not change.
"""

import hashlib
import json
import os
import sys
from typing import NamedTuple

import numpy as np

import gpt2
from gpt2 import plural
from storage.files import (
    JsonlError,
    NotUTF8,
    check_fields,
    partial_path,
    read_jsonl,
    read_utf8,
    remove_leftovers,
    synced,
)

MAX_HELD_OUT_PAIRS = 64  # the held-out loss of pairs is over at most these, the same ones at every evaluation
N_SAMPLE_TOKENS = 40  # a sample of text in the log: tokens after <|endoftext|>


def read_data(options):
    """The data of --data and --val_file, as Texts or Pairs; bad data is refused before the model is loaded."""
    documents = read_documents(options.data)
    val_documents = read_documents([options.val_file]) if options.val_file else None
    kind = Pairs if isinstance(documents[0], Pair) else Texts
    if kind is Pairs and not val_documents and len(documents) < 2:
        raise ValueError(f"{', '.join(options.data)} hold one prompt/completion pair: at least 2, one to hold out")
    if val_documents and isinstance(val_documents[0], Pair) != (kind is Pairs):
        kinds = ("prompt/completion pairs", "texts") if kind is Pairs else ("texts", "prompt/completion pairs")
        raise ValueError(
            f"the data are {kinds[0]} and --val_file {options.val_file} holds {kinds[1]}: give the same kind"
        )
    return kind(documents, val_documents, options)


class Texts:
    """Text to train on: documents joined with <|endoftext|>, tokenized once, windows of --block_size
    tokens at random offsets. Held out: the end of the text, or --val_file's, in evenly spaced windows."""

    def __init__(self, documents, val_documents, options):
        check_text_before_tokens(options, documents, val_documents)
        self.documents, self.val_documents, self.options = documents, val_documents, options

    def tokenize(self, encoder, n_ctx):
        self.encoder, o = encoder, self.options
        self.train_ids, val_ids = training_data(o, self.documents, self.val_documents, encoder, n_ctx)
        del self.documents, self.val_documents  # the ids are what is kept: a large text is not held twice
        self.held_out = held_out_windows(val_ids, o.batch_size, o.block_size)  # [(batch, mask)]

    def micro_batch(self, rng):  # -> ids [n_batch, block_size + 1], None: every prediction counts
        return random_windows(self.train_ids, rng, self.options.batch_size, self.options.block_size), None

    def sample(self, params, n_head, step):
        """A line for the log: the model's text after <|endoftext|>, sampled."""
        end_of_text, n_vocab, n_ctx = self.encoder.end_of_text, len(params["wte"]), len(params["wpe"])
        options = {"temperature": 1.0, "top_k": min(40, n_vocab), "seed": step, "end_of_text": end_of_text}
        new = gpt2.generate([end_of_text], params, n_head, min(N_SAMPLE_TOKENS, n_ctx - 1), **options)
        return f"sample at step {step}: {self.encoder.decode(new)!r}"


class Pairs:
    """Prompt/completion pairs: each pair one row, prompt + completion + <|endoftext|>, and the loss on
    the completion's tokens and that <|endoftext|> only: the model learns to answer, not to write
    prompts. Held out: pairs at evenly spaced places, or --val_file's."""

    def __init__(self, documents, val_documents, options):
        self.pairs, self.val_pairs, self.options = documents, val_documents, options

    def tokenize(self, encoder, n_ctx):
        self.encoder, n_batch = encoder, self.options.batch_size
        train, val = (
            (self.pairs, self.val_pairs) if self.val_pairs else held_out_pairs(self.pairs, self.options.val_fraction)
        )
        self.train_rows, self.val_rows = tokenize_pairs(train, encoder, n_ctx), tokenize_pairs(val, encoder, n_ctx)
        rows = self.val_rows[:MAX_HELD_OUT_PAIRS]
        self.held_out = [pair_batch(rows[i : i + n_batch], encoder.end_of_text) for i in range(0, len(rows), n_batch)]

    def micro_batch(self, rng):  # -> ids [n_batch, longest], the mask of the predictions that count
        rows = [self.train_rows[i] for i in rng.integers(0, len(self.train_rows), size=self.options.batch_size)]
        return pair_batch(rows, self.encoder.end_of_text)

    def sample(self, params, n_head, step):
        """A line for the log: a held-out prompt's greedy completion beside the one held out."""
        ids, n_prompt = self.val_rows[(step // self.options.sample_every - 1) % len(self.val_rows)]
        n_tokens = min(2 * (len(ids) - n_prompt), len(params["wpe"]) - n_prompt)  # room for the answer, and more
        end_of_text, decode = self.encoder.end_of_text, self.encoder.decode
        new = gpt2.generate(ids[:n_prompt], params, n_head, n_tokens, end_of_text=end_of_text) if n_tokens else []
        held_out = decode(ids[n_prompt:-1])
        return f"sample at step {step}: {decode(ids[:n_prompt])!r} -> {decode(new)!r} (held out: {held_out!r})"


def held_out_loss(params, batches, n_head):
    """The mean loss of the held-out batches (batch, mask), over every prediction that counts."""
    total, counted = 0.0, 0.0
    for batch, mask in batches:
        logits = gpt2.gpt2(batch[:, :-1], **params, n_head=n_head)  # [n_batch, n_seq, n_vocab]
        nlls = gpt2.next_token_nlls(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        weights = np.ones_like(nlls) if mask is None else mask.reshape(-1)
        total, counted = total + float(np.dot(weights, nlls)), counted + float(weights.sum())
    return total / counted


# Reading the files: texts, or prompt/completion pairs.


class Pair(NamedTuple):
    """A prompt and the completion the model is to learn to give it, and where the pair was read."""

    prompt: str
    completion: str
    where: str  # "FILE line N", for messages


def read_documents(paths):
    """The documents of the data: each UTF-8 text file is one, and each line of a .jsonl file with a
    "text" field is one; or, from .jsonl lines with "prompt" and "completion", a Pair each. A folder
    gives every regular file in it (sorted), but not hidden ones (.git), not pipes or devices (reading
    one could wait for ever), and not files that are not UTF-8 text (a picture): those are counted on
    stderr. An empty file, a bad file or line given by name, or texts mixed with pairs stop everything
    with the file's name and line, before any model work."""
    documents, skipped = [], {"not UTF-8 text": [], "not a regular file": []}
    for path in paths:
        names = data_files(path, skipped["not a regular file"]) if os.path.isdir(path) else [path]
        for name in names:
            if name.endswith(".jsonl"):
                documents += jsonl_documents(name)
                continue
            try:
                document = read_utf8(name)
            except NotUTF8:
                if name == path:
                    raise
                skipped["not UTF-8 text"].append(name)
                continue
            if not document.strip():
                raise ValueError(f"{name} is empty: there is nothing in it to train on (leave it out)")
            documents.append(document)
    for why, names in skipped.items():
        if names:
            print(f"skipped {plural(len(names), 'file')}, {why}: {', '.join(names)}", file=sys.stderr)
    pairs = [document for document in documents if isinstance(document, Pair)]
    if pairs and len(pairs) < len(documents):
        raise ValueError(
            f"{', '.join(paths)} mix texts with prompt/completion pairs ({pairs[0].where}): give one or the other"
        )
    if not pairs and not any(document.strip() for document in documents):
        raise ValueError(f"no text in {', '.join(paths)}")
    return documents


def jsonl_documents(path):
    """The texts of a .jsonl file's "text" lines, or the Pairs of its "prompt" and "completion" lines:
    the first line says which, and every line must be of that kind."""
    source, records = read_jsonl(path)
    if not records:
        return []
    is_pairs = not {"prompt", "completion"}.isdisjoint(records[0][1])
    fields, others = (("prompt", "completion"), ("text",)) if is_pairs else (("text",), ("prompt", "completion"))
    documents = []
    for number, record in records:
        mixed = [key for key in others if key in record]
        if mixed:
            kind = "prompt/completion pairs" if is_pairs else "texts"
            raise JsonlError(
                f'{source} line {number}: "{mixed[0]}" in a file of {kind} (as its first line): one kind per file'
            )
        check_fields(source, number, record, fields)
        documents.append(
            Pair(record["prompt"], record["completion"], f"{source} line {number}") if is_pairs else record["text"]
        )
    return documents


def data_files(folder, special):
    """The regular files of a folder and its subfolders, sorted, leaving out hidden ones and hidden
    folders; the others (pipes, sockets, devices, broken links) are added to special."""
    found = []
    for directory, subdirectories, names in os.walk(folder):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        for path in (os.path.join(directory, name) for name in names if not name.startswith(".")):
            (found if os.path.isfile(path) else special).append(path)
    return sorted(found)


def tokenizer_digest(encoder):
    """The sha256 of a tokenizer's vocabulary and merges: two tokenizers of one size give other ids."""
    digest = hashlib.sha256(json.dumps(encoder.encoder, sort_keys=True).encode())
    digest.update(json.dumps(sorted(encoder.bpe_ranks, key=encoder.bpe_ranks.get)).encode())  # merges by rank
    return digest.digest()


def tokenize(documents, encoder, cache_dir):
    """The ids of the documents joined with <|endoftext|>, as uint16, tokenized once: cached in cache_dir
    by the sha256 of the documents and of the tokenizer, since BPE in Python takes a while."""
    from tqdm import tqdm

    digest = hashlib.sha256(tokenizer_digest(encoder))
    for document in documents:
        digest.update(hashlib.sha256(document.encode()).digest())
    path = os.path.join(cache_dir, f"{digest.hexdigest()}.npy")
    if os.path.exists(path):
        return np.load(path, allow_pickle=False)
    ids = []
    for document in tqdm(documents, desc="tokenizing", unit="doc", disable=len(documents) < 2):
        ids.extend(encoder.encode(document))
        ids.append(encoder.end_of_text)
    ids = np.array(ids, dtype=np.uint16)
    os.makedirs(cache_dir, exist_ok=True)
    remove_leftovers(cache_dir)
    partial = partial_path(path)
    with open(partial, "wb") as f:
        np.save(f, ids)
        synced(f)
    os.replace(partial, path)
    return ids


# Texts: tokenized once, windows at random offsets.


def training_data(options, documents, val_documents, encoder, n_ctx):
    """The training ids and the held-out ids (of val_documents, or the end of the documents), each
    longer than a window."""
    if options.block_size > n_ctx:
        raise ValueError(f"--block_size {options.block_size} is more than the model's context of {n_ctx}")
    cache = os.path.join(options.models_dir, "tokens")
    ids = tokenize(documents, encoder, cache)
    at = held_out_at(options, len(ids))
    train_ids, val_ids = ids[:at], tokenize(val_documents, encoder, cache) if val_documents else ids[at:]
    check_enough_text(options, len(train_ids), len(val_ids))
    return train_ids, val_ids


def held_out_at(options, n_ids):  # where the held-out part starts (at the end with --val_file, whose fraction is 0)
    return int(n_ids * (1 - options.val_fraction))


def check_text_before_tokens(options, documents, val_documents):
    """The check of check_enough_text before the tokenizer is loaded, on the most tokens the text can
    give: a token is at least one byte, and each document ends with <|endoftext|>."""

    def most_tokens(documents):
        return sum(len(document.encode()) for document in documents) + len(documents)

    n_most = most_tokens(documents)
    at = held_out_at(options, n_most)
    check_enough_text(options, at, most_tokens(val_documents) if val_documents else n_most - at, "at most ")


def check_enough_text(options, n_train, n_held_out, at_most=""):
    sources = {
        "training": ", ".join(options.data),
        "held-out": options.val_file or f"the last {options.val_fraction:.0%}",
    }
    for name, n in (("training", n_train), ("held-out", n_held_out)):
        if n <= options.block_size + 1:
            raise ValueError(
                f"the {name} text ({sources[name]}) has {at_most}{n} tokens, not more than one window of "
                f"--block_size {options.block_size}"
            )


def random_windows(ids, rng, n_batch, block_size):  # -> [n_batch, block_size + 1]
    offsets = rng.integers(0, len(ids) - block_size, size=n_batch)
    return np.stack([ids[o : o + block_size + 1] for o in offsets]).astype(np.int64)


def held_out_windows(ids, n_batch, block_size, max_windows=16):
    """Evenly spaced windows of the held-out ids in batches (batch, None): the same at every evaluation."""
    n_windows = min(max_windows, max(1, (len(ids) - 1) // block_size))
    offsets = np.linspace(0, len(ids) - block_size - 1, n_windows).astype(int)
    windows = np.stack([ids[o : o + block_size + 1] for o in offsets]).astype(np.int64)
    return [(windows[i : i + n_batch], None) for i in range(0, len(windows), n_batch)]


# Pairs: a row each, the prompt's predictions not counted.


def tokenize_pairs(pairs, encoder, n_ctx):
    """(ids, n_prompt) of each pair; a pair longer than the context is refused with its file and line."""
    rows = []
    for pair in pairs:
        prompt = encoder.encode(pair.prompt) or [encoder.end_of_text]  # an empty prompt: a fresh document
        ids = prompt + encoder.encode(pair.completion) + [encoder.end_of_text]
        if len(ids) - 1 > n_ctx:
            raise ValueError(
                f"{pair.where}: prompt, completion and <|endoftext|> are {len(ids)} tokens; the model reads at "
                f"most {n_ctx + 1} (its context of {n_ctx}, and one more to predict)"
            )
        rows.append((ids, len(prompt)))
    return rows


def pair_batch(rows, pad):  # (ids, n_prompt) rows -> ids [n_rows, longest], mask [n_rows, longest - 1]
    """The rows padded to the longest, and the mask of the predictions that count: each completion
    token's and the final <|endoftext|>'s, not the prompt's and not the padding's."""
    longest = max(len(ids) for ids, _ in rows)
    batch = np.full((len(rows), longest), pad, np.int64)
    mask = np.zeros((len(rows), longest - 1), np.float32)
    for i, (ids, n_prompt) in enumerate(rows):
        batch[i, : len(ids)] = ids
        mask[i, n_prompt - 1 : len(ids) - 1] = 1  # prediction j is of token j + 1
    return batch, mask


def held_out_pairs(pairs, fraction):
    """The pairs to train on and those held out: `fraction` of them, at evenly spaced places (not the
    end: a file of examples is often in some order)."""
    n_held_out = min(len(pairs) - 1, max(1, round(len(pairs) * fraction)))
    held_out = set(np.linspace(0, len(pairs) - 1, n_held_out).round().astype(int).tolist())
    return [p for i, p in enumerate(pairs) if i not in held_out], [p for i, p in enumerate(pairs) if i in held_out]
