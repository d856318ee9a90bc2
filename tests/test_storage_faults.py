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
from helpers import PROMPT, REPO_DIR, SMALL_HPARAMS, assert_same_params, load, read_until, run_gpt2, start_gpt2

import utils
from storage import checkpoint, files, npy_copy

DATA = utils.CHECKPOINT_DATA
DiskUsage = namedtuple("DiskUsage", "total used free")


def test_a_killed_conversions_folder_is_removed_by_the_next_run(models_copy, small_params):
    model_dir = models_copy / "124M"
    litter = model_dir / ".npy.k1ll3d"  # as a conversion killed with SIGKILL leaves it
    litter.mkdir(mode=0o700)
    (litter / "wte.npy").write_bytes(b"\0" * 1000)
    assert_same_params(load(models_copy)[2], small_params)  # the copy is complete: the run only cleans up
    assert not litter.exists() and (model_dir / "npy").is_dir()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_during_conversion_leave_nothing(models_copy, signum):
    """`python gpt2.py` converting a checkpoint whose every tensor takes 50 ms to write, so that the
    signal comes midway."""
    model_dir = models_copy / "124M"
    shutil.rmtree(model_dir / "npy")
    slow_gpt2 = (
        "import runpy, sys, time, numpy\n"
        "save = numpy.save\n"
        "numpy.save = lambda *args, **kwargs: time.sleep(0.05) or save(*args, **kwargs)\n"
        f"sys.argv = ['gpt2.py', {PROMPT!r}, '-n', '1', '--models_dir', {str(models_copy)!r}]\n"
        f"runpy.run_path({os.path.join(REPO_DIR, 'gpt2.py')!r}, run_name='__main__')\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", slow_gpt2], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while not npy_copy.leftovers(str(model_dir)) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert npy_copy.leftovers(str(model_dir)), "the conversion never started"
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signum
    assert stderr.splitlines()[-1] == f"terminated ({signal.Signals(signum).name})" and "Traceback" not in stderr
    assert npy_copy.leftovers(str(model_dir)) == [] and not (model_dir / "npy").exists()


def test_no_room_for_a_download_says_so_and_keeps_the_part_file(served, tmp_path, monkeypatch):
    model_dir = tmp_path / "124M"
    model_dir.mkdir()
    (model_dir / f".{DATA}.part").write_bytes(b"x" * 3_000_000)  # what an earlier run got
    for name in utils.FILES:
        if name != DATA:
            shutil.copy(os.path.join(served.root, "124M", name), model_dir / name)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(10**9, 10**9 - 1_000_000, 1_000_000))
    with pytest.raises(files.DiskFull) as error:
        load(tmp_path)
    size = os.path.getsize(os.path.join(served.root, "124M", DATA))
    assert str(error.value) == (
        f"not enough space in {model_dir} for {DATA}: {(size - 3_000_000) / 1e6:,.0f} MB needed, 1 MB free; "
        f"the 3 MB downloaded so far stay in .{DATA}.part to resume from"
    )
    assert (model_dir / f".{DATA}.part").stat().st_size == 3_000_000


def test_no_room_to_convert_says_so_before_writing(models_copy, monkeypatch):
    shutil.rmtree(models_copy / "124M" / "npy")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(10**9, 10**9 - 2_000_000, 2_000_000))
    with pytest.raises(
        files.DiskFull,
        match=f"^not enough space in {models_copy}/124M to convert the checkpoint: 7 MB needed, 2 MB free$",
    ):
        load(models_copy)
    assert npy_copy.leftovers(str(models_copy / "124M")) == []


def test_a_rebuild_without_room_for_two_copies_drops_the_old_one_first(models_copy, monkeypatch, small_params):
    old_copy = models_copy / "124M" / "npy"
    (old_copy / "manifest.json").write_text("{}")  # out of date: to be rebuilt
    # room for one copy, not two: the old copy's 7 MB come free when it goes
    monkeypatch.setattr(
        shutil, "disk_usage", lambda path: DiskUsage(10**9, 0, 1_000_000 if old_copy.exists() else 8_000_000)
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
        model_dir = str(disk / "124M")
        shutil.copytree(models_copy / "124M", model_dir, ignore=shutil.ignore_patterns("npy", "model.ckpt.meta"))
        monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(10**9, 0, 10**9))
        tensors = checkpoint.gpt2_tensors(os.path.join(model_dir, "model.ckpt"))
        with pytest.raises(
            files.DiskFull, match=f"^not enough space in {model_dir} to convert the checkpoint: 7 MB needed"
        ):
            npy_copy.write(model_dir, tensors, utils.expected_shapes(SMALL_HPARAMS), {}, 7_000_000)
        assert npy_copy.leftovers(model_dir) == [] and not (disk / "124M" / "npy").exists()


def test_a_copied_folder_made_read_only_loads_without_writing(small_models_dir, tmp_path, small_params):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(small_models_dir), str(copy)], check=True)  # new modification times
    data = copy / "124M" / DATA
    assert data.stat().st_mtime_ns != (small_models_dir / "124M" / DATA).stat().st_mtime_ns
    with mounted("--bind", "-o", "ro", str(copy), str(copy)):
        with pytest.raises(OSError):
            (copy / "124M" / "probe").write_text("")  # read-only indeed
        assert_same_params(load(copy)[2], small_params)


@pytest.mark.slow
def test_a_read_only_folder_that_needs_work_says_so(models_copy):
    shutil.rmtree(models_copy / "124M" / "npy")
    with mounted("--bind", "-o", "ro", str(models_copy), str(models_copy)):
        result = run_gpt2(PROMPT, "--models_dir", str(models_copy))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines()[-1] == (
        f"error: {models_copy}/124M is read-only and has no usable converted copy; "
        "run once where it is writable, or point --models_dir at a writable copy"
    )


@pytest.mark.slow
def test_waiting_for_another_process_says_so_and_can_be_interrupted(models_copy, small_params):
    from filelock import FileLock

    shutil.rmtree(models_copy / "124M" / "npy")  # the next run must convert, under the lock
    waiting_line = f"waiting for another process that is downloading or converting {models_copy}/124M"
    with FileLock(str(models_copy / "124M" / ".lock")):  # another process is converting
        waiting = start_gpt2(PROMPT, "-n", "2", "--models_dir", str(models_copy))
        interrupted = start_gpt2(PROMPT, "-n", "2", "--models_dir", str(models_copy))
        said = read_until(interrupted.stderr, waiting_line + "\n")
        waiting_said = read_until(waiting.stderr, waiting_line + "\n")  # both wait before the lock is let go
        interrupted.send_signal(signal.SIGINT)
        _, stderr = interrupted.communicate(timeout=60)
        assert interrupted.returncode == 130
        assert (said + stderr).splitlines() == [waiting_line, "interrupted"]
    stdout, stderr = waiting.communicate(timeout=120)  # the lock is free: it goes on
    assert waiting.returncode == 0 and stdout
    assert (waiting_said + stderr).splitlines()[0] == waiting_line
