"""GPT-2 124M's published greedy outputs. Runs only where the models folder (utils.DEFAULT_MODELS_DIR)
holds OpenAI's 124M. OpenAI publishes no checksum of the weights, so the release is recognised by its
shape: its hparams.json and a data file of 124,439,808 float32 values. Another model of that shape
there is not skipped: it runs and fails on the published texts, which only OpenAI's weights give."""

import json
import os

import pytest
from helpers import HPARAMS_124M, PROMPT, PROMPT_IDS

import cli
import gpt2
import utils

MODELS_DIR = utils.DEFAULT_MODELS_DIR
MODEL_DIR = os.path.join(MODELS_DIR, "124M")
# The size of the data file of OpenAI's 124M (the tokenizer files' sha256 are checked by every load)
DATA_BYTES_124M = 497_759_232


def why_not_openai_124m():
    """Why models/124M is not OpenAI's 124M, or None where it looks like it."""
    missing = [name for name in utils.FILES if not os.path.isfile(os.path.join(MODEL_DIR, name))]
    if missing:
        return f"OpenAI's 124M weights are not in {MODEL_DIR} ({', '.join(missing)} missing)"
    try:
        with open(os.path.join(MODEL_DIR, "hparams.json")) as f:
            hparams = json.load(f)
    except ValueError:
        return f"{MODEL_DIR}/hparams.json is not valid JSON"
    if hparams != HPARAMS_124M:
        return f"{MODEL_DIR} holds another model than OpenAI's 124M (hparams.json: {hparams})"
    size = os.path.getsize(os.path.join(MODEL_DIR, utils.CHECKPOINT_DATA))
    if size != DATA_BYTES_124M:
        return (
            f"{MODEL_DIR} holds another model than OpenAI's 124M ({size:,} bytes of weights, not {DATA_BYTES_124M:,})"
        )
    return None


pytestmark = pytest.mark.skipif(why_not_openai_124m() is not None, reason=str(why_not_openai_124m()))


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
        cli.main(PROMPT, n_tokens_to_generate=8, models_dir=MODELS_DIR) == " the most powerful machines on the planet."
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
