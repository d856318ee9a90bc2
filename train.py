"""Training GPT-2 in NumPy: the backward pass written by hand, and AdamW.

Read it beside gpt2.py. The forward pass of training is gpt2.py's own functions, called in the same
order as transformer_block and gpt2 call them, keeping the few arrays the backward pass needs. Each
backward function takes the gradient of the loss with respect to a function's output (`d_out`, the
same shape as the output) and returns the gradients with respect to its inputs and weights, by the
chain rule; they come in the order a reader meets the forward functions.

    loss, grads = loss_and_grads(params, batch, n_head)   # batch: ids [n_batch, n_seq + 1]

`grads` is a nested dict shaped like `params`; with LoRA's adapters beside frozen weights
(`adapters = init_adapters(params, rank, ["c_attn"], seed)`, then `loss_and_grads(params, batch,
n_head, adapters=adapters, lora_scale=alpha / rank)`), it is shaped like `adapters`. Every gradient
is checked against PyTorch's autograd (HuggingFace's GPT2LMHeadModel on the same weights; through
PEFT's adapters for LoRA) and against jax.grad(gpt2.lm_loss) in the tests.
The run around this lesson (the data, the run folder, the loop, the command line) is the folder
training/, which `python train.py ...` runs. The elementwise passes go a piece at a time on every core
(common.py's by_rows and on_every_core): the same numbers as one pass over the whole array.
"""

import functools
import math
from typing import NamedTuple

import numpy as np

from common import PIECE, by_rows, on_every_core
from gpt2 import (
    attention_weights,
    causal_mask,
    gelu,
    layer_norm,
    linear,
    merge_heads,
    split_heads,
    split_qkv,
)

# The building blocks, backwards.


def linear_backward(d_out, x, w, frozen=False):  # [..., m, out], [..., m, in], [in, out] -> dx [..., m, in], dw, db
    d_out2, x2 = d_out.reshape(-1, d_out.shape[-1]), x.reshape(-1, x.shape[-1])  # every row of every text
    dx = (d_out2 @ w.T).reshape(x.shape)  # each input feeds every output through w
    if frozen:  # weights that do not learn (LoRA's): only what flows back to the input
        return dx, None
    # x.T @ d_out, [in, m] @ [m, out]: summed over the rows, as the weights serve every row; computed
    # transposed, so that it comes out column by column like the weights it updates (the optimizer's
    # elementwise passes then run along memory)
    dw = (d_out2.T @ x2).T
    return dx, {"w": dw, "b": d_out2.sum(axis=0)}


def lora_backward(d_out, x, lora_a, lora_b, scale):  # [..., m, out], [..., m, in], [in, r], [r, out] -> grads
    """LoRA (low-rank adaptation) trains two thin matrices beside a frozen weight matrix w, so that the
    layer computes x @ (w + scale * lora_a @ lora_b) + b; the forward uses that sum, merged once a step.
    Their gradients are two small products each, through the rank-r bottleneck x @ lora_a. lora_b starts
    at zero, so the model starts as exactly the base; lora_a does not, or no gradient would reach
    lora_b (its gradient is made of x @ lora_a) and neither would ever move."""
    d_out2, x2 = d_out.reshape(-1, d_out.shape[-1]), x.reshape(-1, x.shape[-1])
    d_lora_b = (x2 @ lora_a).T @ d_out2  # [r, m] @ [m, out]
    d_lora_a = x2.T @ (d_out2 @ lora_b.T)  # [in, m] @ [m, r]
    d_lora_a *= scale
    d_lora_b *= scale
    return {"lora_a": d_lora_a, "lora_b": d_lora_b}


