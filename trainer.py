"""`python train.py ...`: a training run around train.py's lesson. The data (read, tokenized once,
windows at random offsets), the run folder (saves that a crash cannot break, resumed exactly), the
loop, and the command line.

    python train.py notes/ --out runs/notes --steps 300
"""

import contextlib
import hashlib
import json
import os
import signal
import sys
import time
from typing import NamedTuple

import numpy as np

import gpt2
from cli import Parser, UsageError, check_model_flags, checked, real, run_command, terminate, whole
from encoder import bytes_only
from gpt2 import check_number, check_whole_number, plural
from storage import hf, npy_copy, peft, run_folder, safetensors_file
from storage.files import (
    JsonlError,
    NotUTF8,
    check_fields,
    check_room,
    disk_full,
    no_room,
    partial_path,
    read_jsonl,
    read_utf8,
    remove_leftovers,
    synced,
)
from storage.model_folder import dotted
from train import (
    LORA_TARGETS,
    AdamW,
    clip_gradients,
    init_adapters,
    init_params,
    keep_freed_memory,
    learning_rate_at,
    leaves,
    loss_and_grads,
    trainable,
    with_adapters,
)
from utils import (
    DEFAULT_MODEL_SIZE,
    DEFAULT_MODELS_DIR,
    MODEL_HPARAMS,
    expected_shapes,
    load_gpt2_tokenizer,
    load_model,
    nest,
)

# Options that change nothing the run computes, the run folder itself (which may have moved), and where
# the steps are computed (the backend, its precision, its processes): a resumed run may be given other ones
FREE_TO_CHANGE = ("fresh", "steps", "models_dir", "eval_every", "sample_every", "save_every", "out")
FREE_TO_CHANGE += ("backend", "precision", "coordinator", "num_processes", "process_id")

FINE_TUNING_LR = 1e-4  # a small step: the weights already know English
LORA_LR = 1e-3  # the adapters start at zero and are all that moves: larger steps than a full fine-tune's
# From scratch: nanoGPT's CPU recipe for its character-level Shakespeare (4 layers, 4 heads, 128 wide)
SCRATCH = {"n_layer": 4, "n_head": 4, "n_embd": 128, "tokenizer": "bytes", "learning_rate": 1e-3}

# Text to train on: documents joined with <|endoftext|>, tokenized once, windows at random offsets.


class Pair(NamedTuple):
    """A prompt and the completion the model is to learn to give it, and where the pair was read."""

    prompt: str
    completion: str
    where: str  # "FILE line N", for messages


def read_documents(paths):
    """The documents of the data: each UTF-8 text file is one, and each line of a .jsonl file with a
    "text" field is one; or, from .jsonl lines with "prompt" and "completion", a Pair each. A folder
    gives every regular file in it (sorted), but not hidden ones (.git), not pipes or devices (reading
    one could wait for ever), and not files that are not UTF-8 text (a picture): those are counted on
    stderr. An empty file, a bad file or line given by name, or texts mixed with pairs stop everything
    with the file's name and line, before any model work."""
    documents, skipped = [], {"not UTF-8 text": [], "not a regular file": []}
    for path in paths:
        names = data_files(path, skipped["not a regular file"]) if os.path.isdir(path) else [path]
        for name in names:
            if name.endswith(".jsonl"):
                documents += jsonl_documents(name)
                continue
            try:
                document = read_utf8(name)
            except NotUTF8:
                if name == path:
                    raise
                skipped["not UTF-8 text"].append(name)
                continue
            if not document.strip():
                raise ValueError(f"{name} is empty: there is nothing in it to train on (leave it out)")
            documents.append(document)
    for why, names in skipped.items():
        if names:
            print(f"skipped {plural(len(names), 'file')}, {why}: {', '.join(names)}", file=sys.stderr)
    pairs = [document for document in documents if isinstance(document, Pair)]
    if pairs and len(pairs) < len(documents):
        raise ValueError(
            f"{', '.join(paths)} mix texts with prompt/completion pairs ({pairs[0].where}): give one or the other"
        )
    if not pairs and not any(document.strip() for document in documents):
        raise ValueError(f"no text in {', '.join(paths)}")
    return documents


def jsonl_documents(path):
    """The texts of a .jsonl file's "text" lines, or the Pairs of its "prompt" and "completion" lines:
    the first line says which, and every line must be of that kind."""
    source, records = read_jsonl(path)
    if not records:
        return []
    is_pairs = not {"prompt", "completion"}.isdisjoint(records[0][1])
    fields, others = (("prompt", "completion"), ("text",)) if is_pairs else (("text",), ("prompt", "completion"))
    documents = []
    for number, record in records:
        mixed = [key for key in others if key in record]
        if mixed:
            kind = "prompt/completion pairs" if is_pairs else "texts"
            raise JsonlError(
                f'{source} line {number}: "{mixed[0]}" in a file of {kind} (as its first line): one kind per file'
            )
        check_fields(source, number, record, fields)
        documents.append(
            Pair(record["prompt"], record["completion"], f"{source} line {number}") if is_pairs else record["text"]
        )
    return documents


def data_files(folder, special):
    """The regular files of a folder and its subfolders, sorted, leaving out hidden ones and hidden
    folders; the others (pipes, sockets, devices, broken links) are added to special."""
    found = []
    for directory, subdirectories, names in os.walk(folder):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        for path in (os.path.join(directory, name) for name in names if not name.startswith(".")):
            (found if os.path.isfile(path) else special).append(path)
    return sorted(found)


def tokenizer_digest(encoder):
    """The sha256 of a tokenizer's vocabulary and merges: two tokenizers of one size give other ids."""
    digest = hashlib.sha256(json.dumps(encoder.encoder, sort_keys=True).encode())
    digest.update(json.dumps(sorted(encoder.bpe_ranks, key=encoder.bpe_ranks.get)).encode())  # merges by rank
    return digest.digest()


