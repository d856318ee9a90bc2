"""What the learner's page shows of a prompt: every head's attention weights, what each layer would
predict (the logit lens), and the next token's distribution under the sampling filters; with heads
switched off. The forward pass is train.py's block_forward, whose kept arrays hold the attention
weights, and the views of one prompt share one pass (kept_inside).
"""

import threading
from concurrent.futures import Future

import numpy as np

import gpt2
from serve.schema import number_check, refuse_unknown, text, tokens_of, whole_number_check
from serve.server import BadRequest
from serve.top_tokens import most_likely, top_entries
from train import block_forward

ATTENTION_MAX_TOKENS = 64  # beyond this the heat map is too small to read
MAX_LENS_TOP = 5  # the lens's candidates per layer and position
MAX_NEXT_TOKENS = 100  # the next-token bars


def inside(ids, params, n_head, ablate=()):  # ids [n_seq] -> streams [n_layer][n_seq, n_embd], weights
    """The forward pass block by block, keeping what the page shows: the residual stream after each
    block, and every head's attention weights [n_layer][n_head, n_seq, n_seq]. The heads in ablate,
    (layer, head) pairs, are switched off: nothing of theirs reaches the stream."""
    n_seq = len(ids)
    mask = gpt2.causal_mask(n_seq)
    x = params["wte"][ids] + params["wpe"][:n_seq]  # [n_seq, n_embd]
    streams, weights = [], []
    for layer, block in enumerate(params["blocks"]):
        heads = [head for off_layer, head in ablate if off_layer == layer]
        x, kept = block_forward(x, **switched_off(block, heads, n_head), n_head=n_head, mask=mask)
        streams.append(x)
        weights.append(kept.weights)
    return streams, weights


def switched_off(block, heads, n_head):
    """The block with the heads' outputs cut off before the attention's output projection: their rows
    of c_proj's w set to zero, which gives the products that zeroing their part of its input would."""
    if not heads:
        return block
    projection = block["attn"]["c_proj"]
    w = projection["w"].copy()  # [n_embd, n_embd]: row i takes feature i of the merged heads
    d = w.shape[0] // n_head
    for head in heads:
        w[head * d : (head + 1) * d] = 0.0
    return {**block, "attn": {**block["attn"], "c_proj": {**projection, "w": w}}}


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
        (
            whole_number_check(0, n_layer - 1)("ablate's layer", layer),
            whole_number_check(0, n_head - 1)("ablate's head", head),
        )
        for layer, head in ablate
    )


def lens_view(body, encoder, params, n_head):
    """The logit lens: at each block's output and each position, what the model would predict if it
    stopped there (the final layer norm and the tied output layer applied to the stream); the last
    block's is the model's own prediction."""
    refuse_unknown(body, ("prompt", "top", "ablate"))
    tokens = view_prompt(body, encoder, params)
    n_top = whole_number_check(1, MAX_LENS_TOP)("top", body.get("top", MAX_LENS_TOP))
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
    temperature = number_check(0, gpt2.MAX_TEMPERATURE)("temperature", body.get("temperature", 1.0))
    top_k = whole_number_check(0, len(params["wte"]))("top_k", body.get("top_k", 0))
    top_p = number_check(0, 1, low_open=True)("top_p", body.get("top_p", 1.0))
    n_top = whole_number_check(1, MAX_NEXT_TOKENS)("top", body.get("top", 10))
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
    layer = None if every else whole_number_check(0, n_layer - 1)("layer", body.get("layer", 0))
    head = None if every else whole_number_check(0, n_head - 1)("head", body.get("head", 0))
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
