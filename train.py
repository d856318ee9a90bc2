"""Training GPT-2 in NumPy: the backward pass written by hand, and AdamW.

Read it beside gpt2.py. The forward pass of training is gpt2.py's own functions, called in the same
order as transformer_block and gpt2 call them, keeping the few arrays the backward pass needs. Each
backward function takes the gradient of the loss with respect to a function's output (`d_out`, the
same shape as the output) and returns the gradients with respect to its inputs and weights, by the
chain rule; they come in the order a reader meets the forward functions.

    loss, grads = loss_and_grads(params, batch, n_head)   # batch: ids [n_batch, n_seq + 1]

`grads` is a nested dict shaped like `params`. Every gradient is checked against PyTorch's autograd
(HuggingFace's GPT2LMHeadModel on the same weights) and against jax.grad(gpt2.lm_loss) in the tests.
"""

import functools
import hashlib
import json
import math
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from gpt2 import attention, attention_weights, causal_mask, gelu, layer_norm, linear, merge_heads, split_heads

# NumPy runs an elementwise operation on one core, over a whole array at a time, while its matrix
# products use every core. The long chains of elementwise passes (gelu and its backward, the softmaxes,
# AdamW) go instead a piece at a time, each piece small enough that all of its passes find it in the
# processor's cache, with a thread per core (NumPy lets go of the interpreter's lock inside its loops).
# The pieces depend only on the array's shape, so the results are the same, bit for bit, on any number
# of cores.

PIECE = 1 << 18  # numbers: 1 MB of float32 per array
THREADS = ThreadPoolExecutor(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())


def on_every_core(work, n, piece=PIECE):
    """work(slice) for slices of at most `piece` that cover range(n), spread over a thread per core."""
    for _ in THREADS.map(work, [slice(start, start + piece) for start in range(0, n, piece)]):
        pass


