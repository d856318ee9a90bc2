"""The NumPy forward pass and greedy generation against HuggingFace's GPT2LMHeadModel on the same weights."""

import io
import os
import tokenize

import numpy as np
import pytest
from helpers import GREEDY_TOKENS, LONG_HPARAMS, N_HEAD, PROMPT_IDS, REPO_DIR, SEED, SMALL_HPARAMS

import gpt2
import gpt2_pico
import train


def test_logits_match_hf_golden(small_params, golden):
    logits = gpt2.gpt2(PROMPT_IDS, **small_params, n_head=N_HEAD)
    assert logits.shape == (len(PROMPT_IDS), SMALL_HPARAMS["n_vocab"])
    np.testing.assert_allclose(logits[-1], golden["prompt_logits_last"], atol=1e-4, rtol=0)
    long_logits = gpt2.gpt2(golden["long_ids"].tolist(), **small_params, n_head=N_HEAD)  # every position of n_ctx
    np.testing.assert_allclose(long_logits[:, golden["columns"]], golden["long_logits_columns"], atol=1e-4, rtol=0)


def test_greedy_matches_hf_golden(small_params, golden):
    assert gpt2.generate(PROMPT_IDS, small_params, N_HEAD, GREEDY_TOKENS) == golden["greedy_ids"].tolist()


def test_pico_matches_gpt2(small_params, golden):
    ids = golden["long_ids"].tolist()
    np.testing.assert_allclose(
        gpt2_pico.gpt2(ids, **small_params, n_head=N_HEAD),
        gpt2.gpt2(ids, **small_params, n_head=N_HEAD),
        atol=1e-5,
        rtol=0,
    )
    assert gpt2_pico.generate(PROMPT_IDS, small_params, N_HEAD, GREEDY_TOKENS) == golden["greedy_ids"].tolist()


def test_pico_is_at_most_60_lines_of_code():
    with open(os.path.join(REPO_DIR, "gpt2_pico.py"), encoding="utf-8") as f:
        source = f.read()
    ignored = {
        tokenize.COMMENT,
        tokenize.NL,
        tokenize.NEWLINE,
        tokenize.INDENT,
        tokenize.DEDENT,
        tokenize.ENDMARKER,
        tokenize.STRING,
    }
    code_lines = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in ignored:
            code_lines.update(range(token.start[0], token.end[0] + 1))
    assert len(code_lines) <= 60
    assert max(len(line) for line in source.splitlines()) < 120


def test_float32_throughout(small_params):
    x = np.random.RandomState(1).standard_normal((5, SMALL_HPARAMS["n_embd"])).astype(np.float32)
    block = small_params["blocks"][0]
    assert gpt2.gelu(x).dtype == np.float32
    assert gpt2.softmax(x).dtype == np.float32
    assert gpt2.layer_norm(x, **block["ln_1"]).dtype == np.float32
    assert gpt2.ffn(x, **block["mlp"]).dtype == np.float32
    mask = gpt2.causal_mask(len(x))
    assert mask.dtype == np.float32
    assert gpt2.mha(x, **block["attn"], n_head=N_HEAD, mask=mask).dtype == np.float32
    assert gpt2.transformer_block(x, **block, n_head=N_HEAD, mask=mask).dtype == np.float32
    assert gpt2.lm_loss(small_params, PROMPT_IDS, N_HEAD).dtype == np.float32
    assert gpt2.gpt2(PROMPT_IDS, **small_params, n_head=N_HEAD).dtype == np.float32
    assert gpt2_pico.gpt2(PROMPT_IDS, **small_params, n_head=N_HEAD).dtype == np.float32


