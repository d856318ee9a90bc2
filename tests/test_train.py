"""train.py's backward pass and AdamW against PyTorch's autograd and torch.optim.AdamW on HuggingFace's
GPT2LMHeadModel with the same weights, and against jax.grad(gpt2.lm_loss), as llm.c's test_gpt2.c
checks its hand-written backward pass (skipped where torch, transformers or JAX are missing); and
python train.py itself."""

import os

import numpy as np
import pytest
from helpers import N_HEAD, SMALL_HPARAMS, at, needs, ours_path, train_args

import gpt2
import train
from training import data, loop, saving
from training import options as run_options


def random_batch(seed, n_batch, n_seq):
    return np.random.RandomState(seed).randint(0, SMALL_HPARAMS["n_vocab"], (n_batch, n_seq + 1))


def hf_loss_and_grads(model, batch, labels=None):
    """HuggingFace's loss (its labels are shifted inside the model; -100 leaves a prediction out) and
    autograd's gradient of every weight."""
    import torch

    model.zero_grad()
    loss = model(torch.tensor(batch), labels=torch.tensor(batch if labels is None else labels)).loss
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


def test_a_masked_loss_and_its_gradients_are_pytorchs_with_labels_of_minus_100(hf_small, small_params):
    """Prompt/completion pairs: the loss on some predictions only (here a prompt of 5 to 20 tokens in
    each row, and padding at the end of one)."""
    batch = random_batch(4, 3, 40)
    mask = np.ones((3, 40), np.float32)
    for row, (prompt, end) in enumerate([(5, 40), (20, 40), (9, 31)]):
        mask[row, : prompt - 1] = 0  # predictions of prompt tokens 1 to prompt - 1
        mask[row, end:] = 0  # padding
    labels = batch.copy()
    labels[:, 1:][mask == 0] = -100
    loss, grads = train.loss_and_grads(small_params, batch, N_HEAD, mask)
    hf_loss, hf_grads = hf_loss_and_grads(hf_small, batch, labels)
    assert abs(loss - hf_loss) <= 1e-5 * hf_loss
    assert abs(loss - train.loss_and_grads(small_params, batch, N_HEAD)[0]) > 1e-3  # the mask changed it
    assert_close_per_tensor(grads, {ours_path(name): g for name, g in hf_grads.items()})


def test_a_token_that_comes_again_collects_every_gradient(hf_small, small_params):
    """wte's rows of the tokens that occur several times in a batch: one gradient for each place."""
    batch = np.random.RandomState(2).randint(0, 6, (2, 30))  # six ids in sixty places
    _, grads = train.loss_and_grads(small_params, batch, N_HEAD)
    _, hf_grads = hf_loss_and_grads(hf_small, batch)
    assert_close_per_tensor(
        grads, {("wte",): hf_grads["transformer.wte.weight"], ("wpe",): hf_grads["transformer.wpe.weight"]}
    )


def test_micro_batches_accumulate_to_the_gradient_of_their_whole_batch(small_params):
    """--grad_accum: two micro-batches of 2 give one batch of 4's loss and gradients."""
    batch = random_batch(3, 4, 24)
    loss, grads = train.loss_and_grads(small_params, batch, N_HEAD)
    accumulated_loss, accumulated = loop.accumulated_grads(small_params, [(batch[:2], None), (batch[2:], None)], N_HEAD)
    assert abs(accumulated_loss - loss) <= 1e-5 * loss
    assert_close_per_tensor(accumulated, dict(train.leaves(grads)), tolerance=1e-5)


