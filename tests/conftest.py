import os
import sys

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
def tokenizer_dir():
    from random_model import tokenizer_dir

    return tokenizer_dir()


@pytest.fixture(scope="session")
def encoder(tokenizer_dir):
    from encoder import get_encoder

    return get_encoder(os.path.basename(tokenizer_dir), os.path.dirname(tokenizer_dir))


@pytest.fixture(scope="session")
def tiktoken_gpt2(tokenizer_dir):
    """tiktoken's GPT-2 encoding built offline from the same two files."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    ranks = data_gym_to_mergeable_bpe_ranks(
        os.path.join(tokenizer_dir, "vocab.bpe"), os.path.join(tokenizer_dir, "encoder.json")
    )
    return tiktoken.Encoding(
        name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256}
    )


@pytest.fixture(scope="session")
def small_models_dir(tmp_path_factory, small_variables):
    """A models folder whose 124M holds the small random model in OpenAI's layout, already converted
    (remove 124M/npy to test the first load). Tests that change files must copy it first (models_copy)."""
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
