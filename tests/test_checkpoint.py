"""checkpoint.py, our reader of TensorFlow checkpoints, against TensorFlow itself, and on damaged files."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import PROMPT, REPO_DIR, SMALL_HPARAMS, assert_same_params, cli, load, needs

import utils
from storage import checkpoint
from tools.random_model import import_tensorflow, random_openai_variables, write_openai_model_dir

needs("tensorflow")  # the reference reader, and the writer of every checkpoint here
DATA = utils.CHECKPOINT_DATA
# GPT-2 124M's 148 tensor names (12 layers) on a tiny body, so that the test writes kilobytes
NAMES_124M = {"n_vocab": 300, "n_ctx": 16, "n_embd": 8, "n_head": 2, "n_layer": 12}


def assert_reads_as_tensorflow(prefix):
    tf = import_tensorflow()
    ours = dict(checkpoint.read_tensors(prefix))
    reader = tf.train.load_checkpoint(prefix)
    names = list(reader.get_variable_to_shape_map())
    assert sorted(ours) == sorted(names)
    for name in names:
        reference = reader.get_tensor(name)
        assert ours[name].dtype == reference.dtype == np.float32 and ours[name].shape == reference.shape
        np.testing.assert_array_equal(ours[name], reference)
    return ours


@pytest.mark.slow
def test_reads_exactly_what_tensorflow_reads(small_models_dir, tmp_path):
    """Every tensor read also passed its crc32c check, masked as TensorFlow stored it."""
    assert (
        len(assert_reads_as_tensorflow(str(small_models_dir / "124M" / "model.ckpt")))
        == 4 + 12 * SMALL_HPARAMS["n_layer"]
    )
    write_openai_model_dir(str(tmp_path / "124M"), NAMES_124M, random_openai_variables(NAMES_124M, 3))
    ours = assert_reads_as_tensorflow(str(tmp_path / "124M" / "model.ckpt"))
    assert len(ours) == 148 and ours["model/h11/mlp/c_proj/w"].shape == (1, 32, 8)


@pytest.fixture
def damaged_copy(models_copy):
    """A copy of the small model folder without its converted copy: the next load reads the checkpoint."""
    shutil.rmtree(models_copy / "124M" / "npy")
    return models_copy


def flip_a_bit(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_flipped_bit_in_the_data_is_found_and_named(damaged_copy):
    prefix = damaged_copy / "124M" / "model.ckpt"
    entries = checkpoint.read_index(f"{prefix}.index")
    for name, (_, offset, size, _) in entries.items():
        flip_a_bit(damaged_copy / "124M" / DATA, offset + size // 2)  # the size stays right: only checksums see it
        with pytest.raises(
            checkpoint.CheckpointError, match=f"^{name} in {DATA} fails its checksum: the file is damaged$"
        ):
            list(checkpoint.read_tensors(str(prefix)))
        flip_a_bit(damaged_copy / "124M" / DATA, offset + size // 2)
    assert len(list(checkpoint.read_tensors(str(prefix)))) == len(entries)


def test_an_index_entry_whose_size_disagrees_with_its_shape(damaged_copy, monkeypatch):
    """An entry whose byte size is not its shape's, though the bytes pass their checksum (what an index
    written wrongly, or edited along with its block checksums, holds): refused by name, not reshaped."""
    prefix = str(damaged_copy / "124M" / "model.ckpt")
    entries = checkpoint.read_index(f"{prefix}.index")
    shape, offset, size, crc = entries["model/ln_f/b"]
    wrong = {**entries, "model/ln_f/b": ((shape[0] - 1,), offset, size, crc)}
    monkeypatch.setattr(checkpoint, "read_index", lambda path: wrong)
    with pytest.raises(
        checkpoint.CheckpointError, match=rf"^model/ln_f/b has shape \({shape[0] - 1},\) but {size} bytes"
    ):
        list(checkpoint.read_tensors(prefix))


@pytest.mark.slow
def test_flipped_bit_is_downloaded_again(damaged_copy, model_server, monkeypatch, small_params, capsys):
    monkeypatch.setenv("GPT2_BASE_URL", model_server.url)
    flip_a_bit(damaged_copy / "124M" / DATA, os.path.getsize(damaged_copy / "124M" / DATA) - 5)
    assert_same_params(load(damaged_copy)[2], small_params)
    assert len(model_server.hits(DATA)) == 1
    assert "fails its checksum" in capsys.readouterr().err


def test_damage_that_a_fresh_download_does_not_cure(damaged_copy, small_models_dir, tmp_path, monkeypatch):
    from model_server import ModelServer

    served = tmp_path / "served"
    shutil.copytree(small_models_dir, served)
    flip_a_bit(served / "124M" / DATA, 64)  # the server's copy is damaged the same way
    shutil.copy(served / "124M" / DATA, damaged_copy / "124M" / DATA)
    with ModelServer(str(served)) as server:
        monkeypatch.setenv("GPT2_BASE_URL", server.url)
        with pytest.raises(checkpoint.CheckpointError, match="fails its checksum.*even as just downloaded; delete"):
            load(damaged_copy)
        assert len(server.hits(DATA)) == 1


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: data[:-10], "model.ckpt.index is not a checkpoint index (no magic number at its end)"),
        (lambda data: data[:-1] + b"\x00", "no magic number"),
        (lambda data: data[100:], "model.ckpt.index cannot be read: "),
        (
            lambda data: data[:20] + bytes([data[20] ^ 1]) + data[21:],
            "model.ckpt.index cannot be read: a block at offset",
        ),
    ],
    ids=["truncated", "wrong magic", "cut at the start", "flipped bit"],
)
def test_damaged_index(damaged_copy, damage, message):
    index = damaged_copy / "124M" / "model.ckpt.index"
    index.write_bytes(damage(index.read_bytes()))
    with pytest.raises(checkpoint.CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        list(checkpoint.read_tensors(str(damaged_copy / "124M" / "model.ckpt")))


def test_index_that_disagrees_with_hparams(damaged_copy, model_server, monkeypatch):
    """hparams.json with n_vocab and n_ctx swapped implies the same data size, so only the shapes differ."""
    monkeypatch.setenv("GPT2_BASE_URL", model_server.url)
    hparams_path = damaged_copy / "124M" / "hparams.json"
    hparams = {**SMALL_HPARAMS, "n_vocab": SMALL_HPARAMS["n_ctx"], "n_ctx": SMALL_HPARAMS["n_vocab"]}
    hparams_path.write_text(json.dumps(hparams))
    with pytest.raises(
        checkpoint.CheckpointError,
        match=r"has wpe of shape \(64, 32\), hparams.json asks for \(50257, 32\), even as just",
    ):
        load(damaged_copy)
    assert len(model_server.hits(DATA)) == 1  # downloaded again once, in case the checkpoint was at fault


@pytest.mark.slow
def test_the_command_line_never_imports_tensorflow(damaged_copy, golden, tiktoken_gpt2):
    """The first load, conversion included, in a Python where importing TensorFlow fails."""
    code = (
        "import sys, runpy\n"
        "sys.modules['tensorflow'] = None  # import tensorflow raises ImportError\n"
        f"sys.argv = ['gpt2.py', {PROMPT!r}, '-n', '8', '--models_dir', {str(damaged_copy)!r}]\n"
        f"runpy.run_path({os.path.join(REPO_DIR, 'gpt2.py')!r}, run_name='__main__')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == tiktoken_gpt2.decode(golden["greedy_ids"][:8].tolist()) + "\n"
    assert "Converting the checkpoint" in result.stderr


def test_bad_index_in_the_cli_says_so_and_fetches_it_again(damaged_copy, monkeypatch, capsys):
    index = damaged_copy / "124M" / "model.ckpt.index"
    index.write_bytes(index.read_bytes()[:-3])
    monkeypatch.setenv("GPT2_BASE_URL", str(damaged_copy / "nowhere"))
    result = cli(capsys, PROMPT, "--models_dir", str(damaged_copy))
    lines = result.stderr.splitlines()
    assert result.returncode == 1 and result.stdout == "" and "Traceback" not in result.stderr
    assert (
        lines[1]
        == "model.ckpt.index is not a checkpoint index (no magic number at its end): downloading the checkpoint again"
    )
    assert lines[-1].startswith(f"error: could not copy {damaged_copy}/nowhere/124M/")  # (GPT2_BASE_URL has no copy)


def test_a_tensor_that_is_not_float32_is_refused(tmp_path):
    """An int32 variable in the checkpoint: its bytes would read as float32 numbers without a word."""
    tf = import_tensorflow()
    prefix = str(tmp_path / "model.ckpt")
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=["model/wte"],
        shape_and_slices=[""],
        tensors=[tf.constant([[1, 2], [3, 4]], dtype=tf.int32)],
    )
    assert tf.train.load_checkpoint(prefix).get_variable_to_dtype_map()["model/wte"] == tf.int32
    with pytest.raises(checkpoint.CheckpointError, match="not float32"):
        list(checkpoint.read_tensors(prefix))