def test_the_learning_rate_warms_up_then_follows_the_cosine_after_warm_up():
    """nanoGPT's schedule: linear to the peak over the warm-up steps, then half a cosine from the peak
    to the floor (a tenth) over the steps that are left; the decay is measured from the warm-up's end."""
    peak, warmup, total = 1e-3, 100, 1100
    assert train.learning_rate_at(50, peak, warmup, "cosine", total) == pytest.approx(peak / 2)
    assert train.learning_rate_at(warmup, peak, warmup, "cosine", total) == pytest.approx(peak)
    assert train.learning_rate_at(warmup + 500, peak, warmup, "cosine", total) == pytest.approx((peak + peak / 10) / 2)
    assert train.learning_rate_at(total, peak, warmup, "cosine", total) == pytest.approx(peak / 10)
    assert train.learning_rate_at(warmup + 500, peak, warmup, "constant", total) == peak
    # --min_lr: the floor nanoGPT's recipes give (theirs: 1e-4 under a peak of 1e-3)
    assert train.learning_rate_at(total, peak, warmup, "cosine", total, min_lr=1e-4 / 2) == pytest.approx(5e-5)
    assert train.learning_rate_at(warmup + 500, peak, warmup, "cosine", total, 0.0) == pytest.approx(peak / 2)


@pytest.mark.slow
def test_the_token_cache_tells_two_tokenizers_of_one_size_apart(encoder, tmp_path):
    """Two tokenizers with the same number of entries give other ids: each its own cached ids."""
    import copy

    other = copy.deepcopy(encoder)
    a, b = other.encoder["Hello"], other.encoder["\u0120world"]  # " world" in byte-level symbols
    other.encoder["Hello"], other.encoder["\u0120world"] = b, a  # the same vocabulary, two ids swapped
    other.decoder, other.cache = {i: token for token, i in other.encoder.items()}, {}
    documents = ["Hello world, Hello world"]
    first = data.tokenize(documents, encoder, str(tmp_path))
    second = data.tokenize(documents, other, str(tmp_path))
    assert first.tolist() == [*encoder.encode(documents[0]), gpt2.END_OF_TEXT]
    assert second.tolist() == [*other.encode(documents[0]), gpt2.END_OF_TEXT] != first.tolist()


def test_tokenizing_removes_a_dead_runs_partial_file_but_not_a_live_ones(encoder, tmp_path):
    """A run killed while it wrote the token cache left NAME.PID.partial; a run alive beside it is writing one."""
    import subprocess
    import sys

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, alive = tmp_path / f"a.npy.{int(finished.stdout)}.partial", tmp_path / f"b.npy.{os.getppid()}.partial"
    dead.write_bytes(b"cut short")
    alive.write_bytes(b"being written")
    data.tokenize(["Hello world"], encoder, str(tmp_path))
    assert not dead.exists() and alive.exists()


@pytest.mark.slow
def test_gradient_equals_jax_grad_of_lm_loss(small_params):
    jax = pytest.importorskip("jax")
    from helpers import swapped

    ids = random_batch(2, 1, 30)
    loss, grads = train.loss_and_grads(small_params, ids, N_HEAD)
    gpt2_jax = swapped(gpt2)
    value_and_grad = jax.jit(jax.value_and_grad(gpt2_jax.lm_loss), static_argnames="n_head")
    jax_loss, jax_grads = value_and_grad(jax.device_put(small_params), ids[0], n_head=N_HEAD)
    assert abs(float(jax_loss) - loss) <= 1e-5 * loss
    reference = {path: np.asarray(g) for path, g in train.leaves(jax_grads)}
    assert_close_per_tensor(grads, reference)