def tokenize(documents, encoder, cache_dir):
    """The ids of the documents joined with <|endoftext|>, as uint16, tokenized once: cached in cache_dir
    by the sha256 of the documents and of the tokenizer, since BPE in Python takes a while."""
    from tqdm import tqdm

    digest = hashlib.sha256(tokenizer_digest(encoder))
    for document in documents:
        digest.update(hashlib.sha256(document.encode()).digest())
    path = os.path.join(cache_dir, f"{digest.hexdigest()}.npy")
    if os.path.exists(path):
        return np.load(path, allow_pickle=False)
    ids = []
    for document in tqdm(documents, desc="tokenizing", unit="doc", disable=len(documents) < 2):
        ids.extend(encoder.encode(document))
        ids.append(encoder.end_of_text)
    ids = np.array(ids, dtype=np.uint16)
    os.makedirs(cache_dir, exist_ok=True)
    remove_leftovers(cache_dir)
    partial = partial_path(path)
    with open(partial, "wb") as f:
        np.save(f, ids)
        synced(f)
    os.replace(partial, path)
    return ids


def random_windows(ids, rng, n_batch, block_size):  # -> [n_batch, block_size + 1]
    offsets = rng.integers(0, len(ids) - block_size, size=n_batch)
    return np.stack([ids[o : o + block_size + 1] for o in offsets]).astype(np.int64)