def gelu_backward(d_out, x, gelu_x):  # elementwise, x and gelu(x) as the forward made them -> d/dx
    """gelu(x) = x * s with s = 0.5 * (1 + tanh(u)), u = sqrt(2/pi) * (x + 0.044715 x^3), and
    1 - tanh(u)^2 = 4 s (1 - s): so its slope s + 2 x s (1 - s) du/dx needs no tanh (NumPy's float32
    tanh is slow) once s is read off the forward's own output, gelu(x) / x (0.5, its limit, near x = 0)."""
    c = math.sqrt(2.0 / math.pi)

    def piece(d_out, x, gelu_x):
        with np.errstate(divide="ignore", invalid="ignore"):
            s = gelu_x / x
        s[np.abs(x) < 1e-20] = 0.5
        slope = x * x  # then 2 x du/dx = 2c (1 + 3 * 0.044715 x^2) x
        slope *= 2 * c * 3 * 0.044715
        slope += 2 * c
        slope *= x
        slope *= s
        slope *= 1.0 - s
        slope += s
        slope *= d_out
        return slope

    return by_rows(piece, d_out, x, gelu_x)


def layer_norm_backward(d_out, x, g, eps=1e-5, frozen=False):  # [..., n], [..., n], [n] -> dx [..., n], dg, db
    """The normalized x_hat = (x - mean) / std feeds the output through g; but every x_i also moves the
    mean and the std that every x_hat_j is made with. So dx has three terms: the direct one, minus the
    share each x_i has in the mean, minus its share in the variance (its part along x_hat)."""
    n = x.shape[-1]
    centered = x - x.sum(axis=-1, keepdims=True) / n
    inv_std = 1.0 / np.sqrt((centered * centered).sum(axis=-1, keepdims=True) / n + eps)
    x_hat = centered * inv_std
    d_x_hat = d_out * g
    dx = inv_std * (
        d_x_hat - d_x_hat.mean(axis=-1, keepdims=True) - x_hat * (d_x_hat * x_hat).mean(axis=-1, keepdims=True)
    )
    if frozen:  # a frozen model's (LoRA's): only what flows back to the input
        return dx, None
    rows = tuple(range(x.ndim - 1))
    return dx, {"g": (d_out * x_hat).sum(axis=rows), "b": d_out.sum(axis=rows)}


def softmax_backward(d_probs, probs):  # [..., n] twice -> [..., n]
    """The softmax's Jacobian is diag(p) - p p^T: a product with it needs no n x n matrix, only
    p * (d - sum(d * p))."""
    return probs * (d_probs - (d_probs * probs).sum(axis=-1, keepdims=True))


def attention_backward(d_out, q, k, v, weights):  # [..., n_q, d], the inputs, the weights [..., n_q, n_k] -> dq, dk, dv
    scale = 1.0 / math.sqrt(q.shape[-1])
    dv = weights.swapaxes(-1, -2) @ d_out  # each value was mixed into the outputs by its weights
    d_scores = by_rows(softmax_backward, d_out @ v.swapaxes(-1, -2), weights)  # [..., n_q, n_k]
    dq = (d_scores @ k) * scale
    dk = (d_scores.swapaxes(-1, -2) @ q) * scale
    return dq, dk, dv


# One transformer block, forwards (keeping what the backward needs) and backwards.


class Kept(NamedTuple):  # what a block's forward keeps for its backward, in the order it makes them
    x: np.ndarray  # the block's input [..., n_seq, n_embd]
    a: np.ndarray  # layer_norm(x, **ln_1)
    q: np.ndarray  # the queries, keys and values, each [..., n_head, n_seq, d]
    k: np.ndarray
    v: np.ndarray
    weights: np.ndarray  # the attention weights [..., n_head, n_seq, n_seq]
    merged: np.ndarray  # the heads' outputs merged [..., n_seq, n_embd], before the output projection
    x_mid: np.ndarray  # x after attention: the residual stream between the two halves
    b: np.ndarray  # layer_norm(x_mid, **ln_2)
    h: np.ndarray  # the feed-forward's up projection [..., n_seq, 4*n_embd]
    gelu_h: np.ndarray  # gelu(h)