def by_rows(function, *arrays):  # arrays [..., n] of one shape -> function(*arrays), a few rows at a time
    """For a function that works on each row (the last axis) apart from the others."""
    rows = [a.reshape(-1, a.shape[-1]) for a in arrays]
    out = np.empty(rows[0].shape, dtype=np.float32)

    def work(piece):
        out[piece] = function(*(r[piece] for r in rows))

    on_every_core(work, len(out), max(1, PIECE // out.shape[-1]))
    return out.reshape(arrays[0].shape)


# The building blocks, backwards.


def linear_backward(d_out, x, w):  # [..., m, out], [..., m, in], [in, out] -> dx [..., m, in], dw, db
    d_out2, x2 = d_out.reshape(-1, d_out.shape[-1]), x.reshape(-1, x.shape[-1])  # every row of every text
    dx = (d_out2 @ w.T).reshape(x.shape)  # each input feeds every output through w
    # x.T @ d_out, [in, m] @ [m, out]: summed over the rows, as the weights serve every row; computed
    # transposed, so that it comes out column by column like the weights it updates (the optimizer's
    # elementwise passes then run along memory)
    dw = (d_out2.T @ x2).T
    return dx, {"w": dw, "b": d_out2.sum(axis=0)}


def gelu_backward(d_out, x):  # elementwise: d/dx of 0.5 * x * (1 + tanh(u)), u = sqrt(2/pi) * (x + 0.044715 x^3)
    # = 0.5 * (1 + tanh(u)) + 0.5 * x * (1 - tanh(u)^2) * du/dx, in fourteen passes: a piece at a time,
    # on every core (x is the largest input of a block: four values per number of the residual stream)
    c = math.sqrt(2.0 / math.pi)

    def piece(d_out, x):
        x_squared = x * x
        tanh_u = x_squared * 0.044715
        tanh_u += 1.0
        tanh_u *= x
        tanh_u *= c
        np.tanh(tanh_u, out=tanh_u)
        du_dx = x_squared  # reused: c * (1 + 3 * 0.044715 * x^2)
        du_dx *= 3 * 0.044715 * c
        du_dx += c
        slope = tanh_u * tanh_u  # then 0.5 * x * (1 - tanh(u)^2) * du/dx
        np.subtract(1.0, slope, out=slope)
        slope *= du_dx
        slope *= x
        slope *= 0.5
        tanh_u += 1.0
        tanh_u *= 0.5
        tanh_u += slope
        tanh_u *= d_out
        return tanh_u

    return by_rows(piece, d_out, x)


def layer_norm_backward(d_out, x, g, eps=1e-5):  # [..., n], [..., n], [n] -> dx [..., n], dg, db
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
    rows = tuple(range(x.ndim - 1))
    return dx, {"g": (d_out * x_hat).sum(axis=rows), "b": d_out.sum(axis=rows)}


def softmax_backward(d_probs, probs):  # [..., n] twice -> [..., n]
    """The softmax's Jacobian is diag(p) - p p^T: a product with it needs no n x n matrix, only
    p * (d - sum(d * p))."""
    return probs * (d_probs - (d_probs * probs).sum(axis=-1, keepdims=True))


def attention_backward(d_out, q, k, v, mask):  # [..., n_q, d] and the inputs -> dq, dk, dv
    """The attention weights are computed again from q and k (one product) rather than kept: they are
    the largest array of the forward pass, n_head x n_seq x n_seq per block."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    probs = attention_weights(q, k, mask)  # [..., n_q, n_k]
    dv = probs.swapaxes(-1, -2) @ d_out  # each value was mixed into the outputs by its weights
    d_scores = by_rows(softmax_backward, d_out @ v.swapaxes(-1, -2), probs)  # [..., n_q, n_k]
    dq = (d_scores @ k) * scale
    dk = (d_scores.swapaxes(-1, -2) @ q) * scale
    return dq, dk, dv


# One transformer block, forwards (keeping what the backward needs) and backwards.


def block_forward(x, mlp, attn, ln_1, ln_2, n_head, mask):  # [..., n_seq, n_embd] -> the same, and what backward keeps
    a = layer_norm(x, **ln_1)
    qkv = split_heads(linear(a, **attn["c_attn"]), 3 * n_head)  # as mha: [..., 3*n_head, n_seq, d]
    q, k, v = qkv[..., :n_head, :, :], qkv[..., n_head : 2 * n_head, :, :], qkv[..., 2 * n_head :, :, :]
    merged = merge_heads(attention(q, k, v, mask))
    x_mid = x + linear(merged, **attn["c_proj"])  # tokens exchange information
    b = layer_norm(x_mid, **ln_2)
    h = linear(b, **mlp["c_fc"])
    gelu_h = by_rows(gelu, h)
    out = x_mid + linear(gelu_h, **mlp["c_proj"])  # each token on its own
    return out, (x, a, q, k, v, merged, x_mid, b, h, gelu_h)


def block_backward(d_out, kept, mlp, attn, ln_1, ln_2, n_head, mask):  # d_out [..., n_seq, n_embd] -> dx, grads
    x, a, q, k, v, merged, x_mid, b, h, gelu_h = kept
    d_gelu_h, d_mlp_proj = linear_backward(d_out, gelu_h, mlp["c_proj"]["w"])
    d_b, d_fc = linear_backward(gelu_backward(d_gelu_h, h), b, mlp["c_fc"]["w"])
    d_x_mid, d_ln_2 = layer_norm_backward(d_b, x_mid, ln_2["g"])
    d_x_mid += d_out  # the residual: the output is x_mid plus the feed-forward's part
    d_merged, d_attn_proj = linear_backward(d_x_mid, merged, attn["c_proj"]["w"])
    dq, dk, dv = attention_backward(split_heads(d_merged, n_head), q, k, v, mask)
    d_qkv = merge_heads(np.concatenate([dq, dk, dv], axis=-3))  # [..., n_seq, 3*n_embd], as split_heads read it
    d_a, d_c_attn = linear_backward(d_qkv, a, attn["c_attn"]["w"])
    dx, d_ln_1 = layer_norm_backward(d_a, x, ln_1["g"])
    dx += d_x_mid  # the residual again
    grads = {"attn": {"c_attn": d_c_attn, "c_proj": d_attn_proj}, "ln_1": d_ln_1, "ln_2": d_ln_2}
    grads["mlp"] = {"c_fc": d_fc, "c_proj": d_mlp_proj}
    return dx, grads


# The whole model and its loss.


def loss_and_grads(params, batch, n_head):  # ids [n_batch, n_seq + 1] -> the mean loss, grads like params
    """The mean next-token loss over all n_batch * n_seq predictions (token i + 1 of each row given
    tokens 0 to i), and its gradient with respect to every weight."""
    batch = np.asarray(batch)
    inputs, targets = batch[:, :-1], batch[:, 1:]  # [n_batch, n_seq] each
    n_batch, n_seq = inputs.shape
    wte, wpe = params["wte"], params["wpe"]
    mask = causal_mask(n_seq, n_seq)
    x = wte[inputs] + wpe[:n_seq]  # [n_batch, n_seq, n_embd]
    kept = []
    for block in params["blocks"]:
        x, block_kept = block_forward(x, **block, n_head=n_head, mask=mask)
        kept.append(block_kept)
    final = layer_norm(x, **params["ln_f"])
    logits = final @ wte.T  # [n_batch, n_seq, n_vocab]
    # The loss is the mean of -log softmax(logits)[target] = log(sum(exp(logits))) - logits[target],
    # with the largest logit taken out first so that exp cannot overflow.
    rows, columns = np.indices(targets.shape)
    target_logits = logits[rows, columns, targets]  # [n_batch, n_seq]
    log_sums = np.empty(targets.shape, dtype=np.float32)  # log(sum(exp(logits))) of each prediction

    # Backwards. The gradient of the loss with respect to the logits is softmax(logits) minus 1 at the
    # target, over the number of predictions; the softmax is computed in place, the logits being the
    # largest array of the step.
    def softmax_over_predictions(piece):
        logits_piece = logits.reshape(-1, logits.shape[-1])[piece]
        largest = logits_piece.max(axis=-1, keepdims=True)
        logits_piece -= largest
        np.exp(logits_piece, out=logits_piece)
        sums = logits_piece.sum(axis=-1, keepdims=True)
        logits_piece *= 1.0 / (sums * (n_batch * n_seq))
        log_sums.reshape(-1)[piece] = np.log(sums[:, 0]) + largest[:, 0]

    on_every_core(softmax_over_predictions, n_batch * n_seq, max(1, PIECE // logits.shape[-1]))
    loss = (log_sums - target_logits).mean()
    d_logits = logits
    d_logits[rows, columns, targets] -= np.float32(1.0 / (n_batch * n_seq))
    # wte is used twice, to embed the tokens and (transposed) as the output layer: its gradient is
    # the sum of both uses, the output layer's first.
    d_final = d_logits @ wte  # [n_batch, n_seq, n_embd]
    d_wte = (
        final.reshape(-1, final.shape[-1]).T @ d_logits.reshape(-1, d_logits.shape[-1])
    ).T  # [n_vocab, n_embd], column by column as wte
    dx, d_ln_f = layer_norm_backward(d_final, x, params["ln_f"]["g"])
    d_blocks = [None] * len(kept)
    for i in reversed(range(len(kept))):
        dx, d_blocks[i] = block_backward(dx, kept[i], **params["blocks"][i], n_head=n_head, mask=mask)
    # Each token id picked one row of wte, each position one of wpe: a row's gradient is the sum over
    # every place it was picked (a token that occurs three times collects three gradients).
    np.add.at(d_wte, inputs.reshape(-1), dx.reshape(-1, dx.shape[-1]))
    d_wpe = np.zeros_like(wpe)
    d_wpe[:n_seq] = dx.sum(axis=0)
    return loss, {"wte": d_wte, "wpe": d_wpe, "blocks": d_blocks, "ln_f": d_ln_f}


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
    """Weight decay applies to the weight matrices and the embeddings, not to biases and layer-norm gains."""
    return path[-1] in ("w", "wte", "wpe")


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


def trainable(params):
    """A writable float32 copy of params (a loaded model's arrays are read-only memory maps)."""
    if isinstance(params, dict):
        return {key: trainable(value) for key, value in params.items()}
    if isinstance(params, list):
        return [trainable(value) for value in params]
    return np.array(params, dtype=np.float32)


def learning_rate_at(step, learning_rate, warmup_steps, schedule, total_steps):
    """Warm-up from learning_rate / warmup_steps to learning_rate, then constant, or a cosine down to a
    tenth of it at the last step. step counts from 1."""
    if step <= warmup_steps:
        return learning_rate * step / warmup_steps
    if schedule == "constant":
        return learning_rate
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return learning_rate * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


# Text to train on: documents joined with <|endoftext|>, tokenized once, windows at random offsets.


def read_documents(paths):
    """The documents of the data: each UTF-8 text file is one (a folder: every file in it, sorted), and
    each line of a .jsonl file with a "text" field is one. A bad file or line stops everything with its
    name and line, before any model work."""

    documents = []
    for path in paths:
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs) if os.path.isdir(path) else [path]
        for name in files:
            try:
                with open(name, "rb") as f:
                    text = f.read().decode("utf-8")
            except OSError as e:
                raise ValueError(f"cannot read {name}: {e.strerror}") from None
            except UnicodeDecodeError as e:
                raise ValueError(f"{name} is not UTF-8 text (at byte offset {e.start})") from None
            if not name.endswith(".jsonl"):
                documents.append(text)
                continue
            for number, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{name} line {number}: not JSON: {e.msg.lower()} at column {e.colno}") from None
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise ValueError(f'{name} line {number}: not an object with a "text" string')
                documents.append(record["text"])
    if not any(document.strip() for document in documents):
        raise ValueError(f"no text in {', '.join(paths)}")
    return documents


def tokenize(documents, encoder, cache_dir):
    """The ids of the documents joined with <|endoftext|>, as uint16, tokenized once: cached in cache_dir
    by the sha256 of the documents (and the vocabulary), since BPE in Python takes a while."""

    from tqdm import tqdm

    from gpt2 import END_OF_TEXT
    from storage.files import synced

    digest = hashlib.sha256(str(len(encoder.encoder)).encode())
    for document in documents:
        digest.update(hashlib.sha256(document.encode()).digest())
    path = os.path.join(cache_dir, f"{digest.hexdigest()}.npy")
    if os.path.exists(path):
        return np.load(path, allow_pickle=False)
    ids = []
    for document in tqdm(documents, desc="tokenizing", unit="doc", disable=len(documents) < 2):
        ids.extend(encoder.encode(document))
        ids.append(END_OF_TEXT)
    ids = np.array(ids, dtype=np.uint16)
    os.makedirs(cache_dir, exist_ok=True)
    partial = f"{path}.{os.getpid()}.partial"
    with open(partial, "wb") as f:
        np.save(f, ids)
        synced(f)
    os.replace(partial, path)
    return ids


def random_windows(ids, rng, n_batch, block_size):  # -> [n_batch, block_size + 1]
    offsets = rng.integers(0, len(ids) - block_size, size=n_batch)
    return np.stack([ids[o : o + block_size + 1] for o in offsets]).astype(np.int64)


def held_out_loss(params, ids, n_head, n_batch, block_size, max_windows=16):
    """The mean loss over evenly spaced windows of the held-out ids (the same ones at every evaluation)."""
    n_windows = min(max_windows, max(1, (len(ids) - 1) // block_size))
    offsets = np.linspace(0, len(ids) - block_size - 1, n_windows).astype(int)
    windows = np.stack([ids[o : o + block_size + 1] for o in offsets]).astype(np.int64)
    losses = [forward_loss(params, windows[i : i + n_batch], n_head) for i in range(0, len(windows), n_batch)]
    return float(np.average(losses, weights=[len(windows[i : i + n_batch]) for i in range(0, len(windows), n_batch)]))


def forward_loss(params, batch, n_head):  # the loss of loss_and_grads, without the backward pass
    from gpt2 import gpt2, next_token_nlls

    logits = gpt2(batch[:, :-1], **params, n_head=n_head)  # [n_batch, n_seq, n_vocab]
    return float(np.mean(next_token_nlls(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))))


def memory_needed(hparams, n_batch, block_size):
    """Bytes a training step needs, roughly: the weights as loaded and their trainable copy, their
    gradients and two moments (5 copies), what each block keeps for the backward pass (16 arrays of
    n_embd per token), the logits and their gradient, and one block's attention weights."""
    from utils import expected_shapes

    n_params = sum(int(np.prod(shape)) for shape in expected_shapes(hparams).values())
    tokens = n_batch * block_size
    activations = hparams["n_layer"] * 16 * tokens * hparams["n_embd"]
    logits = 2 * tokens * hparams["n_vocab"]
    attention_weights = 2 * n_batch * hparams["n_head"] * block_size * block_size
    return 4 * (5 * n_params + activations + logits + attention_weights)


def memory_available():
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) * 1024


# The run folder: the model in HuggingFace's layout (so `python gpt2.py --model RUN` and
# GPT2LMHeadModel.from_pretrained load it), the optimizer's moments, and state.json (the step, the
# random state, the options). A save writes every file beside its old version as NAME.partial, then
# commit.json, then renames the partials over the old files: a save cut short before commit.json
# leaves the previous save as it was (the partials are removed at the next start), one cut short after
# it is completed at the next start.

RUN_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt", "optimizer.safetensors", "state.json")


def dotted(path):  # ("blocks", 0, "attn", "c_attn", "w") -> "blocks.0.attn.c_attn.w", utils.nest's flat key
    return ".".join(str(part) for part in path)


def save_run(folder, params, hparams, encoder, optimizer, state):

    from storage import hf, safetensors_file
    from storage.files import fsync_path, synced

    os.makedirs(folder, exist_ok=True)
    commit = os.path.join(folder, "commit.json")
    if os.path.exists(commit):
        os.remove(commit)  # from a save that finished its renames but was stopped before removing it

    def partial(name):
        return os.path.join(folder, f"{name}.partial")

    with open(partial("config.json"), "w") as f:
        json.dump(hf.config_for(hparams), f, indent=2)
        synced(f)
    safetensors_file.write(partial("model.safetensors"), {hf.hf_name(dotted(p)): a for p, a in leaves(params)})
    hf.write_tokenizer(encoder, folder, suffix=".partial")
    moments = {f"m.{dotted(path)}": array for path, array in optimizer.m.items()}
    moments.update({f"v.{dotted(path)}": array for path, array in optimizer.v.items()})
    safetensors_file.write(partial("optimizer.safetensors"), moments, {"step": optimizer.step_count})
    with open(partial("state.json"), "w") as f:
        json.dump(state, f)
        synced(f)
    fsync_path(folder)
    with open(commit + ".partial", "w") as f:
        json.dump({"files": RUN_FILES}, f)
        synced(f)
    os.replace(commit + ".partial", commit)  # the save counts from here
    finish_save(folder)


def finish_save(folder):
    """Complete a committed save, or drop the partials of one that was not committed."""

    from storage.files import fsync_path

    committed = os.path.exists(os.path.join(folder, "commit.json"))
    for name in RUN_FILES:
        partial = os.path.join(folder, f"{name}.partial")
        if os.path.exists(partial):
            if committed:
                os.replace(partial, os.path.join(folder, name))
            else:
                os.remove(partial)
    if os.path.exists(os.path.join(folder, "commit.json.partial")):
        os.remove(os.path.join(folder, "commit.json.partial"))
    fsync_path(folder)
    if committed:
        os.remove(os.path.join(folder, "commit.json"))


def load_optimizer(folder, optimizer):

    from storage.safetensors_file import read_tensors

    by_name = dict(read_tensors(os.path.join(folder, "optimizer.safetensors")))
    for path in optimizer.m:
        optimizer.m[path][...] = by_name[f"m.{dotted(path)}"]
        optimizer.v[path][...] = by_name[f"v.{dotted(path)}"]


def load_run_params(folder):
    """The weights of a run folder, laid out as a loaded model's are (so that a resumed run computes
    exactly what the uninterrupted one would)."""

    from storage import hf, npy_copy
    from utils import nest

    weights = os.path.join(folder, "model.safetensors")
    return trainable(nest({key: npy_copy.laid_out(key, array) for key, array in hf.tensors(weights)}))


def loss_curve_svg(records, width=640, height=360):
    """The training loss (and the held-out loss, as dots) against the step, as a small SVG picture."""
    steps = [r["step"] for r in records]
    losses = [r["train_loss"] for r in records] + [r["val_loss"] for r in records if "val_loss" in r]
    low, high, last = min(losses), max(losses), max(steps)
    span = (high - low) or 1.0

    def point(step, loss):
        return 50 + (width - 70) * step / max(last, 1), 20 + (height - 60) * (high - loss) / span

    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in (point(r["step"], r["train_loss"]) for r in records))
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="#d62728"/>'
        for x, y in (point(r["step"], r["val_loss"]) for r in records if "val_loss" in r)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">'
        f'<rect width="100%" height="100%" fill="white"/>'
        f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{line}"/>{dots}'
        f'<text x="50" y="{height - 20}">step 0 to {last}; loss {low:.3f} to {high:.3f} (blue: training, red: held out)</text>'
        "</svg>"
    )