def test_the_models_functions_change_none_of_their_arguments(small_params):
    """gpt2.py says the model's functions are pure: after each call its arguments are as they were."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, SMALL_HPARAMS["n_embd"]), dtype=np.float32)
    logits = rng.standard_normal((2, SMALL_HPARAMS["n_vocab"]), dtype=np.float32) * 3
    block, mask = small_params["blocks"][0], gpt2.causal_mask(len(x))
    calls = [
        (gpt2.gelu, x, {}),
        (gpt2.softmax, x, {}),
        (gpt2.layer_norm, x, block["ln_1"]),
        (gpt2.ffn, x, block["mlp"]),
        (gpt2.mha, x, {**block["attn"], "n_head": N_HEAD, "mask": mask}),
        (gpt2.transformer_block, x, {**block, "n_head": N_HEAD, "mask": mask}),
        (gpt2.gpt2, np.array(PROMPT_IDS), {**small_params, "n_head": N_HEAD}),
        (gpt2.log_softmax, logits, {}),
        (gpt2.filter_logits, logits, {"temperature": 0.7, "top_k": 5, "top_p": 0.9}),
    ]
    for function, first, options in calls:
        before = [np.copy(a) for _, a in train.leaves({"first": first, **options}) if isinstance(a, np.ndarray)]
        function(first, **options)
        after = [a for _, a in train.leaves({"first": first, **options}) if isinstance(a, np.ndarray)]
        assert all(np.array_equal(b, a) for b, a in zip(before, after)), function.__name__


def test_gelu_and_softmax_values():
    x = np.linspace(-6, 6, 101, dtype=np.float32).reshape(1, -1)
    x64 = x.astype(np.float64)
    # GPT-2's tanh-approximated GELU, written out from its definition in float64
    expected = 0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64**3)))
    np.testing.assert_allclose(gpt2.gelu(x), expected, rtol=1e-6, atol=5e-7)
    expected = np.exp(x64) / np.exp(x64).sum()
    np.testing.assert_allclose(gpt2.softmax(x), expected, rtol=1e-5, atol=1e-9)
    np.testing.assert_array_equal(x, np.linspace(-6, 6, 101, dtype=np.float32).reshape(1, -1))  # inputs untouched
    big = np.array([[1000.0, 1000.0, -1000.0]], dtype=np.float32)
    np.testing.assert_allclose(gpt2.softmax(big), [[0.5, 0.5, 0.0]])


def test_generate_leaves_the_callers_list_alone(small_params):
    inputs = list(PROMPT_IDS)
    out = gpt2.generate(inputs, small_params, N_HEAD, 3)
    assert inputs == PROMPT_IDS and len(out) == 3


def test_generate_rejects_bad_lengths(small_params):
    with pytest.raises(ValueError, match="at least 1"):
        gpt2.generate(PROMPT_IDS, small_params, N_HEAD, 0)
    with pytest.raises(ValueError, match=r"10 tokens.*55.*65.*64"):
        gpt2.generate(PROMPT_IDS, small_params, N_HEAD, 55)
    n_ctx = SMALL_HPARAMS["n_ctx"]
    assert len(gpt2.generate(PROMPT_IDS, small_params, N_HEAD, n_ctx - len(PROMPT_IDS))) == n_ctx - len(PROMPT_IDS)


def test_live_against_transformers(hf_small, small_params):
    """The same comparison as the golden files, computed now, on inputs the golden files do not hold."""
    from hf_reference import hf_greedy, hf_logits

    rng = np.random.RandomState(SEED + 2)
    for n_seq in (1, 7, SMALL_HPARAMS["n_ctx"]):
        ids = rng.randint(0, SMALL_HPARAMS["n_vocab"], n_seq).tolist()
        np.testing.assert_allclose(
            gpt2.gpt2(ids, **small_params, n_head=N_HEAD), hf_logits(hf_small, ids), atol=1e-4, rtol=0
        )
    ids = rng.randint(0, SMALL_HPARAMS["n_vocab"], 5).tolist()
    assert gpt2.generate(ids, small_params, N_HEAD, 30) == hf_greedy(hf_small, ids, 30)


def test_cached_logits_match_full_forward_at_every_step(long_params):
    ids = np.random.RandomState(3).randint(0, LONG_HPARAMS["n_vocab"], 5).tolist()
    logits, kv_cache = gpt2.gpt2_cached(
        ids, **long_params, n_head=N_HEAD, kv_cache=gpt2.new_kv_cache(long_params, N_HEAD, LONG_HPARAMS["n_ctx"])
    )
    while True:
        full = gpt2.gpt2(ids, **long_params, n_head=N_HEAD)  # recomputes every position: the reference
        assert logits.shape == (LONG_HPARAMS["n_vocab"],) and logits.dtype == np.float32
        np.testing.assert_allclose(logits, full[-1], atol=1e-4, rtol=0)
        if len(ids) == LONG_HPARAMS["n_ctx"]:  # up to the last position of the context
            break
        ids.append(int(np.argmax(logits)))
        logits, kv_cache = gpt2.gpt2_cached(ids[-1:], **long_params, n_head=N_HEAD, kv_cache=kv_cache)
    assert kv_cache.n_past == LONG_HPARAMS["n_ctx"]
    assert all(buffer.dtype == np.float32 for buffer in kv_cache.buffers)


def test_cache_takes_several_new_tokens_at_once(long_params):
    ids = np.random.RandomState(5).randint(0, LONG_HPARAMS["n_vocab"], 40).tolist()
    kv_cache = gpt2.new_kv_cache(long_params, N_HEAD, len(ids))
    for chunk in (ids[:20], ids[20:33], ids[33:34], ids[34:]):
        logits, kv_cache = gpt2.gpt2_cached(chunk, **long_params, n_head=N_HEAD, kv_cache=kv_cache)
    np.testing.assert_allclose(logits, gpt2.gpt2(ids, **long_params, n_head=N_HEAD)[-1], atol=1e-4, rtol=0)


def test_cached_generation_equals_uncached_for_200_tokens(long_params):
    ids = np.random.RandomState(4).randint(0, LONG_HPARAMS["n_vocab"], 10).tolist()
    assert gpt2.generate(ids, long_params, N_HEAD, 200) == gpt2_pico.generate(ids, long_params, N_HEAD, 200)


@pytest.mark.slow
def test_gpt2_pico_uses_gpt2_pys_models_folder_wherever_it_runs(small_models_dir, tmp_path, monkeypatch):
    """Run from another folder, it loads the models folder beside the code (as gpt2.py does), not a
    second copy in ./models."""
    import utils

    monkeypatch.setattr(utils, "DEFAULT_MODELS_DIR", str(small_models_dir))
    monkeypatch.chdir(tmp_path)
    assert gpt2_pico.main("Hello", n_tokens_to_generate=2)
    assert os.listdir(tmp_path) == []
