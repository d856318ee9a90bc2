"""OpenAI's completions (POST /v1/completions): the request's fields checked, each prompt's choices
as rows of the decoder (serve/decoder.py), and the answer, whole or streamed as the tokens come, with
logprobs as OpenAI writes them.
"""

import codecs
import queue
import select
import socket
import time
import uuid

import numpy as np

import gpt2
from batching import row_rngs
from gpt2 import N_CTX, N_VOCAB
from serve.schema import (
    boolean,
    encode,
    neutral,
    number_check,
    optional,
    prompts,
    refuse_unknown,
    stops,
    text,
    whole_number_check,
)
from serve.server import BadRequest, RequestFailed
from serve.top_tokens import most_likely, token_text, top_entries

MAX_CHOICES = 16  # prompts x n of one request
MAX_LOGPROBS = 5  # alternatives per token, as OpenAI's API


def answer(app, body, request):
    """The route: the completion's rows handed to the decoder; the response once they are done, or
    its chunks as they come. A client that has gone costs no more compute."""
    options = read_completion_request(body, app.model_name)
    completion = Completion(options, app.model_name, app.encoder, app.params, app.n_head)
    for row in completion.rows:
        app.decoder.waiting.put(row)
    if options["stream"]:
        return Streamed(completion, request)
    try:
        for _ in completion.events_until_done(request.connection):
            pass
        return completion.response()
    finally:
        finished(completion, request)


class Streamed:
    """The chunks of a streamed completion. The server closes it however the stream ended, even before
    the first chunk (a generator's own `finally` would not run then)."""

    def __init__(self, completion, request):
        self.completion, self.request = completion, request
        self.chunks = completion.chunks(request.connection)

    def __iter__(self):
        return self.chunks

    def close(self):
        self.chunks.close()
        finished(self.completion, self.request)


def finished(completion, request):  # however the request ended: its rows stop, its tokens are counted
    completion.cancel()
    request.n_tokens = completion.usage()["completion_tokens"]


COMPLETION_FIELDS = {
    "model": (text, None),
    "prompt": (prompts, None),
    "max_tokens": (whole_number_check(1, N_CTX), 16),  # at most any GPT-2's context (the model's own is checked later)
    "temperature": (number_check(0, gpt2.MAX_TEMPERATURE), 1.0),  # as the command line allows
    "top_p": (number_check(0, 1, low_open=True), 1.0),
    "top_k": (whole_number_check(0, N_VOCAB), 0),
    "n": (whole_number_check(1, MAX_CHOICES), 1),
    "stream": (boolean, False),
    "logprobs": (optional(whole_number_check(0, MAX_LOGPROBS)), None),
    "echo": (boolean, False),
    "stop": (stops, []),
    "seed": (optional(whole_number_check(0, 2**63 - 1)), None),
    "user": (text, None),
    "frequency_penalty": (neutral(0), 0),
    "presence_penalty": (neutral(0), 0),
    "best_of": (neutral(1), 1),
    "logit_bias": (neutral({}), {}),
    "suffix": (neutral(""), ""),
    "stream_options": (neutral({"include_usage": False}, {}), None),
}


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


# The answer.


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
            # several samples each from the seed and its number (batching.generate_batch's rows)
            rngs = [np.random.default_rng(seed)] if n == 1 else row_rngs(seed, n)
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

    def response(self):
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
                raise RequestFailed(f"the model failed on this request: {event[2]}")
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
