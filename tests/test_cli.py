"""The command line: `python gpt2.py PROMPT` end to end on a small random model folder, its flags, and
every kind of bad input. Mistakes are checked in this process (cli.run_command_line, what `python
gpt2.py` runs); a few runs go through a new process, where the process is what is tested."""

import io
import os
import shlex
import shutil
import sys

import numpy as np
import pytest
from helpers import (
    PROMPT,
    REPO_DIR,
    SMALL_HPARAMS,
    assert_clean_error,
    cli,
    closed_port_url,
    gpt2_command,
    hf_greedy_text,
    run_gpt2,
)

import cli as cli_module
from cli.flags import PARSER
from storage import files


@pytest.mark.slow
@pytest.mark.parametrize("script", ["gpt2.py", "gpt2_pico.py"])
def test_generates_the_same_text_as_hf(small_models_dir, golden, tiktoken_gpt2, script):
    result = run_gpt2(PROMPT, "--n_tokens_to_generate", "8", "--models_dir", str(small_models_dir), script=script)
    assert result.returncode == 0, result.stderr
    assert result.stdout == tiktoken_gpt2.decode(golden["greedy_ids"][:8].tolist()) + "\n"


@pytest.mark.slow
def test_first_load_prints_no_tensorflow_noise(models_copy):
    shutil.rmtree(models_copy / "124M" / "npy")
    result = run_gpt2("Hello", "--n_tokens_to_generate", "1", "--models_dir", str(models_copy))
    assert result.returncode == 0
    assert result.stderr.strip().splitlines() == [
        f"Converting the checkpoint in {models_copy}/124M to NumPy arrays (only once)."
    ]


@pytest.mark.parametrize("prompt", ["42", "Hello, world", "[1, 2]", "None", 'it\'s "quoted" \\', "-5 degrees", "-5"])
def test_prompt_that_looks_like_python_stays_text(small_models_dir, hf_small, tiktoken_gpt2, capsys, prompt):
    """fire alone would hand main the number 42, the tuple ('Hello', 'world'), a list, None."""
    result = cli(capsys, prompt, "--n_tokens_to_generate", "3", "--models_dir", str(small_models_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout == hf_greedy_text(hf_small, tiktoken_gpt2, tiktoken_gpt2.encode_ordinary(prompt), 3) + "\n"


def test_a_prompt_that_starts_with_a_dash_goes_after_two_dashes(small_models_dir, hf_small, tiktoken_gpt2, capsys):
    for prompt in ("-x marks the spot", "--not a flag"):
        result = cli(capsys, "-n", "3", "--models_dir", str(small_models_dir), "--", prompt)
        assert result.returncode == 0, result.stderr
        assert result.stdout == hf_greedy_text(hf_small, tiktoken_gpt2, tiktoken_gpt2.encode_ordinary(prompt), 3) + "\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (("--temperature", "1e308"), "temperature must be a number at least 0 and at most 100, not 1e+308"),
        (("--temperature", "nan"), "temperature must be a number"),
        (("--show_probs", "100000"), "show_probs must be a whole number from 0 to 50, not 100000"),
        (("--revision", "v1"), "--revision goes with --model NAME"),
        (("--top_k", "40"), "--top_k filters what sampling draws from: it needs a --temperature above 0"),
        (("--top_p", "0.9"), "--top_p filters what sampling draws from"),
        (("--TEMPERATURE", "1"), "unknown flag --TEMPERATURE; did you mean --temperature?"),
        (("--temp", "1"), "unknown flag --temp; did you mean --temperature?"),  # no abbreviations
    ],
)
def test_flags_that_would_be_ignored_or_misread_are_refused(served, tmp_path, capsys, args, message):
    result = cli(capsys, PROMPT, "--models_dir", str(tmp_path), *args)
    assert_clean_error(result, message)
    assert result.returncode == 2 and served.requests == [] and os.listdir(tmp_path) == []


def test_a_models_dir_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "models").write_text("not a folder")
    result = cli(capsys, PROMPT, "--models_dir", str(tmp_path / "models"))
    assert_clean_error(result, f"--models_dir {tmp_path / 'models'} is a file, not a folder")
    assert result.returncode == 2


