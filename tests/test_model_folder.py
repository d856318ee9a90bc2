"""Loading OpenAI's model folder (utils.py): the checkpoint converted once into the .npy copy (npy_copy.py),
later loads from that copy, and copies that are damaged, out of date, or forged."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import HPARAMS_124M, REPO_DIR, SMALL_HPARAMS, assert_same_params, load

import utils
from storage import npy_copy


def test_124M_has_the_published_parameter_count():
    hparams = HPARAMS_124M
    assert sum(np.prod(shape) for shape in utils.expected_shapes(hparams).values()) == 124_439_808


def test_loads_openai_folder_exactly(models_copy, small_params):
    shutil.rmtree(models_copy / "124M" / "npy")
    encoder, hparams, params = utils.load_encoder_hparams_and_params("124M", str(models_copy))
    assert hparams == SMALL_HPARAMS
    assert encoder.encode("Not all heroes wear capes.") == [3673, 477, 10281, 5806, 1451, 274, 13]
    assert_same_params(params, small_params)
    assert os.path.isfile(models_copy / "124M" / "npy" / "manifest.json")
    assert set(name for name in os.listdir(models_copy / "124M") if name.startswith(".")) <= {".lock"}  # no temporary


def test_matrices_are_stored_column_by_column_and_older_layouts_rebuilt(models_copy, capfd):
    _, _, params = utils.load_encoder_hparams_and_params("124M", str(models_copy))
    assert params["wte"].flags.f_contiguous and params["blocks"][0]["mlp"]["c_fc"]["w"].flags.f_contiguous
    manifest_path = models_copy / "124M" / "npy" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["format"]  # as the copies made before wte was stored column by column
    manifest_path.write_text(json.dumps(manifest))
    utils.load_encoder_hparams_and_params("124M", str(models_copy))
    assert "out of date" in capfd.readouterr().err
    assert json.loads(manifest_path.read_text())["format"] == npy_copy.MANIFEST_FORMAT


@pytest.mark.slow
def test_second_load_needs_no_tensorflow(models_copy, small_params, tmp_path):
    code = (
        "import sys, numpy as np, utils\n"
        f"e, h, p = utils.load_encoder_hparams_and_params('124M', {str(models_copy)!r})\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
        f"np.save({str(tmp_path / 'w.npy')!r}, p['blocks'][1]['mlp']['c_fc']['w'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_DIR, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "w.npy"), small_params["blocks"][1]["mlp"]["c_fc"]["w"])


def converted_file(models_dir, name="blocks.0.attn.c_attn.w.npy"):
    return models_dir / "124M" / "npy" / name


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "delete", "manifest", "checkpoint_changed"])
def test_damaged_or_stale_copy_is_rebuilt(models_copy, small_params, damage, capsys):
    path = converted_file(models_copy)
    expected = small_params
    if damage == "truncate":
        os.truncate(path, os.path.getsize(path) - 100)
    elif damage == "delete":
        os.remove(path)
    elif damage == "manifest":
        converted_file(models_copy, "manifest.json").write_text("{not json")
    elif damage == "checkpoint_changed":  # other weights of the same shapes: the data file keeps its size
        from tools.random_model import nested_params, random_openai_variables, write_openai_model_dir

        variables = random_openai_variables(SMALL_HPARAMS, 99)
        write_openai_model_dir(str(models_copy / "124M"), SMALL_HPARAMS, variables)
        expected = nested_params(variables, SMALL_HPARAMS["n_layer"])
    _, _, params = utils.load_encoder_hparams_and_params("124M", str(models_copy))
    assert_same_params(params, expected)
    assert "rebuilding" in capsys.readouterr().err


def test_unknown_model_size_lists_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="124M, 355M, 774M, 1558M"):
        utils.load_encoder_hparams_and_params("../124M", str(tmp_path))


def test_converted_copy_records_its_source(models_copy):
    manifest = json.loads(converted_file(models_copy, "manifest.json").read_text())
    assert set(manifest["source"]) == {"model.ckpt.data-00000-of-00001", "model.ckpt.index"}
    assert len(manifest["tensors"]) == 4 + 12 * SMALL_HPARAMS["n_layer"]


def forge(converted, name, array):
    """Put array in the copy as name, with a manifest that vouches for it: the copy stays current."""
    np.save(converted / name, array, allow_pickle=True)
    manifest = json.loads((converted / "manifest.json").read_text())
    manifest["tensors"][name] = os.path.getsize(converted / name)
    (converted / "manifest.json").write_text(json.dumps(manifest))


class CreatesFileWhenUnpickled:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))  # what unpickling it runs


def test_converted_copy_is_never_unpickled(models_copy, small_params, tmp_path, capsys):
    """A .npy file holding a pickle, with a manifest that vouches for it, is rebuilt, not run."""
    converted, marker = models_copy / "124M" / "npy", tmp_path / "unpickled"
    forge(converted, "wte.npy", np.array([CreatesFileWhenUnpickled(str(marker))], dtype=object))
    model_dir, hparams = str(models_copy / "124M"), utils.load_hparams(str(models_copy / "124M"))
    assert npy_copy.is_current(model_dir, utils.expected_shapes(hparams), utils.source_fingerprint(model_dir))
    assert_same_params(load(models_copy)[2], small_params)
    assert not marker.exists()
    assert "rebuilding" in capsys.readouterr().err


def test_converted_copy_of_another_dtype_is_rebuilt(models_copy, small_params, capsys):
    """Float64 arrays of the right shapes would load, and silently make every product float64."""
    converted = models_copy / "124M" / "npy"
    forge(converted, "ln_f.g.npy", small_params["ln_f"]["g"].astype(np.float64))
    assert_same_params(load(models_copy)[2], small_params)
    assert "rebuilding" in capsys.readouterr().err