def block_forward(x, mlp, attn, ln_1, ln_2, n_head, mask):  # [..., n_seq, n_embd] -> the same, and Kept
    """transformer_block's computation, step by step with a name for each array the backward needs
    (the same functions, in the same order: mha and ffn opened up)."""
    a = layer_norm(x, **ln_1)
    q, k, v = split_qkv(linear(a, **attn["c_attn"]), n_head)  # as mha: each [..., n_head, n_seq, d]
    weights = attention_weights(q, k, mask)  # [..., n_head, n_seq, n_seq]: as attention(q, k, v, mask) makes them
    merged = merge_heads(weights @ v)
    x_mid = x + linear(merged, **attn["c_proj"])  # tokens exchange information
    b = layer_norm(x_mid, **ln_2)
    h = linear(b, **mlp["c_fc"])
    gelu_h = by_rows(gelu, h)
    out = x_mid + linear(gelu_h, **mlp["c_proj"])  # each token on its own
    return out, Kept(x, a, q, k, v, weights, merged, x_mid, b, h, gelu_h)


def block_backward(d_out, kept, mlp, attn, ln_1, ln_2, n_head, adapters=None, lora_scale=1.0):  # -> dx, grads
    """d_out [..., n_seq, n_embd]. With adapters (the block's, as init_adapters makes them), the block's
    own weights are frozen and the grads are the adapters' only."""
    frozen = adapters is not None

    def linear_layer_backward(d_out, x, module, name):  # one of the block's linear layers -> dx, its grads
        w = {"attn": attn, "mlp": mlp}[module][name]["w"]
        if not frozen:
            return linear_backward(d_out, x, w)
        dx, _ = linear_backward(d_out, x, w, frozen=True)
        adapter = adapters.get(module, {}).get(name)
        return dx, adapter and lora_backward(d_out, x, **adapter, scale=lora_scale)

    d_gelu_h, d_mlp_proj = linear_layer_backward(d_out, kept.gelu_h, "mlp", "c_proj")
    d_b, d_fc = linear_layer_backward(gelu_backward(d_gelu_h, kept.h, kept.gelu_h), kept.b, "mlp", "c_fc")
    d_x_mid, d_ln_2 = layer_norm_backward(d_b, kept.x_mid, ln_2["g"], frozen=frozen)
    d_x_mid += d_out  # the residual: the output is x_mid plus the feed-forward's part
    d_merged, d_attn_proj = linear_layer_backward(d_x_mid, kept.merged, "attn", "c_proj")
    dq, dk, dv = attention_backward(split_heads(d_merged, n_head), kept.q, kept.k, kept.v, kept.weights)
    d_qkv = merge_heads(np.concatenate([dq, dk, dv], axis=-3))  # [..., n_seq, 3*n_embd], as split_heads read it
    d_a, d_c_attn = linear_layer_backward(d_qkv, kept.a, "attn", "c_attn")
    dx, d_ln_1 = layer_norm_backward(d_a, kept.x, ln_1["g"], frozen=frozen)
    dx += d_x_mid  # the residual again
    grads = {"attn": {"c_attn": d_c_attn, "c_proj": d_attn_proj}, "ln_1": d_ln_1, "ln_2": d_ln_2}
    grads["mlp"] = {"c_fc": d_fc, "c_proj": d_mlp_proj}
    return dx, like(adapters, grads) if frozen else grads


def like(tree, grads):  # the parts of grads that a nested dict tree has
    return {key: like(value, grads[key]) for key, value in tree.items()} if isinstance(tree, dict) else grads


# The whole model and its loss.