@pytest.mark.slow
def test_ten_adamw_steps_give_pytorchs_losses(small_variables):
    """One fixed batch, weight decay on matrices and embeddings only, clipping at a norm the gradients
    exceed: the loss after each step equals PyTorch's within 1e-4, relative."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tools.random_model import hf_model, nested_params

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

    x_gelu = x.copy()
    x_gelu[0, 0, :3] = 0.0, 6.0, -6.0  # gelu's slope is read off gelu(x) / x: there too
    np.testing.assert_allclose(
        train.gelu_backward(d_out, x_gelu, gpt2.gelu(x_gelu)), numeric(gpt2.gelu, x_gelu.copy()), rtol=1e-5, atol=1e-7
    )
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


# python train.py: data, the run folder, resuming, the command line


@pytest.mark.slow
def test_a_small_model_learns_real_text(tmp_path):
    """Two layers with GPT-2's vocabulary, from random weights, on the licence texts Debian ships: the
    held-out loss ends below the unigram entropy of the training tokens (computed from their counts)."""
    import glob
    import json

    from tools.random_model import random_openai_variables, write_openai_model_dir

    paths = sorted(glob.glob("/usr/share/common-licenses/*"))
    if not paths:
        pytest.skip("no licence texts in /usr/share/common-licenses to train on")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "licences.txt").write_text("\n\n".join(open(p, errors="replace").read() for p in paths))
    needs("tensorflow")  # writes the model folder
    write_openai_model_dir(str(tmp_path / "models" / "124M"), SMALL_HPARAMS, random_openai_variables(SMALL_HPARAMS, 0))
    args = [str(tmp_path / "data"), "--models_dir", str(tmp_path / "models"), "--out", str(tmp_path / "run")]
    args += ["--steps", "100", "--block_size", "64", "--batch_size", "4", "--learning_rate", "6e-3"]
    loop.main([*args, "--warmup_steps", "10", "--eval_every", "100", "--sample_every", "0", "--save_every", "100"])
    (tokens_path,) = glob.glob(str(tmp_path / "models" / "tokens" / "*.npy"))
    ids = np.load(tokens_path)
    counts = np.bincount(ids[: int(len(ids) * 0.95)]).astype(np.float64)  # the training part (--val_fraction 0.05)
    p = counts[counts > 0] / counts.sum()
    unigram_entropy = -(p * np.log(p)).sum()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 100 and log[-1]["val_loss"] < unigram_entropy < log[0]["train_loss"], (log[-1], unigram_entropy)


@pytest.mark.slow
@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_run_stopped_by_sigterm_or_ctrl_c_resumes_to_the_same_weights(small_run, signum):
    import signal
    import subprocess
    import sys

    from helpers import REPO_DIR, stopped_once_saved

    args = train_args(small_run, "--steps", "40", "--save_every", "5", "--eval_every", "20")
    whole = subprocess.run(
        [sys.executable, "train.py", *args, "--out", str(small_run / "whole")],
        cwd=REPO_DIR,
        capture_output=True,
        text=True,
    )
    assert whole.returncode == 0, whole.stderr
    command = [sys.executable, "train.py", *args, "--out", str(small_run / "cut")]
    code, stderr = stopped_once_saved(command, small_run / "cut", getattr(signal, signum))
    assert code == 128 + getattr(signal, signum), stderr
    assert "saved in" in stderr and "Traceback" not in stderr
    stopped_at = __import__("json").loads((small_run / "cut" / "state.json").read_text())["step"]
    assert 0 < stopped_at < 40
    logged = (small_run / "cut" / "log.jsonl").read_text().splitlines()
    assert __import__("json").loads(logged[-1])["step"] == stopped_at  # the step under way was saved, not lost
    again = subprocess.run(command, cwd=REPO_DIR, capture_output=True, text=True)
    assert again.returncode == 0 and f"resuming the run in {small_run / 'cut'} at step {stopped_at}" in again.stderr
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert (small_run / "cut" / name).read_bytes() == (small_run / "whole" / name).read_bytes(), name


@pytest.mark.slow
def test_an_interrupted_save_leaves_the_previous_one(small_run, monkeypatch):
    import os

    from storage import run_folder

    out = small_run / "run"
    loop.main([*train_args(small_run, "--steps", "2", "--save_every", "1"), "--out", str(out)])
    before = {name: (out / name).read_bytes() for name in saving.RUN_FILES}
    replace = os.replace

    def power_cut_before_commit(source, target):
        if str(target).endswith("commit.json"):
            raise KeyboardInterrupt  # as if the process died here
        return replace(source, target)

    monkeypatch.setattr(os, "replace", power_cut_before_commit)
    with pytest.raises(SystemExit):
        loop.main([*train_args(small_run, "--steps", "4", "--save_every", "1"), "--out", str(out)])  # resumes
    monkeypatch.setattr(os, "replace", replace)
    assert any(name.endswith(".partial") for name in os.listdir(out))
    run_folder.finish(str(out))  # what the next start does first
    assert {name: (out / name).read_bytes() for name in saving.RUN_FILES} == before
    assert not any(name.endswith(".partial") for name in os.listdir(out))


@pytest.mark.slow
def test_an_out_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    from helpers import Result, assert_clean_error

    (tmp_path / "notes.txt").write_text("some text")
    with pytest.raises(SystemExit) as stopped:
        loop.main([str(tmp_path / "notes.txt"), "--out", str(tmp_path / "notes.txt")])
    assert_clean_error(Result(stopped.value.code, *capsys.readouterr()), "is a file: give a folder for the run")
    assert stopped.value.code == 2


@pytest.mark.slow
def test_a_run_resumes_with_other_eval_sample_and_save_intervals(small_run, capsys):
    """They change nothing the run computes; another learning rate does, and is refused."""
    out = small_run / "run"
    loop.main([*train_args(small_run, "--steps", "2", "--eval_every", "1"), "--out", str(out)])
    loop.main([*train_args(small_run, "--steps", "3", "--eval_every", "2", "--save_every", "7"), "--out", str(out)])
    assert "resuming the run in" in capsys.readouterr().err
    state = __import__("json").loads((out / "state.json").read_text())
    assert set(state["options"]) < {action.dest for action in run_options.make_parser()._actions}  # options, no data
    with pytest.raises(SystemExit) as stopped:
        loop.main([*train_args(small_run, "--steps", "4", "--learning_rate", "1"), "--out", str(out)])
    assert stopped.value.code == 1 and "was started with other options: --learning_rate 1.0 (the run has 0.0001)" in (
        capsys.readouterr().err
    )


@pytest.mark.slow
def test_a_run_starts_from_another_run_folder_given_as_model(small_run):
    """--model RUN starts from that run's weights: one step at learning rate 0 keeps them as they are."""
    first, second = small_run / "first", small_run / "second"
    loop.main([*train_args(small_run, "--steps", "2", "--learning_rate", "1e-2"), "--out", str(first)])
    loop.main(
        [*train_args(small_run, "--steps", "1", "--learning_rate", "0"), "--model", str(first), "--out", str(second)]
    )
    trained, started = saving.load_run_params(str(first)), saving.load_run_params(str(second))
    for (path, a), (_, b) in zip(train.leaves(trained), train.leaves(started)):
        np.testing.assert_array_equal(a, b, err_msg=str(path))


