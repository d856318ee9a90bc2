"""`python gpt2.py --score`: the perplexity of a string, a file and standard input, the learners' view of
each token, and bad input."""

import math

import pytest
from helpers import N_HEAD, PROMPT, assert_clean_error, cli, run_gpt2

import gpt2


def perplexity_line(output):
    return float(output.strip().splitlines()[-1].removeprefix("perplexity: "))


@pytest.mark.slow
def test_scores_a_string_a_file_and_stdin(small_models_dir, small_params, encoder, tmp_path, capsys):
    text = (PROMPT + ". ") * 30  # several windows long
    expected = math.exp(gpt2.score(encoder.encode(text), small_params, N_HEAD, 20))
    args = ("--score", "--stride", "20", "--models_dir", str(small_models_dir))
    from_string = cli(capsys, text, *args)
    assert from_string.returncode == 0, from_string.stderr
    assert perplexity_line(from_string.stdout) == pytest.approx(expected, rel=1e-4)
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    assert cli(capsys, "--file", str(tmp_path / "text.txt"), *args).stdout == from_string.stdout
    assert run_gpt2("-", *args, stdin=text).stdout == from_string.stdout


def test_prepend_end_of_text_scores_the_first_token(small_models_dir, small_params, encoder, capsys):
    ids = encoder.encode(PROMPT)
    result = cli(capsys, PROMPT, "--score", "--prepend_end_of_text", "--models_dir", str(small_models_dir))
    assert f"{len(ids) + 1} tokens, {len(ids)} scored" in result.stdout
    expected = math.exp(gpt2.score([gpt2.END_OF_TEXT] + ids, small_params, N_HEAD))
    assert perplexity_line(result.stdout) == pytest.approx(expected, rel=1e-4)


def test_shows_each_token_for_learners(small_models_dir, small_params, encoder, capsys):
    ids = encoder.encode(PROMPT)
    result = cli(capsys, PROMPT, "--score", "--show_probs", "1", "--models_dir", str(small_models_dir))
    lines = result.stdout.splitlines()
    token_lines = lines[1 : 1 + len(ids)]
    assert "(context only)" in token_lines[0]
    nlls = gpt2.token_nlls(ids, small_params, N_HEAD)
    for line, nll in zip(token_lines[1:], nlls[1:]):
        assert f"{math.exp(-nll):.1%}" in line and f"{nll / math.log(2):.1f} bits" in line


@pytest.mark.parametrize(
    "args, fragment",
    [
        (
            ("Hello", "--score"),
            "the text has 1 token; scoring needs 2, the first is only context (--prepend_end_of_text",
        ),
        ((PROMPT, "--score", "--stride", "0"), "stride"),
        ((PROMPT, "--score", "--stride", "65"), "stride"),
        (("--score", "--file", "/nonexistent/text.txt"), "cannot read /nonexistent/text.txt"),
        ((PROMPT, "--score", "--file", "x.txt"), "not both"),
        (("--score", "--interactive"), "--score measures a given text"),
    ],
)
def test_bad_input(small_models_dir, capsys, args, fragment):
    assert_clean_error(cli(capsys, *args, "--models_dir", str(small_models_dir)), fragment)
