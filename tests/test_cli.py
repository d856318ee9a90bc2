"""`python gpt2.py ...` end to end on a small random model folder, and every kind of bad input."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import PROMPT, REPO_DIR
from test_downloads import closed_port_url


def run_cli(*args, env=None, script="gpt2.py"):
    return subprocess.run(
        [sys.executable, os.path.join(REPO_DIR, script), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


def hf_greedy_text(model, tiktoken_gpt2, ids, n_tokens):
    """What the command line should print: HuggingFace's greedy continuation, up to <|endoftext|>."""
    from hf_reference import hf_greedy

    new_ids = hf_greedy(model, ids, n_tokens)
    if tiktoken_gpt2.eot_token in new_ids:
        new_ids = new_ids[: new_ids.index(tiktoken_gpt2.eot_token)]
    return tiktoken_gpt2.decode(new_ids)


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
def test_prompt_that_looks_like_python_stays_text(models_copy, hf_small, tiktoken_gpt2, prompt):
    """fire alone would hand main the number 42, the tuple ('Hello', 'world'), a list, None."""
    result = run_cli(prompt, "--n_tokens_to_generate", "3", "--models_dir", str(models_copy))
    assert result.returncode == 0, result.stderr
    assert result.stdout == hf_greedy_text(hf_small, tiktoken_gpt2, tiktoken_gpt2.encode_ordinary(prompt), 3) + "\n"


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
    assert set(os.listdir(tmp_path / "124M")) <= {".lock"}  # no empty or partial file under any name


def test_main_streams_and_flushes_each_piece(models_copy, monkeypatch, golden, tiktoken_gpt2):
    import io

    import gpt2

    class RecordingStdout(io.StringIO):
        def __init__(self):
            super().__init__()
            self.flushed = []

        def flush(self):
            self.flushed.append(self.getvalue())

    out = RecordingStdout()
    monkeypatch.setattr(sys, "stdout", out)
    text = gpt2.main(PROMPT, n_tokens_to_generate=8, models_dir=str(models_copy))
    assert text == tiktoken_gpt2.decode(golden["greedy_ids"][:8].tolist())
    assert out.getvalue() == text + "\n"
    assert len(out.flushed) >= 8  # visible piece by piece, not all at the end
    assert [t for t in out.flushed if t] == sorted(t for t in out.flushed if t)  # each flush extends the last


def test_prompt_from_stdin(models_copy):
    expected = run_cli(PROMPT, "-n", "5", "--models_dir", str(models_copy)).stdout
    for stdin in (PROMPT + "\n", PROMPT):  # as `echo` sends it, and without the newline
        result = subprocess.run(
            [sys.executable, os.path.join(REPO_DIR, "gpt2.py"), "-", "-n", "5", "--models_dir", str(models_copy)],
            input=stdin.encode(),
            capture_output=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode() == expected


def test_non_utf8_stdin(models_copy):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_DIR, "gpt2.py"), "-", "--models_dir", str(models_copy)],
        input=b"caf\xe9 au lait",
        capture_output=True,
        timeout=300,
    )
    result.stdout, result.stderr = result.stdout.decode(), result.stderr.decode()
    assert_clean_error(result, "not UTF-8", "0xe9")


def test_empty_prompt_starts_from_end_of_text(models_copy, hf_small, tiktoken_gpt2):
    result = run_cli("", "-n", "4", "--models_dir", str(models_copy))
    assert result.returncode == 0, result.stderr
    assert result.stdout == hf_greedy_text(hf_small, tiktoken_gpt2, [tiktoken_gpt2.eot_token], 4) + "\n"


def test_sampling_flags_are_repeatable_with_a_seed(models_copy):
    args = (
        PROMPT,
        "-n",
        "10",
        "--models_dir",
        str(models_copy),
        "--temperature",
        "1.0",
        "--top_k",
        "40",
        "--top_p",
        "0.9",
    )
    first, again, other = run_cli(*args, "--seed", "3"), run_cli(*args, "--seed", "3"), run_cli(*args, "--seed", "4")
    assert first.returncode == 0, first.stderr
    assert first.stdout == again.stdout != other.stdout


def test_end_of_text_flag_is_accepted(models_copy):
    default = run_cli(PROMPT, "-n", "5", "--models_dir", str(models_copy))
    result = run_cli(PROMPT, "-n", "5", "--models_dir", str(models_copy), "--nostop_at_end_of_text")
    assert result.returncode == 0, result.stderr
    assert result.stdout == default.stdout  # fire takes the flag; what it does: test_sampling's end-of-text tests


def test_show_probs(models_copy, golden, tiktoken_gpt2):
    result = run_cli(PROMPT, "-n", "3", "--models_dir", str(models_copy), "--show_probs", "4")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    greedy = golden["greedy_ids"][:3].tolist()
    # the first step's probabilities, from HuggingFace's logits
    logits = golden["prompt_logits_last"].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    first_token = tiktoken_gpt2.decode([greedy[0]])
    assert lines[1].split("│")[0].strip().startswith(f'"{first_token}"')
    assert f"{probs[greedy[0]]:.1%}" in lines[1]
    top4 = np.argsort(probs)[::-1][:4]
    candidates = lines[1].split("│")[1]
    assert all(f"{probs[i]:.1%}" in candidates for i in top4)
    assert lines[-1] == tiktoken_gpt2.decode(greedy)


def test_help_explains_every_flag():
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in (
        "n_tokens_to_generate",
        "model_size",
        "models_dir",
        "temperature",
        "top_k",
        "top_p",
        "seed",
        "stop_at_end_of_text",
        "show_probs",
    ):
        assert f"--{flag}" in result.stdout + result.stderr
    assert "standard input" in result.stdout + result.stderr and "repeatable" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "flag, value, fragment",
    [
        ("--temperature", "-1", "temperature"),
        ("--top_k", "-1", "top_k"),
        ("--top_k", "50258", "top_k"),
        ("--top_p", "0", "top_p"),
        ("--top_p", "1.5", "top_p"),
        ("--seed", "1.5", "seed"),
        ("--seed", "abc", "seed"),
        ("--show_probs", "-1", "show_probs"),
    ],
)
def test_bad_sampling_flags(models_copy, flag, value, fragment):
    assert_clean_error(run_cli(PROMPT, flag, value, "--models_dir", str(models_copy)), fragment, value)
