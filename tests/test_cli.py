"""`python gpt2.py ...` end to end on a small random model folder, and every kind of bad input."""

import inspect
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
def test_generates_the_same_text_as_hf(small_models_dir, golden, tiktoken_gpt2, script):
    result = run_cli(PROMPT, "--n_tokens_to_generate", "8", "--models_dir", str(small_models_dir), script=script)
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
def test_prompt_that_looks_like_python_stays_text(small_models_dir, hf_small, tiktoken_gpt2, prompt):
    """fire alone would hand main the number 42, the tuple ('Hello', 'world'), a list, None."""
    result = run_cli(prompt, "--n_tokens_to_generate", "3", "--models_dir", str(small_models_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout == hf_greedy_text(hf_small, tiktoken_gpt2, tiktoken_gpt2.encode_ordinary(prompt), 3) + "\n"


def test_too_long_for_the_context(small_models_dir):
    result = run_cli(PROMPT, "--n_tokens_to_generate", "60", "--models_dir", str(small_models_dir))
    assert_clean_error(result, "10 tokens", "60", "70", "context of 64 tokens")


def test_unknown_model_size(tmp_path):
    result = run_cli(PROMPT, "--model_size", "7B", "--models_dir", str(tmp_path))
    assert_clean_error(result, "7B", "124M, 355M, 774M, 1558M")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("value", ["0", "-3", "abc", "2.5"])
def test_bad_n_tokens_to_generate(small_models_dir, value):
    result = run_cli(PROMPT, "--n_tokens_to_generate", value, "--models_dir", str(small_models_dir))
    assert_clean_error(result, "n_tokens_to_generate", value)


def test_no_network(tmp_path):
    base = closed_port_url()
    result = run_cli(PROMPT, "--models_dir", str(tmp_path), env={"GPT2_BASE_URL": base})
    assert_clean_error(result, "checkpoint", f"{base}/124M/checkpoint")
    assert set(os.listdir(tmp_path / "124M")) <= {".lock"}  # no empty or partial file under any name


def test_main_streams_and_flushes_each_piece(small_models_dir, monkeypatch, golden, tiktoken_gpt2):
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
    text = gpt2.main(PROMPT, n_tokens_to_generate=8, models_dir=str(small_models_dir))
    assert text == tiktoken_gpt2.decode(golden["greedy_ids"][:8].tolist())
    assert out.getvalue() == text + "\n"
    assert len(out.flushed) >= 8  # visible piece by piece, not all at the end
    assert [t for t in out.flushed if t] == sorted(t for t in out.flushed if t)  # each flush extends the last


def test_prompt_from_stdin(small_models_dir):
    expected = run_cli(PROMPT, "-n", "5", "--models_dir", str(small_models_dir)).stdout
    for stdin in (PROMPT + "\n", PROMPT):  # as `echo` sends it, and without the newline
        result = subprocess.run(
            [sys.executable, os.path.join(REPO_DIR, "gpt2.py"), "-", "-n", "5", "--models_dir", str(small_models_dir)],
            input=stdin.encode(),
            capture_output=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode() == expected


def test_non_utf8_stdin(small_models_dir):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_DIR, "gpt2.py"), "-", "--models_dir", str(small_models_dir)],
        input=b"caf\xe9 au lait",
        capture_output=True,
        timeout=300,
    )
    result.stdout, result.stderr = result.stdout.decode(), result.stderr.decode()
    assert_clean_error(result, "not UTF-8", "0xe9")


