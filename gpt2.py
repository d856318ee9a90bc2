"""GPT-2 in NumPy: the forward pass as small functions, generation and scoring.

    python gpt2.py "Alan Turing theorized that computers would one day become" --n_tokens_to_generate 8

runs the command line, the folder cli/, on top of these functions. Read it top to bottom: the building
blocks first, then one transformer block, then the whole model; then the KV cache that makes
generation fast, sampling, generation and scoring. The model's functions are pure: each returns a new
array and changes none it is given. The one exception is the KV cache, whose buffers are written in
place as it fills (gpt2_cached).
Shapes are in the comments: n_seq tokens, n_embd features, n_head heads, n_vocab vocabulary entries;
`...` stands for leading axes, none for one text and [n_batch] for rows of several.
Every array is float32; constants are Python floats, because a NumPy float64 scalar such as
np.sqrt(2 / np.pi) would silently turn float32 arrays into slower float64 ones.

The model (gelu to gpt2, and lm_loss) also runs on JAX, on a GPU or TPU, when `import numpy as np`
becomes `import jax.numpy as np` (docs/notebook.md: What next). The KV-cached path, sampling and
scoring stay NumPy.
"""

import math
import sys
from typing import NamedTuple

if sys.version_info < (3, 10):  # noqa: UP036 (one clear line for the Pythons below the minimum)
    too_old = f"gpt2.py needs Python 3.10 or newer, not {sys.version.split()[0]}"
    if __name__ == "__main__":
        sys.exit(f"error: {too_old}")
    raise ImportError(too_old)  # in a notebook: an error to read, not the end of the kernel

import numpy as np

END_OF_TEXT = 50256  # id of <|endoftext|>, the token OpenAI put between documents
# Every GPT-2 has OpenAI's vocabulary, <|endoftext|> its last entry, and a context of at most 1024
# tokens: what is asked of a model can be checked against these before it is loaded
N_VOCAB, N_CTX = END_OF_TEXT + 1, 1024
# Above this, logits / temperature are all but equal and every token about as likely as any other
MAX_TEMPERATURE = 100


def gelu(x):  # elementwise: any shape -> the same shape
    # A smooth ReLU, in the tanh approximation GPT-2 was trained with (x * x * x: x**3 is far slower on float32)
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def softmax(x):  # [..., n] -> [..., n], each row sums to 1
    exp_x = np.exp(x - np.max(x, axis=-1, keepdims=True))  # subtracting the max keeps exp from overflowing
    exp_x /= np.sum(exp_x, axis=-1, keepdims=True)  # (the attention's are 48 MB at 1024 tokens: no third copy)
    return exp_x


def layer_norm(x, g, b, eps=1e-5):  # [..., n_embd] -> [..., n_embd]
    centered = x - x.mean(axis=-1, keepdims=True)  # each row minus its mean
    variance = (centered * centered).mean(axis=-1, keepdims=True)  # [..., 1]
    return g * centered / np.sqrt(variance + eps) + b  # normalize each row, then scale and shift


def linear(x, w, b):  # [m, in], [in, out], [out] -> [m, out]
    if x.ndim > 2:  # rows of several texts [..., m, in]: one product for all (NumPy would make one per text)
        return linear(x.reshape(-1, x.shape[-1]), w, b).reshape(*x.shape[:-1], w.shape[-1])
    return x @ w + b


def ffn(x, c_fc, c_proj):  # [..., n_seq, n_embd] -> [..., n_seq, n_embd]
    a = gelu(linear(x, **c_fc))  # up projection: [..., n_seq, n_embd] -> [..., n_seq, 4*n_embd]
    return linear(a, **c_proj)  # down projection: [..., n_seq, 4*n_embd] -> [..., n_seq, n_embd]


def attention_weights(q, k, mask):  # [..., n_q, d], [..., n_k, d], [..., n_q, n_k] -> [..., n_q, n_k]
    scores = (q / math.sqrt(q.shape[-1])) @ k.swapaxes(-1, -2)  # scaled dot products: [..., n_q, n_k]
    scores += mask  # a position may only look at itself and earlier ones
    return softmax(scores)  # how much each query takes from each key: each row sums to 1


def attention(q, k, v, mask):  # [..., n_q, d], [..., n_k, d] twice, [..., n_q, n_k] -> [..., n_q, d]
    return attention_weights(q, k, mask) @ v  # mix the values by those weights: [..., n_q, n_k] @ [..., n_k, d]


