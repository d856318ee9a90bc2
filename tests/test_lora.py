"""LoRA: train.py's adapters against PEFT's on HuggingFace's GPT2LMHeadModel (PyTorch's autograd through
the same base weights and the same adapter values)."""

import os
import subprocess
import sys

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


def lora_run(small_run, out, *extra):
    """train.py's arguments for a LoRA run on the small model and the licence texts."""
    from helpers import train_args

    return [*train_args(small_run, "--lora_rank", str(RANK), "--lora_alpha", str(ALPHA), *extra), "--out", str(out)]


def logits_of(params, ids):
    import gpt2

    return gpt2.gpt2(np.asarray(ids), **params, n_head=N_HEAD)


@pytest.mark.slow
def test_a_lora_run_learns_and_its_folder_loads_in_peft_and_in_gpt2(small_run, small_variables, capsys):
    import json

    import peft
    import torch
    from helpers import run_gpt2, train_in_process

    import utils
    from tools.random_model import hf_model

    needs("peft")
    targets = ["--lora_targets", "c_attn,c_proj,c_fc", "--eval_every", "60", "--warmup_steps", "5"]
    base = train_in_process(
        capsys, lora_run(small_run, small_run / "base", *targets, "--steps", "1", "--learning_rate", "0")
    )
    run = train_in_process(
        capsys, lora_run(small_run, small_run / "run", *targets, "--steps", "60", "--learning_rate", "1e-2")
    )
    assert base.returncode == 0 and run.returncode == 0, run.stderr
    base_loss = json.loads((small_run / "base" / "log.jsonl").read_text().splitlines()[-1])["val_loss"]
    val_loss = json.loads((small_run / "run" / "log.jsonl").read_text().splitlines()[-1])["val_loss"]
    assert val_loss < base_loss - 0.5, (val_loss, base_loss)  # learnt: the adapters alone moved the model
    files = sorted(p.name for p in (small_run / "run").iterdir())
    assert "model.safetensors" not in files and {"adapter_config.json", "adapter_model.safetensors"} <= set(files)
    config = json.loads((small_run / "run" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "124M" and config["r"] == RANK and config["fan_in_fan_out"]

    _, _, merged = utils.load_model(str(small_run / "run"), str(small_run / "models"))
    ids = np.random.RandomState(5).randint(0, SMALL_HPARAMS["n_vocab"], (1, 20))
    model = peft.PeftModel.from_pretrained(hf_model(small_variables, SMALL_HPARAMS), str(small_run / "run"))
    with torch.no_grad():
        theirs = model(torch.tensor(ids)).logits.numpy()[0]
    ours = logits_of(merged, ids[0])
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()
    assert np.abs(ours - logits_of(utils.load_model("124M", str(small_run / "models"))[2], ids[0])).max() > 1e-2
    generated = run_gpt2(
        "Hello", "--model", str(small_run / "run"), "--models_dir", str(small_run / "models"), "-n", "5"
    )
    assert generated.returncode == 0 and generated.stdout.strip(), generated.stderr


def test_an_adapter_folder_made_by_peft_loads_in_gpt2(small_models_dir, small_variables, tmp_path):
    import json

    import torch

    import utils

    model = peft_model(small_variables, ["c_attn", "mlp.c_proj"])
    model.save_pretrained(str(tmp_path / "adapter"))
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": "124M"}))  # the base, as we name it
    ids = np.random.RandomState(6).randint(0, SMALL_HPARAMS["n_vocab"], (1, 24))
    with torch.no_grad():
        theirs = model(torch.tensor(ids)).logits.numpy()[0]
    _, _, params = utils.load_model(str(tmp_path / "adapter"), str(small_models_dir))
    ours = logits_of(params, ids[0])
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()


@pytest.mark.slow
def test_serve_on_a_peft_made_adapter_folder_answers_with_the_adapted_model(
    small_models_dir, small_variables, tmp_path, tiktoken_gpt2
):
    """--serve (the API and the page's attention view) on the adapters, against PEFT's model itself."""
    import json
    import urllib.request

    import torch
    from helpers import PROMPT, PROMPT_IDS, ServerProcess, hf_greedy_text

    model = peft_model(small_variables, ["c_attn", "mlp.c_proj"]).eval()
    model.save_pretrained(str(tmp_path / "adapter"))
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "base_model_name_or_path": "124M"}))
    model.get_base_model().config._attn_implementation = "eager"  # the implementation that returns its weights
    with torch.no_grad():
        attentions = model(torch.tensor([PROMPT_IDS]), output_attentions=True).attentions
    expected_text = hf_greedy_text(model, tiktoken_gpt2, PROMPT_IDS, 8)

    def post(path, request):
        data = json.dumps(request).encode()
        headers = {"Content-Type": "application/json"}
        with urllib.request.urlopen(urllib.request.Request(server.url + path, data, headers), timeout=60) as answer:
            return json.loads(answer.read())

    with ServerProcess("--model", str(tmp_path / "adapter"), "--models_dir", str(small_models_dir)) as server:
        with urllib.request.urlopen(server.url + "/v1/models", timeout=60) as models:
            (name,) = [model["id"] for model in json.loads(models.read())["data"]]
        completion = post("/v1/completions", {"model": name, "prompt": PROMPT, "max_tokens": 8, "temperature": 0})
        weights = post("/v1/attention", {"prompt": PROMPT, "layer": 1, "head": 0})["weights"]
        with urllib.request.urlopen(server.url + "/", timeout=60) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
        assert server.stop() == 130
    assert name == str(tmp_path / "adapter") and completion["choices"][0]["text"] == expected_text
    np.testing.assert_allclose(weights, attentions[1][0, 0].numpy(), atol=1e-4)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lora_rank", "0"], "lora_rank must be"),
        (
            ["--lora_rank", "8", "--lora_targets", "c_attn,q_proj"],
            "--lora_targets: 'q_proj' is not one of c_attn, c_proj, attn.c_proj, c_fc, mlp.c_proj",
        ),
        (["--lora_rank", "8", "--from_scratch"], "not with --from_scratch"),
        (["--lora_alpha", "16"], "--lora_alpha is for --lora_rank"),
        (["--lora_rank", "769"], "above 124M's width"),
    ],
)
def test_lora_usage_mistakes_exit_2_before_any_work(tmp_path, capsys, extra, message):
    from helpers import train_in_process

    result = train_in_process(capsys, [str(tmp_path / "missing.txt"), "--out", str(tmp_path / "run"), *extra])
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_lora_run_stopped_by_sigterm_resumes_bit_for_bit_and_keeps_its_kind(small_run, capsys):
    import signal

    from helpers import REPO_DIR, stopped_once_saved, train_args, train_in_process

    args = lora_run(small_run, small_run / "whole", "--steps", "30", "--save_every", "5", "--eval_every", "30")
    whole = subprocess.run([sys.executable, "train.py", *args], cwd=REPO_DIR, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    command = [sys.executable, "train.py", *args[:-1], str(small_run / "cut")]
    code, stderr = stopped_once_saved(command, small_run / "cut", signal.SIGTERM)
    assert code == 143 and "Traceback" not in stderr, stderr
    again = subprocess.run(command, cwd=REPO_DIR, capture_output=True, text=True)
    assert again.returncode == 0 and "resuming the run" in again.stderr, again.stderr
    for name in ("adapter_model.safetensors", "optimizer.safetensors"):
        assert (small_run / "cut" / name).read_bytes() == (small_run / "whole" / name).read_bytes(), name
    full = train_in_process(capsys, [*train_args(small_run, "--steps", "31"), "--out", str(small_run / "cut")])
    assert full.returncode == 2 and "trains LoRA adapters" in full.stderr, full.stderr


def test_save_model_writes_the_merged_model_that_peft_s_merge_and_unload_gives(
    small_models_dir, small_variables, tmp_path
):
    import json

    from helpers import run_gpt2

    from storage import hf

    model = peft_model(small_variables, ["c_attn", "c_proj", "c_fc"])
    model.save_pretrained(str(tmp_path / "adapter"))
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "base_model_name_or_path": "124M"}))
    merged = tmp_path / "merged"
    # what a --save_model killed midway left, and one that is being written now (this process's)
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, alive = tmp_path / f"merged.{int(finished.stdout)}.partial", tmp_path / f"merged.{os.getpid()}.partial"
    for leftover in (dead, alive):
        leftover.mkdir()
        (leftover / "model.safetensors").write_bytes(b"cut short")
    saved = run_gpt2(
        "--model", str(tmp_path / "adapter"), "--models_dir", str(small_models_dir), "--save_model", str(merged)
    )
    assert saved.returncode == 0, saved.stderr
    assert sorted(p.name for p in merged.iterdir()) == ["config.json", "merges.txt", "model.safetensors", "vocab.json"]
    assert not dead.exists() and alive.exists() and len(list(tmp_path.glob("merged.*.partial"))) == 1
    theirs = {name: p.detach().numpy() for name, p in model.merge_and_unload().state_dict().items()}
    ours = dict(hf.tensors(str(merged / "model.safetensors")))
    assert ours and all(hf.hf_name(key) in theirs for key in ours)
    for key, array in ours.items():
        assert np.abs(array - theirs[hf.hf_name(key)]).max() <= 1e-5, key
    again = run_gpt2(
        "--model", str(tmp_path / "adapter"), "--models_dir", str(small_models_dir), "--save_model", str(merged)
    )
    assert again.returncode == 2 and "exists" in again.stderr
    both = run_gpt2("Hello", "--models_dir", str(small_models_dir), "--save_model", str(tmp_path / "other"))
    assert both.returncode == 2 and "not with a prompt" in both.stderr


