"""`python gpt2.py --serve`: the model over HTTP, for people and for programs.

- `GET /`: the learner's page (page.html): the prompt as tokens, generation streaming in with each
  token's probability and the model's alternatives, and the attention weights of any layer and head.
- `POST /v1/completions`, `GET /v1/models`: OpenAI's completions API, so that the official `openai`
  client and the tools built on it work unchanged.
- `POST /v1/tokenize`, `/v1/attention`, `/v1/lens`, `/v1/next`: what the page shows of a prompt: its
  tokens, the attention weights of a head or of every head, what each layer would predict (the logit
  lens), and the next token's distribution under the sampling filters; with heads switched off.

Only the standard library's HTTP server: one thread per connection reads and answers requests, and
one thread, the decoder, generates. Requests decode together as the rows of one batch (gpt2.py's
batched KV cache), each row with its own options: a request that comes while a batch runs joins it
between two steps, and a row whose client has gone away leaves it at the next step. The forward
passes that only read a prompt, the logprobs of an echoed prompt and the page's views, run on the
request's own thread beside the decoder: the weights are never written, and NumPy lets go of the
interpreter's lock while it multiplies; the lens's search of its logits, elementwise work, is shared
out to train.py's thread per core. The views of one prompt share one forward pass (kept_inside).
"""

import codecs
import functools
import ipaddress
import json
import os
import queue
import resource
import select
import socket
import sys
import threading
import time
import uuid
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

import gpt2
from gpt2 import N_CTX, N_VOCAB, plural
from train import on_every_core

MAX_BODY_BYTES = 1_000_000  # a request's body: 1024 tokens of prompt are some 5 KB of text
# A body over the limit is still read, up to this, before the answer: a client that sends it whole
# before it reads then gets its 400 rather than a broken pipe
MAX_DRAINED_BYTES = 16_000_000
MAX_CHOICES = 16  # prompts x n of one request
MAX_STOPS = 4  # stop strings, as OpenAI's API
MAX_LOGPROBS = 5  # alternatives per token, as OpenAI's API
ATTENTION_MAX_TOKENS = 64  # beyond this the heat map is too small to read
MAX_CONNECTIONS = 2048  # open connections, idle ones too (each holds a thread); more get 503 at once
LISTEN_BACKLOG = 1024  # connections the kernel holds until they are accepted (socketserver's default is 5)
SHUTDOWN_SECONDS = 8  # after SIGTERM, requests in flight get this long to finish (docker stop waits 10)
BODY_SECONDS = 5  # a body must keep coming: a pause this long ends the request with a 400
# Once a request comes to an idle decoder, it waits for others that were sent at about the same time:
# until none has come for GATHER_SECONDS, GATHER_MAX_SECONDS at most.
GATHER_SECONDS, GATHER_MAX_SECONDS = 0.02, 0.2
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page.html")


class DecoderFailed(RuntimeError):
    """The decoder failed on a batch (a bug, or no memory left): its requests get status 500."""


class BadRequest(ValueError):
    """What the client sent is wrong: answered with status 400 and OpenAI's error object."""

    def __init__(self, message, param=None, code=None):
        super().__init__(message)
        self.param, self.code = param, code


# What a completion request may hold: its type check, and its default.


def as_request_check(check, *bounds, **options):  # one of gpt2.py's checks, its error a BadRequest
    def request_check(name, value):
        try:
            check(name, value, *bounds, **options, show=json.dumps)
        except ValueError as e:
            raise BadRequest(str(e), name) from None
        return value

    return request_check


def whole(low, high):
    return as_request_check(gpt2.check_whole_number, low, high)


def number(low, high, low_open=False):
    check = as_request_check(gpt2.check_number, low, high, low_open=low_open)
    return lambda name, value: float(check(name, value))


def boolean(name, value):
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false, not {json.dumps(value)}", name)
    return value


def text(name, value):
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string, not {json.dumps(value)}", name)
    return value


def token_ids(value):  # a prompt given as token ids, as OpenAI's API takes them, or None
    if isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        if not all(0 <= i < N_VOCAB for i in value):
            raise BadRequest(f"a prompt's token ids must be from 0 to {N_VOCAB - 1}", "prompt")
        return value
    return None


def prompts(name, value):  # -> a list of prompts, each a string or a list of token ids
    if isinstance(value, str) or (value and token_ids(value) is not None):
        return [value]
    if (
        isinstance(value, list)
        and value
        and all(isinstance(item, str) or token_ids(item) is not None for item in value)
    ):
        return value
    raise BadRequest("prompt must be a string, a list of token ids, or a non-empty list of either", name)


def neutral(*values_that_change_nothing):
    """A field of OpenAI's request that the server does not compute: taken at a value that changes
    nothing (LangChain sends frequency_penalty 0 and the like), refused at any other, with the reason."""

    def check(name, value):
        if value not in values_that_change_nothing:
            raise BadRequest(
                f"{name} {json.dumps(value)} is not computed by this server: only {json.dumps(values_that_change_nothing[0])}",
                name,
            )
        return value

    return check


def stops(name, value):
    if value is None:
        return []
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value) or len(value) > MAX_STOPS:
        raise BadRequest(f"stop must be a non-empty string or a list of at most {MAX_STOPS} of them", name)
    return value


