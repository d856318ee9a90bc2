"""`python train.py ...`: a training run around train.py's lesson. The data (read, tokenized once,
windows at random offsets), the run folder (saves that a crash cannot break, resumed exactly), the
loop, and the command line.

    python train.py notes/ --out runs/notes --steps 300
"""

import hashlib
import json
import os
import signal
import sys
import time

import numpy as np

import gpt2
from cli import Parser, UsageError, check_model_flags, checked, real, run_command, terminate, whole
from gpt2 import END_OF_TEXT, check_number, check_whole_number
from storage import hf, npy_copy, safetensors_file
from storage.files import NotUTF8, fsync_path, read_jsonl, read_utf8, synced
from train import AdamW, clip_gradients, learning_rate_at, leaves, loss_and_grads, trainable
from utils import (
    DEFAULT_MODEL_SIZE,
    DEFAULT_MODELS_DIR,
    MODEL_HPARAMS,
    expected_shapes,
    load_model,
    nest,
)

# Options that change nothing the run computes: a resumed run may be given other ones
FREE_TO_CHANGE = ("fresh", "steps", "models_dir", "eval_every", "sample_every", "save_every")

# Text to train on: documents joined with <|endoftext|>, tokenized once, windows at random offsets.


def read_documents(paths):
    """The documents of the data: each UTF-8 text file is one, and each line of a .jsonl file with a
    "text" field is one. A folder gives every file in it (sorted), but not hidden ones (.git) and not
    those that are not UTF-8 text (a picture), which are named on stderr. A bad file or line given
    by name stops everything with its name and line, before any model work."""
    documents, skipped = [], []
    for path in paths:
        for name in data_files(path) if os.path.isdir(path) else [path]:
            if name.endswith(".jsonl"):
                documents += [record["text"] for _, record in read_jsonl(name, "text")[1]]
                continue
            try:
                documents.append(read_utf8(name))
            except NotUTF8:
                if name == path:
                    raise
                skipped.append(name)
    if skipped:
        print(f"skipped {len(skipped)} files that are not UTF-8 text: {', '.join(skipped)}", file=sys.stderr)
    if not any(document.strip() for document in documents):
        raise ValueError(f"no text in {', '.join(paths)}")
    return documents


def data_files(folder):
    """The files of a folder and its subfolders, sorted, leaving out hidden ones and hidden folders."""
    found = []
    for directory, subdirectories, names in os.walk(folder):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        found += [os.path.join(directory, name) for name in names if not name.startswith(".")]
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
        ids.append(END_OF_TEXT)
    ids = np.array(ids, dtype=np.uint16)
    os.makedirs(cache_dir, exist_ok=True)
    remove_leftovers(cache_dir)
    partial = f"{path}.{os.getpid()}.partial"
    with open(partial, "wb") as f:
        np.save(f, ids)
        synced(f)
    os.replace(partial, path)
    return ids


def remove_leftovers(cache_dir):
    """The partial files of runs that were killed while they wrote: NAME.PID.partial whose process is
    gone (another run that shares the folder may be writing its own)."""
    for name in os.listdir(cache_dir):
        *_, pid, suffix = name.split(".")
        if suffix == "partial" and pid.isdigit() and not process_alive(int(pid)):
            os.remove(os.path.join(cache_dir, name))


def process_alive(pid):
    try:
        os.kill(pid, 0)  # no signal sent: only whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


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
    logits = gpt2.gpt2(batch[:, :-1], **params, n_head=n_head)  # [n_batch, n_seq, n_vocab]
    return float(np.mean(gpt2.next_token_nlls(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))))


def memory_needed(hparams, n_batch, block_size):
    """Bytes a training step needs, roughly: the weights as loaded and their trainable copy, their
    gradients and two moments (5 copies), what each block keeps for the backward pass (16 arrays of
    n_embd per token), the logits and their gradient, and one block's attention weights."""
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


def accumulated_grads(params, micro_batches, n_head):
    """The mean loss and gradients of several micro-batches of one size: the same, up to rounding, as
    one batch that holds them all (each micro-batch's are already a mean over its predictions)."""
    total, losses = None, []
    for batch in micro_batches:
        loss, grads = loss_and_grads(params, batch, n_head)
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
# random state, the options). A save writes every file beside its old version as NAME.partial, then
# commit.json, then renames the partials over the old files: a save cut short before commit.json
# leaves the previous save as it was (the partials are removed at the next start), one cut short after
# it is completed at the next start.

