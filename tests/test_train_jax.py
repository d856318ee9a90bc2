"""python train.py --backend jax: the NumPy backend's run, step by step, on one CPU device and on eight,
in one process and in two (JAX's --xla_force_host_platform_device_count makes the devices)."""

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO_DIR, stopped_once_saved, train_args, train_in_process

pytestmark = pytest.mark.slow  # a JAX process of its own for each run
pytest.importorskip("jax")


def jax_command(*args, script="train.py"):
    return [sys.executable, script, *args, "--backend", "jax"]


def on_devices(devices):  # the environment of a process that sees that many CPU devices
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def run_jax(args, devices=1):
    """train.py --backend jax in a process of its own that sees `devices` CPU devices: a CompletedProcess."""
    return subprocess.run(
        jax_command(*args), cwd=REPO_DIR, env=on_devices(devices), capture_output=True, text=True, timeout=900
    )


def losses(out):
    return [record["train_loss"] for record in map(json.loads, (out / "log.jsonl").read_text().splitlines())]


def weights(out):
    from storage import safetensors_file

    name = "adapter_model.safetensors" if (out / "adapter_config.json").exists() else "model.safetensors"
    return dict(safetensors_file.read_tensors(str(out / name)))


def assert_same_run(out, expected, tolerance):
    """Each step's loss within tolerance of expected's (relative), and each tensor of the weights
    within tolerance of the largest entry of them all (a tensor's own largest can be tiny: biases
    start at zero). Except the keys' bias: its gradient is zero (a query's scores all gain the same
    q . b_k, which the softmax takes away), and what each backend computes for it is rounding, which
    AdamW, dividing by its own size, turns into steps of the learning rate in either direction."""
    ours, theirs = losses(out), losses(expected)
    assert len(ours) == len(theirs) and np.allclose(ours, theirs, rtol=tolerance, atol=0), (ours, theirs)
    ours, theirs = weights(out), weights(expected)
    largest = max(float(np.abs(array).max()) for array in theirs.values())
    assert ours.keys() == theirs.keys()
    for name, array in theirs.items():
        difference = np.abs(ours[name] - array)
        if name.endswith("attn.c_attn.bias"):
            n_embd = len(array) // 3
            difference = np.concatenate([difference[:n_embd], difference[2 * n_embd :]])  # queries', values'
        assert difference.max() <= tolerance * largest, name


def pairs_data(small_run):
    """small_run/pairs.jsonl: prompt/completion pairs of many lengths, from the licences' lines."""
    lines = [line.strip() for line in (small_run / "data" / "licences.txt").read_text().splitlines() if line.strip()]
    with open(small_run / "pairs.jsonl", "w") as f:
        for i, line in enumerate(lines[:400]):
            f.write(json.dumps({"prompt": line[: 10 + i % 30], "completion": line[10 + i % 30 : 60]}) + "\n")
    return small_run / "pairs.jsonl"


KINDS = {
    "text": [],
    "lora": ["--lora_rank", "4", "--lora_targets", "c_attn,mlp.c_proj"],
    "pairs": ["--grad_accum", "2"],
}


@pytest.mark.parametrize("kind", KINDS)
def test_the_jax_backend_takes_the_numpy_backends_steps(small_run, capsys, kind):
    args = train_args(small_run, "--steps", "10", "--eval_every", "5", "--learning_rate", "3e-3", *KINDS[kind])
    if kind == "pairs":
        args[0] = str(pairs_data(small_run))
    numpy_run = train_in_process(capsys, [*args, "--out", str(small_run / "numpy")])
    assert numpy_run.returncode == 0, numpy_run.stderr
    jax_run = run_jax([*args, "--out", str(small_run / "jax")])
    assert jax_run.returncode == 0, jax_run.stderr
    assert_same_run(small_run / "jax", small_run / "numpy", 1e-4)


