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
    # smooth ReLU; the tanh approximation that GPT-2 was trained with. x*x*x, not x**3: far faster on float32
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def softmax(x):
    exp_x = np.exp(x - np.max(x, axis=-1, keepdims=True))  # subtracting the max keeps exp from overflowing
    return exp_x / np.sum(exp_x, axis=-1, keepdims=True)


def layer_norm(x, g, b, eps=1e-5):  # [n_seq, n_embd] -> [n_seq, n_embd]
    mean = np.mean(x, axis=-1, keepdims=True)  # [n_seq, 1]
    variance = np.var(x, axis=-1, keepdims=True)  # [n_seq, 1]
    return g * (x - mean) / np.sqrt(variance + eps) + b  # normalize each row, then scale and shift


def linear(x, w, b):  # [m, in], [in, out], [out] -> [m, out]
    return x @ w + b


def ffn(x, c_fc, c_proj):  # [n_seq, n_embd] -> [n_seq, n_embd]
    a = gelu(linear(x, **c_fc))  # up projection: [n_seq, n_embd] -> [n_seq, 4*n_embd]
    return linear(a, **c_proj)  # down projection: [n_seq, 4*n_embd] -> [n_seq, n_embd]


def attention(q, k, v, mask):  # [n_head, n_q, d], [n_head, n_k, d], [n_head, n_k, d], [n_q, n_k] -> [n_head, n_q, d]
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])  # [n_head, n_q, n_k]
    return softmax(scores + mask) @ v  # weights over earlier positions: [n_head, n_q, n_k] @ [n_head, n_k, d]


def mha(x, c_attn, c_proj, n_head):  # [n_seq, n_embd] -> [n_seq, n_embd]
    n_seq, n_embd = x.shape
    x = linear(x, **c_attn)  # queries, keys and values at once: [n_seq, n_embd] -> [n_seq, 3*n_embd]
    heads = x.reshape(n_seq, 3, n_head, n_embd // n_head)  # [n_seq, 3*n_embd] -> [n_seq, 3, n_head, d]
    q, k, v = heads.transpose(1, 2, 0, 3)  # each [n_head, n_seq, d]: the heads become a batch axis
    causal_mask = (1 - np.tri(n_seq, dtype=x.dtype)) * -1e10  # -1e10 above the diagonal hides the future: [n_seq, n_seq]
    out = attention(q, k, v, causal_mask)  # [n_head, n_seq, d]
    out = out.transpose(1, 0, 2).reshape(n_seq, n_embd)  # merge heads: [n_head, n_seq, d] -> [n_seq, n_embd]
    return linear(out, **c_proj)  # [n_seq, n_embd] -> [n_seq, n_embd]


def transformer_block(x, mlp, attn, ln_1, ln_2, n_head):  # [n_seq, n_embd] -> [n_seq, n_embd]
    x = x + mha(layer_norm(x, **ln_1), **attn, n_head=n_head)  # tokens exchange information
    x = x + ffn(layer_norm(x, **ln_2), **mlp)  # each token is processed on its own
    return x


def gpt2(inputs, wte, wpe, blocks, ln_f, n_head):  # [n_seq] -> [n_seq, n_vocab]
    x = wte[inputs] + wpe[: len(inputs)]  # token + position embeddings: [n_seq] -> [n_seq, n_embd]
    for block in blocks:
        x = transformer_block(x, **block, n_head=n_head)  # [n_seq, n_embd] -> [n_seq, n_embd]
    return layer_norm(x, **ln_f) @ wte.T  # scores of every next token: [n_seq, n_embd] -> [n_seq, n_vocab]


def check_n_tokens_to_generate(n_tokens_to_generate):
    if isinstance(n_tokens_to_generate, bool) or not isinstance(n_tokens_to_generate, int) or n_tokens_to_generate < 1:
        raise ValueError(f"n_tokens_to_generate must be a whole number of at least 1, not {n_tokens_to_generate!r}")


def generate(inputs, params, n_head, n_tokens_to_generate):
    """Greedy decoding: append the most likely next token, n_tokens_to_generate times.
    Returns the list of new ids; the caller's list is left as it was."""
    check_n_tokens_to_generate(n_tokens_to_generate)
    n_ctx = len(params["wpe"])
    if len(inputs) + n_tokens_to_generate > n_ctx:
        raise ValueError(
            f"the prompt has {len(inputs)} tokens and {n_tokens_to_generate} more were asked for: "
            f"{len(inputs) + n_tokens_to_generate} is more than the model's context of {n_ctx} tokens"
        )
    ids = list(inputs)
    for _ in range(n_tokens_to_generate):
        logits = gpt2(ids, **params, n_head=n_head)  # [n_seq, n_vocab]
        ids.append(int(np.argmax(logits[-1])))  # the last position predicts the next token
    return ids[len(inputs):]


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
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    cli()
