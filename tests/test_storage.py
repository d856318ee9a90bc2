"""Storage faults and interruptions: litter from killed runs, full disks, copied and read-only folders,
another process holding the lock, SIGTERM and SIGHUP."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple

import pytest
from conftest import PROMPT, REPO_DIR, SMALL_HPARAMS
from test_downloads import load
from test_utils import assert_same_params

import utils

DATA = utils.CHECKPOINT_DATA
DiskUsage = namedtuple("DiskUsage", "total used free")


def gpt2_process(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, os.path.join(REPO_DIR, "gpt2.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_a_killed_conversions_folder_is_removed_by_the_next_run(models_copy, small_params):
    model_dir = models_copy / "124M"
    litter = model_dir / ".npy.k1ll3d"  # as a conversion killed with SIGKILL leaves it
    litter.mkdir(mode=0o700)
    (litter / "wte.npy").write_bytes(b"\0" * 1000)
    assert_same_params(load(models_copy)[2], small_params)  # the copy is complete: the run only cleans up
    assert not litter.exists() and (model_dir / "npy").is_dir()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_during_conversion_leave_nothing(tmp_path, signum):
    """A model with a large vocabulary takes long enough to convert that the signal comes midway."""
    from random_model import random_openai_variables, write_openai_model_dir

    hparams = {"n_vocab": 50257, "n_ctx": 64, "n_embd": 512, "n_head": 4, "n_layer": 4}
    model_dir = tmp_path / "124M"
    write_openai_model_dir(str(model_dir), hparams, random_openai_variables(hparams, 0))
    process = gpt2_process(PROMPT, "-n", "1", "--models_dir", str(tmp_path))
    deadline = time.monotonic() + 60
    while not utils.leftovers(str(model_dir)) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert utils.leftovers(str(model_dir)), "the conversion never started"
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signum
    assert stderr.splitlines()[-1] == f"terminated ({signal.Signals(signum).name})" and "Traceback" not in stderr
    assert utils.leftovers(str(model_dir)) == [] and not (model_dir / "npy").exists()


def test_no_room_for_a_download_says_so_and_keeps_the_part_file(model_server, tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2_BASE_URL", model_server.url)
    model_dir = tmp_path / "124M"
    model_dir.mkdir()
    (model_dir / f".{DATA}.part").write_bytes(b"x" * 3_000_000)  # what an earlier run got
    for name in utils.FILES:
        if name != DATA:
            shutil.copy(os.path.join(model_server.root, "124M", name), model_dir / name)
    monkeypatch.setattr(utils.shutil, "disk_usage", lambda path: DiskUsage(10**9, 10**9 - 1_000_000, 1_000_000))
    with pytest.raises(utils.DiskFull) as error:
        load(tmp_path)
    size = os.path.getsize(os.path.join(model_server.root, "124M", DATA))
    assert str(error.value) == (
        f"not enough space in {model_dir} for {DATA}: {(size - 3_000_000) / 1e6:,.0f} MB more needed, 1 MB free; "
        f"the 3 MB downloaded so far stay in .{DATA}.part to resume from"
    )
    assert (model_dir / f".{DATA}.part").stat().st_size == 3_000_000


def test_no_room_to_convert_says_so_before_writing(models_copy, monkeypatch):
    shutil.rmtree(models_copy / "124M" / "npy")
    monkeypatch.setattr(utils.shutil, "disk_usage", lambda path: DiskUsage(10**9, 10**9 - 2_000_000, 2_000_000))
    with pytest.raises(
        utils.DiskFull,
        match=f"^not enough space in {models_copy}/124M to convert the checkpoint: 7 MB needed, 2 MB free$",
    ):
        load(models_copy)
    assert utils.leftovers(str(models_copy / "124M")) == []


def test_a_rebuild_without_room_for_two_copies_drops_the_old_one_first(models_copy, monkeypatch, small_params):
    old_copy = models_copy / "124M" / "npy"
    (old_copy / "manifest.json").write_text("{}")  # out of date: to be rebuilt
    # room for one copy, not two: the old copy's 7 MB come free when it goes
    monkeypatch.setattr(
        utils.shutil, "disk_usage", lambda path: DiskUsage(10**9, 0, 1_000_000 if old_copy.exists() else 8_000_000)
    )
    assert_same_params(load(models_copy)[2], small_params)


@contextlib.contextmanager
def mounted(*args):
    """A mount for the test's duration (the tests run as root on this project's machines), or a skip."""
    target = args[-1]
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount here: {result.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "--lazy", target], check=True)  # the loaded arrays may still map its files


def test_disk_that_fills_during_conversion(models_copy, tmp_path, monkeypatch):
    """A real full disk (a small tmpfs) behind a disk-usage check that sees room: NumPy's own error
    becomes one line that says what happened."""
    disk = tmp_path / "disk"
    disk.mkdir()
    with mounted("-t", "tmpfs", "-o", "size=12M", "tmpfs", str(disk)):
        shutil.copytree(models_copy / "124M", disk / "124M", ignore=shutil.ignore_patterns("npy", "model.ckpt.meta"))
        monkeypatch.setattr(utils.shutil, "disk_usage", lambda path: DiskUsage(10**9, 0, 10**9))
        with pytest.raises(utils.DiskFull, match=f"^the disk of {disk}/124M filled up while converting the checkpoint"):
            utils.convert_checkpoint(str(disk / "124M"), SMALL_HPARAMS)
        assert utils.leftovers(str(disk / "124M")) == [] and not (disk / "124M" / "npy").exists()


def test_a_copied_folder_made_read_only_loads_without_writing(small_models_dir, tmp_path, small_params):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(small_models_dir), str(copy)], check=True)  # new modification times
    data = copy / "124M" / DATA
    assert data.stat().st_mtime_ns != (small_models_dir / "124M" / DATA).stat().st_mtime_ns
    with mounted("--bind", "-o", "ro", str(copy), str(copy)):
        with pytest.raises(OSError):
            (copy / "124M" / "probe").write_text("")  # read-only indeed
        assert_same_params(load(copy)[2], small_params)


def test_a_read_only_folder_that_needs_work_says_so(models_copy):
    shutil.rmtree(models_copy / "124M" / "npy")
    with mounted("--bind", "-o", "ro", str(models_copy), str(models_copy)):
        result = subprocess.run(
            [sys.executable, os.path.join(REPO_DIR, "gpt2.py"), PROMPT, "--models_dir", str(models_copy)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines()[-1] == (
        f"error: {models_copy}/124M is read-only and has no usable converted copy; "
        "run once where it is writable, or point --models_dir at a writable copy"
    )


def test_waiting_for_another_process_says_so_and_can_be_interrupted(models_copy, small_params):
    from filelock import FileLock

    shutil.rmtree(models_copy / "124M" / "npy")  # the next run must convert, under the lock
    lock = FileLock(str(models_copy / "124M" / ".lock"))
    with lock:  # another process is converting
        waiting = gpt2_process(PROMPT, "-n", "2", "--models_dir", str(models_copy))
        interrupted = gpt2_process(PROMPT, "-n", "2", "--models_dir", str(models_copy))
        time.sleep(4)
        interrupted.send_signal(signal.SIGINT)
        _, stderr = interrupted.communicate(timeout=60)
        assert interrupted.returncode == 130
        assert stderr.splitlines() == [
            f"waiting for another process that is downloading or converting {models_copy}/124M",
            "interrupted",
        ]
    stdout, stderr = waiting.communicate(timeout=120)  # the lock is free: it goes on
    assert waiting.returncode == 0 and stdout
    assert stderr.splitlines()[0] == f"waiting for another process that is downloading or converting {models_copy}/124M"
