"""The converted copy of a model's weights: one float32 .npy file per tensor, memory-mapped on load.

A checkpoint is read once (checkpoint.py for OpenAI's) and its tensors written here, laid out for
speed, with a manifest of what the copy was made from. Later loads check the manifest and map the
files: no copy in memory, a few milliseconds. The copy is built in a temporary folder and renamed
into place when complete; whether it is current is judged by content that a copy of the folder
keeps (cp -r and sync tools change modification times), so copied and read-only folders load as
they are. The files are read without pickle.
"""

import json
import os
import shutil
import tempfile

import numpy as np

from .files import check_room, disk_full, fsync_path, give_usual_permissions, no_room, synced

CONVERTED_DIR = "npy"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 3  # a copy whose manifest has another format (or another layout of the arrays) is rebuilt


class SourceError(OSError):
    """The checkpoint does not hold what the model's hyperparameters ask for."""


def laid_out(key, array):
    """The weight matrices ([n_in, n_out]) stored column by column: generating one token multiplies a
    vector by each matrix, and BLAS streams that product faster along contiguous columns. wte too,
    whose transpose is the output layer's matrix: a token's row is then read scattered, but that is one
    row per token against the whole matrix per token."""
    return np.asfortranarray(array) if key.endswith(".w") or key == "wte" else array


def tensor_sizes(directory, keys):
    return {f"{key}.npy": os.path.getsize(os.path.join(directory, f"{key}.npy")) for key in keys}


def write(model_dir, tensors, shapes, source, needed, source_name=None, config_name="hparams.json"):
    """Write tensors, (flat key, float32 array) pairs, as model_dir/npy/{key}.npy, each checked against
    shapes ({flat key: shape}, from the file config_name); source is a fingerprint of what they came
    from, kept in the manifest; needed the bytes they take; source_name names it in errors. Where the
    disk has no room for the new copy beside an old one, the old one goes first: it is out of date, and
    the checkpoint can always make it again."""
    converted_dir = os.path.join(model_dir, CONVERTED_DIR)
    source_name = source_name or f"the checkpoint in {model_dir}"
    if shutil.disk_usage(model_dir).free < needed:
        shutil.rmtree(converted_dir, ignore_errors=True)
    check_room(model_dir, "to convert the checkpoint", needed)
    tmp_dir = tempfile.mkdtemp(dir=model_dir, prefix=f".{CONVERTED_DIR}.")
    try:
        for key, array in tensors:
            if array.shape != shapes.get(key):
                raise SourceError(
                    f"{source_name} has {key} of shape {array.shape}, {config_name} asks for {shapes.get(key)}"
                )
            array = laid_out(key, array)
            try:
                with open(os.path.join(tmp_dir, f"{key}.npy"), "wb") as f:
                    np.save(f, array)
                    synced(f)
            except OSError as e:  # a full disk: NumPy's short write ("N requested and M written") has no errno
                if e.errno is not None and not no_room(e):
                    raise
                raise disk_full(model_dir, "to convert the checkpoint", needed) from None
        missing = [key for key in shapes if not os.path.exists(os.path.join(tmp_dir, f"{key}.npy"))]
        if missing:
            raise SourceError(f"{source_name} lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        manifest = {"format": MANIFEST_FORMAT, "source": source, "tensors": tensor_sizes(tmp_dir, shapes)}
        with open(os.path.join(tmp_dir, MANIFEST), "w") as f:
            json.dump(manifest, f)
            synced(f)
        fsync_path(tmp_dir)  # every file and the folder on disk before the rename makes the copy look complete
        shutil.rmtree(converted_dir, ignore_errors=True)
        give_usual_permissions(tmp_dir)
        os.rename(tmp_dir, converted_dir)
        fsync_path(model_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def is_current(model_dir, shapes, source):
    """Whether model_dir/npy holds a complete copy of every tensor in shapes, made from source by this
    version of the converter: its manifest says so, and every file has the size the manifest recorded."""
    converted_dir = os.path.join(model_dir, CONVERTED_DIR)
    try:
        with open(os.path.join(converted_dir, MANIFEST)) as f:
            manifest = json.load(f)
        return (
            manifest.get("format") == MANIFEST_FORMAT
            and manifest["source"] == source
            and manifest["tensors"] == tensor_sizes(converted_dir, shapes)
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def load(model_dir, shapes, source):
    """{flat key: float32 array} memory-mapped from the copy; None if it is missing, out of date or damaged."""
    if not is_current(model_dir, shapes, source):
        return None
    converted_dir = os.path.join(model_dir, CONVERTED_DIR)
    try:
        # np.asarray drops the np.memmap subclass, whose bookkeeping slows every operation, not the mapping.
        flat = {
            key: np.asarray(np.load(os.path.join(converted_dir, f"{key}.npy"), mmap_mode="r", allow_pickle=False))
            for key in shapes
        }
    except (OSError, ValueError):
        return None
    if any(flat[key].shape != shape or flat[key].dtype != np.float32 for key, shape in shapes.items()):
        return None
    return flat


def leftovers(model_dir):
    """Temporary folders of conversions that were killed (SIGKILL, a power cut) before they could clean up."""
    try:
        return [name for name in os.listdir(model_dir) if name.startswith(f".{CONVERTED_DIR}.")]
    except OSError:
        return []
