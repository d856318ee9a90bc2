"""Write tests/golden/hf_small.npz: what HuggingFace's GPT2LMHeadModel computes for the random weights of
conftest.SMALL_HPARAMS and SEED. Needs torch and transformers; the tests then run without them.

    python tests/make_golden.py
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, for random_model
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import (
    GOLDEN_PATH,
    GREEDY_TOKENS,
    PROMPT_IDS,
    SAMPLING_SETTINGS,
    SCORE_PATH,
    SCORE_STRIDES,
    SEED,
    SMALL_HPARAMS,
    WARPERS_PATH,
)
from hf_reference import hf_filter, hf_greedy, hf_guide_windows, hf_logits

from tools.random_model import hf_model, random_openai_variables


def main():
    model = hf_model(random_openai_variables(SMALL_HPARAMS, SEED), SMALL_HPARAMS)
    long_ids = np.random.RandomState(SEED + 1).randint(0, SMALL_HPARAMS["n_vocab"], SMALL_HPARAMS["n_ctx"])
    columns = np.arange(0, SMALL_HPARAMS["n_vocab"], 97)
    prompt_logits = hf_logits(model, PROMPT_IDS)
    greedy_ids = hf_greedy(model, PROMPT_IDS, GREEDY_TOKENS)
    # Greedy ids are only a fair test if no step is a near tie that rounding could flip.
    all_logits = np.sort(hf_logits(model, PROMPT_IDS + greedy_ids[:-1])[len(PROMPT_IDS) - 1 :], axis=-1)
    margin = float((all_logits[:, -1] - all_logits[:, -2]).min())
    assert margin > 1e-3, f"greedy step too close to a tie ({margin}); pick another seed"
    np.savez_compressed(
        GOLDEN_PATH,
        prompt_logits_last=prompt_logits[-1],
        long_ids=long_ids,
        columns=columns,
        long_logits_columns=hf_logits(model, long_ids.tolist())[:, columns],
        greedy_ids=np.array(greedy_ids),
    )
    print(f"wrote {GOLDEN_PATH}; smallest greedy margin {margin:.4f}")
    logits = sampling_logits()
    np.savez_compressed(
        WARPERS_PATH, logits=logits, **{f"filtered_{i}": hf_filter(logits, *s) for i, s in enumerate(SAMPLING_SETTINGS)}
    )
    print(f"wrote {WARPERS_PATH}")
    ids = score_ids()
    windows = {}
    for stride in SCORE_STRIDES:
        losses, counts = hf_guide_windows(model, ids.tolist(), SMALL_HPARAMS["n_ctx"], stride)
        windows[f"losses_{stride}"], windows[f"counts_{stride}"] = np.array(losses), np.array(counts)
    np.savez_compressed(SCORE_PATH, ids=ids, **windows)
    print(f"wrote {SCORE_PATH}")


def score_ids():
    """A token sequence several times longer than the small model's context."""
    return np.random.RandomState(SEED + 4).randint(0, SMALL_HPARAMS["n_vocab"], 5 * SMALL_HPARAMS["n_ctx"] - 9)


def sampling_logits():
    """Rows of logits to filter: a wide one like GPT-2's and narrow ones for the sampling statistics."""
    rng = np.random.RandomState(SEED + 3)
    return (rng.standard_normal((4, 1000)) * np.array([[1.0], [3.0], [0.3], [8.0]])).astype(np.float32)


if __name__ == "__main__":
    main()
