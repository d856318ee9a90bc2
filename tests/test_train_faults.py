"""train.py's run folders under what operators do to them: paths given otherwise, moved folders,
missing and damaged files, stray partial files, torn logs, a closed terminal, a disk that fills up.
No trained run may be lost, and every refusal names the file and says what keeps the run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO_DIR, assert_clean_error, train_args, train_in_process

from storage import run_folder
from training import data, loop, saving
from training import options as run_options

pytestmark = pytest.mark.slow  # each trains a small model


def train(capsys, base, *args):
    """training.loop.main on small_run's data and models, in this process: a Result."""
    return train_in_process(capsys, train_args(base, *args))


@pytest.fixture
def trained(small_run, capsys):
    """small_run with a run of 2 steps in small_run/run: (base, out)."""
    out = small_run / "run"
    result = train(capsys, small_run, "--steps", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return small_run, out


def assert_ends_in_error(result, *fragments):
    """After what the run said on its way (resuming, its progress), one line of error, no traceback."""
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(fragment in last for fragment in fragments), last


def saved_bytes(out):
    return {name: (out / name).read_bytes() for name in saving.RUN_FILES}


def test_the_same_folders_named_otherwise_resume(trained, capsys, monkeypatch):
    """A trailing slash, a relative path, a moved run folder: the same run, resumed, not refused."""
    base, out = trained
    monkeypatch.chdir(base)
    result = train(capsys, base, "--steps", "3", "--out", "run/")
    assert result.returncode == 0 and "resuming the run in run/ at step 2" in result.stderr, result.stderr
    result = train(capsys, base, "--steps", "4", "--out", "./run")
    assert result.returncode == 0 and "at step 3" in result.stderr, result.stderr
    relative = ["data/", "--models_dir", "models", "--block_size", "32", "--batch_size", "4", "--sample_every", "0"]
    result = train_in_process(capsys, [*relative, "--steps", "5", "--out", "run"])
    assert result.returncode == 0 and "at step 4" in result.stderr, result.stderr
    os.rename(out, base / "moved")
    result = train(capsys, base, "--steps", "6", "--out", str(base / "moved"))
    assert result.returncode == 0 and "at step 5" in result.stderr, result.stderr


def test_a_refusal_keeps_the_run_and_fresh_moves_it_aside(trained, capsys):
    base, out = trained
    before = saved_bytes(out)
    result = train(capsys, base, "--steps", "3", "--learning_rate", "1", "--out", str(out))
    assert_clean_error(
        result, "--learning_rate 1.0 (the run has 0.0001)", f"--fresh moves this run aside to {out}.previous-1"
    )
    assert result.returncode == 1 and saved_bytes(out) == before
    result = train(capsys, base, "--steps", "1", "--learning_rate", "1", "--fresh", "--out", str(out))
    assert result.returncode == 0 and f"is now in {out}.previous-1" in result.stderr, result.stderr
    assert saved_bytes(base / "run.previous-1") == before
    assert json.loads((out / "state.json").read_text())["step"] == 1  # a new run


def test_a_trained_model_without_its_state_is_refused_not_overwritten(trained, capsys):
    base, out = trained
    (out / "state.json").unlink()
    model = (out / "model.safetensors").read_bytes()
    result = train(capsys, base, "--steps", "3", "--out", str(out))
    assert_clean_error(result, f"the run in {out} cannot be resumed: it has no state.json", "give another --out")
    assert result.returncode == 1 and (out / "model.safetensors").read_bytes() == model


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda text: b"\xff" + text, ("state.json is damaged (", "is not UTF-8 text")),
        (lambda text: b"{}", ("state.json is damaged: no step, rng, elapsed, options",)),
        (lambda text: b"[1]", ("state.json is damaged: not a JSON object but list",)),
        (lambda text: text.replace(b'"step": 2', b'"step": "2"'), ('the step is "2", not a whole number',)),
        (lambda text: text.replace(b'"step": 2', b'"step": 3'), ("says step 3 and optimizer.safetensors step 2",)),
        (lambda text: text.replace(b'"PCG64"', b'"MT19937"'), ("the random state is not one of NumPy's PCG64",)),
    ],
    ids=["not-utf-8", "empty-object", "a-list", "step-a-string", "step-edited", "rng"],
)
def test_a_damaged_state_is_refused_with_its_name(trained, capsys, damage, message):
    """Checked field by field (here in a run saved without checksums, as older ones were: with them,
    any change is found first by state.json's sha256)."""
    base, out = trained
    state = out / "state.json"
    state.write_bytes(damage(state.read_bytes()))
    result = train(capsys, base, "--steps", "3", "--out", str(out))
    assert_clean_error(result, f"cannot be resumed: {state} ", "(the save at step 2)")
    (out / "commit.json").unlink()
    result = train(capsys, base, "--steps", "3", "--out", str(out))
    assert_ends_in_error(result, *message, "to keep it, give another --out; --fresh moves this run aside to ")


