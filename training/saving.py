"""The run folder: the model in HuggingFace's layout (so that `python gpt2.py --model RUN` and
GPT2LMHeadModel.from_pretrained load it), or a LoRA run's adapters in PEFT's files; the optimizer's
moments; and state.json (the step, the random state, the options). They are saved together and checked
when resumed (storage/run_folder.py). Beside them, log.jsonl, a record per step, and loss.svg.

A run folder is never overwritten by another run: a resumed run must be given the options it was
started with, and --fresh moves a run aside rather than deleting it.
"""

import contextlib
import json
import os
import sys

import numpy as np

from common import UsageError
from storage import hf, npy_copy, peft, run_folder, safetensors_file
from storage.files import check_room, disk_full, no_room, read_utf8, synced
from storage.model_folder import dotted, nest
from train import leaves, trainable
from training.options import FREE_TO_CHANGE, make_parser

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
            f"the run in {out} cannot be resumed: {e}; to keep it, give another --out; {fresh_hint(out)}"
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
        differences = "; ".join(
            f"{option_name(key)} {as_text(given[key])} (the run has {as_text(saved.get(key))})" for key in changed
        )
        raise ValueError(
            f"the run in {out} was started with other options: {differences}. To resume it, give the run's own; "
            f"for a new run, another --out, or {fresh_hint(out)}"
        )


def fresh_hint(out):  # what --fresh would do
    return f"--fresh moves this run aside to {run_folder.aside_name(out)} and starts over"


def option_name(key):  # as the command line names it: the data are its first words, the others flags
    return "the data" if key == "data" else f"--{key}"


def as_text(value):
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


class RunFolder:
    """The run folder as the loop writes it: the log a record at a time, and the saves. Only the one
    process of a run that writes (the first of several) touches it."""

    def __init__(self, out, writes, records, saved_step):
        self.out, self.writes, self.saved_step = out, writes, saved_step
        self.log_path = os.path.join(out, LOG)
        if writes:
            os.makedirs(out, exist_ok=True)
            with self.writing(f"to write {LOG}"), open(f"{self.log_path}.partial", "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)  # as far as the save goes: later steps are redone
                synced(f)
            os.replace(f"{self.log_path}.partial", self.log_path)

    def log(self, record):
        """A record appended to the log, in one write: a crash or a full disk can tear only the last line."""
        if self.writes:
            with self.writing(f"to write {LOG}"), open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def save(self, step, trained, hparams, encoder, optimizer, state, adapter_config, records):
        """The run at this step: its files all or none, then the loss curve."""
        if not self.writes:
            return
        needed, what = save_size(trained), f"to save the run at step {step}"
        with self.writing(what, needed):
            check_room(self.out, what, needed, self.which_save_is_kept())
            with open(self.log_path, "a") as f:
                synced(f)  # the log's records up to this save are on disk before it counts
            save_run(self.out, trained, hparams, encoder, optimizer, state, adapter_config)
            self.saved_step = step
            curve = os.path.join(self.out, CURVE)
            with open(f"{curve}.partial", "w") as f:
                f.write(loss_curve_svg(records) if records else "")
            os.replace(f"{curve}.partial", curve)

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
            raise disk_full(self.out, what, needed, self.which_save_is_kept()) from None

    def which_save_is_kept(self):  # the end of a message about a failed write
        return f"; the save at step {self.saved_step} is kept" if self.saved_step else "; this run has no save yet"
