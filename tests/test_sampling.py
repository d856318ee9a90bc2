"""Choosing the next token (temperature, top-k, top-p, seed) against HuggingFace's warpers, and where
generation stops."""

import numpy as np
import pytest
from helpers import GREEDY_TOKENS, N_HEAD, PROMPT_IDS, SAMPLING_SETTINGS, WARPERS_PATH, load_npz

import gpt2


@pytest.fixture(scope="module")
def warpers():
    return load_npz(WARPERS_PATH)


def assert_same_filtering(ours, theirs):
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(theirs))  # the same tokens are filtered out
    kept = ~np.isneginf(theirs)
    np.testing.assert_allclose(ours[kept], theirs[kept], rtol=1e-6)


@pytest.mark.parametrize("index", range(len(SAMPLING_SETTINGS)))
def test_filtering_matches_hf_golden(warpers, index):
    temperature, top_k, top_p = SAMPLING_SETTINGS[index]
    for row, expected in zip(warpers["logits"], warpers[f"filtered_{index}"]):
        assert_same_filtering(gpt2.filter_logits(row, temperature, top_k, top_p), expected)


def test_filtering_matches_hf_live():
    pytest.importorskip("transformers")
    from hf_reference import hf_filter

    rng = np.random.RandomState(11)
    logits = (rng.standard_normal((3, 50257)) * 2).astype(np.float32)
    for temperature, top_k, top_p in [(0.9, 40, 0.9), (1.0, 0, 0.95), (0.6, 100, 1.0), (1.2, 7, 0.3)]:
        expected = hf_filter(logits, temperature, top_k, top_p)
        for row, expected_row in zip(logits, expected):
            assert_same_filtering(gpt2.filter_logits(row, temperature, top_k, top_p), expected_row)


def test_a_tie_at_the_nucleus_boundary_is_filtered_as_hf_does():
    """Eight equally likely tokens: with top_p 0.5 the cumulative probability of the least likely four
    is exactly 1 - top_p, and HuggingFace drops a tail whose total is at most 1 - top_p (<=, not <)."""
    logits = np.zeros((1, 8), dtype=np.float32)
    filtered = gpt2.filter_logits(logits, 1.0, 0, 0.5)
    assert np.isneginf(filtered).sum() == 4
    pytest.importorskip("transformers")
    from hf_reference import hf_filter

    for top_p in (0.5, 0.25, 0.75):
        assert_same_filtering(gpt2.filter_logits(logits, 1.0, 0, top_p), hf_filter(logits, 1.0, 0, top_p))


@pytest.mark.parametrize("setting", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 4, 1.0), (1.0, 0, 0.8), (1.4, 6, 0.9)])
def test_sampled_frequencies_follow_the_filtered_distribution(setting):
    temperature, top_k, top_p = setting
    logits = np.random.RandomState(5).standard_normal(12).astype(np.float32)
    filtered = gpt2.filter_logits(logits, temperature, top_k, top_p)
    expected = np.exp(filtered.astype(np.float64) - filtered.max())
    expected /= expected.sum()
    n = 40_000
    draws = gpt2.sample(np.broadcast_to(filtered, (n, len(filtered))), np.random.default_rng(2024).random(n))
    counts = np.bincount(draws, minlength=len(logits))
    assert counts[expected == 0].sum() == 0  # filtered tokens are never drawn
    sigma = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(counts / n - expected) <= 5 * sigma + 1e-12), (counts / n, expected)


def test_greedy_settings_give_the_greedy_ids(small_params, golden):
    greedy = golden["greedy_ids"].tolist()  # HuggingFace's greedy ids
    assert gpt2.generate(PROMPT_IDS, small_params, N_HEAD, GREEDY_TOKENS, temperature=0) == greedy
    assert gpt2.generate(PROMPT_IDS, small_params, N_HEAD, GREEDY_TOKENS, temperature=1.0, top_k=1, seed=7) == greedy


@pytest.mark.slow
def test_seed_makes_sampling_repeatable(small_params):
    def run(seed):
        return gpt2.generate(PROMPT_IDS, small_params, N_HEAD, 20, temperature=1.0, top_p=0.95, seed=seed)

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_sampling_differs_from_greedy_and_respects_top_k(small_params):
    ids = gpt2.generate(PROMPT_IDS, small_params, N_HEAD, 20, temperature=2.0, top_k=3, seed=0)
    context = list(PROMPT_IDS)
    for token_id in ids:  # every drawn token was among the 3 most likely at its step
        logits = gpt2.gpt2(context, **small_params, n_head=N_HEAD)[-1]
        assert token_id in np.argsort(logits)[-3:]
        context.append(token_id)
    assert ids != gpt2.generate(PROMPT_IDS, small_params, N_HEAD, 20)


def test_stops_at_end_of_text(end_of_text_params):
    assert gpt2.generate(PROMPT_IDS, end_of_text_params, N_HEAD, 5) == []
    assert gpt2.generate(PROMPT_IDS, end_of_text_params, N_HEAD, 5, stop_at_end_of_text=False) == [gpt2.END_OF_TEXT] * 5


@pytest.mark.parametrize(
    "option, message",
    [
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 50258}, "top_k must be a whole number from 0 to 50257"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"seed": 1.5}, "seed"),
        ({"seed": "abc"}, "seed"),
    ],
)
def test_bad_sampling_options(small_params, option, message):
    with pytest.raises(ValueError, match=message):
        gpt2.generate(PROMPT_IDS, small_params, N_HEAD, 3, **option)


def test_notebook_streaming(small_params, encoder, golden):
    tokens = gpt2.generate_stream(PROMPT_IDS, small_params, N_HEAD, 12)
    text = "".join(encoder.decode_stream(token_id for token_id, _ in tokens))
    assert text == encoder.decode(golden["greedy_ids"][:12].tolist())