def test_eight_devices_and_two_processes_of_four_take_one_devices_steps(small_run):
    args = train_args(small_run, "--steps", "6", "--batch_size", "8", "--eval_every", "3", "--grad_accum", "2")
    one = run_jax([*args, "--out", str(small_run / "one")])
    eight = run_jax([*args, "--out", str(small_run / "eight")], devices=8)
    assert one.returncode == 0 and eight.returncode == 0, one.stderr + eight.stderr
    assert_same_run(small_run / "eight", small_run / "one", 1e-5)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    processes = [
        subprocess.Popen(
            jax_command(
                *args,
                "--out",
                str(small_run / "two"),
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num_processes",
                "2",
                "--process_id",
                str(i),
            ),  # fmt: skip
            cwd=REPO_DIR,
            env=on_devices(4),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    results = [p.communicate(timeout=900) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], results
    assert "done: 6 steps" in results[0][1] and "done" not in results[1][1]  # process 1 writes nothing
    assert_same_run(small_run / "two", small_run / "eight", 1e-5)


def test_sigterm_and_the_same_command_again_give_the_uninterrupted_run_bit_for_bit(small_run):
    args = train_args(small_run, "--steps", "12", "--save_every", "3", "--eval_every", "12")
    whole = run_jax([*args, "--out", str(small_run / "whole")], devices=2)
    assert whole.returncode == 0, whole.stderr
    command = jax_command(*args, "--out", str(small_run / "cut"))
    code, stderr = stopped_once_saved_on(command, small_run / "cut", devices=2)
    assert code == 143 and "Traceback" not in stderr, stderr
    again = subprocess.run(command, cwd=REPO_DIR, env=on_devices(2), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "resuming the run" in again.stderr, again.stderr
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert (small_run / "cut" / name).read_bytes() == (small_run / "whole" / name).read_bytes(), name


def stopped_once_saved_on(command, out, devices):
    environment = os.environ.get("XLA_FLAGS")
    os.environ["XLA_FLAGS"] = on_devices(devices)["XLA_FLAGS"]
    try:
        return stopped_once_saved(command, out, signal.SIGTERM)
    finally:
        if environment is None:
            del os.environ["XLA_FLAGS"]
        else:
            os.environ["XLA_FLAGS"] = environment


def test_a_run_saved_by_one_backend_resumes_on_the_other(small_run, capsys):
    args = train_args(small_run, "--steps", "10", "--eval_every", "5", "--learning_rate", "3e-3")
    whole = train_in_process(capsys, [*args, "--out", str(small_run / "numpy")])
    half = train_in_process(capsys, [*args, "--out", str(small_run / "mixed"), "--steps", "5"])
    assert whole.returncode == 0 and half.returncode == 0
    rest = run_jax([*args, "--out", str(small_run / "mixed")])
    assert rest.returncode == 0 and "resuming the run" in rest.stderr, rest.stderr
    assert_same_run(small_run / "mixed", small_run / "numpy", 1e-4)
    back = train_in_process(capsys, [*args, "--out", str(small_run / "mixed"), "--steps", "12"])
    assert back.returncode == 0 and "resuming the run" in back.stderr and len(losses(small_run / "mixed")) == 12


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--backend", "torch"], "invalid choice: 'torch'"),
        (["--precision", "bf16"], "--precision is for --backend jax"),
        (["--backend", "jax", "--num_processes", "2"], "give --coordinator HOST:PORT too"),
        (["--backend", "jax", "--coordinator", "127.0.0.1"], "--coordinator must be HOST:PORT"),
        (["--backend", "jax", "--coordinator", "127.0.0.1:1234", "--num_processes", "2"], "needs --num_processes N and --process_id I"),
        (["--backend", "jax", "--coordinator", "127.0.0.1:1234", "--num_processes", "2", "--process_id", "2"], "process_id must be a whole number from 0 to 1"),
    ],
)  # fmt: skip
def test_backend_usage_mistakes_exit_2_before_any_work(tmp_path, capsys, extra, message):
    result = train_in_process(capsys, [str(tmp_path / "missing.txt"), "--out", str(tmp_path / "run"), *extra])
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


def test_a_batch_that_the_devices_cannot_share_is_refused_with_the_numbers(small_run):
    result = run_jax(train_args(small_run, "--batch_size", "6", "--out", str(small_run / "run")), devices=4)
    assert result.returncode == 2 and "--batch_size 6 does not divide among the 4 devices" in result.stderr
    assert "give a multiple of 4" in result.stderr and not (small_run / "run").exists()


def test_a_coordinator_that_never_answers_ends_in_one_line(small_run):
    """Process 1 of 2, its coordinator's port closed: one line, exit 1, within the wait that is set."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = train_args(small_run, "--out", str(small_run / "run"), "--coordinator", f"127.0.0.1:{port}")
    args += ["--num_processes", "2", "--process_id", "1", "--backend", "jax"]
    script = f"from training import jax_step, loop; jax_step.INITIALIZATION_SECONDS = 5; loop.main({args!r})"
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_DIR, capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"did not all join through 127.0.0.1:{port} within 5 s" in lines[0] and not (small_run / "run").exists()


def test_without_jax_the_jax_backend_says_what_to_install(small_run):
    args = train_args(small_run, "--out", str(small_run / "run"), "--backend", "jax")
    script = (
        f"import sys; sys.modules['jax'] = None; from training import loop; loop.main({args!r})"  # as if not installed
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_DIR, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        "error: --backend jax needs JAX: pip install jax (or jax[cuda12] for NVIDIA GPUs)"
    ], result.stderr
    assert not (small_run / "run").exists()


def test_bf16_products_train_close_to_float32s(small_run, capsys):
    """--precision bf16 runs, and its steps are float32's within bf16's own error. (On a CPU, XLA keeps
    float32 products whatever the precision asked: what bf16 changes is measured on GPUs only.)"""
    args = train_args(small_run, "--steps", "4", "--eval_every", "4")
    bf16 = run_jax([*args, "--out", str(small_run / "bf16"), "--precision", "bf16"])
    assert bf16.returncode == 0, bf16.stderr
    numpy_run = train_in_process(capsys, [*args, "--out", str(small_run / "numpy")])
    assert numpy_run.returncode == 0
    assert np.allclose(losses(small_run / "bf16"), losses(small_run / "numpy"), rtol=1e-2)
