"""The tutorial's "What next": gpt2.py and gpt2_pico.py on JAX after the one-line swap of their import,
with jit, vmap and gradients, against the NumPy originals and float64 finite differences."""

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import N_HEAD, PROMPT_IDS, REPO_DIR, SMALL_HPARAMS, swapped

import gpt2
import gpt2_pico

jax = pytest.importorskip("jax")
jnp = jax.numpy
pytestmark = pytest.mark.slow  # JAX compiles every function it runs


@pytest.fixture(scope="module", params=[gpt2, gpt2_pico], ids=["gpt2", "gpt2_pico"])
def modules(request):
    """(the NumPy module, the same source on JAX)"""
    jax_module = swapped(request.param)
    assert jax_module.np is jnp
    return request.param, jax_module


@pytest.fixture(scope="module")
def gpt2_jax():
    return swapped(gpt2)


@pytest.fixture(scope="module")
def jax_params(small_params):
    return jax.device_put(small_params)


def random_ids(seed, *shape):
    return np.random.RandomState(seed).randint(0, SMALL_HPARAMS["n_vocab"], shape)


def test_logits_equal_numpy_on_a_list_and_an_array(modules, small_params, jax_params):
    numpy_module, jax_module = modules
    expected = numpy_module.gpt2(PROMPT_IDS, **small_params, n_head=N_HEAD)
    for params, ids in (
        (small_params, PROMPT_IDS),
        (jax_params, np.array(PROMPT_IDS)),
        (jax_params, jnp.array(PROMPT_IDS)),
    ):
        logits = jax_module.gpt2(ids, **params, n_head=N_HEAD)
        assert isinstance(logits, jax.Array) and logits.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4, rtol=0)


def test_jit_gives_the_same_for_several_lengths_with_no_leaked_tracers(modules, small_params, jax_params):
    numpy_module, jax_module = modules
    forward = jax.jit(jax_module.gpt2, static_argnames="n_head")
    long_ids, short_ids = random_ids(1, 20), random_ids(2, 7)
    for ids in (long_ids, long_ids, short_ids, long_ids):  # twice, another length, then the first again
        np.testing.assert_allclose(
            np.asarray(forward(jnp.array(ids), **jax_params, n_head=N_HEAD)),
            numpy_module.gpt2(ids.tolist(), **small_params, n_head=N_HEAD),
            atol=1e-4,
            rtol=0,
        )


def test_vmap_over_rows_equals_the_rows_one_by_one(modules, small_params, jax_params):
    numpy_module, jax_module = modules
    batch = random_ids(3, 4, 9)  # [n_batch, n_seq]
    p = jax_params
    batched = jax.vmap(jax_module.gpt2, in_axes=[0, None, None, None, None, None])(
        jnp.array(batch), p["wte"], p["wpe"], p["blocks"], p["ln_f"], N_HEAD
    )
    assert batched.shape == (4, 9, SMALL_HPARAMS["n_vocab"])
    forward = jax.jit(jax_module.gpt2, static_argnames="n_head")
    for row, logits in zip(batch, batched):
        np.testing.assert_allclose(
            np.asarray(logits), np.asarray(forward(jnp.array(row), **p, n_head=N_HEAD)), atol=1e-5, rtol=0
        )
        np.testing.assert_allclose(
            np.asarray(logits), numpy_module.gpt2(row.tolist(), **small_params, n_head=N_HEAD), atol=1e-4, rtol=0
        )


