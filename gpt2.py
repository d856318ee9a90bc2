"""GPT-2 in NumPy: the forward pass as small pure functions, greedy generation, and a command line.

    python gpt2.py "Alan Turing theorized that computers would one day become" --n_tokens_to_generate 8

Read it top to bottom: the building blocks first, then one transformer block, then the whole model.
Shapes are in the comments: n_seq tokens, n_embd features, n_head heads, n_vocab vocabulary entries.
Every array is float32; constants are Python floats, because a NumPy float64 scalar such as
np.sqrt(2 / np.pi) would silently turn float32 arrays into slower float64 ones.
"""

import math
import sys

import numpy as np

END_OF_TEXT = 50256  # id of <|endoftext|>, the token OpenAI put between documents


def gelu(x):
    # A smooth ReLU, in the tanh approximation GPT-2 was trained with:
    # 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))
    # computed step by step in one buffer, because in a prompt x is [n_seq, 4*n_embd] and every
    # temporary array costs time; x*x*x because x**3 is far slower on float32.
    y = x * x * x
    y *= 0.044715
    y += x
    y *= math.sqrt(2.0 / math.pi)
    np.tanh(y, out=y)
    y += 1.0
    y *= x
    y *= 0.5
    return y


def softmax(x):
    exp_x = x - np.max(x, axis=-1, keepdims=True)  # subtracting the max keeps exp from overflowing
    np.exp(exp_x, out=exp_x)  # in place: attention scores are [n_head, n_seq, n_seq], temporaries cost time
    exp_x /= np.sum(exp_x, axis=-1, keepdims=True)
    return exp_x


def layer_norm(x, g, b, eps=1e-5):  # [n_seq, n_embd] -> [n_seq, n_embd]
    centered = x - np.mean(x, axis=-1, keepdims=True)  # [n_seq, n_embd]
    variance = np.mean(centered * centered, axis=-1, keepdims=True)  # [n_seq, 1]
    return g * centered / np.sqrt(variance + eps) + b  # normalize each row, then scale and shift


def linear(x, w, b):  # [m, in], [in, out], [out] -> [m, out]
    return x @ w + b


def ffn(x, c_fc, c_proj):  # [n_seq, n_embd] -> [n_seq, n_embd]
    a = gelu(linear(x, **c_fc))  # up projection: [n_seq, n_embd] -> [n_seq, 4*n_embd]
    return linear(a, **c_proj)  # down projection: [n_seq, 4*n_embd] -> [n_seq, n_embd]


def attention(q, k, v, mask):  # [n_head, n_q, d], [n_head, n_k, d] twice, [n_q, n_k] -> [n_head, n_q, d]
    scores = (q / math.sqrt(q.shape[-1])) @ k.transpose(0, 2, 1)  # scaled dot products: [n_head, n_q, n_k]
    scores += mask  # a position may only look at itself and earlier ones
    return softmax(scores) @ v  # mix the values by those weights: [n_head, n_q, n_k] @ [n_head, n_k, d]


