"""The checks of what a request's JSON holds: each field's type and bounds, as gpt2.py checks a
function's arguments, its mistake a BadRequest (400, with OpenAI's error object, naming the field);
and a prompt's tokens, refused before the encoder spends its time on one too long.
"""

import functools
import json

import gpt2
from gpt2 import N_VOCAB
from serve.server import BadRequest

MAX_STOPS = 4  # stop strings, as OpenAI's API


def as_request_check(check, *bounds, **options):  # one of gpt2.py's checks, its error a BadRequest
    def request_check(name, value):
        try:
            check(name, value, *bounds, **options, show=json.dumps)
        except ValueError as e:
            raise BadRequest(str(e), name) from None
        return value

    return request_check


def whole_number_check(low, high):
    return as_request_check(gpt2.check_whole_number, low, high)


def number_check(low, high, low_open=False):
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


def refuse_unknown(body, known):
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise BadRequest(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])


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
