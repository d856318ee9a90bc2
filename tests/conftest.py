import functools
import http.server
import os
import re
import sys
import threading
import time

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(TESTS_DIR)
sys.path.insert(0, REPO_DIR)

# The small random model that the golden files and the model-folder tests use: GPT-2's real vocabulary
# (so the real tokenizer works with it) on a tiny body.
SMALL_HPARAMS = {"n_vocab": 50257, "n_ctx": 64, "n_embd": 32, "n_head": 4, "n_layer": 2}
SEED = 0
GOLDEN_PATH = os.path.join(TESTS_DIR, "golden", "hf_small.npz")
PROMPT = "Alan Turing theorized that computers would one day become"
PROMPT_IDS = [36235, 39141, 18765, 1143, 326, 9061, 561, 530, 1110, 1716]  # OpenAI's tokenizer, published
GREEDY_TOKENS = 40
WARPERS_PATH = os.path.join(TESTS_DIR, "golden", "hf_warpers.npz")
SCORE_PATH = os.path.join(TESTS_DIR, "golden", "hf_score.npz")
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


@pytest.fixture(scope="session")
def golden():
    import numpy as np

    with np.load(GOLDEN_PATH, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


@pytest.fixture(scope="session")
def small_variables():
    from random_model import random_openai_variables

    return random_openai_variables(SMALL_HPARAMS, SEED)


@pytest.fixture(scope="session")
def small_params(small_variables):
    from random_model import nested_params

    return nested_params(small_variables, SMALL_HPARAMS["n_layer"])


@pytest.fixture(scope="session")
def hf_small(small_variables):
    """HuggingFace's GPT2LMHeadModel holding the small random weights; skips where transformers is missing."""
    pytest.importorskip("transformers")
    from hf_reference import hf_model

    return hf_model(small_variables, SMALL_HPARAMS)


@pytest.fixture(scope="session")
def tokenizer_dir():
    from random_model import tokenizer_dir

    return tokenizer_dir()


@pytest.fixture(scope="session")
def encoder(tokenizer_dir):
    from encoder import get_encoder

    return get_encoder(os.path.basename(tokenizer_dir), os.path.dirname(tokenizer_dir))


@pytest.fixture(scope="session")
def tiktoken_gpt2():
    from random_model import tiktoken_gpt2

    return tiktoken_gpt2()


@pytest.fixture(scope="session")
def small_models_dir(tmp_path_factory, small_variables):
    """A models folder whose 124M holds the small random model in OpenAI's layout, already converted
    (remove 124M/npy to test the first load). Tests that only load it use it as it is; tests that
    change files must copy it first (models_copy)."""
    from random_model import write_openai_model_dir

    from utils import load_encoder_hparams_and_params

    models_dir = tmp_path_factory.mktemp("models")
    write_openai_model_dir(str(models_dir / "124M"), SMALL_HPARAMS, small_variables)
    load_encoder_hparams_and_params("124M", str(models_dir))
    return models_dir


@pytest.fixture
def models_copy(small_models_dir, tmp_path):
    import shutil

    shutil.copytree(small_models_dir, tmp_path / "models")  # keeps modification times: the copy stays valid
    return tmp_path / "models"


class ModelServer:
    """An HTTP server on 127.0.0.1 serving a models folder as {url}/{model_size}/{file}, honouring
    Range requests, that can be told to misbehave per file: modes[file name] is one of the modes of
    FileHandler. It records every request."""

    def __init__(self, root):
        self.root, self.modes, self.requests, self.lock = root, {}, [], threading.Lock()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(FileHandler, self))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def hits(self, name):
        """The headers of each request for this file."""
        with self.lock:
            return [headers for path, headers in self.requests if path.endswith("/" + name)]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class FileHandler(http.server.BaseHTTPRequestHandler):
    """Modes: ok; 404; 500_twice (500 to the first two requests); slow (2 s before answering);
    garbage (other bytes than the file); ignore_range (always the whole file, status 200); short
    (half of what Content-Length announces, then the connection closes); drop_once (short, the first
    time only); throttle (64 KiB every 20 ms)."""

    def __init__(self, state, *args, **kwargs):
        self.state = state
        super().__init__(*args, **kwargs)

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        name = self.path.rsplit("/", 1)[-1]
        with self.state.lock:
            self.state.requests.append((self.path, dict(self.headers)))
        n_hits = len(self.state.hits(name))
        mode = self.state.modes.get(name, "ok")
        path = os.path.join(self.state.root, self.path.lstrip("/"))
        if mode == "404" or not os.path.isfile(path):
            return self.send_error(404)
        if mode == "500_twice" and n_hits <= 2:
            return self.send_error(500)
        if mode == "slow":
            time.sleep(2)
        with open(path, "rb") as f:
            data = f.read()
        if mode == "garbage":
            data = b"garbage " + data
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match and mode != "ignore_range":
            start = int(match.group(1))
            if start >= len(data):
                return self.send_error(416)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "short" or (mode == "drop_once" and n_hits == 1):
            body = body[: len(body) // 2]
        try:
            for i in range(0, len(body), 1 << 16):
                self.wfile.write(body[i : i + (1 << 16)])
                if mode == "throttle":
                    time.sleep(0.02)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True


@pytest.fixture
def model_server(small_models_dir):
    server = ModelServer(str(small_models_dir))
    yield server
    server.close()