RUN_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt", "optimizer.safetensors", "state.json")


def dotted(path):  # ("blocks", 0, "attn", "c_attn", "w") -> "blocks.0.attn.c_attn.w", utils.nest's flat key
    return ".".join(str(part) for part in path)


def save_run(folder, params, hparams, encoder, optimizer, state):
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
    by_name = dict(safetensors_file.read_tensors(os.path.join(folder, "optimizer.safetensors")))
    for path in optimizer.m:
        optimizer.m[path][...] = by_name[f"m.{dotted(path)}"]
        optimizer.v[path][...] = by_name[f"v.{dotted(path)}"]


def load_run_params(folder):
    """The weights of a run folder, laid out as a loaded model's are (so that a resumed run computes
    exactly what the uninterrupted one would)."""
    weights = os.path.join(folder, "model.safetensors")
    return trainable(nest({key: npy_copy.laid_out(key, array) for key, array in hf.tensors(weights)}))


def open_run_folder(options):
    """The saved state of the run in --out to resume, or None for a new run (after --fresh has
    emptied the folder); a folder that holds anything else is refused."""
    out = options.out
    if os.path.isdir(out):
        finish_save(out)
    state_path = os.path.join(out, "state.json")
    resuming = os.path.exists(state_path) and not options.fresh
    ours = (*RUN_FILES, "log.jsonl", "loss.svg")  # a run stopped before its first save leaves only a log
    if os.path.isdir(out) and not resuming and any(name not in ours for name in os.listdir(out)):
        raise ValueError(f"{out} holds other files than a training run's: choose another --out")
    if resuming:
        with open(state_path) as f:
            state = json.load(f)
        changed = sorted(key for key, value in recorded_options(options).items() if state["options"].get(key) != value)
        if changed:
            raise ValueError(
                f"the run in {out} was started with other {', '.join(changed)}; give the same, or --fresh to start over"
            )
        return state
    if options.fresh and os.path.isdir(out):
        print(f"--fresh: starting over in {out}", file=sys.stderr)
        for name in os.listdir(out):
            os.remove(os.path.join(out, name))  # only a run's files: anything else was refused above
    return None


def recorded_options(options):  # what a resumed run must be given again
    return {key: value for key, value in vars(options).items() if key not in FREE_TO_CHANGE}


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
    if val_documents:
        train_ids, val_ids = ids, tokenize(val_documents, encoder, cache)
    else:
        split = int(len(ids) * (1 - options.val_fraction))
        train_ids, val_ids = ids[:split], ids[split:]
    for name, part in (("training", train_ids), ("held-out", val_ids)):
        if len(part) <= options.block_size + 1:
            raise ValueError(
                f"the {name} text has {len(part)} tokens, not more than one window of --block_size {options.block_size}"
            )
    return train_ids, val_ids


def check_memory(hparams, options):
    needed, available = memory_needed(hparams, options.batch_size, options.block_size), memory_available()
    if needed > 0.9 * available:
        raise MemoryError(
            f"this run needs about {needed / 1e9:.1f} GB and {available / 1e9:.1f} GB are available: "
            "use a smaller --batch_size or --block_size (with --grad_accum for the same batch), or a smaller model"
        )


class TrainingRun:
    """The state of a run (weights, optimizer, random windows, step, log) and its loop."""

    def __init__(self, options):
        self.options, self.out = options, options.out
        saved = open_run_folder(options)
        documents = read_documents(options.data)  # bad data is refused before the model is loaded
        val_documents = read_documents([options.val_file]) if options.val_file else None
        self.encoder, self.hparams, params = load_model(options.model or options.model_size, options.models_dir)
        self.n_head = self.hparams["n_head"]
        check_memory(self.hparams, options)
        self.train_ids, self.val_ids = training_data(
            options, documents, val_documents, self.encoder, self.hparams["n_ctx"]
        )
        self.params = load_run_params(self.out) if saved else trainable(params)
        self.optimizer = AdamW(self.params, beta1=0.9, beta2=0.95, weight_decay=options.weight_decay)
        self.rng = np.random.default_rng(options.seed)
        self.step, self.elapsed, self.records = 0, 0.0, []
        if saved:
            self.resume(saved)
        os.makedirs(self.out, exist_ok=True)
        with open(self.log_path, "w") as f:  # the log as far as the save goes: later steps are redone
            f.writelines(json.dumps(r) + "\n" for r in self.records)

    @property
    def log_path(self):
        return os.path.join(self.out, "log.jsonl")

    def resume(self, saved):
        load_optimizer(self.out, self.optimizer)
        self.step, self.elapsed = saved["step"], saved["elapsed"]
        self.optimizer.step_count = self.step
        self.rng.bit_generator.state = saved["rng"]
        if os.path.exists(self.log_path):
            with open(self.log_path) as f:
                self.records = [r for r in map(json.loads, f) if r["step"] <= self.step]
        print(f"resuming the run in {self.out} at step {self.step}", file=sys.stderr)

    def save(self):
        state = {"step": self.step, "rng": self.rng.bit_generator.state, "elapsed": self.elapsed}
        state["options"] = recorded_options(self.options)
        save_run(self.out, self.params, self.hparams, self.encoder, self.optimizer, state)
        with open(os.path.join(self.out, "loss.svg"), "w") as f:
            f.write(loss_curve_svg(self.records) if self.records else "")

    def train_step(self):
        """One optimizer step on grad_accum random micro-batches; returns the step's log record."""
        o, start = self.options, time.perf_counter()
        learning_rate = learning_rate_at(self.step + 1, o.learning_rate, o.warmup_steps, o.lr_schedule, o.steps)
        micro_batches = (
            random_windows(self.train_ids, self.rng, o.batch_size, o.block_size) for _ in range(o.grad_accum)
        )
        loss, grads = accumulated_grads(self.params, micro_batches, self.n_head)
        clip_gradients(grads, o.grad_clip)
        self.optimizer.step(self.params, grads, learning_rate)
        self.step += 1
        seconds = time.perf_counter() - start
        self.elapsed += seconds
        tokens = o.batch_size * o.block_size * o.grad_accum
        record = {"step": self.step, "train_loss": loss, "learning_rate": learning_rate}
        record.update({"tokens_per_second": tokens / seconds, "elapsed": self.elapsed})
        if self.step % o.eval_every == 0 or self.step == o.steps:
            record["val_loss"] = held_out_loss(self.params, self.val_ids, self.n_head, o.batch_size, o.block_size)
        self.records.append(record)
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        return record

    def train(self):
        """Steps until --steps, saving every --save_every and at the end. Ctrl-C or SIGTERM ends the
        step under way, saves it, and exits 130 or 143: the same command resumes."""
        from tqdm import tqdm

        o, stop = self.options, []
        previous = {
            s: signal.signal(s, lambda signum, frame: stop.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)
        }
        bar = tqdm(total=o.steps, initial=self.step, unit="step", file=sys.stderr, dynamic_ncols=True)
        try:
            while self.step < o.steps and not stop:
                record = self.train_step()
                bar.set_postfix(loss=f"{record['train_loss']:.3f}", tokens_per_s=f"{record['tokens_per_second']:.0f}")
                bar.update(1)
                if "val_loss" in record:
                    bar.write(f"step {self.step}: held-out loss {record['val_loss']:.4f}", file=sys.stderr)
                if o.sample_every and self.step % o.sample_every == 0:
                    new_ids = gpt2.generate(
                        [END_OF_TEXT], self.params, self.n_head, 40, temperature=1.0, top_k=40, seed=self.step
                    )
                    bar.write(f"sample at step {self.step}: {self.encoder.decode(new_ids)!r}", file=sys.stderr)
                if self.step % o.save_every == 0 or self.step == o.steps or stop:
                    self.save()
        finally:
            bar.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
        if stop:
            print(f"stopped at step {self.step}; saved in {self.out}: the same command resumes", file=sys.stderr)
            raise SystemExit(128 + stop[0])
        print(
            f"done: {self.step} steps, saved in {self.out}; python gpt2.py PROMPT --model {self.out}", file=sys.stderr
        )
        return self.params


# The command line.