def causal_mask(n_seq):  # [n_seq, n_seq]: 0 where position i may look at position j (j <= i), -1e10 after it
    return (1 - np.tri(n_seq, dtype=np.float32)) * -1e10  # added to the scores, it leaves exp() nothing there


def split_heads(x, n_heads):  # [..., n_seq, n_heads*d] -> [..., n_heads, n_seq, d]: heads become a batch axis
    *batch, n_seq, width = x.shape
    return x.reshape(*batch, n_seq, n_heads, width // n_heads).swapaxes(-3, -2)


def merge_heads(x):  # [..., n_heads, n_seq, d] -> [..., n_seq, n_heads*d]
    *batch, n_heads, n_seq, d = x.shape
    return x.swapaxes(-3, -2).reshape(*batch, n_seq, n_heads * d)


def split_qkv(x, n_head):  # [..., n_seq, 3*n_embd] -> q, k, v: each [..., n_head, n_seq, d]
    qkv = split_heads(x, 3 * n_head)  # the heads of q, then of k, then of v: [..., 3*n_head, n_seq, d]
    return qkv[..., :n_head, :, :], qkv[..., n_head : 2 * n_head, :, :], qkv[..., 2 * n_head :, :, :]


def mha(x, c_attn, c_proj, n_head, mask, kv_cache=None):  # [..., n_seq, n_embd] -> [..., n_seq, n_embd]
    # queries, keys and values at once: [..., n_seq, n_embd] -> [..., n_seq, 3*n_embd] -> each [..., n_head, n_seq, d]
    q, k, v = split_qkv(linear(x, **c_attn), n_head)
    if kv_cache is not None:  # generating: the earlier positions' keys and values are kept, not recomputed (below)
        k, v = kv_cache.extend(k, v)  # each [..., n_head, n_past + n_seq, d]
    out = merge_heads(attention(q, k, v, mask))  # [..., n_head, n_seq, d] -> [..., n_seq, n_embd]
    return linear(out, **c_proj)  # [..., n_seq, n_embd] -> [..., n_seq, n_embd]


def transformer_block(x, mlp, attn, ln_1, ln_2, n_head, mask, kv_cache=None):  # [..., n_seq, n_embd] -> the same
    # tokens exchange information
    x = x + mha(layer_norm(x, **ln_1), **attn, n_head=n_head, mask=mask, kv_cache=kv_cache)
    x = x + ffn(layer_norm(x, **ln_2), **mlp)  # each token is processed on its own
    return x


def gpt2(inputs, wte, wpe, blocks, ln_f, n_head):  # [..., n_seq] -> [..., n_seq, n_vocab]
    inputs = np.asarray(inputs)  # ids as a list or an array (JAX indexes with arrays only)
    n_seq = inputs.shape[-1]
    x = wte[inputs] + wpe[:n_seq]  # token + position embeddings: [..., n_seq] -> [..., n_seq, n_embd]
    mask = causal_mask(n_seq)  # [n_seq, n_seq], made once for every block
    for block in blocks:
        x = transformer_block(x, **block, n_head=n_head, mask=mask)  # [..., n_seq, n_embd] -> the same
    return layer_norm(x, **ln_f) @ wte.T  # scores of every next token: [..., n_seq, n_embd] -> [..., n_seq, n_vocab]


# Generating token by token with gpt2() recomputes every earlier position at each step. A position's
# keys and values never change once computed (the causal mask lets it see only earlier tokens), so
# the fast path keeps them in a cache and feeds only the new tokens through the model. Several texts
# at once are rows of one batch, each with its row of the cache: batching.py.


class KVCache(NamedTuple):  # the keys and values of the positions read so far
    buffers: np.ndarray  # [..., 2*n_head, length, d]: the keys' heads, then the values' (the model's: [n_layer, ...])
    n_past: int  # the positions filled, from the start

    def extend(self, k, v):  # a block's new keys and values, each [..., n_head, n_new, d] -> all of them so far
        """Writes k and v after the n_past kept positions, and returns the keys and values of every
        position so far, each [..., n_head, n_past + n_new, d] (views of the buffer, nothing copied)."""
        n_head, n_k = k.shape[-3], self.n_past + k.shape[-2]
        self.buffers[..., :n_head, self.n_past : n_k, :] = k
        self.buffers[..., n_head:, self.n_past : n_k, :] = v
        return self.buffers[..., :n_head, :n_k, :], self.buffers[..., n_head:, :n_k, :]


def new_kv_cache(params, n_head, length, batch=()):
    """An empty cache for `length` positions: buffers [n_layer, *batch, 2*n_head, length, d] for the keys
    and values of each block, and the number of positions filled (0). Only the positions the call
    needs: all n_ctx positions of a 1558M model would take 630 MB per row. One array for all blocks,
    because NumPy asks the kernel for huge pages for large arrays: fewer page faults to fill it."""
    n_embd = params["wpe"].shape[1]
    shape = (len(params["blocks"]), *batch, 2 * n_head, length, n_embd // n_head)
    return KVCache(np.empty(shape, dtype=np.float32), 0)


def gpt2_cached(inputs, wte, wpe, blocks, ln_f, n_head, kv_cache, pad=0):  # [..., n_new] -> [..., n_vocab]
    """Like gpt2() for the tokens that follow the cached ones, but only the next token's scores.
    pad: for rows lined up at the right, the empty positions before each row's first token ([n_rows]).
    Returns (logits, kv_cache); the buffers are filled in place, so use only the returned cache."""
    buffers, n_past = kv_cache
    inputs = np.asarray(inputs)
    n_new, n_k = inputs.shape[-1], n_past + inputs.shape[-1]
    pad = np.asarray(pad)[..., None]  # [..., 1]
    positions = np.arange(n_past, n_k) - pad  # each row counts from its own first token: [..., n_new]
    x = wte[inputs] + wpe[positions]  # [..., n_new] -> [..., n_new, n_embd]
    mask = cached_mask(n_new, n_past, pad)  # [..., 1, n_new, n_k]
    for block, buffer in zip(blocks, buffers):  # x stays [..., n_new, n_embd]
        x = transformer_block(x, **block, n_head=n_head, mask=mask, kv_cache=KVCache(buffer, n_past))
    return layer_norm(x[..., -1, :], **ln_f) @ wte.T, KVCache(buffers, n_k)  # [..., n_embd] -> [..., n_vocab]


def cached_mask(n_new, n_past, pad):  # -> [..., 1, n_new, n_past + n_new]
    """causal_mask for n_new queries that follow n_past cached positions: query i is position n_past + i,
    and sees every cached position and the new ones up to itself; a row's empty positions (pad) are
    hidden from every query too."""
    n_k = n_past + n_new
    later = 1 - np.tri(n_new, n_k, n_past, dtype=np.float32)  # 1 where key j comes after query i: [n_new, n_k]
    empty = np.arange(n_k) < pad  # [..., n_k]
    return (later + empty[..., None, None, :]) * np.float32(-1e10)


# Choosing the next token. Greedy decoding (temperature 0) always takes the most likely token and
# tends to repeat itself; sampling draws from the model's distribution, reshaped by three knobs that
# work as in HuggingFace transformers, applied in this order:
#   temperature: divides the logits; below 1 sharpens the distribution, above 1 flattens it;
#   top_k: keeps the k most likely tokens (0 keeps all);
#   top_p: keeps the most likely tokens whose probabilities add up to at least p (nucleus sampling).


def top_k_filter(logits, top_k):  # [..., n_vocab] -> [..., n_vocab], -inf outside the top k
    kth_largest = np.partition(logits, -top_k, axis=-1)[..., -top_k, None]
    return np.where(logits < kth_largest, -np.inf, logits)  # ties with the k-th are kept


def top_p_filter(logits, top_p):  # [..., n_vocab] -> [..., n_vocab], -inf outside the nucleus
    ascending = np.argsort(logits, axis=-1)  # least likely first
    sorted_logits = np.take_along_axis(logits, ascending, axis=-1)
    cumulative = np.cumsum(softmax(sorted_logits), axis=-1)  # probability of this token and all less likely ones
    drop = cumulative <= 1.0 - top_p  # the unlikely tail whose total stays within 1 - top_p
    drop[..., -1] = False  # the most likely token always stays
    filtered = logits.copy()
    np.put_along_axis(filtered, ascending, np.where(drop, -np.inf, sorted_logits), axis=-1)
    return filtered


def filter_logits(logits, temperature=1.0, top_k=0, top_p=1.0):  # [..., n_vocab] -> [..., n_vocab]
    logits = logits / temperature
    if top_k:
        logits = top_k_filter(logits, top_k)
    if top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    return logits


def sample(logits, uniform):  # [..., n_vocab] (filtered), [...] numbers drawn from [0, 1) -> [...] token ids
    cumulative = np.cumsum(softmax(logits), axis=-1, dtype=np.float64)  # filtered tokens add 0: exp(-inf) = 0
    # the first token whose cumulative probability passes the draw: the number of tokens before it
    return (cumulative <= np.asarray(uniform)[..., None] * cumulative[..., -1:]).sum(axis=-1)


def next_token(logits, uniform, temperature, top_k, top_p):  # [..., n_vocab], [...] -> [...] token ids
    if temperature == 0:
        return np.argmax(logits, axis=-1)  # greedy: the most likely next token
    return sample(filter_logits(logits, temperature, top_k, top_p), uniform)


def generate_stream(
    inputs,
    params,
    n_head,
    n_tokens_to_generate,
    temperature=0.0,
    top_k=0,
    top_p=1.0,
    seed=None,
    stop_at_end_of_text=True,
    end_of_text=END_OF_TEXT,
):
    """Yield (token id, logits) for each new token as soon as it is chosen; logits [n_vocab] are the
    model's scores that it was chosen from, before temperature and filtering.
    Stops after n_tokens_to_generate tokens, or before <|endoftext|> if stop_at_end_of_text (its id in
    the model's vocabulary: end_of_text, GPT-2's by default).
    temperature 0 is greedy; otherwise a seed makes the draws repeatable (same seed, same ids)."""
    check_generation([inputs], params, n_tokens_to_generate, temperature, top_k, top_p, seed)
    rng = np.random.default_rng(seed)
    kv_cache = new_kv_cache(params, n_head, len(inputs) + n_tokens_to_generate - 1)  # the last token is not fed
    logits, kv_cache = gpt2_cached(inputs, **params, n_head=n_head, kv_cache=kv_cache)  # the prompt at once
    for step in range(n_tokens_to_generate):
        token_id = int(next_token(logits, rng.random(), temperature, top_k, top_p))
        if token_id == end_of_text and stop_at_end_of_text:
            return
        yield token_id, logits
        if step < n_tokens_to_generate - 1:
            logits, kv_cache = gpt2_cached([token_id], **params, n_head=n_head, kv_cache=kv_cache)  # one token in


def generate(inputs, params, n_head, n_tokens_to_generate, **options):
    """The list of new token ids (greedy unless sampling options are given, see generate_stream);
    the caller's list is left as it was."""
    return [token_id for token_id, _ in generate_stream(inputs, params, n_head, n_tokens_to_generate, **options)]


# Measuring the model: how well does it predict a given text? Each token's negative log-likelihood
# (NLL, in nats) is -log p(token | the tokens before it); their mean is the loss the model was trained
# to lower, and exp(mean) is the perplexity. A text longer than the context is read in windows of
# n_ctx tokens that start every `stride` tokens, as in HuggingFace's perplexity guide: each window
# scores the tokens after the previous window's end, so each token is scored once, with as much
# context as its window gives it. The text's first token, and each window's first, have no
# context and are not scored.


def log_softmax(x):  # [n, n_vocab] -> [n, n_vocab]
    # log(softmax(x)) directly: the log of a probability that rounded to 0 would be -inf, and NaN in a gradient
    shifted = x - np.max(x, axis=-1, keepdims=True)  # the largest is 0, so exp cannot overflow
    shifted -= np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))  # in place: these arrays are large
    return shifted


