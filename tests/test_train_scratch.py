"""python train.py --from_scratch and prompt/completion pairs: the first weights against HuggingFace's
_init_weights, the byte-level run folder in HuggingFace's tokenizer and model and in gpt2.py, learning
real English from nothing and a small task from examples, exact resume, and the refusals."""

import glob
import json
import math
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO_DIR, assert_clean_error, at, cli, ours_path, stopped_once_saved, train_in_process

import gpt2
import train
from encoder import bytes_only
from training import data, loop, saving

MIXED_TEXT = "Ça coûte 5 € — naïve façade; 日本語のテキスト, 한국어, and emoji 🤗👍🏽!"


def write_licences(base):
    """base/data/licences.txt: the licence texts Debian ships, some 300 KB of English."""
    paths = sorted(glob.glob("/usr/share/common-licenses/*"))
    if not paths:
        pytest.skip("no licence texts in /usr/share/common-licenses to train on")
    (base / "data").mkdir()
    (base / "data" / "licences.txt").write_text("\n\n".join(open(p, errors="replace").read() for p in paths))
    return base


@pytest.fixture
def licences(tmp_path):
    return write_licences(tmp_path)


def scratch_args(base, *extra):
    """A small byte-level GPT from scratch on base/data (no models folder needed: nothing is loaded)."""
    return [str(base / "data"), "--from_scratch", "--n_layer", "2", "--n_head", "2", "--n_embd", "64",
            "--block_size", "64", "--batch_size", "8", "--learning_rate", "3e-3", "--sample_every", "0",
            "--models_dir", str(base / "models"), *extra]  # fmt: skip


def write_reversal(base):
    """base/data/reverse.jsonl: pairs that ask for a string of 3 to 5 letters reversed, "abcd:" -> "dcba"."""
    rng = random.Random(5)
    (base / "data").mkdir()
    with open(base / "data" / "reverse.jsonl", "w") as f:
        for _ in range(2000):
            word = "".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 5)))
            f.write(json.dumps({"prompt": f"{word}:", "completion": word[::-1]}) + "\n")
    return base


def pairs_args(base, *extra):
    return [str(base / "data" / "reverse.jsonl"), "--from_scratch", "--n_layer", "2", "--n_head", "4",
            "--n_embd", "64", "--block_size", "16", "--batch_size", "32", "--learning_rate", "3e-3",
            "--sample_every", "0", "--models_dir", str(base / "models"), *extra]  # fmt: skip