def make_parser():
    parser = Parser(prog="python train.py", epilog="example: python train.py notes/ --out runs/notes --steps 300")
    # fmt: off
    add = parser.add_argument
    add("data", nargs="+", help='UTF-8 text files, folders of them, or .jsonl files with a "text" field')
    add("--out", required=True, help="the run folder: the model (HuggingFace's layout), optimizer state, log.jsonl, loss.svg")
    add("--model_size", help=f"which of OpenAI's models to start from: 124M, 355M, 774M or 1558M (default: {DEFAULT_MODEL_SIZE})")
    add("--model", help="instead, any model gpt2.py loads: a folder (a run folder too) or a hub name")
    add("--models_dir", default=DEFAULT_MODELS_DIR, help="where models, converted copies and tokenized data are kept (default: %(default)s)")
    add("--steps", type=whole, default=1000, help="optimizer steps in all (default: %(default)s)")
    add("--batch_size", type=whole, default=4, help="windows per micro-batch (default: %(default)s)")
    add("--block_size", type=whole, default=256, help="tokens per window (default: %(default)s)")
    add("--grad_accum", type=whole, default=1, help="micro-batches per step (default: %(default)s)")
    add("--learning_rate", type=real, default=1e-4, help="peak learning rate (default: %(default)s)")
    add("--warmup_steps", type=whole, default=20, help="steps of linear warm-up (default: %(default)s)")
    add("--lr_schedule", choices=["constant", "cosine"], default="cosine", help="after warm-up; cosine goes down to a tenth (default: %(default)s)")
    add("--weight_decay", type=real, default=0.1, help="AdamW's decay of the matrices and embeddings (default: %(default)s)")
    add("--grad_clip", type=real, default=1.0, help="the largest global gradient norm (default: %(default)s)")
    add("--val_fraction", type=real, default=0.05, help="the end of the text held out (default: %(default)s)")
    add("--val_file", help="held-out text instead of a fraction (default: none)")
    add("--eval_every", type=whole, default=50, help="held-out loss every N steps (default: %(default)s)")
    add("--sample_every", type=whole, default=100, help="a short sample every N steps, 0 for none (default: %(default)s)")
    add("--save_every", type=whole, default=100, help="save every N steps, and at the end (default: %(default)s)")
    add("--seed", type=whole, default=1, help="the random windows' seed (default: %(default)s)")
    add("--fresh", action="store_true", help="start over in a run folder that holds a run")
    # fmt: on
    n_batch, block_size = parser.get_default("batch_size"), parser.get_default("block_size")
    needed = memory_needed(MODEL_HPARAMS[DEFAULT_MODEL_SIZE], n_batch, block_size) / 1e9
    parser.description = (
        f"Fine-tune GPT-2 on your own text, in NumPy. The defaults suit a CPU: {DEFAULT_MODEL_SIZE}, batches of "
        f"{n_batch} windows of {block_size} tokens (about {needed:.1f} GB of memory), a small learning rate for fine-tuning."
    )
    return parser


def parse_arguments(args):
    options = make_parser().parse(args)
    for name, low in (("steps", 1), ("batch_size", 1), ("block_size", 2), ("grad_accum", 1), ("warmup_steps", 0)):
        checked(check_whole_number, name, getattr(options, name), low)
    for name, low in (("eval_every", 1), ("sample_every", 0), ("save_every", 1), ("seed", 0)):
        checked(check_whole_number, name, getattr(options, name), low)
    for name in ("learning_rate", "weight_decay", "grad_clip"):
        checked(check_number, name, getattr(options, name), 0)
    checked(check_number, "val_fraction", options.val_fraction, 0, 1, False, True)
    if options.val_file is not None and options.val_fraction != 0.05:
        raise UsageError("give --val_fraction or --val_file, not both")
    if options.val_file is not None:
        options.val_fraction = 0.0
    check_model_flags(options.model, options.model_size)
    options.model_size = options.model_size or (DEFAULT_MODEL_SIZE if options.model is None else None)
    if os.path.exists(options.out) and not os.path.isdir(options.out):
        raise UsageError(f"--out {options.out} is a file: give a folder for the run")
    return options


def main(args=None):
    """`python train.py ...`: gpt2.py's conventions (one line for each mistake, its exit codes)."""
    return run_command(lambda: TrainingRun(parse_arguments(sys.argv[1:] if args is None else args)).train())


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, terminate)
    main()