def held_out_windows(ids, n_batch, block_size, max_windows=16):
    """Evenly spaced windows of the held-out ids in batches (batch, None): the same at every evaluation."""
    n_windows = min(max_windows, max(1, (len(ids) - 1) // block_size))
    offsets = np.linspace(0, len(ids) - block_size - 1, n_windows).astype(int)
    windows = np.stack([ids[o : o + block_size + 1] for o in offsets]).astype(np.int64)
    return [(windows[i : i + n_batch], None) for i in range(0, len(windows), n_batch)]


MAX_HELD_OUT_PAIRS = 64  # the held-out loss of pairs is over at most these, the same ones at every evaluation

# Prompt/completion pairs: each pair is one row, prompt + completion + <|endoftext|>, and the loss is on
# the completion's tokens and that <|endoftext|> only: the model learns to answer, not to write prompts.


def tokenize_pairs(pairs, encoder, n_ctx):
    """(ids, n_prompt) of each pair; a pair longer than the context is refused with its file and line."""
    rows = []
    for pair in pairs:
        prompt = encoder.encode(pair.prompt) or [encoder.end_of_text]  # an empty prompt: a fresh document
        ids = prompt + encoder.encode(pair.completion) + [encoder.end_of_text]
        if len(ids) - 1 > n_ctx:
            raise ValueError(
                f"{pair.where}: prompt, completion and <|endoftext|> are {len(ids)} tokens; the model reads at "
                f"most {n_ctx + 1} (its context of {n_ctx}, and one more to predict)"
            )
        rows.append((ids, len(prompt)))
    return rows


def pair_batch(rows, pad):  # (ids, n_prompt) rows -> ids [n_rows, longest], mask [n_rows, longest - 1]
    """The rows padded to the longest, and the mask of the predictions that count: each completion
    token's and the final <|endoftext|>'s, not the prompt's and not the padding's."""
    longest = max(len(ids) for ids, _ in rows)
    batch = np.full((len(rows), longest), pad, np.int64)
    mask = np.zeros((len(rows), longest - 1), np.float32)
    for i, (ids, n_prompt) in enumerate(rows):
        batch[i, : len(ids)] = ids
        mask[i, n_prompt - 1 : len(ids) - 1] = 1  # prediction j is of token j + 1
    return batch, mask


def held_out_pairs(pairs, fraction):
    """The pairs to train on and those held out: `fraction` of them, at evenly spaced places (not the
    end: a file of examples is often in some order)."""
    n_held_out = min(len(pairs) - 1, max(1, round(len(pairs) * fraction)))
    held_out = set(np.linspace(0, len(pairs) - 1, n_held_out).round().astype(int).tolist())
    return [p for i, p in enumerate(pairs) if i not in held_out], [p for i, p in enumerate(pairs) if i in held_out]


def held_out_loss(params, batches, n_head):
    """The mean loss of the held-out batches (batch, mask), over every prediction that counts."""
    total, counted = 0.0, 0.0
    for batch, mask in batches:
        logits = gpt2.gpt2(batch[:, :-1], **params, n_head=n_head)  # [n_batch, n_seq, n_vocab]
        nlls = gpt2.next_token_nlls(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        weights = np.ones_like(nlls) if mask is None else mask.reshape(-1)
        total, counted = total + float(np.dot(weights, nlls)), counted + float(weights.sum())
    return total / counted


def memory_needed(hparams, n_batch, block_size, lora_rank=None, lora_targets=("c_attn",)):
    """Bytes a training step needs, roughly: the weights as loaded and their trainable copy, their
    gradients and two moments (5 copies; with LoRA, one, the adapted matrices merged for the step, and
    the adapters with their gradients and moments), what each block keeps for the backward pass (16
    arrays of n_embd per token, and its attention weights), the logits and their gradient, and the
    gradient of one block's attention weights."""
    shapes = expected_shapes(hparams)
    n_params = sum(int(np.prod(shape)) for shape in shapes.values())
    weights = 5 * n_params
    if lora_rank:
        places = {place for target in lora_targets for place in LORA_TARGETS[target]}
        adapted = [shapes[f"blocks.0.{module}.{name}.w"] for module, name in places]
        merged = hparams["n_layer"] * sum(n_in * n_out for n_in, n_out in adapted)
        adapters = 4 * hparams["n_layer"] * sum(lora_rank * (n_in + n_out) for n_in, n_out in adapted)
        weights = n_params + merged + adapters
    tokens = n_batch * block_size
    activations = hparams["n_layer"] * 16 * tokens * hparams["n_embd"]
    logits = 2 * tokens * hparams["n_vocab"]
    attention_weights = (hparams["n_layer"] + 1) * n_batch * hparams["n_head"] * block_size * block_size
    return 4 * (weights + activations + logits + attention_weights)


def memory_available():
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) * 1024


def accumulated_grads(params, micro_batches, n_head, **lora):
    """The mean loss and gradients of several micro-batches (batch, mask): the same, up to rounding, as
    one batch that holds them all when each has as many predictions that count (each micro-batch's
    are already a mean over its own)."""
    total, losses = None, []
    for batch, mask in micro_batches:
        loss, grads = loss_and_grads(params, batch, n_head, mask, **lora)
        losses.append(float(loss))
        if total is None:
            total = grads
        else:
            for (_, t), (_, g) in zip(leaves(total), leaves(grads)):
                t += g
    for _, g in leaves(total):
        g /= np.float32(len(losses))
    return float(np.mean(losses)), total


# The run folder: the model in HuggingFace's layout (so `python gpt2.py --model RUN` and
# GPT2LMHeadModel.from_pretrained load it), the optimizer's moments, and state.json (the step, the
# random state, the options), saved together and checked when resumed (storage/run_folder.py); beside
# them log.jsonl, a record per step, and loss.svg.

RUN_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt", "optimizer.safetensors", "state.json")
# A LoRA run keeps its adapters only, in PEFT's files, which name the base model
LORA_RUN_FILES = (peft.CONFIG, peft.WEIGHTS, "optimizer.safetensors", "state.json")
LOG, CURVE = "log.jsonl", "loss.svg"


def save_run(folder, params, hparams, encoder, optimizer, state, adapter_config=None):
    """The run's files (LoRA's, with adapter_config: params are then the adapters), all or none."""
    os.makedirs(folder, exist_ok=True)

    def partial(name):
        return run_folder.partial(folder, name)

    if adapter_config:
        peft.write(folder, adapter_config, params, suffix=".partial")
    else:
        hf.write_model(folder, encoder, hparams, leaves(params), suffix=".partial")
    moments = {f"m.{dotted(path)}": array for path, array in optimizer.m.items()}
    moments.update({f"v.{dotted(path)}": array for path, array in optimizer.v.items()})
    safetensors_file.write(partial("optimizer.safetensors"), moments, {"step": optimizer.step_count})
    with open(partial("state.json"), "w") as f:
        json.dump(state, f)
        synced(f)
    run_folder.commit(folder, LORA_RUN_FILES if adapter_config else RUN_FILES, state["step"])


def save_size(params):  # bytes a save writes: the weights and two moments in float32, and the tokenizer
    return 3 * 4 * sum(array.size for _, array in leaves(params)) + 2_000_000


def load_optimizer(folder, optimizer):
    by_name = dict(safetensors_file.read_tensors(os.path.join(folder, "optimizer.safetensors")))
    for path in optimizer.m:
        optimizer.m[path][...] = by_name[f"m.{dotted(path)}"]
        optimizer.v[path][...] = by_name[f"v.{dotted(path)}"]


def load_run_params(folder):
    """The weights of a run folder, laid out as a loaded model's are (so that a resumed run computes
    exactly what the uninterrupted one would)."""
    return as_loaded(hf.tensors(os.path.join(folder, "model.safetensors")))


def as_loaded(tensors):  # (flat key, array) pairs -> trainable params, laid out as a loaded model's
    return trainable(nest({key: npy_copy.laid_out(key, array) for key, array in tensors}))


def starting_model(options):
    """(encoder, hparams, params) that the run starts from: any model gpt2.py loads, or with
    --from_scratch a new one of the shape given."""
    if not options.from_scratch:
        encoder, hparams, params = load_model(options.model or options.model_size, options.models_dir)
        return encoder, hparams, params if options.lora_rank else trainable(params)  # LoRA's stay read-only
    encoder = bytes_only() if options.tokenizer == "bytes" else load_gpt2_tokenizer(options.models_dir)
    hparams = {"n_vocab": len(encoder.encoder), "n_ctx": options.n_ctx, "n_embd": options.n_embd}
    hparams.update(n_head=options.n_head, n_layer=options.n_layer)
    params = init_params(**hparams, seed=options.seed)
    return encoder, hparams, as_loaded((dotted(path), array) for path, array in leaves(params))


def open_run_folder(options, writes=True):
    """The saved state of the run in --out to resume, or None for a new run. A folder that holds
    anything but a run, or a run that cannot be resumed as it is, is refused and left as it is: a
    trained run is never overwritten, and --fresh moves it aside. A process of a run that does not
    write (not the first of several) only reads: with --fresh it starts anew, as the first one will."""
    out = options.out
    if not os.path.isdir(out) or (options.fresh and not writes):
        return None
    if writes:
        run_folder.finish(out)
    names = set(os.listdir(out))
    others = sorted(names - {*RUN_FILES, *LORA_RUN_FILES, run_folder.COMMIT, LOG, CURVE})
    if others:
        raise ValueError(
            f"{out} holds other files than a training run's ({', '.join(others[:3])}): choose another --out"
        )
    trained = names & {"model.safetensors", peft.WEIGHTS, "optimizer.safetensors", "state.json"}
    if options.fresh:
        if trained:
            print(f"--fresh: the run that was in {out} is now in {run_folder.move_aside(out)}", file=sys.stderr)
        else:  # the log of a run stopped before its first save
            for name in names:
                os.remove(os.path.join(out, name))
        return None
    if not trained:
        return None
    if (peft.CONFIG in names) != bool(options.lora_rank):
        has, given = (
            ("LoRA adapters", "without --lora_rank") if peft.CONFIG in names else ("a whole model", "with --lora_rank")
        )
        raise UsageError(f"the run in {out} trains {has}: it cannot be resumed {given}; for a new run, another --out")
    try:
        state = saved_state(out, names, LORA_RUN_FILES if options.lora_rank else RUN_FILES)
    except ValueError as e:
        raise ValueError(
            f"the run in {out} cannot be resumed: {e}; to keep it, give another --out; {fresh(out)}"
        ) from None
    check_same_options(out, state["options"], recorded_options(options))
    return state


def saved_state(out, names, run_files):
    """state.json, each field checked, and every file (of run_files) as the last save wrote it."""
    missing = sorted(set(run_files) - names)
    if missing:
        raise ValueError(f"it has no {', '.join(missing)}")
    saved = run_folder.read_commit(out)
    if saved is None:
        print(f"{out} was saved without checksums (by an older train.py): its files are not checked", file=sys.stderr)
    else:
        run_folder.check(out, saved)
    path = os.path.join(out, "state.json")
    try:
        state = json.loads(read_utf8(path))
    except ValueError as e:
        raise ValueError(f"{path} is damaged ({e})") from None
    problem = state_problem(state)
    if problem:
        raise ValueError(f"{path} is damaged: {problem}")
    optimizer_step = safetensors_file.read_metadata(os.path.join(out, "optimizer.safetensors")).get("step")
    for source, step in (("optimizer.safetensors", optimizer_step), (run_folder.COMMIT, saved and saved["step"])):
        if step is not None and str(step) != str(state["step"]):
            raise ValueError(f"{path} says step {state['step']} and {source} step {step}")
    return state


def state_problem(state):
    """What is wrong with a state.json's contents, or None."""
    if not isinstance(state, dict):
        return f"not a JSON object but {type(state).__name__}"
    missing = [key for key in ("step", "rng", "elapsed", "options") if key not in state]
    if missing:
        return f"no {', '.join(missing)}"
    if not isinstance(state["step"], int) or isinstance(state["step"], bool) or state["step"] < 1:
        return f"the step is {json.dumps(state['step'])}, not a whole number of at least 1"
    if not isinstance(state["elapsed"], (int, float)) or not 0 <= state["elapsed"] < float("inf"):
        return f"the time elapsed is {json.dumps(state['elapsed'])}, not a number of seconds"
    if not isinstance(state["options"], dict):
        return "the options are not a JSON object"
    try:
        np.random.default_rng().bit_generator.state = state["rng"]
    except (TypeError, ValueError, KeyError):
        return "the random state is not one of NumPy's PCG64"
    return None


def recorded_options(options):  # what a resumed run must be given again; paths resolved
    return resolved({key: value for key, value in vars(options).items() if key not in FREE_TO_CHANGE})


def resolved(recorded):
    """Options with their paths resolved: `data/`, `./data` and the absolute path name one folder."""
    model = recorded.get("model")
    return {
        **recorded,
        "data": [os.path.realpath(path) for path in recorded.get("data") or []],
        "val_file": recorded.get("val_file") and os.path.realpath(recorded["val_file"]),
        "model": os.path.realpath(model) if isinstance(model, str) and os.path.exists(model) else model,
    }


def check_same_options(out, saved, given):
    """A resumed run must compute what it would have: refused, with what differs, if it would not."""
    defaults = make_parser()  # options that a run saved by an older train.py did not have had their defaults
    saved = resolved({key: saved.get(key, defaults.get_default(key)) for key in given})
    changed = sorted(key for key in given if saved[key] != given[key])
    if changed:
        differences = "; ".join(f"--{key} {shown(given[key])} (the run has {shown(saved.get(key))})" for key in changed)
        raise ValueError(
            f"the run in {out} was started with other options: {differences}. To resume it, give the run's own; "
            f"for a new run, another --out, or {fresh(out)}"
        )


def fresh(out):  # what --fresh would do
    return f"--fresh moves this run aside to {run_folder.aside_name(out)} and starts over"


def shown(value):
    return " ".join(map(str, value)) if isinstance(value, list) else "none" if value is None else str(value)


def read_log(path, step):
    """The records of log.jsonl up to the saved step, and a line that says what was cut: the records of
    later steps (redone now) and a torn line (a crash or a full disk in the middle of a write)."""
    if not os.path.exists(path):
        return [], None
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    lines = lines[:-1] if lines[-1] == b"" else lines
    records, torn = [], False
    for line in lines:
        try:
            record = json.loads(line)
            torn = not isinstance(record, dict) or not isinstance(record.get("step"), int)
        except ValueError:
            torn = True
        if torn or record["step"] > step:
            break
        records.append(record)
    if len(records) == len(lines):
        return records, None
    why = "a torn line" if torn else "steps after the last save"
    return records, f"{path}: cut back to step {records[-1]['step'] if records else 0} ({why}; later steps are redone)"


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


# The run: what the command line describes, from the data to the last save.


def training_data(options, documents, val_documents, encoder, n_ctx):
    """The training ids and the held-out ids (of val_documents, or the end of the documents), each
    longer than a window."""
    if options.block_size > n_ctx:
        raise ValueError(f"--block_size {options.block_size} is more than the model's context of {n_ctx}")
    cache = os.path.join(options.models_dir, "tokens")
    ids = tokenize(documents, encoder, cache)
    at = held_out_at(options, len(ids))
    train_ids, val_ids = ids[:at], tokenize(val_documents, encoder, cache) if val_documents else ids[at:]
    check_enough_text(options, len(train_ids), len(val_ids))
    return train_ids, val_ids


def held_out_at(options, n_ids):  # where the held-out part starts (at the end with --val_file, whose fraction is 0)
    return int(n_ids * (1 - options.val_fraction))


def check_text_before_tokens(options, documents, val_documents):
    """The check of check_enough_text before the tokenizer is loaded, on the most tokens the text can
    give: a token is at least one byte, and each document ends with <|endoftext|>."""

    def most_tokens(documents):
        return sum(len(document.encode()) for document in documents) + len(documents)

    n_most = most_tokens(documents)
    at = held_out_at(options, n_most)
    check_enough_text(options, at, most_tokens(val_documents) if val_documents else n_most - at, "at most ")


def check_enough_text(options, n_train, n_held_out, at_most=""):
    sources = {
        "training": ", ".join(options.data),
        "held-out": options.val_file or f"the last {options.val_fraction:.0%}",
    }
    for name, n in (("training", n_train), ("held-out", n_held_out)):
        if n <= options.block_size + 1:
            raise ValueError(
                f"the {name} text ({sources[name]}) has {at_most}{n} tokens, not more than one window of "
                f"--block_size {options.block_size}"
            )


def check_held_out(options, documents, val_documents):
    """Held-out data of the training data's kind, and pairs enough to hold one out."""
    pairs = isinstance(documents[0], Pair)
    if pairs and not val_documents and len(documents) < 2:
        raise ValueError(f"{', '.join(options.data)} hold one prompt/completion pair: at least 2, one to hold out")
    if val_documents and isinstance(val_documents[0], Pair) != pairs:
        kinds = ("prompt/completion pairs", "texts") if pairs else ("texts", "prompt/completion pairs")
        raise ValueError(
            f"the data are {kinds[0]} and --val_file {options.val_file} holds {kinds[1]}: give the same kind"
        )


def check_memory(hparams, options):
    needed = memory_needed(hparams, options.batch_size, options.block_size, options.lora_rank, options.lora_targets)
    available = memory_available()
    if needed > 0.9 * available:
        what = " (LoRA: one copy of the weights, the adapters and their moments, the activations)"
        raise MemoryError(
            f"this run needs about {needed / 1e9:.1f} GB{what if options.lora_rank else ''} and "
            f"{available / 1e9:.1f} GB are available: "
            "use a smaller --batch_size or --block_size (with --grad_accum for the same batch), a smaller model"
            + ("" if options.lora_rank else ", or LoRA (--lora_rank 8), which keeps one copy of the weights")
        )


def stopping(signum):
    """A signal that stops the run. After SIGHUP the terminal is gone, and writing to it would fail
    before the save: what is left to say goes nowhere."""
    if signum == signal.SIGHUP and sys.stderr.isatty():
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
    return signum


class TrainingRun:
    """The state of a run (weights, optimizer, random batches, step, log) and its loop."""

    def __init__(self, options):
        self.options, self.out = options, options.out
        self.writes = True  # only one process of a run writes its folder
        if options.backend == "jax":
            self.writes = start_jax(options) == 0
        saved = open_run_folder(options, self.writes)
        documents = read_documents(options.data)  # bad data is refused before the model is loaded
        val_documents = read_documents([options.val_file]) if options.val_file else None
        self.pairs = isinstance(documents[0], Pair)
        check_held_out(options, documents, val_documents)
        if not self.pairs:
            check_text_before_tokens(options, documents, val_documents)
        self.encoder, self.hparams, params = starting_model(options)
        self.n_head = self.hparams["n_head"]
        check_memory(self.hparams, options)
        check_lora_rank(options, params)
        keep_freed_memory()
        if self.pairs:
            self.read_pairs(documents, val_documents)
        else:
            self.train_ids, val_ids = training_data(
                options, documents, val_documents, self.encoder, self.hparams["n_ctx"]
            )
            self.val_batches = held_out_windows(val_ids, options.batch_size, options.block_size)
        self.params, self.adapters = params, None
        if options.lora_rank:
            self.lora_scale = options.lora_alpha / options.lora_rank
            self.adapter_config = peft.config_for(
                options.model or options.model_size, options.lora_rank, options.lora_alpha, options.lora_targets
            )
            self.adapters = trainable(
                peft.read(self.out, self.hparams["n_layer"])
                if saved
                else init_adapters(params, options.lora_rank, options.lora_targets, options.seed)
            )
        elif saved:
            self.params = load_run_params(self.out)
        self.optimizer = AdamW(self.trained, beta1=0.9, beta2=options.beta2, weight_decay=options.weight_decay)
        self.rng = np.random.default_rng(options.seed)
        self.step, self.elapsed, self.records, self.saved_step = 0, 0.0, [], 0
        if saved:
            self.resume(saved)
        self.jax_step = None
        if options.backend == "jax":
            from train_jax import Step

            lora_scale = self.lora_scale if self.adapters is not None else None
            self.jax_step = Step(
                self.params, self.trained, self.optimizer, self.n_head, options.grad_clip, lora_scale, options.precision
            )
        if self.writes:
            os.makedirs(self.out, exist_ok=True)
            self.write_log()  # the log as far as the save goes: later steps are redone

    def read_pairs(self, pairs, val_pairs):
        """The pairs' rows to train on, and the held-out ones in batches of at most MAX_HELD_OUT_PAIRS."""
        train_pairs, val_pairs = (pairs, val_pairs) if val_pairs else held_out_pairs(pairs, self.options.val_fraction)
        self.train_rows = tokenize_pairs(train_pairs, self.encoder, self.hparams["n_ctx"])
        self.val_rows = tokenize_pairs(val_pairs, self.encoder, self.hparams["n_ctx"])
        n_batch, end_of_text = self.options.batch_size, self.encoder.end_of_text
        rows = self.val_rows[:MAX_HELD_OUT_PAIRS]
        self.val_batches = [pair_batch(rows[i : i + n_batch], end_of_text) for i in range(0, len(rows), n_batch)]

    def micro_batch(self):  # -> (ids [n_batch, n_seq + 1], the mask of the predictions that count, or None)
        o = self.options
        if self.pairs:
            rows = [self.train_rows[i] for i in self.rng.integers(0, len(self.train_rows), size=o.batch_size)]
            return pair_batch(rows, self.encoder.end_of_text)
        return random_windows(self.train_ids, self.rng, o.batch_size, o.block_size), None

    def sample(self):
        """A line for the log: from text, 40 tokens after <|endoftext|>; from pairs, a held-out prompt's
        greedy completion beside the one held out."""
        end_of_text, n_ctx = self.encoder.end_of_text, self.hparams["n_ctx"]
        decode = self.encoder.decode
        if not self.pairs:
            options = {"temperature": 1.0, "top_k": min(40, self.hparams["n_vocab"]), "seed": self.step}
            new = gpt2.generate(
                [end_of_text], self.model(), self.n_head, min(40, n_ctx - 1), **options, end_of_text=end_of_text
            )
            return f"sample at step {self.step}: {decode(new)!r}"
        ids, n_prompt = self.val_rows[(self.step // self.options.sample_every - 1) % len(self.val_rows)]
        n_tokens = min(2 * (len(ids) - n_prompt), n_ctx - n_prompt)  # room for the answer, and more
        new = (
            gpt2.generate(ids[:n_prompt], self.model(), self.n_head, n_tokens, end_of_text=end_of_text)
            if n_tokens
            else []
        )
        held_out = decode(ids[n_prompt:-1])
        return f"sample at step {self.step}: {decode(ids[:n_prompt])!r} -> {decode(new)!r} (held out: {held_out!r})"

    @property
    def trained(self):  # what the optimizer moves: the adapters, or all the weights
        return self.params if self.adapters is None else self.adapters

    @property
    def lora(self):  # loss_and_grads' keywords for the adapters
        return {} if self.adapters is None else {"adapters": self.adapters, "lora_scale": self.lora_scale}

    def model(self):  # the weights as the model computes with them: the adapters merged
        return self.params if self.adapters is None else with_adapters(self.params, self.adapters, self.lora_scale)

    @property
    def log_path(self):
        return os.path.join(self.out, LOG)

    def resume(self, saved):
        load_optimizer(self.out, self.optimizer)
        self.step, self.elapsed = saved["step"], saved["elapsed"]
        self.saved_step = self.optimizer.step_count = self.step
        self.rng.bit_generator.state = saved["rng"]
        self.records, cut = read_log(self.log_path, self.step)
        if cut:
            print(cut, file=sys.stderr)
        print(f"resuming the run in {self.out} at step {self.step}", file=sys.stderr)

    def on_host(self):  # the weights and moments in the NumPy arrays, where the JAX backend moved them
        if self.jax_step is not None:
            self.jax_step.host()

    def write_log(self):
        with self.writing(f"to write {LOG}"), open(f"{self.log_path}.partial", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.records)
            synced(f)
        os.replace(f"{self.log_path}.partial", self.log_path)

    def log(self, record):
        """A record appended to the log, in one write: a crash or a full disk can tear only the last line."""
        if not self.writes:
            return
        with self.writing(f"to write {LOG}"), open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def save(self):
        if not self.writes:
            return
        self.on_host()
        state = {"step": self.step, "rng": self.rng.bit_generator.state, "elapsed": self.elapsed}
        state["options"] = recorded_options(self.options)
        needed, what = save_size(self.trained), f"to save the run at step {self.step}"
        with self.writing(what, needed):
            check_room(self.out, what, needed, self.kept())
            with open(self.log_path, "a") as f:
                synced(f)  # the log's records up to this save are on disk before it counts
            adapter_config = self.adapters is not None and self.adapter_config
            save_run(self.out, self.trained, self.hparams, self.encoder, self.optimizer, state, adapter_config)
            self.saved_step = self.step
            with open(os.path.join(self.out, f"{CURVE}.partial"), "w") as f:
                f.write(loss_curve_svg(self.records) if self.records else "")
            os.replace(os.path.join(self.out, f"{CURVE}.partial"), os.path.join(self.out, CURVE))

    @contextlib.contextmanager
    def writing(self, what, needed=None):
        """A full disk while writing the run folder: its partial files removed, and one line that says
        where, how much, and which save is kept."""
        try:
            yield
        except OSError as e:
            if not no_room(e):
                raise
            run_folder.remove_partials(self.out)
            raise disk_full(self.out, what, needed, self.kept()) from None

    def kept(self):
        return f"; the save at step {self.saved_step} is kept" if self.saved_step else "; this run has no save yet"

    def train_step(self):
        """One optimizer step on grad_accum random micro-batches; returns the step's log record."""
        o, start = self.options, time.perf_counter()
        learning_rate = learning_rate_at(
            self.step + 1, o.learning_rate, o.warmup_steps, o.lr_schedule, o.steps, o.min_lr
        )
        micro_batches = [self.micro_batch() for _ in range(o.grad_accum)]
        if self.jax_step is None:
            loss, grads = accumulated_grads(self.params, micro_batches, self.n_head, **self.lora)
            clip_gradients(grads, o.grad_clip)
            self.optimizer.step(self.trained, grads, learning_rate)
        else:
            loss = self.jax_step(micro_batches, learning_rate)
        self.step += 1
        seconds = time.perf_counter() - start
        self.elapsed += seconds
        tokens = sum(batch[:, :-1].size for batch, _ in micro_batches)
        record = {"step": self.step, "train_loss": loss, "learning_rate": learning_rate}
        record.update({"tokens_per_second": tokens / seconds, "elapsed": self.elapsed})
        if self.step % o.eval_every == 0 or self.step == o.steps:
            self.on_host()
            record["val_loss"] = held_out_loss(self.model(), self.val_batches, self.n_head)
        self.records.append(record)
        self.log(record)
        return record

    def train(self):
        """Steps until --steps, saving every --save_every and at the end. Ctrl-C, SIGTERM or SIGHUP (a
        closed terminal) ends the step under way, saves it, and exits 130, 143 or 129: the same command
        resumes."""
        from tqdm import tqdm

        o, stop = self.options, []
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {s: signal.signal(s, lambda signum, frame: stop.append(stopping(signum))) for s in signals}
        bar = tqdm(
            total=o.steps, initial=self.step, unit="step", file=sys.stderr, dynamic_ncols=True, disable=not self.writes
        )
        try:
            while self.step < o.steps and not stop:
                record = self.train_step()
                bar.set_postfix(loss=f"{record['train_loss']:.3f}", tokens_per_s=f"{record['tokens_per_second']:.0f}")
                bar.update(1)
                if "val_loss" in record and self.writes:
                    bar.write(f"step {self.step}: held-out loss {record['val_loss']:.4f}", file=sys.stderr)
                if o.sample_every and self.step % o.sample_every == 0 and self.writes:
                    self.on_host()
                    bar.write(self.sample(), file=sys.stderr)
                if self.step % o.save_every == 0 or self.step == o.steps or stop:
                    self.save()
        finally:
            bar.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
        if stop:
            print(f"stopped at step {self.step}; saved in {self.out}: the same command resumes", file=sys.stderr)
            raise SystemExit(128 + stop[0])
        if self.writes:
            print(
                f"done: {plural(self.step, 'step')}, saved in {self.out}; python gpt2.py PROMPT --model {self.out}",
                file=sys.stderr,
            )
        self.on_host()
        return self.model()


# The command line.


def make_parser():
    parser = Parser(prog="python train.py", epilog="example: python train.py notes/ --out runs/notes --steps 300")
    # fmt: off
    add = parser.add_argument
    add("data", nargs="+", help='UTF-8 text files, folders of them, or .jsonl files with a "text" field, or with "prompt" and "completion" to learn to answer')
    add("--out", required=True, help="the run folder: the model (HuggingFace's layout), optimizer state, log.jsonl, loss.svg")
    add("--model_size", help=f"which of OpenAI's models to start from: 124M, 355M, 774M or 1558M (default: {DEFAULT_MODEL_SIZE})")
    add("--model", help="instead, any model gpt2.py loads: a folder (a run folder too) or a hub name")
    add("--models_dir", default=DEFAULT_MODELS_DIR, help="where models, converted copies and tokenized data are kept (default: %(default)s)")
    add("--from_scratch", action="store_true", help="instead, a new GPT of the shape below, its weights drawn as GPT-2's were")
    add("--n_layer", type=whole, help=f"with --from_scratch: blocks (default: {SCRATCH['n_layer']})")
    add("--n_head", type=whole, help=f"with --from_scratch: attention heads per block (default: {SCRATCH['n_head']})")
    add("--n_embd", type=whole, help=f"with --from_scratch: the width, a multiple of --n_head (default: {SCRATCH['n_embd']})")
    add("--n_ctx", type=whole, help="with --from_scratch: the context, at least --block_size (default: --block_size)")
    add("--tokenizer", choices=["bytes", "gpt2"], help=f"with --from_scratch: bytes, 257 tokens (each byte and <|endoftext|>: any UTF-8 text, characters to learn), or gpt2, GPT-2's 50257 (default: {SCRATCH['tokenizer']})")
    add("--lora_rank", type=whole, help="train LoRA adapters of this rank (8 is usual) beside frozen weights, instead of every weight: for 774M and 1558M, which a full fine-tune cannot fit in a laptop's memory, or for adapters of a few MB; the run folder is PEFT's (default: off)")
    add("--lora_alpha", type=real, help="with --lora_rank: the adapters' scale is lora_alpha / lora_rank (default: twice the rank)")
    add("--lora_targets", type=lora_targets, help=f"with --lora_rank: which matrices of each block, comma-separated, from {', '.join(LORA_TARGETS)} (c_proj: both) (default: c_attn, PEFT's for GPT-2)")
    add("--steps", type=whole, default=1000, help="optimizer steps in all (default: %(default)s)")
    add("--batch_size", type=whole, default=4, help="windows (or prompt/completion pairs) per micro-batch (default: %(default)s)")
    add("--block_size", type=whole, default=256, help="tokens per window (default: %(default)s)")
    add("--grad_accum", type=whole, default=1, help="micro-batches per step (default: %(default)s)")
    add("--learning_rate", type=real, help=f"peak learning rate (default: {FINE_TUNING_LR}, with LoRA {LORA_LR}, from scratch {SCRATCH['learning_rate']})")
    add("--warmup_steps", type=whole, default=20, help="steps of linear warm-up (default: %(default)s)")
    add("--lr_schedule", choices=["constant", "cosine"], default="cosine", help="after warm-up; cosine goes down to --min_lr (default: %(default)s)")
    add("--min_lr", type=real, help="the cosine's floor, reached at the last step (default: a tenth of --learning_rate)")
    add("--beta2", type=real, default=0.95, help="AdamW's decay of its second moment: 0.99 for small models and batches, as nanoGPT's character-level recipe (default: %(default)s)")
    add("--weight_decay", type=real, default=0.1, help="AdamW's decay of the matrices and embeddings (default: %(default)s)")
    add("--grad_clip", type=real, default=1.0, help="the largest global gradient norm (default: %(default)s)")
    add("--val_fraction", type=real, default=0.05, help="the end of the text held out (default: %(default)s)")
    add("--val_file", help="held-out text instead of a fraction (default: none)")
    add("--eval_every", type=whole, default=50, help="held-out loss every N steps (default: %(default)s)")
    add("--sample_every", type=whole, default=100, help="a short sample every N steps, 0 for none (default: %(default)s)")
    add("--save_every", type=whole, default=100, help="save every N steps, and at the end (default: %(default)s)")
    add("--seed", type=whole, default=1, help="the random windows' seed (default: %(default)s)")
    add("--backend", choices=["numpy", "jax"], default="numpy", help="numpy: train.py's backward pass, on this CPU; jax: the same step by jax.grad in one jax.jit, on every GPU, TPU or CPU device JAX sees, of one machine or many (pip install jax, or jax[cuda12] for NVIDIA GPUs) (default: %(default)s)")
    add("--precision", choices=list(PRECISIONS), default="float32", help="with --backend jax: bf16 matrix products, the weights and optimizer state staying float32, for speed on GPUs and TPUs (default: %(default)s)")
    add("--coordinator", help="with --backend jax, a run of several processes (one per machine or GPU): HOST:PORT where process 0 listens, the same for every process (default: none; on SLURM and Cloud TPU, JAX finds the processes itself)")
    add("--num_processes", type=whole, help="with --coordinator: how many processes the run has")
    add("--process_id", type=whole, help="with --coordinator: this process's number, from 0 (which writes the run folder) to --num_processes - 1")
    add("--fresh", action="store_true", help="start over in a run folder that holds a run, which is first moved aside to OUT.previous-N (nothing is deleted)")
    # fmt: on
    n_batch, block_size = parser.get_default("batch_size"), parser.get_default("block_size")
    needed = memory_needed(MODEL_HPARAMS[DEFAULT_MODEL_SIZE], n_batch, block_size) / 1e9
    parser.description = (
        f"Fine-tune GPT-2 on your own text, or train a GPT from scratch, in NumPy. The defaults suit a CPU: "
        f"{DEFAULT_MODEL_SIZE}, batches of {n_batch} windows of {block_size} tokens (about {needed:.1f} GB of memory), "
        f"a small learning rate for fine-tuning; from scratch, {SCRATCH['n_layer']} layers of "
        f"{SCRATCH['n_head']} heads {SCRATCH['n_embd']} wide on bytes, nanoGPT's CPU recipe, which trains in minutes."
    )
    return parser


def parse_arguments(args):
    options = make_parser().parse(args)
    for name, low in (("steps", 1), ("batch_size", 1), ("block_size", 2), ("grad_accum", 1), ("warmup_steps", 0)):
        checked(check_whole_number, name, getattr(options, name), low)
    for name, low in (("eval_every", 1), ("sample_every", 0), ("save_every", 1), ("seed", 0)):
        checked(check_whole_number, name, getattr(options, name), low)
    check_shape_flags(options)
    check_lora_flags(options)
    check_backend_flags(options)
    if options.learning_rate is None:
        options.learning_rate = (
            SCRATCH["learning_rate"] if options.from_scratch else LORA_LR if options.lora_rank else FINE_TUNING_LR
        )
    for name in ("learning_rate", "weight_decay", "grad_clip"):
        checked(check_number, name, getattr(options, name), 0)
    if options.min_lr is not None:
        checked(check_number, "min_lr", options.min_lr, 0, options.learning_rate)
    checked(check_number, "beta2", options.beta2, 0, 1, False, True)
    checked(check_number, "val_fraction", options.val_fraction, 0, 1, False, True)
    if options.val_file is not None and options.val_fraction != 0.05:
        raise UsageError("give --val_fraction or --val_file, not both")
    if options.val_file is not None:
        options.val_fraction = 0.0
    if not options.from_scratch:
        check_model_flags(options.model, options.model_size)
        options.model_size = options.model_size or (DEFAULT_MODEL_SIZE if options.model is None else None)
    if os.path.exists(options.out) and not os.path.isdir(options.out):
        raise UsageError(f"--out {options.out} is a file: give a folder for the run")
    return options


def check_shape_flags(options):
    """--from_scratch's shape, its defaults filled in; the shape flags are for it alone."""
    shape = ("n_layer", "n_head", "n_embd", "n_ctx", "tokenizer")
    if not options.from_scratch:
        given = [name for name in shape if getattr(options, name) is not None]
        if given:
            raise UsageError(f"--{given[0]} is for --from_scratch: a model's own shape cannot change")
        return
    if options.model is not None or options.model_size is not None:
        raise UsageError("--from_scratch starts from no model: not with --model or --model_size")
    for name in shape:
        if getattr(options, name) is None:
            setattr(options, name, options.block_size if name == "n_ctx" else SCRATCH[name])
    for name in ("n_layer", "n_head", "n_embd", "n_ctx"):
        checked(check_whole_number, name, getattr(options, name), 1)
    if options.n_embd % options.n_head:
        raise UsageError(f"--n_embd {options.n_embd} is not a multiple of --n_head {options.n_head}")
    if options.n_ctx < options.block_size:
        raise UsageError(f"--n_ctx {options.n_ctx} is shorter than --block_size {options.block_size}")


PRECISIONS = ("float32", "bf16")
PROCESS_FLAGS = ("coordinator", "num_processes", "process_id")


def check_backend_flags(options):
    """--backend jax's options: --precision, and a run of several processes."""
    given = [name for name in PROCESS_FLAGS if getattr(options, name) is not None]
    if options.backend != "jax":
        given = (["precision"] if options.precision != "float32" else []) + given
        if given:
            raise UsageError(f"--{given[0]} is for --backend jax")
        return
    if options.coordinator is None:
        if given:
            raise UsageError(f"--{given[0]} is for a run of several processes: give --coordinator HOST:PORT too")
        return
    host, _, port = options.coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--coordinator must be HOST:PORT, such as 10.0.0.1:1234, not {options.coordinator!r}")
    if len(given) < len(PROCESS_FLAGS):
        raise UsageError("--coordinator needs --num_processes N and --process_id I (0 to N - 1) too")
    checked(check_whole_number, "num_processes", options.num_processes, 1)
    checked(check_whole_number, "process_id", options.process_id, 0, options.num_processes - 1)


def start_jax(options):
    """--backend jax: JAX imported and the run's processes joined, before any work; this process's
    index. A micro-batch that the devices cannot share evenly is refused."""
    import train_jax  # without JAX: what to install, in one line

    n_devices, n_processes, index = train_jax.start(options.coordinator, options.num_processes, options.process_id)
    if options.batch_size % n_devices:
        where = f" of {n_processes} processes" if n_processes > 1 else ""
        raise UsageError(
            f"--batch_size {options.batch_size} does not divide among the {n_devices} devices{where} that JAX sees: "
            f"give a multiple of {n_devices}"
        )
    return index


def lora_targets(text):  # --lora_targets: "c_attn,c_fc" -> ["c_attn", "c_fc"]
    targets = [name.strip() for name in text.split(",")]
    unknown = [name for name in targets if name not in LORA_TARGETS]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not one of {', '.join(LORA_TARGETS)}")
    return targets


def check_lora_flags(options):
    """--lora_rank's options, their defaults filled in; they are for it alone."""
    if options.lora_rank is None:
        given = [name for name in ("lora_alpha", "lora_targets") if getattr(options, name) is not None]
        if given:
            raise UsageError(f"--{given[0]} is for --lora_rank")
        return
    if options.from_scratch:
        raise UsageError("--lora_rank adapts a model's weights: not with --from_scratch, whose weights are all new")
    checked(check_whole_number, "lora_rank", options.lora_rank, 1)
    options.lora_alpha = 2.0 * options.lora_rank if options.lora_alpha is None else options.lora_alpha
    checked(check_number, "lora_alpha", options.lora_alpha, 0, None, True)
    options.lora_targets = options.lora_targets or ["c_attn"]
    size = options.model_size or (DEFAULT_MODEL_SIZE if options.model is None else None)
    if size in MODEL_HPARAMS and options.lora_rank > MODEL_HPARAMS[size]["n_embd"]:
        raise UsageError(f"--lora_rank {options.lora_rank} is above {size}'s width, {MODEL_HPARAMS[size]['n_embd']}")


def check_lora_rank(options, params):  # a model known only once loaded: its rank checked against its widths
    if options.lora_rank and options.lora_rank > params["wte"].shape[1]:
        raise ValueError(f"--lora_rank {options.lora_rank} is above the model's width, {params['wte'].shape[1]}")


def main(args=None):
    """`python train.py ...`: gpt2.py's conventions (one line for each mistake, its exit codes)."""
    return run_command(lambda: TrainingRun(parse_arguments(sys.argv[1:] if args is None else args)).train())


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    main()
