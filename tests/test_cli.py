"""`python gpt2.py ...` end to end on a small random model folder, and every kind of bad input."""

import os
import shutil
import subprocess
import sys

import pytest
from conftest import PROMPT, REPO_DIR, SMALL_HPARAMS
from test_utils import closed_port_url


def run_cli(*args, env=None, script="gpt2.py"):
    return subprocess.run(
        [sys.executable, os.path.join(REPO_DIR, script), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


def assert_clean_error(result, *fragments):
    assert result.returncode != 0
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("script", ["gpt2.py", "gpt2_pico.py"])
def test_generates_the_same_text_as_hf(models_copy, golden, tiktoken_gpt2, script):
    result = run_cli(PROMPT, "--n_tokens_to_generate", "8", "--models_dir", str(models_copy), script=script)
    assert result.returncode == 0, result.stderr
    assert result.stdout == tiktoken_gpt2.decode(golden["greedy_ids"][:8].tolist()) + "\n"


def test_first_load_prints_no_tensorflow_noise(models_copy):
    shutil.rmtree(models_copy / "124M" / "npy")
    result = run_cli("Hello", "--n_tokens_to_generate", "1", "--models_dir", str(models_copy))
    assert result.returncode == 0
    assert result.stderr.strip().splitlines() == [
        f"Converting the checkpoint in {models_copy}/124M to NumPy arrays (only once)."
    ]


@pytest.mark.parametrize("prompt", ["42", "Hello, world", "[1, 2]", "None", 'it\'s "quoted" \\'])
def test_prompt_that_looks_like_python_stays_text(models_copy, encoder, small_params, prompt):
    """fire alone would hand main the number 42, the tuple ('Hello', 'world'), a list, None."""
    import gpt2

    result = run_cli(prompt, "--n_tokens_to_generate", "3", "--models_dir", str(models_copy))
    assert result.returncode == 0, result.stderr
    expected = encoder.decode(gpt2.generate(encoder.encode(prompt), small_params, SMALL_HPARAMS["n_head"], 3))
    assert result.stdout == expected + "\n"


def test_too_long_for_the_context(models_copy):
    result = run_cli(PROMPT, "--n_tokens_to_generate", "60", "--models_dir", str(models_copy))
    assert_clean_error(result, "10 tokens", "60", "70", "context of 64 tokens")


def test_unknown_model_size(tmp_path):
    result = run_cli(PROMPT, "--model_size", "7B", "--models_dir", str(tmp_path))
    assert_clean_error(result, "7B", "124M, 355M, 774M, 1558M")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("value", ["0", "-3", "abc", "2.5"])
def test_bad_n_tokens_to_generate(models_copy, value):
    result = run_cli(PROMPT, "--n_tokens_to_generate", value, "--models_dir", str(models_copy))
    assert_clean_error(result, "n_tokens_to_generate", value)


def test_no_network(tmp_path):
    base = closed_port_url()
    result = run_cli(PROMPT, "--models_dir", str(tmp_path), env={"GPT2_BASE_URL": base})
    assert_clean_error(result, "checkpoint", f"{base}/124M/checkpoint")
    assert os.listdir(tmp_path / "124M") == []  # no empty or partial file under any name
