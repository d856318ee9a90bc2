"""What every benchmark shares: timings as medians, the random 124M-shaped model, the machine."""

import os
import platform
import statistics
import subprocess
import sys
import time

from utils import MODEL_HPARAMS

REPO_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPEATS = 3  # runs of a timing whose median is reported
HPARAMS_124M = MODEL_HPARAMS["124M"]


def seconds(function, *args, **kwargs):
    """How long function(*args, **kwargs) takes."""
    start = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - start


def median_seconds(function, repeat, *args, **kwargs):
    return statistics.median(seconds(function, *args, **kwargs) for _ in range(repeat))


def median_of(rows, key, per=None):  # the median over rounds of a number, or of its ratio to another in each round
    return statistics.median(row[key] / (row[per] if per else 1) for row in rows)


def in_fresh_process(*command):
    """Run a command to its end (a new Python for `python ARGS...`), its output captured."""
    return subprocess.run([sys.executable, *command], cwd=REPO_DIR, check=True, capture_output=True, text=True)


def make_random_model(models_dir, seed=0):
    """models_dir/124M: random weights of GPT-2 124M's shape in OpenAI's layout."""
    from tools.random_model import random_openai_variables, write_openai_model_dir

    model_dir = os.path.join(models_dir, "124M")
    if not os.path.exists(os.path.join(model_dir, "hparams.json")):
        write_openai_model_dir(model_dir, HPARAMS_124M, random_openai_variables(HPARAMS_124M, seed))
    return model_dir


def load_random_model(models_dir):
    """(hparams, params) of the random 124M-shaped model, as utils loads it (the layout matters for speed)."""
    from utils import load_encoder_hparams_and_params

    make_random_model(models_dir)
    _, hparams, params = load_encoder_hparams_and_params("124M", models_dir)
    return hparams, params


# The machine


def machine_summary():
    import numpy as np

    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    cpu = names[0] if names else platform.processor() or platform.machine()
    blas = ""
    try:
        from threadpoolctl import threadpool_info

        pools = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
        blas = ", ".join(
            f"{p['internal_api']} {p['version']} {p.get('architecture', '')} {p['num_threads']} threads" for p in pools
        )
    except ImportError:
        pass
    return f"machine: {cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, NumPy {np.__version__}, {blas}"


def read_bandwidth(duration=1.0):
    """Streaming-read bandwidth in bytes/s: a matrix-vector product over 512 MB, far larger than any
    cache, reads every byte once, with the same BLAS and threads as the model's own products. Repeated
    for about as long as a decode measurement lasts, so both see the machine over a similar stretch."""
    import numpy as np

    matrix = np.ones((128 * 1024, 1024), dtype=np.float32)
    vector = np.ones(1024, dtype=np.float32)
    times, end = [], time.perf_counter() + duration
    while time.perf_counter() < end or len(times) < 3:
        times.append(seconds(matrix.__matmul__, vector))
    return matrix.nbytes / statistics.median(times)


def peak_rss_megabytes(*command):
    """The peak resident memory of `python COMMAND...`, in MB (measured from a fresh process that only waits for it)."""
    waiter = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    return int(in_fresh_process("-c", waiter, sys.executable, *command).stdout) / 1024


# The reference: HuggingFace's model on the same weights


def hf_model_124M(seed=0):
    """HuggingFace's GPT2LMHeadModel with the same random weights as make_random_model, or None."""
    try:
        import torch

        from tools.random_model import hf_model, random_openai_variables
    except ImportError:
        return None
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # the same threads as OpenBLAS here
    return hf_model(random_openai_variables(HPARAMS_124M, seed), HPARAMS_124M)