@pytest.mark.slow
def test_the_run_folder_loads_in_gpt2_and_in_huggingface(small_run, capsys):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from helpers import PROMPT, cli

    import utils

    out = small_run / "run"
    loop.main([*train_args(small_run, "--steps", "3", "--learning_rate", "1e-2"), "--out", str(out)])
    params = saving.load_run_params(str(out))
    _, hparams, loaded = utils.load_model(str(out), str(small_run / "models"))
    ids = random_batch(7, 1, 30)[0].tolist()
    ours = gpt2.gpt2(ids, **loaded, n_head=hparams["n_head"])
    np.testing.assert_array_equal(ours, gpt2.gpt2(ids, **params, n_head=hparams["n_head"]))
    model = transformers.GPT2LMHeadModel.from_pretrained(str(out)).eval()
    with torch.no_grad():
        np.testing.assert_allclose(ours, model(torch.tensor([ids])).logits[0].numpy(), atol=1e-4, rtol=0)
    result = cli(capsys, PROMPT, "-n", "4", "--model", str(out), "--models_dir", str(small_run / "models"))
    assert result.returncode == 0 and result.stdout.strip()


@pytest.mark.slow
@pytest.mark.parametrize(
    "write, message",
    [
        (lambda d: (d / "empty.txt").write_text("  \n"), "empty.txt is empty: there is nothing in it to train on"),
        (lambda d: (d / "docs.jsonl").write_text('{"text": " "}\n'), "no text in"),
        (
            lambda d: (d / "short.txt").write_text("Hello there."),
            "short.txt) has at most 12 tokens, not more than one window of --block_size 32",
        ),
        (lambda d: (d / "latin1.txt").write_bytes(b"caf\xe9"), "latin1.txt is not UTF-8 text (byte 0xe9 at offset 3)"),
        (
            lambda d: (d / "docs.jsonl").write_text('{"text": "a"}\n{"text": 3}\n'),
            'docs.jsonl line 2: "text" is not a string but int',
        ),
        (lambda d: (d / "docs.jsonl").write_text('{"text": "a"\n'), "docs.jsonl line 1: not JSON"),
    ],
)
def test_bad_data_is_refused_with_its_file_and_line(small_run, capsys, write, message):
    """Before the model is loaded: in a models folder without the model, loading would fail first
    (no network). A text too short for one window is found without the tokenizer: a token is at least
    one byte."""
    from helpers import Result, assert_clean_error

    data = small_run / "bad"
    data.mkdir()
    write(data)
    models = small_run / "no models"
    with pytest.raises(SystemExit) as stopped:
        loop.main(
            [
                str(next(data.iterdir())),
                "--models_dir",
                str(models),
                "--out",
                str(small_run / "run"),
                "--block_size",
                "32",
            ]
        )
    result = Result(stopped.value.code, *capsys.readouterr())
    assert_clean_error(result, message)
    assert result.returncode == 1
    assert not (small_run / "no models").exists()


