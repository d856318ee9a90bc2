"""The most likely tokens of rows of logits, and a token's text, as the answers write them: the
completions' logprobs and the page's lens and next-token bars.
"""

import numpy as np

from common import on_every_core


def token_text(encoder, token_id):
    """A token's text as OpenAI writes it in logprobs: its UTF-8 text, or "bytes:\\xe2\\x80" for a
    piece of a character."""
    data = encoder.decode_bytes([token_id])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{byte:02x}" for byte in data)


ROWS_AT_A_TIME = 32  # rows of logits that most_likely takes on at once on a core: 6 MB, in the cache


def most_likely(logits, n_top):  # [n, n_vocab] -> ids, logprobs [n, n_top], most likely first
    """Each row's n_top most likely tokens and their log-probabilities (the lens asks this of every layer
    at every position), ROWS_AT_A_TIME rows at a time on a thread per core."""
    n_top = min(n_top, logits.shape[1])
    ids, logprobs = np.empty((len(logits), n_top), np.int64), np.empty((len(logits), n_top), np.float32)

    def work(rows):
        ids[rows], logprobs[rows] = top_of_rows(logits[rows], n_top)

    on_every_core(work, len(logits), ROWS_AT_A_TIME)
    return ids, logprobs


def top_of_rows(logits, n_top, group_size=64):  # [n, n_vocab] -> ids, logprobs [n, n_top], most likely first
    """most_likely's, without sorting a row or taking the log-softmax of all of it. A row's logits are
    dealt into groups (group g: columns g, g + n_groups, g + 2*n_groups, ...), the last few left over.
    The n_top largest logits lie in the n_top groups whose maxima are largest, so only those groups,
    and the leftovers, are searched."""
    n, n_vocab = logits.shape
    n_groups = max(1, n_vocab // group_size)  # one group for a vocabulary smaller than a group
    group_size = n_vocab // n_groups
    grouped = logits[:, : n_groups * group_size].reshape(n, group_size, n_groups)  # a view: no copy
    best = np.argpartition(-grouped.max(axis=1), min(n_top, n_groups) - 1, axis=-1)[:, :n_top]  # [n, n_top]
    members = (best[..., None] + np.arange(group_size) * n_groups).reshape(n, -1)  # [n, n_top*group_size]
    leftovers = np.broadcast_to(np.arange(n_groups * group_size, n_vocab), (n, n_vocab - n_groups * group_size))
    candidates = np.concatenate([members, leftovers], axis=1)
    values = np.take_along_axis(logits, candidates, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")[:, :n_top]
    top = np.take_along_axis(values, order, axis=1)  # [n, n_top]: the first is the row's largest
    shifted = logits - top[:, :1]  # [n, n_vocab], as log_softmax's: the largest is 0
    log_total = np.log(np.sum(np.exp(shifted, out=shifted), axis=-1, keepdims=True))  # [n, 1]
    return np.take_along_axis(candidates, order, axis=1), top - top[:, :1] - log_total


def top_entries(encoder, ids, logprobs):  # a row of most_likely's -> [{"token", "id", "logprob"}]
    return [{"token": token_text(encoder, int(i)), "id": int(i), "logprob": float(p)} for i, p in zip(ids, logprobs)]