@pytest.mark.parametrize("source", ["--file", "-", "--jsonl"])
def test_an_empty_source_is_refused_rather_than_sampled_from_nothing(
    source, small_models_dir, tmp_path, capsys, monkeypatch
):
    """One rule: a fresh document is the prompt "", and a file, standard input or JSON Lines with no text
    in them is a mistake, said in one line."""
    (tmp_path / "empty").write_text("\n")
    if source == "-":
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\n")))
    args = ["-"] if source == "-" else [source, str(tmp_path / "empty")]
    result = cli(capsys, *args, "--models_dir", str(small_models_dir))
    assert_clean_error(result, "holds no JSON lines" if source == "--jsonl" else "holds no text to continue")
    assert result.returncode == 1


def test_flags_after_double_dash_get_a_hint_that_works(small_models_dir, capsys):
    result = cli(capsys, "--models_dir", str(small_models_dir), "--", "-5 degrees is", "-n", "2")
    assert_clean_error(result, "after --, every word is the prompt; give the flags before it")
    hint = shlex.split(result.stderr.split("as in ", 1)[1])
    assert hint[:2] == ["python", "gpt2.py"] and hint[-2:] == ["--", "-5 degrees is"]
    fixed = cli(capsys, *hint[2:])
    assert fixed.returncode == 0 and fixed.stdout.strip(), fixed.stderr


def test_a_prompt_that_is_not_utf8_is_named_as_the_prompt(tmp_path, capsys):
    prompt = b"caf\xe9".decode("utf-8", "surrogateescape")  # a Latin-1 byte, as a command line brings it (PEP 383)
    result = cli(capsys, prompt, "--models_dir", str(tmp_path))
    assert_clean_error(result, "the prompt is not UTF-8 text (its byte 0xe9 at character 3)")
    assert result.returncode == 2 and os.listdir(tmp_path) == []


