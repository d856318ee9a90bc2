"""LoRA: train.py's adapters against PEFT's on HuggingFace's GPT2LMHeadModel (PyTorch's autograd through
the same base weights and the same adapter values)."""

import numpy as np
import pytest
from helpers import N_HEAD, SMALL_HPARAMS, at, needs

import train

RANK, ALPHA = 4, 8.0


def peft_model(variables, targets):
    """A fresh HuggingFace model of the small random weights, with PEFT's LoRA on targets, every adapter
    (B too) drawn at random so that each gradient flows."""
    needs("peft")
    import peft
    import torch

    from tools.random_model import hf_model

    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets, fan_in_fan_out=True, lora_dropout=0.0)
    model = peft.get_peft_model(hf_model(variables, SMALL_HPARAMS), config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return model


def our_path(peft_name):
    """PEFT's base_model.model.transformer.h.1.attn.c_attn.lora_A.default.weight -> ("blocks", 1, "attn", "c_attn", "lora_a")."""
    parts = peft_name.split(".")
    block = parts.index("h") + 1
    return ("blocks", int(parts[block]), parts[block + 1], parts[block + 2], parts[block + 3].lower())


def adapters_of(model):
    """The model's adapters in train.py's layout: lora_a = PEFT's lora_A.weight transposed ([n_in, r])."""
    adapters = {"blocks": [{} for _ in range(SMALL_HPARAMS["n_layer"])]}
    for name, p in model.named_parameters():
        if "lora_" in name:
            _, i, module, layer, leaf = our_path(name)
            adapters["blocks"][i].setdefault(module, {}).setdefault(layer, {})[leaf] = p.detach().numpy().T.copy()
    return adapters


@pytest.mark.parametrize("targets", [["c_attn"], ["c_attn", "c_proj", "c_fc"], ["mlp.c_proj"]])
def test_every_adapter_gradient_equals_peft_autograd_and_the_base_gets_none(small_variables, small_params, targets):
    import torch

    model = peft_model(small_variables, targets)
    batch = np.random.RandomState(2).randint(0, SMALL_HPARAMS["n_vocab"], (3, 33))
    output = model(torch.tensor(batch), labels=torch.tensor(batch)).loss
    output.backward()
    loss = float(output.detach())
    theirs = {our_path(name): p.grad.numpy().T for name, p in model.named_parameters() if p.grad is not None}
    assert all(path[-1] in ("lora_a", "lora_b") for path in theirs)  # PEFT too trains nothing else

    adapters = adapters_of(model)
    ours_loss, grads = train.loss_and_grads(small_params, batch, N_HEAD, adapters=adapters, lora_scale=ALPHA / RANK)
    assert abs(ours_loss - loss) <= 1e-5 * loss
    assert sorted(path for path, _ in train.leaves(grads)) == sorted(theirs)  # the adapters' gradients, no others
    for path, expected in theirs.items():
        got = at(grads, path)
        assert got.dtype == np.float32 and got.shape == expected.shape, path
        assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max(), path


def test_new_adapters_start_as_the_base_model_and_are_peft_s_init(small_params):
    adapters = train.init_adapters(small_params, RANK, ["c_attn", "c_proj"], seed=0)
    batch = np.random.RandomState(3).randint(0, SMALL_HPARAMS["n_vocab"], (2, 17))
    base_loss, _ = train.loss_and_grads(small_params, batch, N_HEAD)
    lora_loss, grads = train.loss_and_grads(small_params, batch, N_HEAD, adapters=adapters, lora_scale=2.0)
    assert lora_loss == base_loss  # lora_b is zero: the merged weights are the base's, bit for bit
    block = adapters["blocks"][0]
    assert sorted((m, n) for m in block for n in block[m]) == [
        ("attn", "c_attn"),
        ("attn", "c_proj"),
        ("mlp", "c_proj"),
    ]
    n_embd = SMALL_HPARAMS["n_embd"]
    lora_a = np.concatenate([b["attn"]["c_attn"]["lora_a"].ravel() for b in adapters["blocks"]])
    bound = 1 / np.sqrt(n_embd)  # PEFT: kaiming_uniform_(a=sqrt(5)) on a [r, n_in] weight
    assert lora_a.max() <= bound and lora_a.min() >= -bound and abs(lora_a.std() - bound / np.sqrt(3)) < 0.1 * bound
    assert np.abs(at(grads, ("blocks", 0, "attn", "c_attn", "lora_b"))).max() > 0  # b learns from the first step
    assert np.abs(at(grads, ("blocks", 0, "attn", "c_attn", "lora_a"))).max() == 0  # a waits for b to move
