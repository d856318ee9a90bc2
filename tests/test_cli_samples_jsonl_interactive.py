"""The command line's many samples (--n_samples), JSON Lines in and out (--jsonl), and interactive
prompt (--interactive)."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from helpers import N_HEAD, PROMPT, SMALL_HPARAMS, assert_clean_error, cli, read_until, run_gpt2, start_gpt2

import batching
import gpt2

HEADER = "======== SAMPLE {} ========"


def samples(stdout, n):
    """The texts under the n headers of the output."""
    lines = stdout.splitlines()
    starts = [lines.index(HEADER.format(i)) for i in range(1, n + 1)]
    assert starts[0] == 0 and starts == sorted(starts)
    return ["\n".join(lines[a + 1 : b]) for a, b in zip(starts, starts[1:] + [len(lines)])]


@pytest.mark.slow
def test_n_samples_format_seed_and_batch_size(small_models_dir, small_params, encoder, capsys):
    args = (PROMPT, "-n", "12", "--n_samples", "5", "--temperature", "1", "--top_k", "50", "--seed", "7")
    first = cli(capsys, *args, "--models_dir", str(small_models_dir))
    assert first.returncode == 0, first.stderr
    texts = samples(first.stdout, 5)
    assert len(set(texts)) == 5  # samples of one prompt differ
    ids = batching.generate_batch(
        [encoder.encode(PROMPT)] * 5, small_params, N_HEAD, 12, temperature=1.0, top_k=50, seed=7
    )
    assert texts == [encoder.decode(row) for row in ids]
    for batch_size in ("1", "2", "16"):  # speed and memory, never the text
        again = cli(capsys, *args, "--batch_size", batch_size, "--models_dir", str(small_models_dir))
        assert again.stdout == first.stdout
    other_seed = cli(capsys, *args[:-1], "8", "--models_dir", str(small_models_dir))
    assert samples(other_seed.stdout, 5) != texts


def test_greedy_samples_are_identical_and_said_so(small_models_dir, golden, tiktoken_gpt2, capsys):
    result = cli(capsys, PROMPT, "-n", "8", "--n_samples", "3", "--models_dir", str(small_models_dir))
    assert result.returncode == 0, result.stderr
    assert samples(result.stdout, 3) == [tiktoken_gpt2.decode(golden["greedy_ids"][:8].tolist())] * 3
    assert result.stderr.splitlines() == [
        "temperature 0 (greedy) gives 3 identical samples, so the text is made once; "
        "for different samples, sample with a temperature above 0 (--temperature 0.8, say)"
    ]


@pytest.mark.slow
def test_jsonl_generation_keeps_keys_and_order(small_models_dir, tmp_path, golden, tiktoken_gpt2, capsys):
    records = [
        {"id": "b", "prompt": PROMPT, "meta": {"source": ["x", 1]}},
        {"prompt": "", "id": 7},
        {"id": "a", "prompt": "Hello, world", "completion": "replaced"},
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")  # a blank line is skipped
    args = ("-n", "8", "--n_samples", "2", "--batch_size", "4", "--models_dir", str(small_models_dir))
    result = cli(capsys, "--jsonl", str(path), *args)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(line["id"], line["sample"]) for line in lines] == [("b", 1), ("b", 2), (7, 1), (7, 2), ("a", 1), ("a", 2)]
    assert lines[0]["meta"] == {"source": ["x", 1]} and lines[0]["prompt"] == PROMPT
    greedy = golden["greedy_ids"][:8].tolist()  # HuggingFace's greedy continuation
    assert lines[0]["completion"] == lines[1]["completion"] == tiktoken_gpt2.decode(greedy)
    assert lines[0]["n_tokens"] == 8
    for line in lines[2:]:  # each the same as that prompt alone on the command line
        alone = cli(capsys, line["prompt"], "-n", "8", "--models_dir", str(small_models_dir))
        assert line["completion"] + "\n" == alone.stdout
    from_stdin = run_gpt2("--jsonl", "-", *args, stdin=path.read_text())
    assert from_stdin.stdout == result.stdout


def test_jsonl_prompt_that_exactly_fits_the_context(small_models_dir, tmp_path, encoder, capsys):
    prompt = " ".join(["word"] * 61)
    assert len(encoder.encode(prompt)) + 3 == SMALL_HPARAMS["n_ctx"]
    path = tmp_path / "fits.jsonl"
    path.write_text(json.dumps({"prompt": prompt}) + "\n", encoding="utf-8")
    result = cli(
        capsys, "--jsonl", str(path), "-n", "3", "--nostop_at_end_of_text", "--models_dir", str(small_models_dir)
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["n_tokens"] == 3
    result = cli(capsys, "--jsonl", str(path), "-n", "4", "--models_dir", str(small_models_dir))  # one too many
    assert_clean_error(result, f"{path} line 1: the prompt has 61 tokens and 4 more were asked for")


@pytest.mark.slow
def test_jsonl_scoring_equals_score_alone(small_models_dir, tmp_path, small_params, encoder, capsys):
    texts = [PROMPT, "Hello there.", (PROMPT + ". ") * 12, "A b", PROMPT[::-1]]  # the third is several windows long
    assert len(encoder.encode(texts[2])) > SMALL_HPARAMS["n_ctx"]
    path = tmp_path / "texts.jsonl"
    path.write_text("".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    result = cli(capsys, "--jsonl", str(path), "--score", "--stride", "32", "--models_dir", str(small_models_dir))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["n"] for line in lines] == list(range(len(texts)))
    for line, text in zip(lines, texts):
        ids = encoder.encode(text)
        assert line["text"] == text and line["n_tokens"] == len(ids)
        assert line["nll"] == pytest.approx(gpt2.score(ids, small_params, N_HEAD, 32), rel=1e-6)
        assert line["n_scored"] == int((~np.isnan(gpt2.token_nlls(ids, small_params, N_HEAD, 32))).sum())
        assert line["perplexity"] == pytest.approx(np.exp(line["nll"]), rel=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize(
    "content, fragment",
    [
        ('{"prompt": "a"}\n{"prompt": "b\n', "line 2: not JSON: unterminated string starting at column 12"),
        ('{"prompt": "a"} x\n', "line 1: not JSON: extra data at column 17"),
        ('{"prompt": "a"}\n["prompt"]\n', "line 2: not a JSON object"),
        ('\n{"text": "a"}\n', 'line 2: no "prompt" key'),
        ('{"prompt": 42}\n', 'line 1: "prompt" is not a string'),
        ('{"prompt": "a"}\n{"prompt": "' + " ".join(["word"] * 70) + '"}\n', "line 2: the prompt has 70 tokens"),
    ],
)
def test_jsonl_bad_lines(small_models_dir, tmp_path, capsys, content, fragment):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    result = cli(capsys, "--jsonl", str(path), "-n", "3", "--models_dir", str(small_models_dir))
    assert_clean_error(result, f"error: {path} {fragment}")
    assert result.returncode == 1


@pytest.mark.slow
def test_jsonl_bad_lines_for_scoring(small_models_dir, tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "Hello world"}\n{"text": "Hello"}\n', encoding="utf-8")
    result = cli(capsys, "--jsonl", str(path), "--score", "--models_dir", str(small_models_dir))
    assert_clean_error(result, f"{path} line 2: the text has 1 token", "--prepend_end_of_text")
    result = run_gpt2("--jsonl", "-", "--score", "--models_dir", str(small_models_dir), stdin='{"prompt": "Hello"}\n')
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == 'error: standard input line 1: no "text" key\n'


@pytest.mark.slow
def test_interactive_through_piped_input(small_models_dir, capsys):
    prompts = [PROMPT, "", "Hello, world"]
    result = run_gpt2(
        "--interactive", "-n", "6", "--models_dir", str(small_models_dir), stdin="\n".join(prompts) + "\n"
    )
    assert result.returncode == 0, result.stderr
    expected = ""
    for prompt in prompts:
        if prompt:  # an empty line asks again
            expected += cli(capsys, prompt, "-n", "6", "--models_dir", str(small_models_dir)).stdout
    assert result.stdout == expected  # the results only: the prompts go to stderr, as Python's own do
    assert result.stderr == "Model prompt >>> " * 4 + "\n"  # then the end of input ends it


@pytest.mark.slow
def test_interactive_samples(small_models_dir, capsys):
    args = ("-n", "5", "--n_samples", "2", "--temperature", "1", "--seed", "3", "--models_dir", str(small_models_dir))
    result = run_gpt2("--interactive", *args, stdin=PROMPT + "\n")
    assert result.returncode == 0, result.stderr
    alone = cli(capsys, PROMPT, *args).stdout
    assert result.stdout == alone and result.stderr == "Model prompt >>> " * 2 + "\n"


@pytest.mark.slow
def test_interactive_ctrl_c_at_the_prompt_exits_130_quietly(small_models_dir):
    process = start_gpt2("--interactive", "--models_dir", str(small_models_dir), stdin=subprocess.PIPE)
    read_until(process.stderr, ">>> ")  # prompts from a pipe: the prompt on stderr, as Python's own
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and stdout == "" and stderr == "\n"  # the line ended, nothing more


@pytest.mark.slow
def test_interactive_ctrl_c_with_piped_prompts_ends_the_run(small_models_dir, tmp_path):
    """Prompts from a pipe or a file are a batch job: Ctrl-C ends it (130) instead of moving on to the next line."""
    (tmp_path / "prompts.txt").write_text("Hello\n" * 2000)
    with open(tmp_path / "prompts.txt") as stdin:
        process = start_gpt2("--interactive", "-n", "60", "--models_dir", str(small_models_dir), stdin=stdin)
    read_until(process.stderr, ">>> ")
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.replace("Model prompt >>> ", "") in ("\n", "interrupted\n")  # at the prompt, or during a generation
    assert "(stopped)" not in stderr and stderr.count(">>> ") < 2000


@pytest.mark.parametrize(
    "args, fragment",
    [
        ((PROMPT, "--n_samples", "0"), "n_samples"),
        ((PROMPT, "--n_samples", "two", "--show_probs", "3"), "n_samples must be a whole number"),
        ((PROMPT, "--batch_size", "0"), "batch_size"),
        ((PROMPT, "--jsonl", "x.jsonl"), "not both a prompt and --jsonl"),
        ((PROMPT, "--n_samples", "2", "--show_probs", "3"), "--show_probs shows one text at a time"),
        (("--jsonl", "x.jsonl", "--show_probs", "3"), "--show_probs shows one text at a time"),
        (("--interactive", "--score"), "--score"),
        (("--interactive", PROMPT), "not both a prompt and --interactive"),  # a switch never takes the next word
        (("--jsonl", "missing.jsonl"), "cannot read missing.jsonl"),
    ],
)
def test_bad_batch_flags(tmp_path, capsys, args, fragment):
    result = cli(capsys, *args, "--models_dir", str(tmp_path))
    assert_clean_error(result, fragment)
    assert result.returncode == (1 if "missing" in fragment else 2)
    assert os.listdir(tmp_path) == []  # refused before anything was loaded or downloaded


def test_each_jsonl_result_is_flushed_as_its_line_ends(small_models_dir, tmp_path, monkeypatch):
    """A reader of the output (a pipe) gets each result as soon as it is made, not at the end."""
    import cli as cli_module

    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("Hello", "Once upon a time", "1, 2, 3")))
    events = []

    class Recorder:
        def write(self, text):
            events.append(("write", text))

        def flush(self):
            events.append(("flush",))

    monkeypatch.setattr(sys, "stdout", Recorder())
    cli_module.run_command_line(
        ["--jsonl", str(path), "-n", "3", "--models_dir", str(small_models_dir), "--batch_size", "1"]
    )
    writes = [i for i, event in enumerate(events) if event[0] == "write"]
    assert len("".join(events[i][1] for i in writes).splitlines()) == 3
    for i in writes:
        if events[i][1].endswith("\n"):
            assert events[i + 1] == ("flush",), events
