"""Models in HuggingFace's layout (hf.py, safetensors_file.py, utils.load_model): folders written by
HuggingFace itself, their safetensors read against the safetensors package, logits and greedy ids
against HuggingFace's model, every refused config field and damaged file, the hub from a local server
that answers like it, and HuggingFace's cache."""

import json
import os
import shutil

import numpy as np
import pytest
from helpers import (
    HPARAMS_124M,
    PROMPT,
    SMALL_HPARAMS,
    assert_clean_error,
    assert_same_params,
    cli,
    closed_port_url,
    hf_greedy_text,
)

import batching
import gpt2
import utils
from storage.safetensors_file import read_header
from tools.random_model import write_hf_model_dir

pytest.importorskip("transformers")  # HuggingFace writes the folders these tests read
torch = pytest.importorskip("torch")
from hf_reference import hf_greedy, hf_logits  # noqa: E402 (after the skip: it imports torch)

safetensors_numpy = pytest.importorskip("safetensors.numpy")


def hf_random_model(**config):
    """A GPT2LMHeadModel of HuggingFace's own random initialisation (seeded), in evaluation mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(**config)).eval()


@pytest.fixture(scope="module")
def small_hf_folder(tmp_path_factory, hf_small, tokenizer_dir):
    """The small random model of the golden files, as HuggingFace saves it (keys transformer.h.0...)."""
    return write_hf_model_dir(hf_small, str(tmp_path_factory.mktemp("hf") / "small"))


@pytest.fixture
def folder_copy(small_hf_folder, tmp_path):
    return shutil.copytree(small_hf_folder, tmp_path / "copy")


def check_against_hf(model, params, hparams, ids, n_greedy):
    logits = gpt2.gpt2(ids, **params, n_head=hparams["n_head"])
    np.testing.assert_allclose(logits, hf_logits(model, ids), atol=1e-4, rtol=0)
    assert gpt2.generate(ids, params, hparams["n_head"], n_greedy, stop_at_end_of_text=False) == hf_greedy(
        model, ids, n_greedy
    )


@pytest.mark.slow
def test_a_folder_saved_by_huggingface_gives_its_logits_and_greedy_text(small_hf_folder, hf_small, tmp_path, capsys):
    encoder, hparams, params = utils.load_model(small_hf_folder, str(tmp_path))
    assert hparams == SMALL_HPARAMS
    check_against_hf(hf_small, params, hparams, encoder.encode(PROMPT), 20)  # the command line's: the distilgpt2 test
    scored = cli(capsys, PROMPT, "--score", "--model", small_hf_folder, "--models_dir", str(tmp_path))
    assert scored.returncode == 0 and "perplexity" in scored.stdout


@pytest.mark.slow
def test_a_distilgpt2_like_model_of_six_layers(tmp_path, tiktoken_gpt2, capsys):
    model = hf_random_model(n_layer=6, n_embd=64, n_head=4, n_positions=128)
    folder = write_hf_model_dir(model, str(tmp_path / "distil"))
    encoder, hparams, params = utils.load_model(folder, str(tmp_path / "models"))
    assert (hparams["n_layer"], hparams["n_ctx"]) == (6, 128) and len(params["blocks"]) == 6
    ids = np.random.RandomState(3).randint(0, 50257, 100).tolist()
    check_against_hf(model, params, hparams, ids, 25)
    prompts = [ids[:10], ids[:60], ids[5:6]]  # many texts at once, as for OpenAI's models
    assert batching.generate_batch(prompts, params, 4, 15) == [gpt2.generate(p, params, 4, 15) for p in prompts]
    result = cli(capsys, PROMPT, "-n", "20", "--model", folder, "--models_dir", str(tmp_path / "models"))
    assert result.stdout == hf_greedy_text(model, tiktoken_gpt2, encoder.encode(PROMPT), 20) + "\n"


@pytest.mark.slow
def test_the_124M_shape(tmp_path):
    model = hf_random_model()  # GPT2Config's defaults: 124M
    folder = write_hf_model_dir(model, str(tmp_path / "gpt2"))
    _, hparams, params = utils.load_model(folder, str(tmp_path / "models"))
    assert hparams == HPARAMS_124M
    assert params["wte"].flags.f_contiguous  # laid out as OpenAI's converted copies
    check_against_hf(model, params, hparams, np.random.RandomState(4).randint(0, 50257, 30).tolist(), 8)


@pytest.mark.slow
def test_older_key_style_with_mask_buffers_reads_the_same(folder_copy, small_hf_folder, tmp_path):
    """As in the files converted from OpenAI's (openai-community/gpt2): no "transformer." prefix, the causal
    masks stored as h.N.attn.bias, and lm_head.weight beside wte."""
    weights = folder_copy / "model.safetensors"
    tensors = safetensors_numpy.load_file(str(weights))
    old = {name.removeprefix("transformer."): array for name, array in tensors.items()}
    n_ctx = SMALL_HPARAMS["n_ctx"]
    for i in range(SMALL_HPARAMS["n_layer"]):
        old[f"h.{i}.attn.bias"] = np.tril(np.ones((n_ctx, n_ctx), np.float32))[None, None]
        old[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    old["lm_head.weight"] = old["wte.weight"]
    safetensors_numpy.save_file(old, str(weights))
    _, _, params = utils.load_model(str(folder_copy), str(tmp_path / "a"))
    assert_same_params(params, utils.load_model(small_hf_folder, str(tmp_path / "b"))[2])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_files_give_the_float32_logits_of_their_rounded_weights(hf_small, tmp_path, dtype):
    from transformers import GPT2LMHeadModel

    half = hf_random_model(n_layer=2, n_embd=32, n_head=4, n_positions=64)
    half.load_state_dict(hf_small.state_dict())
    folder = write_hf_model_dir(half, str(tmp_path / dtype), dtype=getattr(torch, dtype))
    stored = {entry[0] for entry in read_header(os.path.join(folder, "model.safetensors"))[0].values()}
    assert stored == {{"float16": "F16", "bfloat16": "BF16"}[dtype]}
    reference = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()  # the rounded weights, widened
    _, hparams, params = utils.load_model(folder, str(tmp_path / "models"))
    ids = np.random.RandomState(5).randint(0, 50257, 40).tolist()
    check_against_hf(reference, params, hparams, ids, 10)


def test_safetensors_read_as_the_safetensors_package_reads_them(small_hf_folder):
    from storage.safetensors_file import read_tensors

    weights = os.path.join(small_hf_folder, "model.safetensors")
    ours, theirs = dict(read_tensors(weights)), safetensors_numpy.load_file(weights)
    assert ours.keys() == theirs.keys()
    for name, array in theirs.items():
        assert ours[name].dtype == np.float32
        np.testing.assert_array_equal(ours[name], array)


@pytest.mark.parametrize(
    "field, value",
    [
        ("model_type", "llama"),
        ("activation_function", "relu"),
        ("scale_attn_by_inverse_layer_idx", True),
        ("reorder_and_upcast_attn", True),
        ("add_cross_attention", True),
        ("scale_attn_weights", False),
        ("tie_word_embeddings", False),
        ("n_inner", 100),
        ("layer_norm_epsilon", 1e-6),
    ],
)
def test_a_config_the_model_does_not_compute_is_refused_naming_the_field(folder_copy, tmp_path, capsys, field, value):
    config_path = folder_copy / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), field: value}))
    with pytest.raises(ValueError, match=f"^{config_path}: {field} is {json.dumps(value)}, not "):
        utils.load_model(str(folder_copy), str(tmp_path / "models"))
    result = cli(capsys, PROMPT, "--model", str(folder_copy), "--models_dir", str(tmp_path / "models"))
    assert_clean_error(result, f"{field} is {json.dumps(value)}")
    assert result.returncode == 1


def rewrite_header(weights, change):
    """model.safetensors with its header changed by change(header), its data as they were."""
    data = weights.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = change(json.loads(data[8 : 8 + length]))
    encoded = json.dumps(header).encode()
    weights.write_bytes(len(encoded).to_bytes(8, "little") + encoded + data[8 + length :])


def first_tensor(header):
    return next(name for name in header if name != "__metadata__")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda w: w.write_bytes(w.read_bytes()[:-1000]), "outside the"),
        (lambda w: w.write_bytes(w.read_bytes()[:5]), "is cut short: 5 bytes"),
        (lambda w: w.write_bytes((10**12).to_bytes(8, "little") + w.read_bytes()[8:]), "not a safetensors file"),
        (lambda w: w.write_bytes(w.read_bytes()[:8] + b"{oops" + w.read_bytes()[13:]), "header that is not JSON"),
        (
            lambda w: rewrite_header(w, lambda h: {k: v for k, v in h.items() if k != "transformer.wpe.weight"}),
            "lacks wpe",
        ),
        (
            lambda w: rewrite_header(w, lambda h: {**h, first_tensor(h): {**h[first_tensor(h)], "dtype": "I8"}}),
            "is I8; F32, F16 and BF16",
        ),
        (
            lambda w: rewrite_header(w, lambda h: {**h, first_tensor(h): {**h[first_tensor(h)], "shape": [7]}}),
            "has shape (7,) of F32 but",
        ),
        (
            lambda w: rewrite_header(
                w, lambda h: {**h, first_tensor(h): {**h[first_tensor(h)], "data_offsets": [0, 10**9]}}
            ),
            "outside the",
        ),
    ],
    ids=[
        "truncated",
        "not even a header",
        "header length past the end",
        "header not JSON",
        "missing tensor",
        "unknown dtype",
        "size not the shape's",
        "offsets outside",
    ],
)
def test_a_damaged_safetensors_file_is_a_clear_error(folder_copy, tmp_path, capsys, damage, message):
    damage(folder_copy / "model.safetensors")
    result = cli(capsys, PROMPT, "--model", str(folder_copy), "--models_dir", str(tmp_path / "models"))
    assert_clean_error(result, message)
    assert result.returncode == 1


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: (f / "config.json").unlink(), "has no config.json: not a model folder in HuggingFace's layout"),
        (lambda f: (f / "config.json").write_text("{oops"), "config.json is not JSON: expecting property name"),
        (
            lambda f: (f / "config.json").write_text('{"model_type": "gpt2", "n_embd": 32}'),
            "has no usable vocab_size field",
        ),
        (
            lambda f: (f / "merges.txt").unlink(),
            "has no tokenizer: neither vocab.json and merges.txt nor tokenizer.json",
        ),
    ],
    ids=["no config", "config not JSON", "config lacks a size", "no tokenizer"],
)
def test_a_folder_without_what_it_needs_says_what_is_missing(folder_copy, tmp_path, capsys, damage, message):
    damage(folder_copy)
    result = cli(capsys, PROMPT, "--model", str(folder_copy), "--models_dir", str(tmp_path / "models"))
    assert_clean_error(result, message)
    assert result.returncode == 1


def test_a_tensor_of_another_shape_than_the_config_is_named(folder_copy, tmp_path):
    weights = folder_copy / "model.safetensors"
    tensors = safetensors_numpy.load_file(str(weights))
    tensors["transformer.wpe.weight"] = tensors["transformer.wpe.weight"][:10]
    safetensors_numpy.save_file(tensors, str(weights))
    with pytest.raises(
        OSError, match=r"model.safetensors has wpe of shape \(10, 32\), config.json asks for \(64, 32\)"
    ):
        utils.load_model(str(folder_copy), str(tmp_path / "models"))
    assert not list((tmp_path / "models").rglob("npy"))  # refused before any conversion


def test_pickled_weights_alone_are_refused(folder_copy, tmp_path):
    (folder_copy / "model.safetensors").rename(folder_copy / "pytorch_model.bin")
    with pytest.raises(OSError, match="only pytorch_model.bin, a pickle, which can run code"):
        utils.load_model(str(folder_copy), str(tmp_path / "models"))


@pytest.mark.slow
@pytest.mark.parametrize("merges_as", ["a b", "pairs"])  # newer versions of HuggingFace's tokenizers write pairs
def test_a_tokenizer_json_alone_is_read(folder_copy, tmp_path, tiktoken_gpt2, merges_as):
    vocabulary = json.loads((folder_copy / "vocab.json").read_text(encoding="utf-8"))
    merges = (folder_copy / "merges.txt").read_text(encoding="utf-8").split("\n")[1:-1]
    if merges_as == "pairs":
        merges = [merge.split(" ") for merge in merges]  # ["a", "b"], not "a b"
    (folder_copy / "tokenizer.json").write_text(
        json.dumps({"model": {"type": "BPE", "vocab": vocabulary, "merges": merges}})
    )
    (folder_copy / "vocab.json").unlink()
    (folder_copy / "merges.txt").unlink()
    encoder, _, _ = utils.load_model(str(folder_copy), str(tmp_path / "models"))
    text = "Not all heroes wear capes. 日本語 🤗"
    assert encoder.encode(text) == tiktoken_gpt2.encode_ordinary(text)


@pytest.mark.slow
def test_weights_changed_in_place_are_converted_again(folder_copy, tmp_path, capsys):
    """A run folder trained further keeps its header byte for byte (the same names, shapes and
    offsets): loaded again, it gives the new weights, not the old converted copy. The first
    conversion says where its copy goes and how large it is; the next says why it comes again."""
    _, _, before = utils.load_model(str(folder_copy), str(tmp_path / "models"))
    before = np.array(before["wte"])
    n_bytes = sum(4 * value.size for value in tensors_in(folder_copy))
    first = capsys.readouterr().err
    assert (
        f"to NumPy arrays in {tmp_path / 'models' / 'hf' / 'local'}" in first
        and f"{n_bytes / 1e6:,.0f} MB kept" in first
    )
    weights = folder_copy / "model.safetensors"
    data = weights.read_bytes()
    start = 8 + int.from_bytes(data[:8], "little")
    assert all(entry == "__metadata__" or value["dtype"] == "F32" for entry, value in json.loads(data[8:start]).items())
    weights.write_bytes(data[:start] + (np.frombuffer(data[start:], "<f4") + np.float32(0.5)).tobytes())
    _, _, after = utils.load_model(str(folder_copy), str(tmp_path / "models"))
    np.testing.assert_array_equal(after["wte"], before + np.float32(0.5))
    assert "changed since they were converted: converting them again" in capsys.readouterr().err


def tensors_in(folder):  # the tensors of a safetensors file, as the safetensors package reads them
    safetensors = pytest.importorskip("safetensors.numpy")
    return safetensors.load_file(str(folder / "model.safetensors")).values()


def test_a_config_that_spells_out_n_inner_is_read(folder_copy, tmp_path):
    config = json.loads((folder_copy / "config.json").read_text())
    config["n_inner"] = 4 * config["n_embd"]  # what the default None means, written out
    (folder_copy / "config.json").write_text(json.dumps(config))
    _, hparams, _ = utils.load_model(str(folder_copy), str(tmp_path / "models"))
    assert hparams["n_embd"] == config["n_embd"]


def test_a_read_only_folder_is_never_written_into(small_hf_folder, tmp_path):
    before = sorted(os.listdir(small_hf_folder))
    os.chmod(small_hf_folder, 0o555)
    try:
        utils.load_model(small_hf_folder, str(tmp_path / "models"))
    finally:
        os.chmod(small_hf_folder, 0o755)
    assert sorted(os.listdir(small_hf_folder)) == before
    assert os.listdir(tmp_path / "models" / "hf" / "local")  # the converted copy went under models_dir


@pytest.mark.parametrize(
    "args, message",
    [
        (("--model", "distilgpt2", "--model_size", "355M"), "give --model or --model_size, not both"),
        (("--model", "no/such/folder"), "'no/such/folder' is neither a folder nor a model name"),
        (("--model", "../up"), "is neither a folder nor a model name"),
        (("--model", "distilgpt2", "--revision", "../../etc"), "'../../etc' is not a revision"),
    ],
)
def test_model_flag_mistakes_are_usage_errors(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    result = cli(capsys, PROMPT, *args, "--models_dir", str(tmp_path))
    assert_clean_error(result, message)
    assert result.returncode == 2 and os.listdir(tmp_path) == []


# The hub, from a local server that answers as it does: {endpoint}/{repo}/resolve/{revision}/{file}


@pytest.fixture
def hub(small_hf_folder, tmp_path, monkeypatch, fast_retries):
    from model_server import ModelServer

    root = tmp_path / "hub"
    shutil.copytree(small_hf_folder, root / "someone" / "tiny-gpt2" / "resolve" / "main")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with ModelServer(str(root)) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


@pytest.mark.slow
def test_a_model_from_the_hub_is_downloaded_once_and_checked(hub, tmp_path, small_hf_folder):
    hub.modes["model.safetensors"] = "etag"  # the hub vouches for large files with their sha256
    _, hparams, params = utils.load_model("someone/tiny-gpt2", str(tmp_path / "models"))
    assert_same_params(params, utils.load_model(small_hf_folder, str(tmp_path / "local"))[2])
    assert [len(hub.hits(name)) for name in ("config.json", "model.safetensors", "vocab.json", "merges.txt")] == [1] * 4
    utils.load_model("someone/tiny-gpt2", str(tmp_path / "models"))
    assert len(hub.requests) == 4  # the second load asks nothing


@pytest.mark.slow
def test_hub_faults(hub, tmp_path):
    hub.modes["model.safetensors"] = "drop_once"  # broken off midway: resumed
    utils.load_model("someone/tiny-gpt2", str(tmp_path / "models"))
    assert "Range" in hub.hits("model.safetensors")[-1]
    hub.modes["model.safetensors"] = "etag_wrong"
    with pytest.raises(OSError, match="is not the expected model.safetensors \\(its sha256 differs\\)"):
        utils.load_model("someone/tiny-gpt2", str(tmp_path / "other"))
    assert not (tmp_path / "other" / "hf" / "someone--tiny-gpt2@main" / "model.safetensors").exists()
    hub.modes["model.safetensors"] = "redirect_etag_wrong"  # the hub vouches on the redirect
    with pytest.raises(OSError, match="is not the expected model.safetensors \\(its sha256 differs\\)"):
        utils.load_model("someone/tiny-gpt2", str(tmp_path / "third"))


@pytest.mark.slow
def test_hub_model_without_safetensors_or_merges(hub, tmp_path):
    files = os.path.join(hub.root, "someone", "tiny-gpt2", "resolve", "main")
    vocabulary = json.loads(open(os.path.join(files, "vocab.json"), encoding="utf-8").read())
    merges = open(os.path.join(files, "merges.txt"), encoding="utf-8").read().split("\n")[1:-1]
    with open(os.path.join(files, "tokenizer.json"), "w") as f:
        json.dump({"model": {"vocab": vocabulary, "merges": merges}}, f)
    os.remove(os.path.join(files, "merges.txt"))
    utils.load_model("someone/tiny-gpt2", str(tmp_path / "models"))
    assert len(hub.hits("tokenizer.json")) == 1
    hub.modes["model.safetensors"] = "404"
    with pytest.raises(OSError, match="someone/tiny-gpt2 has no model.safetensors at main .*never pytorch_model.bin"):
        utils.load_model("someone/tiny-gpt2", str(tmp_path / "other"))
    with pytest.raises(
        OSError,
        match="could not download config.json from .*/someone/nothing/resolve/main/config.json: the server answered HTTP 404 Not Found; check .* the model's name",
    ):
        utils.load_model("someone/nothing", str(tmp_path / "other"))
    assert not (tmp_path / "other" / "hf" / "someone--nothing@main").exists()  # the failed download left nothing


@pytest.mark.slow
def test_a_model_in_huggingfaces_cache_is_used_without_a_request(small_hf_folder, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(small_hf_folder, cache / "models--someone--tiny-gpt2" / "snapshots" / commit)
    (cache / "models--someone--tiny-gpt2" / "refs").mkdir()
    (cache / "models--someone--tiny-gpt2" / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())  # any request would fail
    before = sorted(str(path) for path in cache.rglob("*"))
    result = cli(capsys, PROMPT, "-n", "5", "--model", "someone/tiny-gpt2", "--models_dir", str(tmp_path / "models"))
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout
        == cli(capsys, PROMPT, "-n", "5", "--model", small_hf_folder, "--models_dir", str(tmp_path / "m")).stdout
    )
    assert sorted(str(path) for path in cache.rglob("*")) == before  # the cache is never written into
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    shutil.copytree(cache, tmp_path / "home" / "hub")
    assert (
        cli(
            capsys,
            PROMPT,
            "-n",
            "5",
            "--model",
            "someone/tiny-gpt2",
            "--revision",
            commit,
            "--models_dir",
            str(tmp_path / "models"),
        ).returncode
        == 0
    )


def test_a_hub_download_cut_short_is_completed_by_the_next_run(hub, tmp_path):
    hub.modes["merges.txt"] = "404"  # and there is no tokenizer.json: the run stops after the weights
    with pytest.raises(OSError, match="could not download tokenizer.json"):
        utils.load_model("someone/tiny-gpt2", str(tmp_path / "models"))
    hub.modes.clear()
    utils.load_model("someone/tiny-gpt2", str(tmp_path / "models"))
    assert len(hub.hits("model.safetensors")) == 1 and len(hub.hits("merges.txt")) == 2