def mha(x, c_attn, c_proj, n_head, kv_cache=None):  # [n_seq, n_embd] -> [n_seq, n_embd]
    n_seq, n_embd = x.shape
    x = linear(x, **c_attn)  # queries, keys and values at once: [n_seq, n_embd] -> [n_seq, 3*n_embd]
    qkv = x.reshape(n_seq, 3, n_head, n_embd // n_head)  # split into q, k, v and heads: [n_seq, 3, n_head, d]
    qkv = qkv.transpose(1, 2, 0, 3)  # heads become a batch axis: [3, n_head, n_seq, d]
    q, kv = qkv[0], qkv[1:]  # [n_head, n_seq, d], [2, n_head, n_seq, d]
    if kv_cache is not None:  # keys and values of the n_past earlier positions are kept, not recomputed
        buffer, n_past = kv_cache  # [2, n_head, n_ctx, d], int
        buffer[:, :, n_past : n_past + n_seq] = kv  # this call's keys and values go after them
        kv = buffer[:, :, : n_past + n_seq]  # [2, n_head, n_past + n_seq, d]
    k, v = kv  # each [n_head, n_k, d], n_k = n_past + n_seq
    n_k = k.shape[1]
    causal_mask = (1 - np.tri(n_seq, n_k, n_k - n_seq, dtype=x.dtype)) * -1e10  # -1e10 on later positions: [n_seq, n_k]
    out = attention(q, k, v, causal_mask)  # [n_head, n_seq, d]
    out = out.transpose(1, 0, 2).reshape(n_seq, n_embd)  # merge heads: [n_head, n_seq, d] -> [n_seq, n_embd]
    return linear(out, **c_proj)  # [n_seq, n_embd] -> [n_seq, n_embd]


def transformer_block(x, mlp, attn, ln_1, ln_2, n_head, kv_cache=None):  # [n_seq, n_embd] -> [n_seq, n_embd]
    x = x + mha(layer_norm(x, **ln_1), **attn, n_head=n_head, kv_cache=kv_cache)  # tokens exchange information
    x = x + ffn(layer_norm(x, **ln_2), **mlp)  # each token is processed on its own
    return x


def gpt2(inputs, wte, wpe, blocks, ln_f, n_head):  # [n_seq] -> [n_seq, n_vocab]
    x = wte[inputs] + wpe[: len(inputs)]  # token + position embeddings: [n_seq] -> [n_seq, n_embd]
    for block in blocks:
        x = transformer_block(x, **block, n_head=n_head)  # [n_seq, n_embd] -> [n_seq, n_embd]
    return layer_norm(x, **ln_f) @ wte.T  # scores of every next token: [n_seq, n_embd] -> [n_seq, n_vocab]


# Generating token by token with gpt2() recomputes every earlier position at each step. A position's
# keys and values never change once computed (the causal mask lets it see only earlier tokens), so
# the fast path keeps them in a cache and feeds only the new tokens through the model.


def new_kv_cache(params, n_head):
    """An empty cache: for each block a buffer for the keys and values of all n_ctx positions, and
    the number of positions filled (0)."""
    n_ctx, n_embd = params["wpe"].shape
    buffers = [np.empty((2, n_head, n_ctx, n_embd // n_head), dtype=np.float32) for _ in params["blocks"]]
    return buffers, 0


def gpt2_cached(inputs, wte, wpe, blocks, ln_f, n_head, kv_cache):  # [n_new] -> [n_vocab]
    """Like gpt2() for the tokens that follow the cached ones, but only the next token's scores.
    Returns (logits, kv_cache); the buffers are filled in place, so use only the returned cache."""
    buffers, n_past = kv_cache
    x = wte[inputs] + wpe[n_past : n_past + len(inputs)]  # [n_new] -> [n_new, n_embd]
    for block, buffer in zip(blocks, buffers):
        x = transformer_block(x, **block, n_head=n_head, kv_cache=(buffer, n_past))  # [n_new, n_embd]
    return layer_norm(x[-1], **ln_f) @ wte.T, (buffers, n_past + len(inputs))  # [n_embd] -> [n_vocab]


def check_n_tokens_to_generate(n_tokens_to_generate):
    n = n_tokens_to_generate
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n_tokens_to_generate must be a whole number of at least 1, not {n_tokens_to_generate!r}")


def generate(inputs, params, n_head, n_tokens_to_generate):
    """Greedy decoding: append the most likely next token, n_tokens_to_generate times.
    Returns the list of new ids; the caller's list is left as it was."""
    check_n_tokens_to_generate(n_tokens_to_generate)
    if len(inputs) == 0:
        raise ValueError(
            f"inputs must hold at least one token (an empty prompt starts from {END_OF_TEXT}, <|endoftext|>)"
        )
    n_ctx = len(params["wpe"])
    if len(inputs) + n_tokens_to_generate > n_ctx:
        raise ValueError(
            f"the prompt has {len(inputs)} tokens and {n_tokens_to_generate} more were asked for: "
            f"{len(inputs) + n_tokens_to_generate} is more than the model's context of {n_ctx} tokens"
        )
    kv_cache = new_kv_cache(params, n_head)
    logits, kv_cache = gpt2_cached(inputs, **params, n_head=n_head, kv_cache=kv_cache)  # the prompt at once
    ids = []
    while True:
        ids.append(int(np.argmax(logits)))  # the most likely next token
        if len(ids) == n_tokens_to_generate:
            return ids
        logits, kv_cache = gpt2_cached(ids[-1:], **params, n_head=n_head, kv_cache=kv_cache)  # one token in


def main(prompt, n_tokens_to_generate=40, model_size="124M", models_dir="models"):
    """Continue PROMPT with GPT-2, greedily, and print the new text.

    Args:
        prompt: the text to continue; an empty prompt starts from <|endoftext|>, a fresh document.
        n_tokens_to_generate: how many tokens (word pieces, about 3/4 of a word each) to add.
        model_size: which of OpenAI's models: 124M, 355M, 774M or 1558M.
        models_dir: where the models live; a missing model is downloaded there first.
    """
    from utils import load_encoder_hparams_and_params

    if not isinstance(prompt, str):
        raise ValueError(f"the prompt must be text, not {prompt!r} (on the command line, give it first)")
    check_n_tokens_to_generate(n_tokens_to_generate)
    encoder, hparams, params = load_encoder_hparams_and_params(model_size, models_dir)
    input_ids = encoder.encode(prompt) or [END_OF_TEXT]
    output_ids = generate(input_ids, params, hparams["n_head"], n_tokens_to_generate)
    return encoder.decode(output_ids)


def cli():
    import fire

    # fire reads every argument as a Python literal: "Hello, world" would arrive as a tuple and "42" as
    # a number. Handed over as a quoted literal, the prompt arrives exactly as typed.
    args = sys.argv[1:]
    if args and not args[0].startswith("-"):
        args[0] = repr(args[0])
    try:
        fire.Fire(main, command=args)
    except (ValueError, OSError, ImportError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    cli()