class StopRequested(Exception):
    """Ctrl-C or SIGTERM: the run saves at the end of the step it is in, then stops."""


def run(options):
    """The training run that the command line describes (see main)."""
    from tqdm import tqdm

    import gpt2
    from utils import load_model

    out = options.out
    state_path = os.path.join(out, "state.json")
    if os.path.isdir(out):
        finish_save(out)
    resuming = os.path.exists(state_path) and not options.fresh
    ours = (*RUN_FILES, "log.jsonl", "loss.svg")  # a run stopped before its first save leaves only a log
    if os.path.isdir(out) and not resuming and any(name not in ours for name in os.listdir(out)):
        raise ValueError(f"{out} holds other files than a training run's: choose another --out")
    recorded = {key: value for key, value in vars(options).items() if key not in ("fresh", "steps", "models_dir")}
    if resuming:
        with open(state_path) as f:
            state = json.load(f)
        if state["options"] != recorded:
            changed = sorted(key for key in recorded if state["options"].get(key) != recorded[key])
            raise ValueError(
                f"the run in {out} was started with other {', '.join(changed)}; give the same, or --fresh to start over"
            )
    elif options.fresh and os.path.isdir(out):
        print(f"--fresh: starting over in {out}", file=sys.stderr)
        for name in os.listdir(out):
            os.remove(os.path.join(out, name))  # only a run's files: anything else was refused above

    documents = read_documents(options.data)  # bad data is refused before the model is loaded
    val_documents = read_documents([options.val_file]) if options.val_file else None
    encoder, hparams, params = load_model(options.model or options.model_size, options.models_dir)
    n_head = hparams["n_head"]
    if options.block_size > hparams["n_ctx"]:
        raise ValueError(f"--block_size {options.block_size} is more than the model's context of {hparams['n_ctx']}")
    needed, available = memory_needed(hparams, options.batch_size, options.block_size), memory_available()
    if needed > 0.9 * available:
        raise MemoryError(
            f"this run needs about {needed / 1e9:.1f} GB and {available / 1e9:.1f} GB are available: "
            "use a smaller --batch_size or --block_size (with --grad_accum for the same batch), or a smaller model"
        )
    ids = tokenize(documents, encoder, os.path.join(options.models_dir, "tokens"))
    if val_documents:
        train_ids, val_ids = ids, tokenize(val_documents, encoder, os.path.join(options.models_dir, "tokens"))
    else:
        split = int(len(ids) * (1 - options.val_fraction))
        train_ids, val_ids = ids[:split], ids[split:]
    for name, part in (("training", train_ids), ("held-out", val_ids)):
        if len(part) <= options.block_size + 1:
            raise ValueError(
                f"the {name} text has {len(part)} tokens, not more than one window of --block_size {options.block_size}"
            )

    params = load_run_params(out) if resuming else trainable(params)
    optimizer = AdamW(params, beta1=0.9, beta2=0.95, weight_decay=options.weight_decay)
    rng = np.random.default_rng(options.seed)
    step, elapsed = 0, 0.0
    if resuming:
        load_optimizer(out, optimizer)
        step, elapsed = state["step"], state["elapsed"]
        optimizer.step_count = step
        rng.bit_generator.state = state["rng"]
        print(f"resuming the run in {out} at step {step}", file=sys.stderr)
    log_path = os.path.join(out, "log.jsonl")
    os.makedirs(out, exist_ok=True)
    records = []
    if resuming and os.path.exists(log_path):
        with open(log_path) as f:
            records = [r for r in map(json.loads, f) if r["step"] <= step]  # steps after the last save are redone
    with open(log_path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)

    def save():
        state = {"step": step, "rng": rng.bit_generator.state, "elapsed": elapsed, "options": recorded}
        save_run(out, params, hparams, encoder, optimizer, state)
        with open(os.path.join(out, "loss.svg"), "w") as f:
            f.write(loss_curve_svg(records) if records else "")

    stop = []

    def request_stop(signum, frame):
        stop.append(signum)

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    tokens_per_step = options.batch_size * options.block_size * options.grad_accum
    bar = tqdm(total=options.steps, initial=step, unit="step", file=sys.stderr, dynamic_ncols=True)
    try:
        while step < options.steps and not stop:
            start = time.perf_counter()
            learning_rate = learning_rate_at(
                step + 1, options.learning_rate, options.warmup_steps, options.lr_schedule, options.steps
            )
            total, losses = None, []
            for _ in range(options.grad_accum):
                loss, grads = loss_and_grads(
                    params, random_windows(train_ids, rng, options.batch_size, options.block_size), n_head
                )
                losses.append(float(loss))
                if total is None:
                    total = grads
                else:
                    for (_, t), (_, g) in zip(leaves(total), leaves(grads)):
                        t += g
            for _, g in leaves(total):
                g /= np.float32(options.grad_accum)
            clip_gradients(total, options.grad_clip)
            optimizer.step(params, total, learning_rate)
            step += 1
            seconds = time.perf_counter() - start
            elapsed += seconds
            record = {"step": step, "train_loss": float(np.mean(losses)), "learning_rate": learning_rate}
            record.update({"tokens_per_second": tokens_per_step / seconds, "elapsed": elapsed})
            if step % options.eval_every == 0 or step == options.steps:
                record["val_loss"] = held_out_loss(params, val_ids, n_head, options.batch_size, options.block_size)
            records.append(record)
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{record['train_loss']:.3f}", tokens_per_s=f"{record['tokens_per_second']:.0f}")
            bar.update(1)
            if "val_loss" in record:
                bar.write(f"step {step}: held-out loss {record['val_loss']:.4f}", file=sys.stderr)
            if options.sample_every and step % options.sample_every == 0:
                new_ids = gpt2.generate([gpt2.END_OF_TEXT], params, n_head, 40, temperature=1.0, top_k=40, seed=step)
                bar.write(f"sample at step {step}: {encoder.decode(new_ids)!r}", file=sys.stderr)
            if step % options.save_every == 0 or step == options.steps or stop:
                save()
    finally:
        bar.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stop:
        print(f"stopped at step {step}; saved in {out}: the same command resumes", file=sys.stderr)
        raise SystemExit(128 + stop[0])
    print(f"done: {step} steps, saved in {out}; python gpt2.py PROMPT --model {out}", file=sys.stderr)
    return params