def test_a_damaged_file_is_found_by_its_checksum(trained, capsys):
    base, out = trained
    model = out / "model.safetensors"
    saved = model.read_bytes()
    model.write_bytes(saved[: len(saved) // 2] + bytes(4096) + saved[len(saved) // 2 + 4096 :])
    result = train(capsys, base, "--steps", "3", "--out", str(out))
    assert_clean_error(result, f"{model} is not what was saved (its sha256 differs)", "(the save at step 2)")
    model.write_bytes(saved)
    with open(out / "optimizer.safetensors", "r+b") as f:
        f.truncate(1000)
    result = train(capsys, base, "--steps", "3", "--out", str(out))
    assert_clean_error(result, "optimizer.safetensors has 1,000 bytes, not the ")


def test_only_the_partials_that_the_commit_lists_are_completed(trained, capsys, monkeypatch):
    base, out = trained
    before = saved_bytes(out)
    (out / "model.safetensors.partial").write_bytes(b"a stray file, from no save")
    run_folder.finish(str(out))
    assert saved_bytes(out) == before and not (out / "model.safetensors.partial").exists()
    replace = os.replace

    def cut_after_the_commit(source, target):
        if str(target).endswith("model.safetensors"):  # the first rename after commit.json's
            raise KeyboardInterrupt
        return replace(source, target)

    monkeypatch.setattr(os, "replace", cut_after_the_commit)
    result = train(capsys, base, "--steps", "3", "--out", str(out))
    monkeypatch.setattr(os, "replace", replace)
    assert result.returncode == 130 and (out / "model.safetensors.partial").exists()
    run_folder.finish(str(out))  # what the next start does first
    assert not any(name.endswith(".partial") for name in os.listdir(out))
    assert json.loads((out / "state.json").read_text())["step"] == 3
    run_folder.check(str(out), run_folder.read_commit(str(out)))


@pytest.mark.parametrize(
    "tail, why",
    [('{"step": 3, "train_lo', "a torn line"), ('{"step": 9, "train_loss": 1.0}\n', "steps after the last save")],
)
def test_a_log_is_cut_back_to_its_save(trained, capsys, tail, why):
    base, out = trained
    with open(out / "log.jsonl", "a") as f:
        f.write(tail)
    result = train(capsys, base, "--steps", "3", "--out", str(out))
    assert result.returncode == 0 and f"log.jsonl: cut back to step 2 ({why}" in result.stderr, result.stderr
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_sighup_saves_then_exits_129(small_run):
    out = small_run / "run"
    args = train_args(small_run, "--steps", "400", "--save_every", "1000", "--out", str(out))
    process = subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO_DIR, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "log.jsonl").exists() or not (out / "log.jsonl").read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGHUP)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 129 and "Traceback" not in stderr, stderr
    step = json.loads((out / "state.json").read_text())["step"]
    assert 0 < step < 400 and json.loads((out / "log.jsonl").read_text().splitlines()[-1])["step"] == step


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 48 MB at tmp_path/disk: room for two saves of the small model, not three."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here (root in a privileged container can): {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def fill(disk, leave):
    """A file that leaves about `leave` bytes free on the disk."""
    with open(disk / "filler", "wb") as f:
        try:
            while shutil.disk_usage(disk).free > leave:
                f.write(bytes(min(1 << 20, shutil.disk_usage(disk).free - leave)))
                f.flush()
        except OSError:
            pass