def optional(check):
    return lambda name, value: None if value is None else check(name, value)


COMPLETION_FIELDS = {
    "model": (text, None),
    "prompt": (prompts, None),
    "max_tokens": (whole(1, N_CTX), 16),  # at most any GPT-2's context (the model's own is checked later)
    "temperature": (number(0, 2), 1.0),
    "top_p": (number(0, 1, low_open=True), 1.0),
    "top_k": (whole(0, N_VOCAB), 0),
    "n": (whole(1, MAX_CHOICES), 1),
    "stream": (boolean, False),
    "logprobs": (optional(whole(0, MAX_LOGPROBS)), None),
    "echo": (boolean, False),
    "stop": (stops, []),
    "seed": (optional(whole(0, 2**63 - 1)), None),
    "user": (text, None),
    "frequency_penalty": (neutral(0), 0),
    "presence_penalty": (neutral(0), 0),
    "best_of": (neutral(1), 1),
    "logit_bias": (neutral({}), {}),
    "suffix": (neutral(""), ""),
    "stream_options": (neutral({"include_usage": False}, {}), None),
}


def refuse_unknown(body, known):
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise BadRequest(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])


def read_completion_request(body, model_name):
    """The request's options, checked, with their defaults."""
    refuse_unknown(body, COMPLETION_FIELDS)
    for required in ("model", "prompt"):
        if body.get(required) is None:
            raise BadRequest(f"you must provide a {required} parameter", required)
    options = {  # null, as in OpenAI's API, is the default
        name: default if body.get(name) is None else check(name, body[name])
        for name, (check, default) in COMPLETION_FIELDS.items()
    }
    if options["model"] != model_name:
        raise BadRequest(
            f"the model `{options['model']}` is not served here: this server has `{model_name}`",
            "model",
            "model_not_found",
        )
    if len(options["prompt"]) * options["n"] > MAX_CHOICES:
        raise BadRequest(f"prompts x n is at most {MAX_CHOICES} in one request", "n")
    return options


# One choice of a completion: a row of the decoder's batch, and what it has made so far.


class Row:
    """One prompt's continuation as the decoder makes it: the ids, the text (a character split over
    tokens comes out once complete), and when to stop. The decoder calls add(); the request's thread
    reads what it puts in `events`: (index, "token", the token's number, the length of the settled text
    then), and at last (index, "end", finish_reason, the length of the whole text)."""

    def __init__(self, index, prompt_ids, options, rng, encoder, events):
        self.index, self.prompt_ids, self.rng, self.encoder, self.events = index, prompt_ids, rng, encoder, events
        self.max_tokens, self.stops = options["max_tokens"], options["stop"]
        self.sampling = {key: options[key] for key in ("temperature", "top_k", "top_p")}
        self.n_logprobs = options["logprobs"]  # None: the request asked for none
        self.ids, self.entries, self.offsets, self.text = [], [], [], ""
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.finish_reason, self.cancelled = None, False

    def add(self, token_id, logits):
        """The token the decoder chose; returns whether the row is done."""
        if token_id == self.encoder.end_of_text:
            return self.finish("stop")
        self.offsets.append(len(self.text))
        self.ids.append(token_id)
        if self.n_logprobs is not None:
            self.entries.append(logprob_entry(self.encoder, token_id, logits, self.n_logprobs))
        self.text += self.utf8.decode(self.encoder.decode_bytes([token_id]))
        for stop in self.stops:
            at = self.text.find(stop, max(0, self.offsets[-1] - len(stop)))
            if at >= 0:
                self.text = self.text[:at]
                if at > self.offsets[-1]:  # the token starts before the stop string: it is part of the text
                    self.events.put((self.index, "token", len(self.ids) - 1, at))
                return self.finish("stop")
        self.events.put((self.index, "token", len(self.ids) - 1, len(self.settled_text())))
        if len(self.ids) == self.max_tokens:
            return self.finish("length")
        return False

    def finish(self, reason):
        self.text += self.utf8.decode(b"", final=True)
        self.finish_reason = reason
        self.events.put((self.index, "end", reason, len(self.text)))
        return True

    def settled_text(self):
        """The part of the text no later token can take back: all but what could be the start of a stop string."""
        hold = max((len(stop) - 1 for stop in self.stops), default=0)
        return self.text if self.finish_reason else self.text[: max(0, len(self.text) - hold)]


class Batch:
    """The rows decoding together: for each, the logits of its next token [n_rows, n_vocab] and its row
    of the KV cache, lined up at the right after pad[i] empty positions. taken: every row the batch
    has taken from the queue, those that have left it too, so that a failure fails them all."""

    def __init__(self):
        self.rows, self.logits, self.kv_cache, self.pad, self.taken = [], None, None, None, []

    def keep(self, running):  # [n_rows] booleans: the rows that go on
        self.rows = [row for row, keep in zip(self.rows, running) if keep]
        self.logits, self.pad = self.logits[running], self.pad[running]
        self.kv_cache = gpt2.KVCache(self.kv_cache.buffers[:, running], self.kv_cache.n_past)