def next_token_nlls(logits, targets):  # [n, n_vocab], [n] -> [n]
    """-log p(targets[i]) under the scores of row i."""
    return -log_softmax(logits)[np.arange(len(targets)), targets]


def lm_loss(params, inputs, n_head):  # [n_seq] -> a scalar
    """The loss GPT-2 was trained to lower: the mean NLL of each token given the ones before it, on one
    text that fits the context (score() reads longer ones in windows, and gives the same number on
    this one). params come first, so that jax.grad(lm_loss)(params, inputs, n_head) is its gradient
    with respect to every weight."""
    inputs = np.asarray(inputs)
    x, y = inputs[:-1], inputs[1:]  # each token predicts the next: [n_seq - 1] twice
    return np.mean(next_token_nlls(gpt2(x, **params, n_head=n_head), y))


def token_nlls(inputs, params, n_head, stride=None):  # [n_seq] -> [n_seq]
    """-log p(token | earlier tokens of its window) for every token; NaN for those not scored."""
    n_ctx = len(params["wpe"])
    stride = n_ctx if stride is None else stride
    check_whole_number("stride", stride, 1, n_ctx)
    if len(inputs) < 2:
        raise ValueError(f"scoring needs at least 2 tokens, not {len(inputs)}: the first one is only context")
    inputs = np.asarray(inputs)
    nlls = np.full(len(inputs), np.nan)
    scored_until = 1  # the first token is context only
    for begin in range(0, len(inputs), stride):
        end = min(begin + n_ctx, len(inputs))
        first = max(scored_until, begin + 1)  # score after the previous window, and with some context here
        logits = gpt2(inputs[begin:end], **params, n_head=n_head)  # one pass over the window: [n_window, n_vocab]
        # row i of the window predicts token i + 1
        nlls[first:end] = next_token_nlls(logits[first - begin - 1 : end - begin - 1], inputs[first:end])
        scored_until = end
        if end == len(inputs):
            break
    return nlls