def loss_and_d_logits(logits, targets, weights):  # [n_batch, n_seq, n_vocab], [n_batch, n_seq], [n_batch * n_seq]
    """The loss, the weighted mean of -log softmax(logits)[target] = log(sum(exp(logits))) - logits[target]
    (the largest logit taken out first so that exp cannot overflow), and its gradient with respect to
    the logits: softmax(logits) minus 1 at the target, times the prediction's share of the mean. The
    softmax is computed in place, over the logits: they are the largest array of the step."""
    rows, columns = np.indices(targets.shape)
    target_logits = logits[rows, columns, targets]  # [n_batch, n_seq]
    log_sums = np.empty(targets.shape, dtype=np.float32)  # log(sum(exp(logits))) of each prediction

    def softmax_over_predictions(piece):
        logits_piece = logits.reshape(-1, logits.shape[-1])[piece]
        largest = logits_piece.max(axis=-1, keepdims=True)
        logits_piece -= largest
        np.exp(logits_piece, out=logits_piece)
        sums = logits_piece.sum(axis=-1, keepdims=True)
        logits_piece *= weights[piece, None] / sums
        log_sums.reshape(-1)[piece] = np.log(sums[:, 0]) + largest[:, 0]

    on_every_core(softmax_over_predictions, len(weights), max(1, PIECE // logits.shape[-1]))
    loss = np.dot(weights, (log_sums - target_logits).reshape(-1))
    logits[rows, columns, targets] -= weights.reshape(targets.shape)
    return loss, logits


def loss_and_grads(params, batch, n_head, mask=None, adapters=None, lora_scale=1.0):  # -> the mean loss, grads
    """The mean next-token loss over the n_batch * n_seq predictions of batch, ids [n_batch, n_seq + 1]
    (token i + 1 of each row given tokens 0 to i), and its gradient with respect to every weight, in a
    nested dict like params. mask [n_batch, n_seq], if given, says which predictions count (1) and
    which not (0: a prompt's, or padding's): the mean is then over those that count, as HuggingFace's
    labels of -100 leave the others out. With adapters (init_adapters), params are frozen and the
    gradients are the adapters', in a dict like adapters."""
    batch = np.asarray(batch)
    inputs, targets = batch[:, :-1], batch[:, 1:]  # [n_batch, n_seq] each
    n_batch, n_seq = inputs.shape
    counted = np.ones(targets.shape, np.float32) if mask is None else np.asarray(mask, np.float32)
    weights = (counted / counted.sum()).reshape(-1)  # [n_batch * n_seq]: each prediction's share of the mean
    if adapters is not None:
        params = with_adapters(params, adapters, lora_scale)
    wte, wpe = params["wte"], params["wpe"]
    causal = causal_mask(n_seq)
    x = wte[inputs] + wpe[:n_seq]  # [n_batch, n_seq, n_embd]
    kept = []
    for block in params["blocks"]:
        x, block_kept = block_forward(x, **block, n_head=n_head, mask=causal)
        kept.append(block_kept)
    final = layer_norm(x, **params["ln_f"])
    loss, d_logits = loss_and_d_logits(final @ wte.T, targets, weights)  # logits [n_batch, n_seq, n_vocab]

    # Backwards, from the logits to the embeddings.
    d_final = d_logits @ wte  # [n_batch, n_seq, n_embd]
    dx, d_ln_f = layer_norm_backward(d_final, x, params["ln_f"]["g"], frozen=adapters is not None)
    d_blocks = [None] * len(kept)
    for i in reversed(range(len(kept))):
        block_adapters = None if adapters is None else adapters["blocks"][i]
        dx, d_blocks[i] = block_backward(
            dx, kept[i], **params["blocks"][i], n_head=n_head, adapters=block_adapters, lora_scale=lora_scale
        )
    if adapters is not None:
        return loss, {"blocks": d_blocks}
    # [n_vocab, n_embd], computed transposed to come out column by column as wte
    d_wte = (final.reshape(-1, final.shape[-1]).T @ d_logits.reshape(-1, d_logits.shape[-1])).T
    # Each token id picked one row of wte, each position one of wpe: a row's gradient is the sum over
    # every place it was picked (a token that occurs three times collects three gradients).
    np.add.at(d_wte, inputs.reshape(-1), dx.reshape(-1, dx.shape[-1]))
    d_wpe = np.zeros_like(wpe)
    d_wpe[:n_seq] = dx.sum(axis=0)
    return loss, {"wte": d_wte, "wpe": d_wpe, "blocks": d_blocks, "ln_f": d_ln_f}


# LoRA: the adapters beside a frozen model's matrices.

# --lora_targets' names, as PEFT matches GPT-2's modules (c_proj: both, attention's and the MLP's)
LORA_TARGETS = {
    "c_attn": [("attn", "c_attn")],
    "c_proj": [("attn", "c_proj"), ("mlp", "c_proj")],
    "attn.c_proj": [("attn", "c_proj")],
    "c_fc": [("mlp", "c_fc")],
    "mlp.c_proj": [("mlp", "c_proj")],
}


def init_adapters(params, rank, targets, seed):
    """Adapters for every block's chosen matrices, initialised as PEFT does: lora_a [n_in, rank] uniform
    in +-1/sqrt(n_in) (PyTorch's default for a linear layer's weights), lora_b [rank, n_out] zero.
    {"blocks": [{"attn": {"c_attn": {"lora_a": ..., "lora_b": ...}}, ...}, ...]}."""
    rng = np.random.default_rng(seed)
    blocks = []
    for block in params["blocks"]:
        adapters = {}
        for module, name in sorted({place for target in targets for place in LORA_TARGETS[target]}):
            n_in, n_out = block[module][name]["w"].shape
            bound = 1.0 / math.sqrt(n_in)
            lora_a = rng.uniform(-bound, bound, (n_in, rank)).astype(np.float32)
            adapters.setdefault(module, {})[name] = {"lora_a": lora_a, "lora_b": np.zeros((rank, n_out), np.float32)}
        blocks.append(adapters)
    return {"blocks": blocks}


def with_adapters(params, adapters, scale):  # params, with each adapted w replaced by w + scale * lora_a @ lora_b
    """The merged model, for one step's forward pass. Only the adapted matrices are new arrays; the
    rest are params' own (a loaded model's read-only memory maps)."""
    blocks = []
    for block, block_adapters in zip(params["blocks"], adapters["blocks"]):
        block = dict(block)
        for module, layers in block_adapters.items():
            block[module] = dict(block[module])
            for name, adapter in layers.items():
                layer = block[module][name]
                merged_w = layer["w"] + scale * (adapter["lora_a"] @ adapter["lora_b"])  # [n_in, n_out]
                block[module][name] = {"w": merged_w, "b": layer["b"]}
        blocks.append(block)
    return {**params, "blocks": blocks}


# The optimizer: AdamW, with gradient clipping.


def leaves(tree, path=()):
    """(path, array) for every array of a nested dict of params or gradients, in a fixed order."""
    if isinstance(tree, dict):
        for key in sorted(tree):
            yield from leaves(tree[key], (*path, key))
    elif isinstance(tree, list):
        for i, item in enumerate(tree):
            yield from leaves(item, (*path, i))
    else:
        yield path, tree


def decays(path):
    """Weight decay applies to the weight matrices (LoRA's too) and the embeddings, not to biases and
    layer-norm gains."""
    return path[-1] in ("w", "wte", "wpe", "lora_a", "lora_b")


def clip_gradients(grads, max_norm):
    """Scale every gradient by the same factor so that together their norm is at most max_norm, as
    torch.nn.utils.clip_grad_norm_ does; returns the norm before clipping."""
    norm = math.sqrt(sum(float(np.vdot(g.ravel(order="K"), g.ravel(order="K"))) for _, g in leaves(grads)))
    scale = min(1.0, max_norm / (norm + 1e-6))
    if scale < 1.0:
        for _, g in leaves(grads):
            g *= np.float32(scale)
    return norm


class AdamW:
    """Adam with decoupled weight decay (Loshchilov and Hutter), updating params in place: each weight
    moves by its gradient's running mean over the square root of its running mean square, both
    corrected for starting at zero; decay shrinks the weights directly, apart from the gradient."""

    def __init__(self, params, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
        self.beta1, self.beta2, self.eps, self.weight_decay = beta1, beta2, eps, weight_decay
        self.step_count = 0
        self.m = {path: np.zeros_like(p) for path, p in leaves(params)}  # first moments
        self.v = {path: np.zeros_like(p) for path, p in leaves(params)}  # second moments

    def step(self, params, grads, learning_rate):
        self.step_count += 1
        for (path, p), (_, g) in zip(leaves(params), leaves(grads)):
            # the numbers of each array in the order they lie in p's memory (views: the writes land in p)
            order = "F" if p.flags.f_contiguous and p.ndim > 1 else "C"
            flat = [a.reshape(-1, order=order) for a in (p, g, self.m[path], self.v[path])]
            decay = self.weight_decay if decays(path) else 0.0
            on_every_core(functools.partial(self.update, flat, decay, learning_rate), p.size)

    def update(self, flat, decay, learning_rate, piece):  # one piece of one weight, its gradient and moments
        p, g, m, v = (a[piece] for a in flat)
        correction1 = 1.0 - self.beta1**self.step_count
        correction2 = 1.0 - self.beta2**self.step_count
        if decay:
            p *= np.float32(1.0 - learning_rate * decay)
        m *= np.float32(self.beta1)
        scratch = g * np.float32(1.0 - self.beta1)
        m += scratch
        v *= np.float32(self.beta2)
        np.multiply(g, g, out=scratch)
        scratch *= np.float32(1.0 - self.beta2)
        v += scratch
        np.sqrt(v, out=scratch)  # the denominator: sqrt of the corrected second moment, plus eps
        scratch /= np.float32(math.sqrt(correction2))
        scratch += np.float32(self.eps)
        np.divide(m, scratch, out=scratch)
        scratch *= np.float32(learning_rate / correction1)
        p -= scratch


def init_params(n_vocab, n_ctx, n_embd, n_head, n_layer, seed):
    """A new GPT's weights, drawn as GPT-2's were (HuggingFace's GPT2PreTrainedModel._init_weights):
    every matrix and embedding from a normal of std 0.02, biases zero, layer norms one and zero. Each
    block adds its two output projections (c_proj) to the residual stream, so that stream's variance
    grows with the number of blocks: those two are drawn 1/sqrt(2 n_layer) smaller."""
    rng = np.random.default_rng(seed)

    def normal(*shape, std=0.02):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    def zeros(n):
        return np.zeros(n, np.float32)

    def layer_norm_params():
        return {"g": np.ones(n_embd, np.float32), "b": zeros(n_embd)}

    residual_std = 0.02 / math.sqrt(2 * n_layer)
    blocks = [
        {
            "ln_1": layer_norm_params(),
            "attn": {
                "c_attn": {"w": normal(n_embd, 3 * n_embd), "b": zeros(3 * n_embd)},  # [n_embd, 3*n_embd]
                "c_proj": {"w": normal(n_embd, n_embd, std=residual_std), "b": zeros(n_embd)},
            },
            "ln_2": layer_norm_params(),
            "mlp": {
                "c_fc": {"w": normal(n_embd, 4 * n_embd), "b": zeros(4 * n_embd)},  # [n_embd, 4*n_embd]
                "c_proj": {"w": normal(4 * n_embd, n_embd, std=residual_std), "b": zeros(n_embd)},
            },
        }
        for _ in range(n_layer)
    ]
    return {"wte": normal(n_vocab, n_embd), "wpe": normal(n_ctx, n_embd), "blocks": blocks, "ln_f": layer_norm_params()}


def trainable(params):
    """A writable float32 copy of params (a loaded model's arrays are read-only memory maps)."""
    if isinstance(params, dict):
        return {key: trainable(value) for key, value in params.items()}
    if isinstance(params, list):
        return [trainable(value) for value in params]
    return np.array(params, dtype=np.float32)


def learning_rate_at(step, learning_rate, warmup_steps, schedule, total_steps, min_lr=None):
    """Warm-up from learning_rate / warmup_steps to learning_rate, then constant, or a cosine down to
    min_lr (by default a tenth of learning_rate) at the last step. step counts from 1."""
    if step <= warmup_steps:
        return learning_rate * step / warmup_steps
    if schedule == "constant":
        return learning_rate
    floor = learning_rate / 10 if min_lr is None else min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return floor + (learning_rate - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


if __name__ == "__main__":  # `python train.py ...` is the training run, the folder training/
    import runpy

    runpy.run_module("training", run_name="__main__")
