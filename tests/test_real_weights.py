"""GPT-2 124M's published greedy outputs. Runs only where models/124M holds OpenAI's real weights."""

import os

import pytest
from conftest import PROMPT, PROMPT_IDS, REPO_DIR

import gpt2
import utils

MODELS_DIR = os.path.join(REPO_DIR, "models")

pytestmark = pytest.mark.skipif(
    not all(os.path.isfile(os.path.join(MODELS_DIR, "124M", name)) for name in utils.FILES),
    reason="OpenAI's 124M weights are not in models/124M",
)


@pytest.fixture(scope="module")
def model():
    return utils.load_encoder_hparams_and_params("124M", MODELS_DIR)


def test_alan_turing(model):
    encoder, hparams, params = model
    assert encoder.encode(PROMPT) == PROMPT_IDS
    ids = gpt2.generate(PROMPT_IDS, params, hparams["n_head"], 8)
    assert ids == [262, 749, 3665, 8217, 319, 262, 5440, 13]
    assert encoder.decode(ids) == " the most powerful machines on the planet."
    assert (
        gpt2.main(PROMPT, n_tokens_to_generate=8, models_dir=MODELS_DIR) == " the most powerful machines on the planet."
    )


def test_san_francisco(model):
    encoder, hparams, params = model
    assert gpt2.generate(encoder.encode("San Francisco is"), params, hparams["n_head"], 8) == [
        257,
        1748,
        286,
        517,
        621,
        352,
        1510,
        661,
    ]