def score(inputs, params, n_head, stride=None):
    """Mean negative log-likelihood, in nats per scored token, of a list of token ids; exp of it
    is the perplexity. stride: where windows start, n_ctx (no overlap) if None."""
    return float(np.nanmean(token_nlls(inputs, params, n_head, stride)))


# Checks of what the functions above are given: a mistake is one clear ValueError before any work.


def check_whole_number(name, value, low, high=None, show=repr):  # show: how the message writes the value
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        limits = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise ValueError(f"{name} must be a whole number {limits}, not {show(value)}")


def check_number(name, value, low, high=None, low_open=False, high_open=False, show=repr):
    """A finite number from low to high, either end left out if open."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not (value > low if low_open else value >= low)
        or (high is not None and not (value < high if high_open else value <= high))
    ):
        limits = f"above {low}" if low_open else f"at least {low}"
        if high is not None:
            limits += f" and {'below' if high_open else 'at most'} {high}"
        raise ValueError(f"{name} must be a number {limits}, not {show(value)}")


def check_sampling(temperature, top_k, top_p, seed, n_vocab):
    check_number("temperature", temperature, 0, MAX_TEMPERATURE)
    check_whole_number("top_k", top_k, 0, n_vocab)
    check_number("top_p", top_p, 0, 1, low_open=True)
    if seed is not None:
        check_whole_number("seed", seed, 0)


def check_prompt(inputs, n_tokens_to_generate, n_ctx):
    """A prompt and the tokens asked for after it must fit the model's context."""
    if len(inputs) == 0:
        raise ValueError("inputs must hold at least one token (an empty prompt starts from <|endoftext|>)")
    if len(inputs) + n_tokens_to_generate > n_ctx:
        raise ValueError(
            f"the prompt has {plural(len(inputs), 'token')} and {n_tokens_to_generate} more were asked for: "
            f"{len(inputs) + n_tokens_to_generate} is more than the model's context of {n_ctx} tokens"
        )


def check_generation(prompts, params, n_tokens_to_generate, temperature, top_k, top_p, seed):
    """Every prompt and option, before any work."""
    check_whole_number("n_tokens_to_generate", n_tokens_to_generate, 1)
    for inputs in prompts:
        check_prompt(inputs, n_tokens_to_generate, n_ctx=len(params["wpe"]))
    check_sampling(temperature, top_k, top_p, seed, n_vocab=len(params["wte"]))


def plural(n, noun):  # "1 token", "2 tokens"
    return f"{n} {noun}{'' if n == 1 else 's'}"


def __getattr__(name):
    """generate_batch and generate_batch_stream are batching.py's now (many texts at once); a notebook's
    `from gpt2 import generate_batch` finds them there, with a warning, until the next release."""
    if name in ("generate_batch", "generate_batch_stream"):
        import importlib
        import warnings

        warnings.warn(f"gpt2.{name} moved: from batching import {name}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module("batching"), name)
    raise AttributeError(f"module 'gpt2' has no attribute {name!r}")


if __name__ == "__main__":  # `python gpt2.py ...` is the command line, the folder cli/
    import runpy

    runpy.run_module("cli", run_name="__main__")
