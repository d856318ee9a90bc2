"""What several test files share: the small random model's settings, the published prompt, ways to run
the command line (in this process, or as `python gpt2.py` in a new one), and common assertions."""

import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import types

import numpy as np

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(TESTS_DIR)

# The small random model that the golden files and the model-folder tests use: GPT-2's real vocabulary
# (so the real tokenizer works with it) on a tiny body.
SMALL_HPARAMS = {"n_vocab": 50257, "n_ctx": 64, "n_embd": 32, "n_head": 4, "n_layer": 2}
N_HEAD = SMALL_HPARAMS["n_head"]
SEED = 0
# GPT-2 124M as OpenAI's hparams.json gives it (published), for tests of the real shapes
HPARAMS_124M = {"n_vocab": 50257, "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12}
# A longer context on a small vocabulary, for many steps of generation
LONG_HPARAMS = {"n_vocab": 500, "n_ctx": 256, "n_embd": 32, "n_head": 4, "n_layer": 2}
GOLDEN_PATH = os.path.join(TESTS_DIR, "golden", "hf_small.npz")
WARPERS_PATH = os.path.join(TESTS_DIR, "golden", "hf_warpers.npz")
SCORE_PATH = os.path.join(TESTS_DIR, "golden", "hf_score.npz")
PROMPT = "Alan Turing theorized that computers would one day become"
PROMPT_IDS = [36235, 39141, 18765, 1143, 326, 9061, 561, 530, 1110, 1716]  # OpenAI's tokenizer, published
GREEDY_TOKENS = 40
SCORE_STRIDES = (64, 32, 17)  # n_ctx of SMALL_HPARAMS, half of it, and one that does not divide it
# (temperature, top_k, top_p) as HuggingFace's generate takes them
SAMPLING_SETTINGS = [
    (1.0, 0, 1.0),
    (0.7, 0, 1.0),
    (1.5, 0, 1.0),
    (1.0, 10, 1.0),
    (1.0, 1, 1.0),
    (1.0, 0, 0.9),
    (1.0, 0, 0.5),
    (1.0, 0, 0.01),
    (0.8, 50, 0.95),
    (1.3, 5, 0.6),
    (0.5, 200, 0.3),
]


def needs(module):
    """Skip the test, saying which package is missing, where a reference it checks against is not installed."""
    import pytest

    return pytest.importorskip(module, reason=f"{module} is not installed (pip install -r requirements-test.txt)")


def load_npz(path):
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def gpt2_command(*args, script="gpt2.py"):
    """`python gpt2.py ARGS...` (or another of the repository's scripts) as a command to run."""
    return [sys.executable, os.path.join(REPO_DIR, script), *args]


def run_gpt2(*args, stdin=None, env=None, script="gpt2.py"):
    """`python gpt2.py ARGS...` in a new process; stdin: the text (str) or bytes it reads."""
    completed = subprocess.run(
        gpt2_command(*args, script=script),
        input=stdin.encode() if isinstance(stdin, str) else stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
    return Result(completed.returncode, completed.stdout, completed.stderr)


def start_gpt2(*args, stdin=None, **kwargs):
    """`python gpt2.py ARGS...` started in a new process, text output in pipes."""
    return subprocess.Popen(
        gpt2_command(*args),
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


class ServerProcess:
    """`python gpt2.py --serve FLAGS...` on a free port in a new process: its url, the process, and its
    stderr as read so far (log()). The pipe is read as the server writes, a line per request: one that
    nobody read would stop the server once full."""

    def __init__(self, *flags):
        self.process = start_gpt2("--serve", "--port", "0", *flags)
        shown = read_until(self.process.stderr, "Ctrl-C stops")
        found = re.search(r" on (http://\S+)/ ", shown)
        assert found, shown
        self.url, self.lines = found.group(1), [shown]
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stderr), daemon=True)
        self.reader.start()

    def log(self):
        return "".join(self.lines)

    def stop(self, signum=signal.SIGINT, timeout=60):
        """Send the signal; the exit code."""
        self.process.send_signal(signum)
        return self.process.wait(timeout=timeout)

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.reader.join(timeout=10)
        self.process.stdout.close()
        self.process.stderr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        self.close()


class Result:
    """What a run of the command line gave: returncode, and stdout and stderr as text."""

    def __init__(self, returncode, stdout, stderr):
        self.returncode = returncode
        self.stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
        self.stderr = stderr.decode() if isinstance(stderr, bytes) else stderr


def cli(capsys, *args):
    """The command line in this process (cli.run_command_line, as `python gpt2.py ARGS...` runs it):
    its exit code and output. For everything a new process adds nothing to."""
    import cli

    capsys.readouterr()
    try:
        cli.run_command_line(list(args))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return Result(code, out, err)


def assert_clean_error(result, *fragments):
    """One line on stderr, starting "error: ", nothing on stdout, no traceback, a non-zero exit."""
    assert result.returncode != 0
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def assert_same_params(params, expected):
    """The same nested dict of float32 arrays, bit for bit."""
    assert params.keys() == expected.keys()
    assert len(params["blocks"]) == len(expected["blocks"])
    flat, flat_expected = [], []

    def walk(a, b):
        if isinstance(b, dict):
            assert a.keys() == b.keys()
            for key in b:
                walk(a[key], b[key])
        elif isinstance(b, list):
            for x, y in zip(a, b):
                walk(x, y)
        else:
            flat.append(a)
            flat_expected.append(b)

    walk(params, expected)
    for array, reference in zip(flat, flat_expected):
        assert array.dtype == np.float32 and array.shape == reference.shape
        np.testing.assert_array_equal(array, reference)


def load(models_dir, model_size="124M"):
    import utils

    return utils.load_encoder_hparams_and_params(model_size, str(models_dir))


def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once the socket is closed


def hf_greedy_text(model, tiktoken_gpt2, ids, n_tokens):
    """What the command line should print: HuggingFace's greedy continuation, up to <|endoftext|>."""
    from hf_reference import hf_greedy

    new_ids = hf_greedy(model, ids, n_tokens)
    if tiktoken_gpt2.eot_token in new_ids:
        new_ids = new_ids[: new_ids.index(tiktoken_gpt2.eot_token)]
    return tiktoken_gpt2.decode(new_ids)


def read_until(pipe, text, timeout=60):
    """What a process wrote to pipe (its stdout or stderr) until text appeared in it."""
    shown, deadline = b"", time.monotonic() + timeout
    while text.encode() not in shown and time.monotonic() < deadline:
        if select.select([pipe], [], [], 0.05)[0]:
            shown += os.read(pipe.fileno(), 1 << 16)
    return shown.decode()


IMPORT_LINE = re.compile(r"^import numpy as np$", re.MULTILINE)


def swapped(module):
    """The module's source run with `import numpy as np` replaced by `import jax.numpy as np`."""
    with open(module.__file__, encoding="utf-8") as f:
        source = f.read()
    assert len(IMPORT_LINE.findall(source)) == 1
    jax_module = types.ModuleType(f"{module.__name__}_jax")
    jax_module.__file__ = module.__file__
    exec(compile(IMPORT_LINE.sub("import jax.numpy as np", source), module.__file__, "exec"), jax_module.__dict__)
    return jax_module


def train_args(base, *extra):
    """train.py's arguments for a small_run: its data and models, small windows, no samples."""
    return [str(base / "data"), "--models_dir", str(base / "models"), "--block_size", "32", "--batch_size", "4",
            "--sample_every", "0", *extra]  # fmt: skip


def ours_path(hf_name):
    """HuggingFace's parameter name -> the path of the same weight in our params."""
    from storage.hf import flat_key

    path = []
    for part in flat_key(hf_name).split("."):
        path.append(int(part) if part.isdigit() else part)
    return tuple(path)


def at(tree, path):
    for part in path:
        tree = tree[part]
    return tree


def train_in_process(capsys, args):
    """`python train.py ARGS...` as training.loop.main in this process: a Result."""
    from training import loop

    try:
        loop.main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    return Result(code, *capsys.readouterr())


def stopped_once_saved(command, out, signum):
    """A training command started in a new process and sent signum once out/state.json exists (its
    first save): (exit code, stderr)."""
    process = subprocess.Popen(command, cwd=REPO_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not os.path.exists(os.path.join(out, "state.json")) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr
