"""Scoring a text (mean negative log-likelihood, perplexity) against HuggingFace's perplexity guide."""

import math

import numpy as np
import pytest
from helpers import N_HEAD, SCORE_PATH, SCORE_STRIDES, SMALL_HPARAMS, load_npz

import gpt2

N_CTX = SMALL_HPARAMS["n_ctx"]


@pytest.fixture(scope="module")
def golden_score():
    return load_npz(SCORE_PATH)


def guide_windows(n_tokens, stride):
    """The tokens each window of HuggingFace's guide scores: after the previous window's end, never
    the window's own first token."""
    windows, previous_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + N_CTX, n_tokens)
        windows.append(range(max(previous_end, begin + 1), end))
        previous_end = end
        if end == n_tokens:
            break
    return windows


def check_against_guide(ids, params, stride, losses, counts):
    nlls = gpt2.token_nlls(ids, params, N_HEAD, stride)
    windows = guide_windows(len(ids), stride)
    assert [len(w) for w in windows] == list(counts)  # the same tokens are scored
    for window, loss in zip(windows, losses):
        assert abs(nlls[list(window)].mean() - loss) < 1e-4  # each window's loss
    guide_perplexity = math.exp(np.dot(losses, counts) / np.sum(counts))
    perplexity = math.exp(gpt2.score(ids, params, N_HEAD, stride))
    assert perplexity == pytest.approx(guide_perplexity, rel=1e-4)
    assert np.isnan(nlls).sum() == len(ids) - sum(counts)


@pytest.mark.slow
@pytest.mark.parametrize("stride", SCORE_STRIDES)
def test_matches_hf_guide_golden(small_params, golden_score, stride):
    ids = golden_score["ids"].tolist()
    assert len(ids) > 4 * N_CTX
    check_against_guide(ids, small_params, stride, golden_score[f"losses_{stride}"], golden_score[f"counts_{stride}"])


@pytest.mark.slow
def test_matches_hf_guide_live(hf_small, small_params):
    from hf_reference import hf_guide_windows

    ids = np.random.RandomState(21).randint(0, SMALL_HPARAMS["n_vocab"], 3 * N_CTX + 5).tolist()
    for stride in (N_CTX, 23, 4):
        losses, counts = hf_guide_windows(hf_small, ids, N_CTX, stride)
        check_against_guide(ids, small_params, stride, losses, counts)


def test_default_stride_is_the_context(small_params, golden_score):
    ids = golden_score["ids"].tolist()
    assert gpt2.score(ids, small_params, N_HEAD) == gpt2.score(ids, small_params, N_HEAD, N_CTX)


def test_short_text_is_one_window(small_params):
    ids = [464, 3290, 318, 257]
    nlls = gpt2.token_nlls(ids, small_params, N_HEAD)
    log_probs = gpt2.log_softmax(gpt2.gpt2(ids, **small_params, n_head=N_HEAD).astype(np.float64))
    np.testing.assert_allclose(nlls[1:], [-log_probs[i, ids[i + 1]] for i in range(3)], rtol=1e-5)
    assert np.isnan(nlls[0])


def test_lm_loss_is_hf_loss_and_score_on_one_window(small_params, golden_score):
    ids = golden_score["ids"][:N_CTX]
    hf_loss = golden_score[f"losses_{N_CTX}"][0]  # GPT2LMHeadModel(ids, labels=ids).loss, the first window
    for given in (ids, ids.tolist()):
        loss = gpt2.lm_loss(small_params, given, N_HEAD)
        assert loss.dtype == np.float32
        assert abs(loss - hf_loss) < 1e-4
        assert loss == pytest.approx(gpt2.score(given, small_params, N_HEAD), rel=1e-6)


def test_log_softmax_is_stable_in_float32():
    x = np.array([[1e4, 0.0, -1e4], [88.0, 89.0, 90.0], [-1e30, 0.0, 1.0]], dtype=np.float32)
    out = gpt2.log_softmax(x)
    assert out.dtype == np.float32 and np.all(np.isfinite(out[:2]))
    x64 = x.astype(np.float64)
    reference = x64 - x64.max(-1, keepdims=True)
    reference -= np.log(np.exp(reference).sum(-1, keepdims=True))
    np.testing.assert_allclose(out, reference, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "ids, stride", [([464], None), ([], None), ([1, 2, 3], 0), ([1, 2, 3], N_CTX + 1), ([1, 2, 3], 2.5)]
)
def test_bad_input(small_params, ids, stride):
    with pytest.raises(ValueError):
        gpt2.score(ids, small_params, N_HEAD, stride)