def test_a_data_folder_leaves_out_hidden_files_and_files_that_are_not_text(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("first")
    (tmp_path / "notes" / "sub").mkdir()
    (tmp_path / "notes" / "sub" / "b.md").write_text("second")
    (tmp_path / "notes" / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n\xff")
    (tmp_path / "notes" / ".git").mkdir()
    (tmp_path / "notes" / ".git" / "HEAD").write_text("ref: refs/heads/main")
    (tmp_path / "notes" / ".DS_Store").write_bytes(b"\x00\x01")
    assert data.read_documents([str(tmp_path / "notes")]) == ["first", "second"]
    assert "skipped 1 file, not UTF-8 text: " in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "0"], "steps must be a whole number of at least 1, not 0"),
        (["--learning_rate", "fast"], "--learning_rate must be a number, not 'fast'"),
        (["--lr_schedule", "linear"], "--lr_schedule: invalid choice"),
        (["--lerning_rate", "1"], "unknown flag --lerning_rate; did you mean --learning_rate?"),
        (["--step", "5"], "unknown flag --step; did you mean --steps?"),  # no abbreviations
        (["--stepz", "5"], "unknown flag --stepz; did you mean --steps?"),
        (["--STEPS", "5"], "unknown flag --STEPS; did you mean --steps?"),
        (["--model", "distilgpt2", "--model_size", "355M"], "give --model or --model_size, not both"),
        (["--val_fraction", "0.2", "--val_file", "x.txt"], "give --val_fraction or --val_file, not both"),
    ],
)
def test_usage_mistakes_exit_2_before_any_work(tmp_path, capsys, args, message):
    from helpers import Result, assert_clean_error

    with pytest.raises(SystemExit) as stopped:
        loop.main(["data.txt", "--out", str(tmp_path / "run"), "--models_dir", str(tmp_path), *args])
    assert_clean_error(Result(stopped.value.code, *capsys.readouterr()), message)
    assert stopped.value.code == 2 and list(tmp_path.iterdir()) == []


def test_a_run_that_cannot_fit_in_memory_is_refused_with_the_estimate(small_run, monkeypatch, capsys):
    monkeypatch.setattr(run_options, "memory_available", lambda: 10_000_000)
    with pytest.raises(SystemExit):
        loop.main([*train_args(small_run, "--steps", "2"), "--out", str(small_run / "run")])
    error = capsys.readouterr().err
    assert error.startswith("error: this run needs about 0.1 GB and 0.0 GB are available: use a smaller --batch_size")
    assert not (small_run / "run").exists()