def test_grad_of_lm_loss_agrees_with_float64_finite_differences(gpt2_jax, small_params, jax_params):
    ids = random_ids(4, 12)
    grads = jax.jit(jax.grad(gpt2_jax.lm_loss), static_argnames="n_head")(jax_params, jnp.array(ids), n_head=N_HEAD)
    params64 = jax.tree_util.tree_map(lambda a: np.array(a, dtype=np.float64), small_params)
    # (the tensor, its gradient) for a few tensors of different kinds
    tensors = [
        (params64["wte"], grads["wte"]),
        (params64["blocks"][0]["attn"]["c_attn"]["w"], grads["blocks"][0]["attn"]["c_attn"]["w"]),
        (params64["ln_f"]["g"], grads["ln_f"]["g"]),
        (params64["blocks"][1]["mlp"]["c_fc"]["b"], grads["blocks"][1]["mlp"]["c_fc"]["b"]),
    ]
    h = 1e-5
    for tensor, grad in tensors:
        grad = np.asarray(grad)
        assert grad.shape == tensor.shape and grad.dtype == np.float32
        for flat_index in np.argsort(np.abs(grad), axis=None)[-3:]:  # the entries that matter most
            index = np.unravel_index(flat_index, tensor.shape)
            original = tensor[index]
            tensor[index] = original + h
            up = gpt2.lm_loss(params64, ids, N_HEAD)
            tensor[index] = original - h
            down = gpt2.lm_loss(params64, ids, N_HEAD)
            tensor[index] = original
            assert up.dtype == np.float64
            np.testing.assert_allclose(grad[index], (up - down) / (2 * h), rtol=1e-3)


def test_gradient_descent_lowers_the_loss(gpt2_jax, jax_params):
    ids = jnp.array(random_ids(5, 16))
    step = jax.jit(jax.value_and_grad(gpt2_jax.lm_loss), static_argnames="n_head")
    params, losses = jax_params, []
    for _ in range(5):
        loss, grads = step(params, ids, n_head=N_HEAD)
        losses.append(float(loss))
        params = jax.tree_util.tree_map(lambda p, g: p - 0.01 * g, params, grads)
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.9 * losses[0], losses


def test_lm_loss_stays_finite_where_probabilities_underflow(gpt2_jax, small_params):
    """Scaled-up embeddings make logits so spread out that most softmax probabilities round to 0 in
    float32: log(softmax) would give inf (and NaN gradients); the log-softmax does not."""
    params = {**small_params, "wte": small_params["wte"] * 30}
    ids = random_ids(6, 10)
    logits = gpt2.gpt2(ids.tolist(), **params, n_head=N_HEAD).astype(np.float64)[:-1]
    assert (gpt2.softmax(logits.astype(np.float32))[np.arange(9), ids[1:]] == 0).any()  # the naive way fails
    shifted = logits - logits.max(axis=-1, keepdims=True)
    expected = np.mean(np.log(np.exp(shifted).sum(axis=-1)) - shifted[np.arange(9), ids[1:]])
    np.testing.assert_allclose(gpt2.lm_loss(params, ids, N_HEAD), expected, rtol=1e-4)
    value_and_grad = jax.jit(jax.value_and_grad(gpt2_jax.lm_loss), static_argnames="n_head")
    loss, grads = value_and_grad(jax.device_put(params), jnp.array(ids), n_head=N_HEAD)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree_util.tree_leaves(grads))


def notebook_doc_section(title):
    """The code blocks, (language, code), of one '## ' section of docs/notebook.md."""
    with open(os.path.join(REPO_DIR, "docs", "notebook.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, re.DOTALL)


def test_what_next_runs_as_written(small_models_dir, tmp_path, monkeypatch):
    """The blocks of docs/notebook.md's "What next" in order, in a folder laid out like the repo's, with the small model as 124M."""
    blocks = notebook_doc_section("What next")
    assert [language for language, _ in blocks][:1] == ["bash"] and len(blocks) >= 4
    shutil.copy(os.path.join(REPO_DIR, "gpt2.py"), tmp_path)
    os.symlink(small_models_dir, tmp_path / "models")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace = {}
    try:
        for language, code in blocks:
            if language == "bash":
                subprocess.run(code, shell=True, check=True)
            else:
                exec(compile(code, "docs/notebook.md", "exec"), namespace)
    finally:
        sys.modules.pop("gpt2_jax", None)
    assert namespace["gpt2"].np is jnp  # the blocks used the swapped copy
    assert namespace["logits"].shape == (2, 10, SMALL_HPARAMS["n_vocab"])  # the last block's vmap