@pytest.mark.parametrize("checked_first", [True, False], ids=["room-checked", "full-while-writing"])
def test_a_disk_that_fills_during_a_save_keeps_the_last_save(small_run, small_disk, capsys, monkeypatch, checked_first):
    out = small_disk / "run"
    assert train(capsys, small_run, "--steps", "1", "--out", str(out)).returncode == 0
    fill(small_disk, 10_000_000)
    if not checked_first:
        monkeypatch.setattr(saving, "check_room", lambda *args: None)  # as if another program filled the disk
    result = train(capsys, small_run, "--steps", "2", "--out", str(out))
    assert_ends_in_error(result, f"not enough space in {out} to save the run at step 2: ", " MB needed, ", " MB free")
    assert result.stderr.strip().endswith("; the save at step 1 is kept")
    assert not any(name.endswith(".partial") for name in os.listdir(out))
    run_folder.check(str(out), run_folder.read_commit(str(out)))
    (small_disk / "filler").unlink()
    result = train(capsys, small_run, "--steps", "2", "--out", str(out))
    assert result.returncode == 0 and "at step 1" in result.stderr, result.stderr


def test_a_disk_that_fills_during_the_log_keeps_the_last_save(small_run, small_disk, capsys, monkeypatch):
    """The disk fills at the first step after a resume; the log's records go on filling its last page
    until one does not fit, torn where the page ends."""
    out = small_disk / "run"
    assert train(capsys, small_run, "--steps", "1", "--out", str(out)).returncode == 0
    step = loop.accumulated_grads

    def filling_the_disk(*args):
        if not (small_disk / "filler").exists():
            fill(small_disk, 0)
        return step(*args)

    monkeypatch.setattr(loop, "accumulated_grads", filling_the_disk)
    result = train(capsys, small_run, "--steps", "100", "--save_every", "1000", "--out", str(out))
    assert_ends_in_error(result, f"not enough space in {out} to write log.jsonl: the disk is full; the save at step 1")
    assert not (out / "log.jsonl").read_text().endswith("\n")  # torn
    monkeypatch.setattr(loop, "accumulated_grads", step)
    (small_disk / "filler").unlink()
    result = train(capsys, small_run, "--steps", "3", "--out", str(out))
    assert result.returncode == 0 and "log.jsonl: cut back to step 1" in result.stderr, result.stderr
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_a_data_folder_skips_pipes_and_refuses_empty_files(tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("some text")
    os.mkfifo(notes / "pipe")  # reading it would wait for a writer for ever
    assert data.read_documents([str(notes)]) == ["some text"]
    assert f"skipped 1 file, not a regular file: {notes / 'pipe'}" in capsys.readouterr().err
    (notes / "b.txt").write_text("\n")
    with pytest.raises(ValueError, match="b.txt is empty: there is nothing in it to train on"):
        data.read_documents([str(notes)])


def test_a_run_saved_by_an_older_train_py_resumes(trained, capsys):
    """No commit.json, and none of the options added since (--beta2, --from_scratch, ...): they had
    their defaults then."""
    base, out = trained
    state = json.loads((out / "state.json").read_text())
    for key in ("beta2", "min_lr", "from_scratch", "n_layer", "n_head", "n_embd", "n_ctx", "tokenizer"):
        del state["options"][key]
    (out / "state.json").write_text(json.dumps(state))
    (out / "commit.json").unlink()
    result = train(capsys, base, "--steps", "3", "--out", str(out))
    assert result.returncode == 0 and "at step 2" in result.stderr, result.stderr
    assert "saved without checksums (by an older train.py)" in result.stderr


def test_a_resume_with_other_data_names_the_data_as_the_command_line_gives_it(tmp_path):
    """The data are train.py's first words, not a flag: the refusal must not name a --data that does not exist."""
    parser_flags = {s for action in run_options.make_parser()._actions for s in action.option_strings}
    assert "--data" not in parser_flags
    with pytest.raises(ValueError) as refused:
        saving.check_same_options(
            str(tmp_path), {"data": [str(tmp_path / "notes")]}, {"data": [str(tmp_path / "more")]}
        )
    assert f"the data {tmp_path / 'more'} (the run has {tmp_path / 'notes'})" in str(refused.value)
    assert "--data" not in str(refused.value)
