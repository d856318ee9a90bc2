"""train.py's backward pass and AdamW against PyTorch's autograd and torch.optim.AdamW on HuggingFace's
GPT2LMHeadModel with the same weights, and against jax.grad(gpt2.lm_loss), as llm.c's test_gpt2.c
checks its hand-written backward pass."""

import numpy as np
import pytest
from helpers import N_HEAD, SMALL_HPARAMS

import gpt2
import train

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


def random_batch(seed, n_batch, n_seq):
    return np.random.RandomState(seed).randint(0, SMALL_HPARAMS["n_vocab"], (n_batch, n_seq + 1))


def ours_path(hf_name):
    """HuggingFace's parameter name -> the path of the same weight in our params."""
    from hf import flat_key

    path = []
    for part in flat_key(hf_name).split("."):
        path.append(int(part) if part.isdigit() else part)
    return tuple(path)


def at(tree, path):
    for part in path:
        tree = tree[part]
    return tree


def hf_loss_and_grads(model, batch):
    """HuggingFace's loss (its labels are shifted inside the model) and autograd's gradient of every weight."""
    model.zero_grad()
    loss = model(torch.tensor(batch), labels=torch.tensor(batch)).loss
    loss.backward()
    grads = {name: p.grad.numpy().copy() for name, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


def assert_close_per_tensor(ours, theirs, tolerance=1e-3):
    """Each tensor within tolerance of that tensor's largest entry; returns the worst ratio."""
    worst = 0.0
    for path, expected in theirs.items():
        got = at(ours, path)
        assert got.shape == expected.shape and got.dtype == np.float32, path
        ratio = float(np.abs(got - expected).max() / np.abs(expected).max())
        assert ratio <= tolerance, (path, ratio)
        worst = max(worst, ratio)
    return worst


def test_every_gradient_equals_pytorchs_autograd(hf_small, small_params):
    batch = random_batch(1, 3, 40)
    loss, grads = train.loss_and_grads(small_params, batch, N_HEAD)
    hf_loss, hf_grads = hf_loss_and_grads(hf_small, batch)
    assert loss.dtype == np.float32 and abs(loss - hf_loss) <= 1e-5 * hf_loss
    theirs = {ours_path(name): g for name, g in hf_grads.items()}
    assert len(theirs) == 4 + 12 * SMALL_HPARAMS["n_layer"]  # every weight (wte once: lm_head is tied to it)
    assert_close_per_tensor(grads, theirs)


def test_gradient_equals_jax_grad_of_lm_loss(small_params):
    jax = pytest.importorskip("jax")
    from helpers import swapped

    ids = random_batch(2, 1, 30)
    loss, grads = train.loss_and_grads(small_params, ids, N_HEAD)
    gpt2_jax = swapped(gpt2)
    jax_loss, jax_grads = jax.value_and_grad(gpt2_jax.lm_loss)(jax.device_put(small_params), ids[0], N_HEAD)
    assert abs(float(jax_loss) - loss) <= 1e-5 * loss
    reference = {path: np.asarray(g) for path, g in train.leaves(jax_grads)}
    assert_close_per_tensor(grads, reference)


def test_ten_adamw_steps_give_pytorchs_losses(small_variables):
    """One fixed batch, weight decay on matrices and embeddings only, clipping at a norm the gradients
    exceed: the loss after each step equals PyTorch's within 1e-4, relative."""
    from random_model import hf_model, nested_params

    model = hf_model(small_variables, SMALL_HPARAMS).train()  # dropout is 0: train() changes nothing else
    params = train.trainable(nested_params(small_variables, SMALL_HPARAMS["n_layer"]))
    batch = random_batch(3, 4, 32)
    options = {"lr": 1e-3, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}
    decay = [p for name, p in model.named_parameters() if p.dim() == 2]
    no_decay = [p for name, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], **options)
    ours = train.AdamW(params, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
    clip = 0.5
    for step in range(10):
        loss, grads = train.loss_and_grads(params, batch, N_HEAD)
        norm = train.clip_gradients(grads, clip)
        optimizer.zero_grad()
        hf_loss = model(torch.tensor(batch), labels=torch.tensor(batch)).loss
        hf_loss.backward()
        hf_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
        assert abs(loss - float(hf_loss.detach())) <= 1e-4 * float(hf_loss.detach()), step
        assert norm == pytest.approx(hf_norm, rel=1e-3) and norm > clip  # clipping at work
        optimizer.step()
        ours.step(params, grads, 1e-3)
    assert loss < train.loss_and_grads(train.trainable(nested_params(small_variables, 2)), batch, N_HEAD)[0]


def test_each_backward_agrees_with_float64_finite_differences():
    """The building blocks alone, on small float64 inputs: d/dx of sum(output * weights) by central
    differences against each backward function."""
    rng = np.random.RandomState(0)
    x, d_out = rng.standard_normal((3, 5, 8)), rng.standard_normal((3, 5, 8))
    g = rng.standard_normal(8)

    def numeric(f, x, h=1e-6):
        grad = np.zeros_like(x)
        for index in np.ndindex(x.shape):
            saved = x[index]
            x[index] = saved + h
            up = np.sum(f(x) * d_out)
            x[index] = saved - h
            down = np.sum(f(x) * d_out)
            x[index] = saved
            grad[index] = (up - down) / (2 * h)
        return grad

    np.testing.assert_allclose(train.gelu_backward(d_out, x), numeric(gpt2.gelu, x.copy()), rtol=1e-5, atol=1e-7)
    dx, _ = train.layer_norm_backward(d_out, x, g)
    np.testing.assert_allclose(dx, numeric(lambda x: gpt2.layer_norm(x, g, 0.0), x.copy()), rtol=1e-5, atol=1e-7)
    probs = gpt2.softmax(x.copy())
    np.testing.assert_allclose(
        train.softmax_backward(d_out, probs), numeric(gpt2.softmax, x.copy()), rtol=1e-5, atol=1e-7
    )


def test_importing_train_does_no_work():
    import subprocess
    import sys

    from helpers import REPO_DIR

    code = (
        "import sys, train; print(sorted(m for m in ('torch', 'cli', 'utils', 'fire', 'requests') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_DIR, capture_output=True, text=True)
    assert result.stdout == "[]\n", result.stderr