@pytest.mark.slow
def test_the_first_weights_are_drawn_as_huggingfaces_init_weights():
    """Per tensor: the std of HuggingFace's _init_weights for the same config (within 5%), and its
    zeros and ones; and a first loss of about ln(vocabulary size), as a model that knows nothing has."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    shape = {"n_vocab": 257, "n_ctx": 64, "n_embd": 128, "n_head": 4, "n_layer": 4}
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=257, n_positions=64, n_embd=128, n_head=4, n_layer=4)
    theirs = {
        ours_path(name): p.detach().numpy() for name, p in transformers.GPT2LMHeadModel(config).named_parameters()
    }
    ours = train.init_params(**shape, seed=0)
    assert len(theirs) == len(list(train.leaves(ours)))
    for path, expected in theirs.items():
        got = at(ours, path)
        assert got.shape == expected.shape and got.dtype == np.float32, path
        if expected.std() == 0:
            np.testing.assert_array_equal(got, expected, err_msg=str(path))  # biases 0, layer norms 1 and 0
        else:
            assert abs(got.std() / expected.std() - 1) < 0.05 and abs(got.mean()) < 0.1 * expected.std(), path
    assert at(ours, ("blocks", 0, "attn", "c_proj", "w")).std() == pytest.approx(0.02 / math.sqrt(8), rel=0.05)
    batch = np.random.RandomState(0).randint(0, 257, (4, 65))
    loss, _ = train.loss_and_grads(ours, batch, 4)
    assert abs(loss - math.log(257)) < 0.1


@pytest.mark.slow
def test_a_byte_level_model_learns_english_from_nothing(licences, capsys):
    """The byte unigram entropy is the best that any model ignoring the context can do. 0.5 nats below
    it is about where predicting from the previous byte alone gets (the licences' byte-bigram entropy
    is some 0.75 below): 400 steps of 8 x 64 bytes reach it only by reading the context."""
    result = train_in_process(
        capsys, [*scratch_args(licences, "--steps", "400", "--eval_every", "400"), "--out", str(licences / "run")]
    )
    assert result.returncode == 0, result.stderr
    data = np.frombuffer((licences / "data" / "licences.txt").read_bytes(), np.uint8)
    counts = np.bincount(data[: int(len(data) * 0.95)]).astype(np.float64)  # the training part
    p = counts[counts > 0] / counts.sum()
    unigram_entropy = -(p * np.log(p)).sum()
    log = [json.loads(line) for line in (licences / "run" / "log.jsonl").read_text().splitlines()]
    assert abs(log[0]["train_loss"] - math.log(257)) < 0.1
    assert log[-1]["val_loss"] < unigram_entropy - 0.5, (log[-1]["val_loss"], unigram_entropy)


@pytest.fixture(scope="module")
def reversal_run(tmp_path_factory):
    """A small GPT trained from scratch on the reversal pairs: (base, out, the held-out pairs)."""
    base = write_reversal(tmp_path_factory.mktemp("reversal"))
    out = base / "run"
    loop.main([*pairs_args(base, "--steps", "800", "--eval_every", "800", "--save_every", "1000"), "--out", str(out)])
    pairs = data.read_documents([str(base / "data" / "reverse.jsonl")])
    return base, out, data.held_out_pairs(pairs, 0.05)[1]


@pytest.mark.slow
def test_a_small_model_learns_a_task_from_prompt_completion_pairs(reversal_run):
    """At least 90% of the held-out prompts completed exactly, greedily, ending with <|endoftext|>."""
    _, out, held_out = reversal_run
    params, encoder = saving.load_run_params(str(out)), bytes_only()
    right = 0
    for pair in held_out:
        new = gpt2.generate(encoder.encode(pair.prompt), params, 4, 8, end_of_text=encoder.end_of_text)
        right += encoder.decode(new) == pair.completion
    assert len(held_out) == 100 and right >= 90, right


@pytest.mark.slow
def test_a_byte_level_run_folder_in_huggingface_and_in_gpt2(reversal_run, capsys):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    base, out, _ = reversal_run
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    assert tokenizer(MIXED_TEXT)["input_ids"] == bytes_only().encode(MIXED_TEXT) == list(MIXED_TEXT.encode())
    assert tokenizer.eos_token_id == 256 and len(tokenizer) == 257
    ids = bytes_only().encode("abcde:edcba")
    params = saving.load_run_params(str(out))
    model = transformers.GPT2LMHeadModel.from_pretrained(str(out)).eval()
    with torch.no_grad():
        hf_logits = model(torch.tensor([[256, *ids]])).logits[0].numpy()
    np.testing.assert_allclose(gpt2.gpt2([256, *ids], **params, n_head=4), hf_logits, atol=1e-4, rtol=0)
    models = ("--models_dir", str(base / "models"))
    generated = cli(capsys, "hgfed:", "--model", str(out), "-n", "8", *models)
    assert generated.returncode == 0 and generated.stdout == "defgh\n", generated.stderr  # stopped at id 256
    scored = cli(capsys, "abcde:edcba", "--model", str(out), "--score", "--prepend_end_of_text", *models)
    log_probs = torch.log_softmax(torch.tensor(hf_logits[:-1]), -1).numpy()  # what predicted each of ids
    hf_nll = -np.mean(log_probs[np.arange(len(ids)), ids])
    printed = float(scored.stdout.split("mean negative log-likelihood: ")[1].split()[0])
    assert abs(printed - hf_nll) < 1e-3, (scored.stdout, hf_nll)


@pytest.mark.slow
def test_a_byte_level_model_serves_and_ends_at_its_own_end_of_text(reversal_run):
    openai = pytest.importorskip("openai")
    from helpers import ServerProcess

    base, out, _ = reversal_run
    with ServerProcess("--model", str(out), "--models_dir", str(base / "models")) as served:
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="none", max_retries=0, timeout=60)
        completion = client.completions.create(model=str(out), prompt="jihg:", max_tokens=8, temperature=0)
        assert (completion.choices[0].text, completion.choices[0].finish_reason) == ("ghij", "stop")
        with pytest.raises(openai.BadRequestError, match="top_k must be a whole number from 0 to 257"):
            client.completions.create(model=str(out), prompt="ab:", max_tokens=2, extra_body={"top_k": 300})
        assert served.stop() == 130


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["text", "pairs"])
def test_a_run_from_scratch_stopped_by_sigterm_resumes_to_the_same_weights(tmp_path, kind):
    base = write_licences(tmp_path) if kind == "text" else write_reversal(tmp_path)
    args = (scratch_args if kind == "text" else pairs_args)(
        base, "--steps", "60", "--save_every", "7", "--eval_every", "20"
    )
    whole = subprocess.run(
        [sys.executable, "train.py", *args, "--out", str(base / "whole")], cwd=REPO_DIR, capture_output=True, text=True
    )
    assert whole.returncode == 0, whole.stderr
    command = [sys.executable, "train.py", *args, "--out", str(base / "cut")]
    code, stderr = stopped_once_saved(command, base / "cut", signal.SIGTERM)
    assert code == 143, stderr
    stopped_at = json.loads((base / "cut" / "state.json").read_text())["step"]
    assert 0 < stopped_at < 60
    again = subprocess.run(command, cwd=REPO_DIR, capture_output=True, text=True)
    assert again.returncode == 0 and f"at step {stopped_at}" in again.stderr, again.stderr
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert (base / "cut" / name).read_bytes() == (base / "whole" / name).read_bytes(), name


@pytest.mark.parametrize(
    "lines, message",
    [
        (
            ['{"prompt": "a", "completion": "b"}', '{"text": "c"}'],
            'line 2: "text" in a file of prompt/completion pairs',
        ),
        (['{"text": "a"}', '{"prompt": "c", "completion": "d"}'], 'line 2: "prompt" in a file of texts'),
        (['{"prompt": "a", "completion": "b"}', '{"prompt": "c"}'], 'line 2: no "completion" key'),
        (['{"prompt": "a", "completion": 3}'], 'line 1: "completion" is not a string but int'),
        (
            ['{"prompt": "a", "completion": "b"}', '{"prompt": "' + "x" * 40 + '", "completion": "y"}'],
            "line 2: prompt, completion and <|endoftext|> are 42 tokens",
        ),
    ],
)
def test_bad_pairs_are_refused_with_their_file_and_line(tmp_path, capsys, lines, message):
    """Before any model work: from scratch on bytes, nothing is loaded to find a pair too long."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    args = [
        str(tmp_path / "data" / "pairs.jsonl"),
        "--from_scratch",
        "--block_size",
        "16",
        "--out",
        str(tmp_path / "run"),
    ]
    result = train_in_process(capsys, [*args, "--models_dir", str(tmp_path / "models")])
    assert_clean_error(result, f"{tmp_path / 'data' / 'pairs.jsonl'} {message}")
    assert result.returncode == 1 and not (tmp_path / "run").exists()