class Decoder(threading.Thread):
    """The one thread that generates. It decodes the rows of a batch together, one step for all of
    them at a time, and rows that come while it runs join the batch between two steps (up to
    batch_size rows): the prompts of the newcomers are read into new rows of the cache, lined up at the
    right with the others. A row that is done, or whose client has gone, leaves at once."""

    def __init__(self, params, n_head, batch_size):
        super().__init__(daemon=True, name="decoder")
        self.params, self.n_head, self.batch_size = params, n_head, batch_size
        self.waiting, self.deferred = queue.Queue(), []  # deferred: rows that would have made the cache too long
        self.max_length = 2 * len(params["wpe"])  # positions of the cache: its rows start at different times

    def run(self):
        while True:
            self.decode(self.gather())

    def gather(self):
        """The rows to start a batch with: at least one (waiting for it) and those sent at about the same time."""
        rows, self.deferred = self.deferred[: self.batch_size], self.deferred[self.batch_size :]
        if not rows:
            rows.append(self.waiting.get())
        deadline = time.monotonic() + GATHER_MAX_SECONDS
        while len(rows) < self.batch_size:
            try:
                rows.append(self.waiting.get(timeout=min(GATHER_SECONDS, max(0.0, deadline - time.monotonic()))))
            except queue.Empty:
                break
        return rows

    def newcomers(self, room):
        """Rows that wait, deferred ones first, at most room of them."""
        rows, self.deferred = self.deferred[:room], self.deferred[room:]
        while len(rows) < room and not self.waiting.empty():
            rows.append(self.waiting.get())
        return rows

    def decode(self, rows):
        batch = Batch()
        try:
            self.admit(batch, rows)
            while batch.rows:
                self.step(batch)
                self.admit(batch, self.newcomers(self.batch_size - len(batch.rows)))
        except Exception as e:  # costs this batch's requests, not the server
            print(f"error while decoding: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            for row in batch.taken:
                if row.finish_reason is None and not row.cancelled:
                    row.cancelled = True  # and so out of the next batch, if it was deferred
                    row.events.put((row.index, "failed", f"{type(e).__name__}: {e}", 0))

    def step(self, batch):
        """Each row's next token from its logits; the rows that go on feed theirs through the model."""
        token_ids = np.array(
            [gpt2.next_token(batch.logits[i], row.rng.random(), **row.sampling) for i, row in enumerate(batch.rows)]
        )
        running = np.array(
            [
                not row.add(int(t), batch.logits[i]) and not row.cancelled
                for i, (row, t) in enumerate(zip(batch.rows, token_ids))
            ]
        )
        if not running.all():  # a row that is done, or whose client left, costs no more compute
            batch.keep(running)
            token_ids = token_ids[running]
        if batch.rows:
            batch.logits, batch.kv_cache = gpt2.gpt2_cached(
                token_ids[:, None], **self.params, n_head=self.n_head, kv_cache=batch.kv_cache, pad=batch.pad
            )

    def admit(self, batch, newcomers):
        """The newcomers' prompts read into rows of their own. When a new prompt is longer than what the
        rows hold so far, or the cache has too little room left, the cache is laid out anew, the old rows
        moved to the right. Newcomers that would make it longer than max_length wait for the next batch."""
        batch.taken += newcomers
        newcomers = [row for row in newcomers if not row.cancelled]
        if not newcomers:
            return
        n_past = batch.kv_cache.n_past if batch.rows else 0
        n_prompt = max(n_past, *(len(row.prompt_ids) for row in newcomers))
        # room for every row's tokens still to come (the last one is never fed)
        length = max(n_prompt + row.max_tokens - len(row.ids) - 1 for row in batch.rows + newcomers)
        if batch.rows and length > self.max_length:
            self.deferred += newcomers
            return
        new_logits, new_cache, new_pad = gpt2.prefill_rows(
            [row.prompt_ids for row in newcomers], self.params, self.n_head, length, n_prompt
        )
        if not batch.rows:
            batch.rows, batch.logits, batch.kv_cache, batch.pad = newcomers, new_logits, new_cache, new_pad
            return
        shift, new_buffers = n_prompt - n_past, new_cache.buffers
        buffers = np.zeros((new_buffers.shape[0], len(batch.rows) + len(newcomers), *new_buffers.shape[2:]), np.float32)
        buffers[:, : len(batch.rows), :, shift:n_prompt] = batch.kv_cache.buffers[:, :, :, :n_past]
        buffers[:, len(batch.rows) :] = new_buffers
        batch.rows = batch.rows + newcomers
        batch.logits = np.concatenate([batch.logits, new_logits])
        batch.kv_cache, batch.pad = gpt2.KVCache(buffers, n_prompt), np.concatenate([batch.pad + shift, new_pad])


# The answers.


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


def logprob_entry(encoder, token_id, logits, n_top):
    """(token text, its log-probability, {text: log-probability} of the n_top most likely tokens) for a
    token chosen from `logits` (None: an echoed prompt's first token, which nothing predicts). The
    values are the model's own log-softmax, before temperature and filtering."""
    if logits is None:
        return token_text(encoder, token_id), None, None
    chosen = float(gpt2.log_softmax(logits[None])[0, token_id])
    if not n_top:
        return token_text(encoder, token_id), chosen, {}
    ids, logprobs = most_likely(logits[None], n_top)
    return (
        token_text(encoder, token_id),
        chosen,
        {e["token"]: e["logprob"] for e in top_entries(encoder, ids[0], logprobs[0])},
    )


def logprobs_object(entries, offsets):
    """OpenAI's logprobs object of some tokens: their logprob entries and where each starts in the text."""
    tokens, token_logprobs, top_logprobs = zip(*entries) if entries else ((), (), ())
    return {
        "tokens": list(tokens),
        "token_logprobs": list(token_logprobs),
        "top_logprobs": list(top_logprobs),
        "text_offset": list(offsets),
    }


class Completion:
    """A completion request: its rows (each prompt n times) and the response they make."""

    def __init__(self, options, model_name, encoder, params, n_head):
        self.options, self.encoder, self.params, self.n_head = options, encoder, params, n_head
        self.head = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model_name,
        }
        n_ctx, n_vocab = len(params["wpe"]), len(params["wte"])
        if options["top_k"] > n_vocab:  # the request's check allows any GPT-2's vocabulary
            raise BadRequest(f"top_k must be a whole number from 0 to {n_vocab}, not {options['top_k']}", "top_k")
        given = options["prompt"]
        self.prompt_ids = [encode(p, encoder, n_ctx) if isinstance(p, str) else p for p in given]
        self.prompt_texts = [p if isinstance(p, str) else encoder.decode(p) for p in given]
        for ids in self.prompt_ids:
            if len(ids) + options["max_tokens"] > n_ctx:
                raise BadRequest(
                    f"This model's maximum context length is {n_ctx} tokens, however you requested "
                    f"{len(ids) + options['max_tokens']} tokens ({len(ids)} in your prompt; {options['max_tokens']} "
                    "for the completion). Please reduce your prompt; or completion length.",
                    "prompt",
                    "context_length_exceeded",
                )
        self.rows, self.events, self.echoes = [], queue.Queue(), {}
        n, seed = options["n"], options["seed"]
        for ids in self.prompt_ids:
            # the command line's random streams: one sample draws from the seed itself (gpt2.generate),
            # several samples each from the seed and its number (gpt2.generate_batch's rows)
            rngs = [np.random.default_rng(seed)] if n == 1 else gpt2.row_rngs(seed, n)
            for rng in rngs:
                self.rows.append(Row(len(self.rows), ids or [encoder.end_of_text], options, rng, encoder, self.events))

    def echoed(self, i):
        """(text, logprob entries, text offsets) of prompt i when echo is on (made once for its n rows)."""
        if i not in self.echoes:
            self.echoes[i] = self.echo(i) if self.options["echo"] else ("", [], [])
        return self.echoes[i]

    def echo(self, i):
        ids, text = self.prompt_ids[i], self.prompt_texts[i]
        entries, offsets, utf8, decoded = [], [], codecs.getincrementaldecoder("utf-8")(errors="replace"), 0
        for token_id in ids:
            offsets.append(decoded)
            decoded += len(utf8.decode(self.encoder.decode_bytes([token_id])))
        if self.options["logprobs"] is not None and ids:
            logits = [None, *gpt2.gpt2(ids, **self.params, n_head=self.n_head)[:-1]]  # what predicted each token
            entries = [logprob_entry(self.encoder, i, row, self.options["logprobs"]) for i, row in zip(ids, logits)]
        return text, entries, offsets

    def choice(self, index, text="", finish_reason=None, logprobs=None):
        return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}

    def whole(self):
        """The response object once every row is done."""
        choices = []
        for index, row in enumerate(self.rows):
            echo_text, echo_entries, echo_offsets = self.echoed(index // self.options["n"])
            logprobs = None
            if self.options["logprobs"] is not None:
                kept = [k for k, offset in enumerate(row.offsets) if offset < len(row.text)]  # not past a stop string
                entries = echo_entries + [row.entries[k] for k in kept]
                logprobs = logprobs_object(entries, echo_offsets + [len(echo_text) + row.offsets[k] for k in kept])
            choices.append(self.choice(index, echo_text + row.text, row.finish_reason, logprobs))
        return {**self.head, "choices": choices, "usage": self.usage()}

    def usage(self):
        prompt_tokens = sum(len(ids) for ids in self.prompt_ids) * self.options["n"]
        completion_tokens = sum(len(row.ids) for row in self.rows)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    def events_until_done(self, connection):
        """The rows' events as they come, until every row has ended; ConnectionResetError as soon as
        the client has closed its connection."""
        running = len(self.rows)
        while running:
            try:
                event = self.events.get(timeout=0.05)
            except queue.Empty:
                if client_left(connection):
                    raise ConnectionResetError from None
                continue
            if event[1] == "failed":
                raise DecoderFailed(f"the model failed on this request: {event[2]}")
            running -= event[1] == "end"
            yield event

    def chunks(self, connection):
        """The streamed response: a chunk for each row's echoed prompt, then one for each new token (the
        text it settled, and its logprobs) and for each row's end, as they come."""
        for index in range(len(self.rows)):
            echo_text, echo_entries, echo_offsets = self.echoed(index // self.options["n"])
            if echo_text:
                logprobs = logprobs_object(echo_entries, echo_offsets) if self.options["logprobs"] is not None else None
                yield {**self.head, "choices": [self.choice(index, echo_text, None, logprobs)]}
        sent = [0] * len(self.rows)
        for index, kind, value, settled in self.events_until_done(connection):
            row = self.rows[index]
            piece, sent[index] = row.text[sent[index] : settled], settled
            if kind == "end":
                yield {**self.head, "choices": [self.choice(index, piece, value)]}
                continue
            logprobs = None
            if self.options["logprobs"] is not None:
                echo_text = self.echoed(index // self.options["n"])[0]
                logprobs = logprobs_object([row.entries[value]], [len(echo_text) + row.offsets[value]])
            yield {**self.head, "choices": [self.choice(index, piece, None, logprobs)]}

    def cancel(self):
        for row in self.rows:
            row.cancelled = True


def client_left(connection):
    """Whether the client has closed its connection. poll(), not select(): select() cannot watch a
    descriptor numbered 1024 or more, which a busy server has."""
    poller = select.poll()
    poller.register(connection, select.POLLIN)
    if not poller.poll(0):
        return False
    try:
        return not connection.recv(1, socket.MSG_PEEK)  # readable with nothing to read: closed
    except OSError:
        return True


def encode(prompt, encoder, most_tokens):
    """The ids of a prompt. One that has more bytes than most_tokens of the longest tokens can hold is
    refused before the encoder spends its time on it (a request may bring a megabyte)."""
    most_bytes = most_tokens * longest_token_bytes(encoder)
    if len(prompt.encode()) > most_bytes:
        raise BadRequest(
            f"the prompt is longer than {most_tokens} tokens can be: {len(prompt.encode())} bytes, "
            f"more than {most_bytes}",
            "prompt",
            "context_length_exceeded",
        )
    return encoder.encode(prompt)


@functools.cache
def longest_token_bytes(encoder):
    return max(len(encoder.decode_bytes([i])) for i in encoder.decoder)


def tokens_of(prompt, encoder, most_tokens):
    return [{"id": i, "text": encoder.decode([i])} for i in encode(prompt, encoder, most_tokens)]


def inside(ids, params, n_head, ablate=()):  # ids [n_seq] -> streams [n_layer][n_seq, n_embd], weights
    """gpt2()'s forward pass block by block, as transformer_block and mha compute it, keeping what the
    page shows: the residual stream after each block, and every head's attention weights
    [n_layer][n_head, n_seq, n_seq]. The heads in ablate, (layer, head) pairs, are switched off: their
    outputs are zeroed before the attention's output projection, so nothing of theirs reaches the stream."""
    n_seq = len(ids)
    mask = gpt2.causal_mask(n_seq, n_seq)
    x = params["wte"][ids] + params["wpe"][:n_seq]  # [n_seq, n_embd]
    streams, weights = [], []
    for layer, block in enumerate(params["blocks"]):
        attn = block["attn"]
        q, k, v = gpt2.split_qkv(gpt2.linear(gpt2.layer_norm(x, **block["ln_1"]), **attn["c_attn"]), n_head)
        weights.append(gpt2.attention_weights(q, k, mask))  # [n_head, n_seq, n_seq]
        heads = weights[-1] @ v  # [n_head, n_seq, d]: each head's output, before they are merged
        heads[[head for off_layer, head in ablate if off_layer == layer]] = 0.0
        x = x + gpt2.linear(gpt2.merge_heads(heads), **attn["c_proj"])
        x = x + gpt2.ffn(gpt2.layer_norm(x, **block["ln_2"]), **block["mlp"])
        streams.append(x)
    return streams, weights


KEPT_PASSES, MOST_KEPT = {}, 8  # the last prompts' inside(), most recent last: 5 MB each at 64 tokens of 124M
KEPT_LOCK = threading.Lock()


def kept_inside(tokens, ablate, params, n_head):  # view_prompt's tokens, heads_off's -> inside()'s answer
    """A redraw of the page asks several views of one prompt and set of heads switched off at once, and
    the sampler's bars are redrawn as a slider moves: the forward pass is kept for the last few prompts
    rather than run again, and a request that comes while it runs waits for it. What it gives is
    shared: read it, never write it."""
    key = (id(params), tuple(token["id"] for token in tokens), ablate)
    with KEPT_LOCK:
        kept = KEPT_PASSES.pop(key, None)
        runs_here = kept is None
        KEPT_PASSES[key] = kept = Future() if runs_here else kept  # most recent last
        while len(KEPT_PASSES) > MOST_KEPT:
            del KEPT_PASSES[next(iter(KEPT_PASSES))]
    if runs_here:
        try:
            kept.set_result(inside(list(key[1]), params, n_head, ablate))
        except BaseException as e:  # the requests waiting get it too; the next one runs the pass again
            kept.set_exception(e)
            with KEPT_LOCK:
                if KEPT_PASSES.get(key) is kept:
                    del KEPT_PASSES[key]
    return kept.result()


def view_prompt(body, encoder, params):
    """The tokens of a request's prompt for the page's views: 1 to the page's limit of them."""
    prompt = text("prompt", body.get("prompt"))
    most = min(ATTENTION_MAX_TOKENS, len(params["wpe"]))
    tokens = tokens_of(prompt, encoder, most)
    if not 1 <= len(tokens) <= most:
        raise BadRequest(f"the page's views take a prompt of 1 to {most} tokens, not {len(tokens)}", "prompt")
    return tokens


def heads_off(body, params, n_head):  # "ablate": [[layer, head], ...] -> a frozenset of (layer, head)
    ablate = [] if body.get("ablate") is None else body["ablate"]  # null: none, as for OpenAI's fields
    n_layer = len(params["blocks"])
    if not isinstance(ablate, list) or not all(isinstance(pair, list) and len(pair) == 2 for pair in ablate):
        raise BadRequest("ablate must be a list of [layer, head] pairs", "ablate")
    return frozenset(
        (whole(0, n_layer - 1)("ablate's layer", layer), whole(0, n_head - 1)("ablate's head", head))
        for layer, head in ablate
    )


def lens_view(body, encoder, params, n_head):
    """The logit lens: at each block's output and each position, what the model would predict if it
    stopped there (the final layer norm and the tied output layer applied to the stream); the last
    block's is the model's own prediction."""
    refuse_unknown(body, ("prompt", "top", "ablate"))
    tokens = view_prompt(body, encoder, params)
    n_top = whole(1, MAX_LOGPROBS)("top", body.get("top", MAX_LOGPROBS))
    streams, _ = kept_inside(tokens, heads_off(body, params, n_head), params, n_head)
    logits = gpt2.layer_norm(np.concatenate(streams), **params["ln_f"]) @ params["wte"].T  # [n_layer*n_seq, n_vocab]
    ids, logprobs = most_likely(logits, n_top)
    rows = [top_entries(encoder, *row) for row in zip(ids, logprobs)]
    return {"tokens": tokens, "layers": [rows[i : i + len(tokens)] for i in range(0, len(rows), len(tokens))]}


MAX_NEXT_TOKENS = 100  # the next-token bars


def next_view(body, encoder, params, n_head):
    """The next token: the model's log-probabilities of the n most likely, and the probability each has
    under the sampling filters (gpt2.py's, as generation applies them; 0 where filtered out)."""
    refuse_unknown(body, ("prompt", "temperature", "top_k", "top_p", "ablate", "top"))
    tokens = view_prompt(body, encoder, params)
    temperature = number(0, gpt2.MAX_TEMPERATURE)("temperature", body.get("temperature", 1.0))
    top_k = whole(0, len(params["wte"]))("top_k", body.get("top_k", 0))
    top_p = number(0, 1, low_open=True)("top_p", body.get("top_p", 1.0))
    n_top = whole(1, MAX_NEXT_TOKENS)("top", body.get("top", 10))
    streams, _ = kept_inside(tokens, heads_off(body, params, n_head), params, n_head)
    logits = gpt2.layer_norm(streams[-1][-1], **params["ln_f"]) @ params["wte"].T  # [n_vocab]
    if temperature == 0:  # greedy: the most likely token, always
        sampled = np.zeros(len(logits))
        sampled[np.argmax(logits)] = 1.0
    else:
        sampled = gpt2.softmax(gpt2.filter_logits(logits, temperature, top_k, top_p))
    ids, logprobs = most_likely(logits[None], n_top)
    return {
        "tokens": [{**e, "sampled_prob": float(sampled[e["id"]])} for e in top_entries(encoder, ids[0], logprobs[0])]
    }


def attention_view(body, encoder, params, n_head):
    """The attention weights of one head of one layer for a prompt, or ("layer": "all") of every head:
    its tokens and [n][n] matrices (row: a query, the position that looks; column: a key, the position
    looked at), with the heads in "ablate" switched off."""
    refuse_unknown(body, ("prompt", "layer", "head", "ablate"))
    n_layer = len(params["blocks"])
    every = body.get("layer") == "all"
    layer = None if every else whole(0, n_layer - 1)("layer", body.get("layer", 0))
    head = None if every else whole(0, n_head - 1)("head", body.get("head", 0))
    if every and "head" in body:
        raise BadRequest('"layer": "all" answers every head: no "head" with it', "head")
    tokens = view_prompt(body, encoder, params)
    _, weights = kept_inside(tokens, heads_off(body, params, n_head), params, n_head)
    if every:
        return {"tokens": tokens, "layer": "all", "weights": np.round(np.stack(weights).astype(float), 4).tolist()}
    return {
        "tokens": tokens,
        "layer": layer,
        "head": head,
        "weights": np.round(weights[layer][head].astype(float), 4).tolist(),
    }


# The HTTP server.


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "gpt2.py"
    timeout = 60  # seconds a client may take to send its request: a stalled one must not hold a thread for ever

    def handle_one_request(self):
        """One request, and its line on stderr: the client, method, path, status, tokens made, seconds."""
        self.started, self.status, self.n_tokens = None, None, None
        try:
            super().handle_one_request()
        finally:
            self.server.request_done(self.connection)
            if self.started is not None:
                path = ascii(getattr(self, "path", ""))[1:-1][:200]  # a hostile path cannot forge lines
                tokens = "-" if self.n_tokens is None else f"{self.n_tokens} tokens"
                seconds = time.monotonic() - self.started
                line = f"{self.client_address[0]} {self.command or '-'} {path} {self.status or '-'} {tokens} {seconds:.2f} s"
                print(line, file=sys.stderr, flush=True)

    def parse_request(self):  # the request line has come: a request is in flight from here
        self.started = time.monotonic()
        self.server.request_started(self.connection)
        return super().parse_request()

    def log_request(self, code="-", size="-"):  # send_response's: the status, for the line at the end
        self.status = int(code) if code != "-" else None

    def log_message(self, format, *args):  # quiet: errors are answered to the client
        pass

    def do_GET(self):
        app = self.server.app
        if self.path in ("/", "/index.html"):
            return self.send(200, app.page, "text/html; charset=utf-8")
        if self.path == "/v1/models":
            model = {"id": app.model_name, "object": "model", "created": 0, "owned_by": "gpt2.py"}
            sizes = {"n_layer": len(app.params["blocks"]), "n_head": app.n_head, "n_ctx": len(app.params["wpe"])}
            model.update(sizes, attention_max_tokens=min(ATTENTION_MAX_TOKENS, sizes["n_ctx"]))  # for the page
            return self.send_json(200, {"object": "list", "data": [model]})
        self.send_error_json(404, f"no such page: {self.path}", code="not_found")

    def do_POST(self):
        try:
            body = self.read_json()
            if self.path == "/v1/completions":
                return self.complete(body)
            app = self.server.app
            if self.path == "/v1/tokenize":
                refuse_unknown(body, ("prompt",))
                prompt = text("prompt", body.get("prompt"))
                return self.send_json(200, {"tokens": tokens_of(prompt, app.encoder, len(app.params["wpe"]))})
            views = {"/v1/attention": attention_view, "/v1/lens": lens_view, "/v1/next": next_view}
            if self.path in views:
                return self.send_json(200, views[self.path](body, app.encoder, app.params, app.n_head))
            self.send_error_json(404, f"no such endpoint: POST {self.path}", code="not_found")
        except BadRequest as e:
            self.send_error_json(400, str(e), e.param, e.code)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except DecoderFailed as e:
            self.send_error_json(500, str(e), error_type="server_error")
        except Exception as e:  # a bug must cost one request, not the server
            print(f"error while answering {self.path}: {type(e).__name__}: {e}", file=sys.stderr)
            self.send_error_json(500, "the server failed to answer this request", error_type="server_error")

    def read_json(self):
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise BadRequest("the request needs a Content-Length") from None
        if length < 0:
            raise BadRequest("the request's Content-Length is negative")
        if length > MAX_BODY_BYTES:
            unread = min(length, MAX_DRAINED_BYTES)
            while unread > 0 and (piece := self.rfile.read(min(1 << 16, unread))):
                unread -= len(piece)
            raise BadRequest(f"the request body is over {MAX_BODY_BYTES} bytes", code="request_too_large")
        data = self.read_body(length)
        try:
            body = json.loads(data)
            json.dumps(body, ensure_ascii=False).encode()  # a lone surrogate ("\ud800" in JSON) is no text
        except UnicodeEncodeError:
            raise BadRequest(
                "the body holds a lone surrogate (\\ud800 to \\udfff): not text", code="invalid_json"
            ) from None
        except RecursionError:
            raise BadRequest("the body is nested too deeply", code="invalid_json") from None
        except ValueError as e:  # not UTF-8, JSONDecodeError, an integer of over 4,300 digits
            message = "it holds an integer of too many digits" if "digits" in str(e) else e
            raise BadRequest(f"the body is not JSON: {message}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        return body

    def read_body(self, length):
        """The body's bytes; a client that stops sending them for BODY_SECONDS, or sends fewer than its
        Content-Length, gets a 400 (and its connection closed: where its next request starts is unknown)."""
        self.connection.settimeout(BODY_SECONDS)
        try:
            data = self.rfile.read(length)
        except TimeoutError:
            data = b""
        finally:
            self.connection.settimeout(self.timeout)
        if len(data) < length:
            self.close_connection = True
            raise BadRequest(f"the body ended before its Content-Length of {length} bytes", code="invalid_json")
        return data

    def complete(self, body):
        app = self.server.app
        options = read_completion_request(body, app.model_name)
        completion = Completion(options, app.model_name, app.encoder, app.params, app.n_head)
        for row in completion.rows:
            app.decoder.waiting.put(row)
        try:
            if options["stream"]:
                self.stream(completion)
            else:
                for _ in completion.events_until_done(self.connection):
                    pass
                self.send_json(200, completion.whole())
        finally:
            completion.cancel()  # a client that has gone costs no more compute
            self.n_tokens = completion.usage()["completion_tokens"]

    def stream(self, completion):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for chunk in completion.chunks(self.connection):
                self.write_chunk(f"data: {json.dumps(chunk)}\n\n")
        except (BrokenPipeError, ConnectionResetError):
            raise
        except Exception as e:  # the status is sent already: the error goes in the stream, as OpenAI's does
            if not isinstance(e, DecoderFailed):
                print(f"error while streaming {self.path}: {type(e).__name__}: {e}", file=sys.stderr)
            message = str(e) if isinstance(e, DecoderFailed) else "the server failed to finish this stream"
            self.write_chunk(f"data: {json.dumps(error_object(message, error_type='server_error'))}\n\n")
        self.write_chunk("data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def write_chunk(self, data):
        data = data.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def send(self, status, data, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self.wfile.write(data)

    def send_json(self, status, obj):
        self.send(status, json.dumps(obj).encode(), "application/json")

    def send_error_json(self, status, message, param=None, code=None, error_type="invalid_request_error"):
        self.send_json(status, error_object(message, param, code, error_type))


def error_object(message, param=None, code=None, error_type="invalid_request_error"):
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


class Server(ThreadingHTTPServer):
    """The standard library's server, one thread per connection, that knows its connections: beyond
    max_connections a client gets 503 at once, and a shutdown closes idle ones at once and the others
    after SHUTDOWN_SECONDS (close_gracefully), so that no client can hold it open."""

    daemon_threads, block_on_close = True, False  # close_gracefully bounds the wait for the threads
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address, max_connections):
        super().__init__(address, Handler)
        self.max_connections, self.lock = max_connections, threading.Lock()
        self.connections, self.busy = set(), set()  # open connections; those with a request in flight

    def process_request(self, request, client_address):
        with self.lock:
            full = len(self.connections) >= self.max_connections
            if not full:
                self.connections.add(request)
        if full:
            return self.refuse(request, client_address)
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.lock:
                self.connections.discard(request)

    def refuse(self, request, client_address):
        message = f"the server holds {self.max_connections} connections, its most: try again shortly"
        body = json.dumps(error_object(message, code="too_many_connections", error_type="server_error")).encode()
        head = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
        try:
            request.settimeout(1)
            request.sendall(f"{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            request.setblocking(False)
            request.recv(1 << 16)  # what the client sent, so that closing does not reset the connection
        except OSError:
            pass
        self.shutdown_request(request)
        print(f"{client_address[0]} - - 503 over --max_connections {self.max_connections}", file=sys.stderr)

    def request_started(self, connection):
        with self.lock:
            self.busy.add(connection)

    def request_done(self, connection):
        with self.lock:
            self.busy.discard(connection)

    def handle_error(self, request, client_address):
        error = sys.exc_info()[1]
        if not isinstance(error, (ConnectionError, TimeoutError)):  # a client that left is no error
            print(f"error on a connection from {client_address[0]}: {type(error).__name__}: {error}", file=sys.stderr)

    def close_gracefully(self):
        """Stop listening; close idle connections at once and give requests in flight SHUTDOWN_SECONDS
        to finish (a second Ctrl-C or SIGTERM ends the wait); then close what is left."""
        self.socket.close()
        deadline, announced = time.monotonic() + SHUTDOWN_SECONDS, False
        try:
            while True:
                with self.lock:
                    idle, n_busy = self.connections - self.busy, len(self.busy)
                for connection in idle:
                    close_at_once(connection)
                if not n_busy or time.monotonic() > deadline:
                    break
                if not announced:
                    print(
                        f"finishing {plural(n_busy, 'request')} in flight, for {SHUTDOWN_SECONDS} s at most",
                        file=sys.stderr,
                    )
                    announced = True
                time.sleep(0.05)
        finally:
            with self.lock:
                left = list(self.connections)
            if self.busy:
                print(f"closing {plural(len(self.busy), 'request')} that did not finish in time", file=sys.stderr)
            for connection in left:
                close_at_once(connection)


def close_at_once(connection):  # from another thread: its handler's next read or write fails
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class App:
    """What every request reads: the model, its name, the page and the decoder."""

    def __init__(self, model_name, encoder, params, n_head, batch_size):
        self.model_name, self.encoder, self.params, self.n_head = model_name, encoder, params, n_head
        with open(PAGE, "rb") as f:
            self.page = f.read()
        self.decoder = Decoder(params, n_head, batch_size)
        self.decoder.start()


def bind(host, port, max_connections=MAX_CONNECTIONS):
    """The listening server (before the model is loaded: a port in use fails at once)."""
    try:
        return Server((host, port), allowed_connections(max_connections))
    except OSError as e:
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def allowed_connections(wanted):
    """max_connections as the open-files limit allows it, raised as far as it may be (each connection is
    a file; 64 are left for the model's files and the rest)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + 64
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft != resource.RLIM_INFINITY and soft < needed:
        print(f"warning: the open-files limit ({soft}) allows {soft - 64} connections, not {wanted}", file=sys.stderr)
        return max(1, soft - 64)
    return wanted


def serve(server, app):
    """Answer requests until Ctrl-C or SIGTERM (raised here by the caller's handlers), then finish the
    requests in flight, for SHUTDOWN_SECONDS at most."""
    server.app = app
    host, port = server.server_address[:2]
    if beyond_loopback(host):
        print(
            f"warning: listening on {host}, beyond this machine: there is no authentication, anyone who reaches "
            "the port can use the model, and so can any web page open in a browser that reaches it",
            file=sys.stderr,
        )
    print(
        f"serving {app.model_name} on http://{host}:{port}/ (the page at /, OpenAI's API at /v1); Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.close_gracefully()


def beyond_loopback(host):
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name
        return host != "localhost"