@pytest.mark.slow
def test_the_models_folder_is_the_same_wherever_the_command_runs(small_models_dir, tmp_path):
    """Beside the code by default, or $GPT2_MODELS_DIR: never a new ./models in the folder the command runs in."""
    import subprocess

    code = "import utils; print(utils.DEFAULT_MODELS_DIR)"
    env = {key: value for key, value in os.environ.items() if key != "GPT2_MODELS_DIR"}
    env["PYTHONPATH"] = REPO_DIR
    shown = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert shown.stdout.strip() == os.path.join(REPO_DIR, "models"), shown.stderr
    result = subprocess.run(
        gpt2_command(PROMPT, "-n", "2"),
        cwd=tmp_path,
        env={**env, "GPT2_MODELS_DIR": str(small_models_dir)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert os.listdir(tmp_path) == []


def test_main_streams_and_flushes_each_piece(small_models_dir, monkeypatch, golden, tiktoken_gpt2):
    import io

    class RecordingStdout(io.StringIO):
        def __init__(self):
            super().__init__()
            self.flushed = []

        def flush(self):
            self.flushed.append(self.getvalue())

    out = RecordingStdout()
    monkeypatch.setattr(sys, "stdout", out)
    text = cli_module.main(PROMPT, n_tokens_to_generate=8, models_dir=str(small_models_dir))
    assert text == tiktoken_gpt2.decode(golden["greedy_ids"][:8].tolist())
    assert out.getvalue() == text + "\n"
    assert len(out.flushed) >= 8  # visible piece by piece, not all at the end
    assert [t for t in out.flushed if t] == sorted(t for t in out.flushed if t)  # each flush extends the last


def test_main_stops_at_end_of_text_and_prints_nothing_of_it(end_of_text_params, encoder, monkeypatch, capsys):
    import utils

    monkeypatch.setattr(
        utils, "load_encoder_hparams_and_params", lambda *_: (encoder, SMALL_HPARAMS, end_of_text_params)
    )
    assert cli_module.main(PROMPT, n_tokens_to_generate=3) == ""
    assert capsys.readouterr().out == "\n"
    assert cli_module.main(PROMPT, n_tokens_to_generate=3, stop_at_end_of_text=False) == "<|endoftext|>" * 3
    assert capsys.readouterr().out == "<|endoftext|>" * 3 + "\n"


@pytest.mark.slow
def test_prompt_from_stdin(small_models_dir, capsys):
    expected = cli(capsys, PROMPT, "-n", "5", "--models_dir", str(small_models_dir)).stdout
    for stdin in (PROMPT + "\n", PROMPT):  # as `echo` sends it, and without the newline
        result = run_gpt2("-", "-n", "5", "--models_dir", str(small_models_dir), stdin=stdin)
        assert result.returncode == 0, result.stderr
        assert result.stdout == expected


@pytest.mark.slow
def test_a_crlf_line_on_stdin_is_the_prompt_without_its_line_end(small_models_dir, capsys):
    """`echo text |` on Windows, or a file saved there, ends the line with \\r\\n."""
    expected = cli(capsys, "Hello", "-n", "4", "--models_dir", str(small_models_dir))
    result = run_gpt2("-", "-n", "4", "--models_dir", str(small_models_dir), stdin=b"Hello\r\n")
    assert result.returncode == 0 and result.stdout == expected.stdout


@pytest.mark.slow
def test_non_utf8_stdin(small_models_dir):
    result = run_gpt2("-", "--models_dir", str(small_models_dir), stdin=b"caf\xe9 au lait")
    assert_clean_error(result, "not UTF-8", "0xe9")


def test_endless_stdin_is_refused_at_the_limit(small_models_dir, monkeypatch, capsys):
    """`python gpt2.py - < /dev/zero` stops with one line once the limit is read, instead of reading
    until the memory runs out."""
    monkeypatch.setattr(files, "MAX_INPUT_BYTES", 5_000_000)
    with open("/dev/zero", "rb") as zeros:
        monkeypatch.setattr(sys, "stdin", type("Stdin", (), {"buffer": zeros})())
        result = cli(capsys, "-", "--models_dir", str(small_models_dir))
    assert_clean_error(result, "standard input holds more than 5 MB of text")
    assert result.returncode == 1


def test_empty_prompt_starts_from_end_of_text(small_models_dir, hf_small, tiktoken_gpt2, capsys):
    result = cli(capsys, "", "-n", "4", "--models_dir", str(small_models_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout == hf_greedy_text(hf_small, tiktoken_gpt2, [tiktoken_gpt2.eot_token], 4) + "\n"


@pytest.mark.slow
def test_sampling_flags_are_repeatable_with_a_seed(small_models_dir, capsys):
    args = (PROMPT, "-n", "10", "--models_dir", str(small_models_dir), "--temperature", "1.0", "--top_k", "40")
    args += ("--top_p", "0.9")
    first, again = cli(capsys, *args, "--seed", "3"), cli(capsys, *args, "--seed", "3")
    other = cli(capsys, *args, "--seed", "4")
    assert first.returncode == 0, first.stderr
    assert first.stdout == again.stdout != other.stdout


def test_show_probs(small_models_dir, golden, tiktoken_gpt2, capsys):
    result = cli(capsys, PROMPT, "-n", "3", "--models_dir", str(small_models_dir), "--show_probs", "4")
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


def test_help_explains_every_flag_in_full(capsys):
    """Every flag of the parser in --help, with its whole description and its default."""
    for flag in ("--help", "-h"):
        result = cli(capsys, PROMPT, flag)
        assert result.returncode == 0 and result.stderr == ""
        assert result.stdout.startswith("usage: python gpt2.py PROMPT")
        shown = " ".join(result.stdout.split())
        for action in PARSER._actions:
            description = " ".join((action.help % {"default": action.default}).split())
            assert description in shown, action.dest  # whole
            assert action.dest in ("help", "prompt") or "(default: " in description, action.dest
            for name in action.option_strings:
                assert name in shown
        assert "--nostop_at_end_of_text" in shown and "-n N, --n_tokens_to_generate N" in shown
        assert "(default: 40)" in shown and "(default: the context, 1024: no overlap)" in shown
        assert "\nexamples:\n" in result.stdout


def test_help_into_a_closed_pipe_is_quiet():
    """`python gpt2.py --help | head -1`: the reader goes away, and Python would print a traceback."""
    import subprocess

    with subprocess.Popen(gpt2_command("--help"), stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        process.stdout.close()  # before the help is written: every write finds the pipe closed
        stderr = process.stderr.read().decode()
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_help_from_a_new_process():
    result = run_gpt2("--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: python gpt2.py PROMPT")


@pytest.mark.parametrize(
    "args, message",
    [
        (("--temprature", "0.8"), "error: unknown flag --temprature; did you mean --temperature?"),
        (("--n_token", "5"), "error: unknown flag --n_token; did you mean --n_tokens_to_generate?"),
        (("-x",), "error: unknown flag -x; see --help"),
        (("world",), "unexpected argument 'world': a prompt of several words goes in quotes, as in python gpt2.py"),
        (("--stride", "3"), "error: --stride goes with --score"),
        (("--prepend_end_of_text",), "error: --prepend_end_of_text goes with --score"),
        (("--seed",), "error: --seed needs a value"),
    ],
)
def test_usage_mistakes_are_refused_before_any_work(served, tmp_path, capsys, args, message):
    result = cli(capsys, PROMPT, "-n", "3", "--models_dir", str(tmp_path), *args)
    assert_clean_error(result, message)
    assert result.returncode == 2
    assert served.requests == [] and os.listdir(tmp_path) == []  # nothing asked of the network, nothing written


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
        ("--n_tokens_to_generate", "2000", "n_tokens_to_generate"),
        ("--n_tokens_to_generate", "0", "n_tokens_to_generate"),
        ("--n_tokens_to_generate", "2.5", "n_tokens_to_generate"),
        ("--n_tokens_to_generate", "abc", "n_tokens_to_generate"),
        ("--model_size", "7B", "124M, 355M, 774M, 1558M"),
        ("--model_size", "../124M", "unknown model size"),
    ],
)
def test_bad_values_are_refused_before_any_work(served, tmp_path, capsys, flag, value, fragment):
    result = cli(capsys, PROMPT, flag, value, "--models_dir", str(tmp_path))
    assert_clean_error(result, fragment, value)
    assert result.returncode == 2
    assert served.requests == [] and os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "args, code",
    [
        ((PROMPT, "--temperature", "-1"), 2),  # a bad value
        ((), 2),  # no prompt
        ((PROMPT, "--file", "notes.txt"), 2),  # two sources of text
        ((PROMPT,), 1),  # no network: a failure at run time
    ],
)
def test_exit_codes(tmp_path, monkeypatch, fast_retries, capsys, args, code):
    base = closed_port_url()
    monkeypatch.setenv("GPT2_BASE_URL", base)
    result = cli(capsys, *args, "--models_dir", str(tmp_path))
    assert_clean_error(result)
    assert result.returncode == code
    if code == 1:
        assert f"{base}/124M/checkpoint" in result.stderr
        assert os.listdir(tmp_path) == []  # no empty folder, no lock file, no partial file under any name


@pytest.mark.slow
def test_usage_mistake_and_no_network_from_a_new_process(tmp_path):
    result = run_gpt2(PROMPT, "--temprature", "1", "--models_dir", str(tmp_path))
    assert_clean_error(result, "did you mean --temperature?")
    assert result.returncode == 2
    result = run_gpt2(PROMPT, "--models_dir", str(tmp_path), env={"GPT2_BASE_URL": str(tmp_path / "nowhere")})
    assert_clean_error(result, f"could not copy {tmp_path}/nowhere/124M/checkpoint")
    assert result.returncode == 1 and os.listdir(tmp_path) == []


@pytest.mark.slow
def test_text_flags_arrive_as_typed(small_models_dir, tmp_path, monkeypatch, capsys):
    """fire alone would hand main the number 2024 for --models_dir 2024, and a list for "[models]"."""
    monkeypatch.chdir(tmp_path)
    for name in ("2024", "[models]", "1e5"):
        shutil.copytree(small_models_dir, tmp_path / name)
        for args in (("--models_dir", name), (f"--models_dir={name}",)):
            result = cli(capsys, PROMPT, "-n", "2", *args)
            assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_import_gpt2_loads_numpy_only_and_python_gpt2_prompt_loads_no_server_and_no_training(small_models_dir):
    """A notebook's `import gpt2` is NumPy's and the standard library's only; the command line loads what
    generating needs, not the server (serve/, http.server) or the training (train.py, training/)."""
    import subprocess

    code = "import sys, gpt2; print(sorted(m for m in ('cli', 'fire', 'utils', 'requests') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_DIR, capture_output=True, text=True)
    assert result.stdout == "[]\n", result.stderr
    loaded = (
        "import atexit, runpy, sys\n"
        "programs = ('serve', 'http.server', 'train', 'training')\n"
        "atexit.register(lambda: print(sorted(m for m in sys.modules if m.startswith(programs))))\n"
        f"sys.argv = ['gpt2.py', 'Hello', '-n', '2', '--models_dir', {str(small_models_dir)!r}]\n"
        "runpy.run_path('gpt2.py', run_name='__main__')\n"
    )
    result = subprocess.run([sys.executable, "-c", loaded], cwd=REPO_DIR, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


def test_python_below_3_10_gets_one_clear_line():
    """gpt2.py parses as Python 3.8 does it (so that the check of the version is reached there), and
    on a Python that says it is 3.9 the command prints one line and a notebook's import raises."""
    import ast
    import subprocess

    with open(os.path.join(REPO_DIR, "gpt2.py"), encoding="utf-8") as f:
        ast.parse(f.read(), feature_version=(3, 8))
    as_3_9 = "import sys; sys.version_info = (3, 9, 18, 'final', 0); sys.version = '3.9.18 (main)'; "
    command = as_3_9 + "sys.argv = ['gpt2.py', 'Hello']; import runpy; runpy.run_path('gpt2.py', run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", command], cwd=REPO_DIR, capture_output=True, text=True)
    assert_clean_error(result, "error: gpt2.py needs Python 3.10 or newer, not 3.9.18")
    imported = subprocess.run(
        [sys.executable, "-c", as_3_9 + "import gpt2"], cwd=REPO_DIR, capture_output=True, text=True
    )
    assert "ImportError: gpt2.py needs Python 3.10 or newer, not 3.9.18" in imported.stderr


@pytest.mark.slow
def test_pip_install_e_makes_the_modules_importable_from_any_folder(tmp_path):
    """`pip install -e .`: from a folder that holds a folder named gpt2 (as the parent of a clone of this
    repository does), `from gpt2 import generate` finds gpt2.py, and the models folder is the clone's."""
    import subprocess

    setuptools = pytest.importorskip("setuptools", reason="setuptools builds the editable install")
    if int(setuptools.__version__.split(".")[0]) < 64:
        pytest.skip(f"setuptools {setuptools.__version__} has no editable installs of this kind (64 or newer)")
    clone = tmp_path / "clone"
    names = subprocess.run(["git", "ls-files"], cwd=REPO_DIR, capture_output=True, text=True).stdout.split()
    if not names:
        pytest.skip("not a git checkout: no list of the repository's files")
    for name in names:
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.join(REPO_DIR, name), clone / name)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(tmp_path / "venv")], check=True)
    python = str(tmp_path / "venv" / "bin" / "python")
    install = [
        python,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-e",
        str(clone),
    ]
    installed = subprocess.run(install, capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    (tmp_path / "elsewhere" / "gpt2").mkdir(parents=True)
    code = "import gpt2, utils; from gpt2 import generate; print(gpt2.__file__); print(utils.DEFAULT_MODELS_DIR)"
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "GPT2_MODELS_DIR")}
    shown = subprocess.run([python, "-c", code], cwd=tmp_path / "elsewhere", env=env, capture_output=True, text=True)
    assert shown.stdout.split() == [str(clone / "gpt2.py"), str(clone / "models")], shown.stderr
