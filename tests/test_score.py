"""Scoring a text (mean negative log-likelihood, perplexity) against HuggingFace's perplexity guide."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import PROMPT, REPO_DIR, SCORE_PATH, SCORE_STRIDES, SMALL_HPARAMS
from test_cli import assert_clean_error, run_cli

import gpt2

N_HEAD, N_CTX = SMALL_HPARAMS["n_head"], SMALL_HPARAMS["n_ctx"]


@pytest.fixture(scope="module")
def golden_score():
    with np.load(SCORE_PATH, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


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


@pytest.mark.parametrize("stride", SCORE_STRIDES)
def test_matches_hf_guide_golden(small_params, golden_score, stride):
    ids = golden_score["ids"].tolist()
    assert len(ids) > 4 * N_CTX
    check_against_guide(ids, small_params, stride, golden_score[f"losses_{stride}"], golden_score[f"counts_{stride}"])


def test_matches_hf_guide_live(hf_small, small_params):
    from hf_reference import hf_guide_windows

    ids = np.random.RandomState(21).randint(0, SMALL_HPARAMS["n_vocab"], 3 * N_CTX + 5).tolist()
    for stride in (N_CTX, 23, 1):
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


# The command line


def perplexity_line(output):
    return float(output.strip().splitlines()[-1].removeprefix("perplexity: "))


def test_cli_scores_a_string_a_file_and_stdin(small_models_dir, small_params, encoder, tmp_path):
    text = (PROMPT + ". ") * 30  # several windows long
    expected = math.exp(gpt2.score(encoder.encode(text), small_params, N_HEAD, 20))
    args = ("--score", "--stride", "20", "--models_dir", str(small_models_dir))
    from_string = run_cli(text, *args)
    assert from_string.returncode == 0, from_string.stderr
    assert perplexity_line(from_string.stdout) == pytest.approx(expected, rel=1e-4)
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    assert run_cli("--file", str(tmp_path / "text.txt"), *args).stdout == from_string.stdout
    piped = subprocess.run(
        [sys.executable, os.path.join(REPO_DIR, "gpt2.py"), "-", *args],
        input=text.encode(),
        capture_output=True,
        timeout=300,
    )
    assert piped.stdout.decode() == from_string.stdout


def test_cli_prepend_end_of_text_scores_the_first_token(small_models_dir, small_params, encoder):
    ids = encoder.encode(PROMPT)
    result = run_cli(PROMPT, "--score", "--prepend_end_of_text", "--models_dir", str(small_models_dir))
    assert f"{len(ids) + 1} tokens, {len(ids)} scored" in result.stdout
    expected = math.exp(gpt2.score([gpt2.END_OF_TEXT] + ids, small_params, N_HEAD))
    assert perplexity_line(result.stdout) == pytest.approx(expected, rel=1e-4)


def test_cli_shows_each_token_for_learners(small_models_dir, small_params, encoder):
    ids = encoder.encode(PROMPT)
    result = run_cli(PROMPT, "--score", "--show_probs", "1", "--models_dir", str(small_models_dir))
    lines = result.stdout.splitlines()
    token_lines = lines[1 : 1 + len(ids)]
    assert "(context only)" in token_lines[0]
    nlls = gpt2.token_nlls(ids, small_params, N_HEAD)
    for line, nll in zip(token_lines[1:], nlls[1:]):
        assert f"{math.exp(-nll):.1%}" in line and f"{nll / math.log(2):.1f} bits" in line


def test_cli_generation_is_unchanged_by_the_new_flags(small_models_dir):
    assert (
        run_cli(PROMPT, "-n", "5", "--models_dir", str(small_models_dir), "--stride", "3").stdout
        == run_cli(PROMPT, "-n", "5", "--models_dir", str(small_models_dir)).stdout
    )


@pytest.mark.parametrize(
    "args, fragment",
    [
        (
            ("Hello", "--score"),
            "the text has 1 token; scoring needs 2, the first is only context (--prepend_end_of_text",
        ),
        ((PROMPT, "--score", "--stride", "0"), "stride"),
        ((PROMPT, "--score", "--stride", "65"), "stride"),
        (("--score", "--file", "/nonexistent/text.txt"), "cannot read /nonexistent/text.txt"),
        ((PROMPT, "--score", "--file", "x.txt"), "not both"),
    ],
)
def test_cli_bad_input(small_models_dir, args, fragment):
    assert_clean_error(run_cli(*args, "--models_dir", str(small_models_dir)), fragment)
