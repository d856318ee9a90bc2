"""Batched generation: each row of generate_batch equals generate() of its prompt alone, whatever its
neighbours; sampled rows depend only on the seed and the row's index; the batched reference gpt2()."""

import numpy as np
import pytest
from helpers import GREEDY_TOKENS, LONG_HPARAMS, N_HEAD, PROMPT_IDS, SMALL_HPARAMS

import batching
import gpt2


def ragged_prompts(seed, lengths, n_vocab):
    rng = np.random.RandomState(seed)
    return [rng.randint(0, n_vocab, n).tolist() for n in lengths]


def test_ragged_rows_equal_single_runs_step_by_step(long_params):
    prompts = ragged_prompts(0, (1, 150, 7, 33, 7), LONG_HPARAMS["n_vocab"])  # a row of 1 token, one of 150
    n_tokens = 60
    per_row = {row: [] for row in range(len(prompts))}
    for step in batching.generate_batch_stream(prompts, long_params, N_HEAD, n_tokens, batch_size=2):
        for row, token_id, logits in step:
            per_row[row].append((token_id, logits))
    for row, inputs in enumerate(prompts):
        alone = list(gpt2.generate_stream(inputs, long_params, N_HEAD, n_tokens))
        assert [t for t, _ in per_row[row]] == [t for t, _ in alone]  # the same greedy ids
        for (_, batched_logits), (_, single_logits) in zip(per_row[row], alone):  # the same scores at every step
            assert batched_logits.dtype == np.float32
            np.testing.assert_allclose(batched_logits, single_logits, atol=1e-4, rtol=0)


def test_batch_greedy_rows_are_hf_greedy(small_params, golden):
    prompts = [PROMPT_IDS[3:4], PROMPT_IDS, PROMPT_IDS[:2] * 9]
    rows = batching.generate_batch(prompts, small_params, N_HEAD, GREEDY_TOKENS)
    assert rows[1] == golden["greedy_ids"].tolist()  # HuggingFace's greedy continuation of PROMPT_IDS
    assert rows == [gpt2.generate(inputs, small_params, N_HEAD, GREEDY_TOKENS) for inputs in prompts]


@pytest.mark.slow
def test_batch_size_never_changes_the_ids(long_params):
    prompts = ragged_prompts(1, (5, 40, 1, 12, 12, 90, 3), LONG_HPARAMS["n_vocab"])
    for sampling in ({}, {"temperature": 1.0, "seed": 5}, {"temperature": 0.8, "top_k": 20, "top_p": 0.9, "seed": 6}):
        everything = batching.generate_batch(prompts, long_params, N_HEAD, 30, **sampling)
        for batch_size in (1, 2, 3, 7, 100):
            assert (
                batching.generate_batch(prompts, long_params, N_HEAD, 30, batch_size=batch_size, **sampling)
                == everything
            )


def test_sampled_rows_depend_on_seed_and_index_only(long_params):
    n_vocab = LONG_HPARAMS["n_vocab"]
    prompts = ragged_prompts(2, (9, 9, 9, 9), n_vocab)
    prompts[1] = prompts[2] = prompts[0]
    sampling = {"temperature": 1.0, "seed": 11}
    rows = batching.generate_batch(prompts, long_params, N_HEAD, 25, **sampling)
    assert len({tuple(row) for row in rows[:3]}) == 3  # three samples of one prompt differ
    neighbours = ragged_prompts(3, (100, 9, 1, 60), n_vocab)
    neighbours[2] = prompts[2]  # row 2 keeps its prompt, every other row changes
    assert batching.generate_batch(neighbours, long_params, N_HEAD, 25, **sampling)[2] == rows[2]
    assert batching.generate_batch(prompts, long_params, N_HEAD, 25, **sampling) == rows  # repeatable
    assert batching.generate_batch(prompts, long_params, N_HEAD, 25, temperature=1.0, seed=12) != rows


@pytest.fixture
def end_of_text_likely_params(small_params):
    """The small model with <|endoftext|>'s embedding scaled up: it wins at the steps where its score is
    positive, so rows end after different numbers of tokens."""
    wte = small_params["wte"].copy()
    wte[gpt2.END_OF_TEXT] *= 8
    return {**small_params, "wte": wte}