def test_empty_prompt_starts_from_end_of_text(small_models_dir, hf_small, tiktoken_gpt2):
    result = run_cli("", "-n", "4", "--models_dir", str(small_models_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout == hf_greedy_text(hf_small, tiktoken_gpt2, [tiktoken_gpt2.eot_token], 4) + "\n"


def test_sampling_flags_are_repeatable_with_a_seed(small_models_dir):
    args = (
        PROMPT,
        "-n",
        "10",
        "--models_dir",
        str(small_models_dir),
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


def test_end_of_text_flag_is_accepted(small_models_dir):
    default = run_cli(PROMPT, "-n", "5", "--models_dir", str(small_models_dir))
    result = run_cli(PROMPT, "-n", "5", "--models_dir", str(small_models_dir), "--nostop_at_end_of_text")
    assert result.returncode == 0, result.stderr
    assert result.stdout == default.stdout  # fire takes the flag; what it does: test_sampling's end-of-text tests


def test_show_probs(small_models_dir, golden, tiktoken_gpt2):
    result = run_cli(PROMPT, "-n", "3", "--models_dir", str(small_models_dir), "--show_probs", "4")
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


def docstring_descriptions(function):
    """{argument: its description, white space folded} from the Args: section of a docstring."""
    descriptions = {}
    for line in inspect.getdoc(function).split("\nArgs:\n")[1].splitlines():
        if not line.startswith("        "):
            name, _, text = line.strip().partition(": ")
            descriptions[name] = text
        else:
            descriptions[name] += " " + line.strip()
    return {name: " ".join(text.split()) for name, text in descriptions.items()}


def test_help_explains_every_flag_in_full():
    import cli

    descriptions = docstring_descriptions(cli.main)
    assert list(descriptions) == list(inspect.signature(cli.main).parameters)
    for flag in ("--help", "-h"):
        result = run_cli(PROMPT, flag)
        assert result.returncode == 0 and result.stderr == ""
        assert result.stdout.startswith("usage: python gpt2.py PROMPT") and "INFO" not in result.stdout
        shown = " ".join(result.stdout.split())
        for name, parameter in inspect.signature(cli.main).parameters.items():
            assert descriptions[name] in shown, name  # whole, not cut at a colon
            if name == "prompt":
                assert "\n  PROMPT\n" in result.stdout
            elif isinstance(parameter.default, bool):
                assert f"\n  --{'no' if parameter.default else ''}{name}\n" in result.stdout
            else:
                default = "none" if parameter.default is None else parameter.default
                assert f"--{name} " in result.stdout and f"(default: {default})" in result.stdout
        assert "\nexamples:\n" in result.stdout


def test_unknown_flag_is_refused_before_any_work(model_server, tmp_path):
    result = run_cli(
        PROMPT, "--temprature", "0.8", "-n", "3", "--models_dir", str(tmp_path), env={"GPT2_BASE_URL": model_server.url}
    )
    assert_clean_error(result, "error: unknown flag --temprature; did you mean --temperature?")
    assert result.returncode == 2
    assert model_server.requests == [] and os.listdir(tmp_path) == []  # nothing asked of the network, nothing written
    result = run_cli(PROMPT, "-x", "--models_dir", str(tmp_path))
    assert_clean_error(result, "unknown flag -x; see --help")
    assert result.returncode == 2


def test_unquoted_prompt_of_two_words_suggests_quotes(tmp_path):
    result = run_cli("Hello", "world", "--models_dir", str(tmp_path))
    assert_clean_error(result, "unexpected argument 'world'", "python gpt2.py 'Hello world'")
    assert result.returncode == 2 and os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "args, code",
    [
        ((PROMPT, "--temperature", "-1"), 2),  # a bad value
        ((), 2),  # no prompt
        ((PROMPT, "--file", "notes.txt"), 2),  # two sources of text
        ((PROMPT, "--seed"), 2),  # a flag without its value
        ((PROMPT,), 1),  # no network: a failure at run time
    ],
)
def test_exit_codes(tmp_path, args, code):
    result = run_cli(*args, "--models_dir", str(tmp_path), env={"GPT2_BASE_URL": closed_port_url()})
    assert_clean_error(result)
    assert result.returncode == code


def test_text_flags_arrive_as_typed(small_models_dir, tmp_path):
    """fire alone would hand main the number 2024 for --models_dir 2024, and a list for "[models]"."""
    for name in ("2024", "[models]", "1e5"):
        shutil.copytree(small_models_dir, tmp_path / name)
        for args in (("--models_dir", name), (f"--models_dir={name}",)):
            result = subprocess.run(
                [sys.executable, os.path.join(REPO_DIR, "gpt2.py"), PROMPT, "-n", "2", *args],
                capture_output=True,
                text=True,
                cwd=tmp_path,
                timeout=300,
            )
            assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "flag, value, fragment",
    [
        ("--temperature", "-1", "temperature"),
        ("--temperature", "hot", "temperature"),
        ("--top_k", "-1", "top_k"),
        ("--top_k", "50258", "top_k"),
        ("--top_p", "0", "top_p"),
        ("--top_p", "1.5", "top_p"),
        ("--seed", "1.5", "seed"),
        ("--seed", "abc", "seed"),
        ("--show_probs", "-1", "show_probs"),
        ("--stride", "0", "stride"),
        ("--n_tokens_to_generate", "2000", "n_tokens_to_generate"),
    ],
)
def test_bad_values_are_refused_before_any_work(model_server, tmp_path, flag, value, fragment):
    result = run_cli(PROMPT, flag, value, "--models_dir", str(tmp_path), env={"GPT2_BASE_URL": model_server.url})
    assert_clean_error(result, fragment, value)
    assert result.returncode == 2
    assert model_server.requests == [] and os.listdir(tmp_path) == []


def test_python_below_3_10_gets_one_clear_line():
    import glob

    old_pythons = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.[89].*/bin/python")))
    if not old_pythons:
        pytest.skip("no Python 3.8 or 3.9 installed through pyenv here")
    old_python = old_pythons[-1]
    result = subprocess.run([old_python, os.path.join(REPO_DIR, "gpt2.py"), PROMPT], capture_output=True, text=True)
    assert_clean_error(result, "error: gpt2.py needs Python 3.10 or newer, not 3.")