def test_texts_and_pairs_are_not_mixed(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "pairs.jsonl").write_text('{"prompt": "a", "completion": "b"}\n' * 3)
    (tmp_path / "data" / "notes.txt").write_text("some text")
    result = train_in_process(capsys, [str(tmp_path / "data"), "--from_scratch", "--out", str(tmp_path / "run")])
    assert_clean_error(result, "mix texts with prompt/completion pairs", "pairs.jsonl line 1")


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--from_scratch", "--model_size", "124M"],
            "--from_scratch starts from no model: not with --model or --model_size",
        ),
        (["--from_scratch", "--model", "distilgpt2"], "--from_scratch starts from no model"),
        (["--from_scratch", "--n_embd", "30", "--n_head", "4"], "--n_embd 30 is not a multiple of --n_head 4"),
        (["--n_layer", "2"], "--n_layer is for --from_scratch"),
        (["--tokenizer", "bytes"], "--tokenizer is for --from_scratch"),
        (["--from_scratch", "--n_ctx", "16", "--block_size", "32"], "--n_ctx 16 is shorter than --block_size 32"),
        (["--from_scratch", "--tokenizer", "chars"], "--tokenizer: invalid choice"),
        (["--beta2", "1"], "beta2 must be a number at least 0 and below 1"),
        (["--min_lr", "0.1", "--learning_rate", "0.01"], "min_lr must be a number at least 0 and at most 0.01"),
    ],
)
def test_usage_mistakes_of_from_scratch_exit_2_before_any_work(tmp_path, capsys, args, message):
    result = train_in_process(
        capsys, ["data.txt", "--out", str(tmp_path / "run"), "--models_dir", str(tmp_path), *args]
    )
    assert_clean_error(result, message)
    assert result.returncode == 2 and list(tmp_path.iterdir()) == []