def test_each_row_stops_at_its_own_end_of_text(end_of_text_likely_params, monkeypatch):
    params = end_of_text_likely_params
    prompts = ragged_prompts(4, (3, 10, 1, 25, 6, 6, 17, 2), SMALL_HPARAMS["n_vocab"])
    expected = [gpt2.generate(inputs, params, N_HEAD, 20) for inputs in prompts]
    assert len({len(ids) for ids in expected}) > 2 and min(map(len, expected)) < 20  # they do stop, unevenly
    batch_rows = []  # the rows of each forward pass after the prompts: finished rows cost nothing more
    cached = gpt2.gpt2_cached
    monkeypatch.setattr(
        gpt2, "gpt2_cached", lambda inputs, *a, **k: batch_rows.append(np.shape(inputs)) or cached(inputs, *a, **k)
    )
    assert batching.generate_batch(prompts, params, N_HEAD, 20) == expected
    decode_rows = [shape[0] for shape in batch_rows if len(shape) == 2]
    still_running = [sum(len(ids) > step for ids in expected) for step in range(20)]
    assert decode_rows == still_running[: len(decode_rows)] and decode_rows[-1] < len(prompts)
    everything = batching.generate_batch(prompts, params, N_HEAD, 20, stop_at_end_of_text=False)
    assert all(len(ids) == 20 for ids in everything) and gpt2.END_OF_TEXT in sum(everything, [])


def test_kv_cache_holds_what_the_call_needs(small_params, monkeypatch):
    shapes = []
    new_kv_cache = gpt2.new_kv_cache
    monkeypatch.setattr(
        gpt2, "new_kv_cache", lambda *a, **k: shapes.append(new_kv_cache(*a, **k)[0].shape) or new_kv_cache(*a, **k)
    )
    d = SMALL_HPARAMS["n_embd"] // N_HEAD
    gpt2.generate(PROMPT_IDS, small_params, N_HEAD, 5)
    batching.generate_batch([PROMPT_IDS, [1, 2, 3]], small_params, N_HEAD, 5)
    assert shapes == [
        (SMALL_HPARAMS["n_layer"], 2 * N_HEAD, len(PROMPT_IDS) + 4, d),  # the last new token is never fed back
        (SMALL_HPARAMS["n_layer"], 2, 2 * N_HEAD, len(PROMPT_IDS) + 4, d),
    ]


def test_batch_rejects_bad_input_before_any_work(small_params, monkeypatch):
    monkeypatch.setattr(gpt2, "gpt2_cached", None)  # any model work would fail with a TypeError
    with pytest.raises(ValueError, match="at least one token"):
        batching.generate_batch([PROMPT_IDS, []], small_params, N_HEAD, 5)
    with pytest.raises(ValueError, match="context"):
        batching.generate_batch([PROMPT_IDS, [1] * 60], small_params, N_HEAD, 5)
    with pytest.raises(ValueError, match="batch_size"):
        batching.generate_batch([PROMPT_IDS], small_params, N_HEAD, 5, batch_size=0)
    with pytest.raises(ValueError, match="top_p"):
        batching.generate_batch([PROMPT_IDS], small_params, N_HEAD, 5, temperature=1.0, top_p=0)
    assert batching.generate_batch([], small_params, N_HEAD, 5) == []


def test_reference_gpt2_takes_rows_of_equal_length(long_params, small_params, golden):
    batch = np.array(ragged_prompts(5, (20, 20, 20), LONG_HPARAMS["n_vocab"]))  # [n_batch, n_seq]
    logits = gpt2.gpt2(batch, **long_params, n_head=N_HEAD)
    assert logits.shape == (3, 20, LONG_HPARAMS["n_vocab"]) and logits.dtype == np.float32
    for row, row_logits in zip(batch, logits):
        np.testing.assert_allclose(row_logits, gpt2.gpt2(row, **long_params, n_head=N_HEAD), atol=1e-5, rtol=0)
    ids = golden["long_ids"]  # HuggingFace's logits for these ids
    both = gpt2.gpt2(np.stack([ids, ids]), **small_params, n_head=N_HEAD)
    np.testing.assert_allclose(both[1][:, golden["columns"]], golden["long_logits_columns"], atol=1e-4, rtol=0)


def test_a_notebooks_import_from_gpt2_still_finds_them_with_a_warning():
    """generate_batch and generate_batch_stream moved to batching.py; `from gpt2 import ...` forwards
    for one release."""
    for name in ("generate_batch", "generate_batch_stream"):
        with pytest.warns(DeprecationWarning, match=f"from batching import {name}"):
            forwarded = getattr(gpt2, name)
        assert forwarded is getattr(batching, name)
    with pytest.raises(AttributeError):
        gpt2.no_such_function  # noqa: B018 (the lookup is what is tested)