def test_the_memory_estimate_knows_lora(small_run, monkeypatch, capsys):
    from helpers import train_args

    from training import loop, options
    from utils import MODEL_HPARAMS

    full, lora = (options.memory_needed(MODEL_HPARAMS["1558M"], 4, 256, rank) for rank in (None, 8))
    assert full > 36e9 and lora < 20e9  # a full fine-tune of 1558M needs 37 GB; LoRA one copy of the weights
    monkeypatch.setattr(options, "memory_available", lambda: 1_000_000)
    with pytest.raises(SystemExit):
        loop.main(lora_run(small_run, small_run / "run", "--steps", "2"))
    error = capsys.readouterr().err
    assert "(LoRA: one copy of the weights" in error and not (small_run / "run").exists()
    with pytest.raises(SystemExit):
        loop.main([*train_args(small_run, "--steps", "2"), "--out", str(small_run / "run")])
    assert "or LoRA (--lora_rank 8)" in capsys.readouterr().err


def test_adapters_that_do_not_fit_or_lack_their_base_are_refused_in_one_line(
    small_models_dir, small_variables, tmp_path
):
    import json

    from helpers import assert_clean_error, run_gpt2

    from storage import peft as peft_files

    adapters = adapters_of(peft_model(small_variables, ["c_attn"]))
    adapters["blocks"][0]["attn"]["c_attn"]["lora_a"] = np.zeros((SMALL_HPARAMS["n_embd"] + 1, RANK), np.float32)
    (tmp_path / "adapter").mkdir()
    peft_files.write(str(tmp_path / "adapter"), peft_files.config_for("124M", RANK, ALPHA, ["c_attn"]), adapters)
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == RANK
    result = run_gpt2("Hello", "--model", str(tmp_path / "adapter"), "--models_dir", str(small_models_dir))
    assert_clean_error(result, "h.0.attn.c_attn do not fit 124M")
    config = peft_files.config_for("../gone/124M", RANK, ALPHA, ["c_attn"])  # a relative path, from elsewhere
    peft_files.write(str(tmp_path / "adapter"), config, adapters_of(peft_model(small_variables, ["c_attn"])))
    result = run_gpt2("Hello", "--model", str(tmp_path / "adapter"), "--models_dir", str(small_models_dir))
    assert_clean_error(result, "adapter: its base model ('../gone/124M', from adapter_config.json): ")