class UsageError(Exception):
    """A mistake in the command line: one line, exit 2, before anything is loaded."""


def parse_arguments(args):
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message):
            raise UsageError(message)

    def whole(low):
        def check(text):
            try:
                value = int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
            if value < low:
                raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
            return value

        return check

    def number(low, high=None):
        def check(text):
            try:
                value = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None
            if not (value >= low and (high is None or value < high)):
                raise argparse.ArgumentTypeError(
                    f"must be from {low}{f' to below {high}' if high else ''}, not {value}"
                )
            return value

        return check

    parser = Parser(
        prog="python train.py",
        description="Fine-tune GPT-2 on your own text, in NumPy. The defaults suit a CPU: 124M, batches of "
        "4 windows of 256 tokens (about 3.5 GB of memory), a small learning rate for fine-tuning.",
        epilog="example: python train.py notes/ --out runs/notes --steps 300",
    )
    parser.add_argument(
        "data", nargs="+", help='UTF-8 text files, folders of them, or .jsonl files with a "text" field'
    )
    parser.add_argument(
        "--out",
        required=True,
        help="the run folder: the model (HuggingFace's layout), optimizer state, log.jsonl, loss.svg",
    )
    parser.add_argument(
        "--model_size",
        choices=["124M", "355M", "774M", "1558M"],
        help="which of OpenAI's models to start from (default 124M)",
    )
    parser.add_argument("--model", help="instead, any model gpt2.py loads: a folder (a run folder too) or a hub name")
    parser.add_argument(
        "--models_dir",
        default="models",
        help="where models, converted copies and tokenized data are kept (default models)",
    )
    parser.add_argument("--steps", type=whole(1), default=1000, help="optimizer steps in all (default 1000)")
    parser.add_argument("--batch_size", type=whole(1), default=4, help="windows per micro-batch (default 4)")
    parser.add_argument("--block_size", type=whole(2), default=256, help="tokens per window (default 256)")
    parser.add_argument("--grad_accum", type=whole(1), default=1, help="micro-batches per step (default 1)")
    parser.add_argument("--learning_rate", type=number(0), default=1e-4, help="peak learning rate (default 1e-4)")
    parser.add_argument("--warmup_steps", type=whole(0), default=20, help="steps of linear warm-up (default 20)")
    parser.add_argument(
        "--lr_schedule",
        choices=["constant", "cosine"],
        default="cosine",
        help="after warm-up (default cosine, to a tenth)",
    )
    parser.add_argument(
        "--weight_decay", type=number(0), default=0.1, help="AdamW's decay of the matrices and embeddings (default 0.1)"
    )
    parser.add_argument(
        "--grad_clip", type=number(0), default=1.0, help="the largest global gradient norm (default 1.0)"
    )
    parser.add_argument(
        "--val_fraction", type=number(0, 1), default=0.05, help="the end of the text held out (default 0.05)"
    )
    parser.add_argument("--val_file", help="held-out text instead of a fraction")
    parser.add_argument("--eval_every", type=whole(1), default=50, help="held-out loss every N steps (default 50)")
    parser.add_argument(
        "--sample_every", type=whole(0), default=100, help="a short sample every N steps, 0 for none (default 100)"
    )
    parser.add_argument(
        "--save_every", type=whole(1), default=100, help="save every N steps, and at the end (default 100)"
    )
    parser.add_argument("--seed", type=whole(0), default=1, help="the random windows' seed (default 1)")
    parser.add_argument("--fresh", action="store_true", help="start over in a run folder that holds a run")
    options = parser.parse_args(args)
    if options.val_file is not None and options.val_fraction != 0.05:
        raise UsageError("give --val_fraction or --val_file, not both")
    if options.val_file is not None:
        options.val_fraction = 0.0
    if options.model is not None:
        from utils import check_model_name

        try:
            check_model_name(options.model)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if options.model is not None and options.model_size is not None:
        raise UsageError("give --model or --model_size, not both")
    options.model_size = options.model_size or ("124M" if options.model is None else None)
    return options


def main(args=None):
    """`python train.py ...`: one line on stderr for each mistake, and gpt2.py's exit codes."""
    try:
        options = parse_arguments(sys.argv[1:] if args is None else args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        run(options)
    except (ValueError, OSError, MemoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # before the training loop, which saves and stops by itself
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
