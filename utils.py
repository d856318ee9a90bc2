"""Get OpenAI's GPT-2 files and turn the TensorFlow checkpoint into NumPy arrays.

The first load of a model downloads its seven files into models_dir/model_size and converts the
checkpoint with TensorFlow into one .npy file per tensor, in models_dir/model_size/npy. Every later
load memory-maps those .npy files: no TensorFlow, no copy, a few milliseconds.
"""

import json
import os
import shutil
import sys
import tempfile

import numpy as np

from encoder import get_encoder

MODEL_SIZES = ("124M", "355M", "774M", "1558M")
FILES = (
    "checkpoint",
    "encoder.json",
    "hparams.json",
    "model.ckpt.data-00000-of-00001",
    "model.ckpt.index",
    "model.ckpt.meta",
    "vocab.bpe",
)
DEFAULT_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
CHECKPOINT_FILES = ("model.ckpt.data-00000-of-00001", "model.ckpt.index")  # what the .npy copy is made from
CONVERTED_DIR = "npy"
MANIFEST = "manifest.json"


def check_model_size(model_size):
    if model_size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {model_size!r}: choose one of {', '.join(MODEL_SIZES)}")


def give_usual_permissions(path):
    """mkstemp and mkdtemp make private entries (0600, 0700); a finished one gets what open() would give."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~umask)


def download_file(url, path):
    """Download url to path, showing a progress bar on stderr. The bytes go to a temporary file in the
    same folder, renamed to path only once complete, so a failed download never leaves a file that
    looks finished."""
    import requests
    from tqdm import tqdm

    name = os.path.basename(path)
    fd, tmp_path = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f, requests.get(url, stream=True, timeout=(10, 60)) as response:
            response.raise_for_status()
            total = int(response.headers.get("content-length", 0)) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=name, file=sys.stderr) as bar:
                for chunk in response.iter_content(chunk_size=1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
        give_usual_permissions(tmp_path)
        os.replace(tmp_path, path)
    except requests.RequestException as e:
        raise OSError(f"could not download {name} from {url}: {type(e).__name__}: {e}") from None
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def download_gpt2_files(model_size, model_dir, files=FILES):
    check_model_size(model_size)
    base_url = os.environ.get("GPT2_BASE_URL", DEFAULT_BASE_URL).rstrip("/")
    os.makedirs(model_dir, exist_ok=True)
    for name in files:
        download_file(f"{base_url}/{model_size}/{name}", os.path.join(model_dir, name))


def import_tensorflow():
    """Import TensorFlow without its start-up log lines (C++ messages that go straight to stderr)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    stderr_fd = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        import tensorflow as tf
    except ImportError:
        raise ImportError("TensorFlow is needed once, to convert the checkpoint: pip install tensorflow") from None
    finally:
        os.dup2(stderr_fd, 2)
        os.close(stderr_fd)
    return tf


def tensor_key(tf_name):
    """OpenAI's variable name -> our flat key: "model/h3/attn/c_attn/w" -> "blocks.3.attn.c_attn.w"."""
    parts = tf_name.removeprefix("model/").split("/")
    if parts[0].startswith("h") and parts[0][1:].isdigit():
        parts = ["blocks", parts[0][1:]] + parts[1:]
    return ".".join(parts)


def expected_shapes(hparams):
    """Flat key -> shape of every tensor of a GPT-2 with these hyperparameters."""
    n_vocab, n_ctx, n_embd = hparams["n_vocab"], hparams["n_ctx"], hparams["n_embd"]
    shapes = {"wte": (n_vocab, n_embd), "wpe": (n_ctx, n_embd), "ln_f.g": (n_embd,), "ln_f.b": (n_embd,)}
    block = {
        "attn.c_attn.w": (n_embd, 3 * n_embd),
        "attn.c_attn.b": (3 * n_embd,),
        "attn.c_proj.w": (n_embd, n_embd),
        "attn.c_proj.b": (n_embd,),
        "ln_1.g": (n_embd,),
        "ln_1.b": (n_embd,),
        "ln_2.g": (n_embd,),
        "ln_2.b": (n_embd,),
        "mlp.c_fc.w": (n_embd, 4 * n_embd),
        "mlp.c_fc.b": (4 * n_embd,),
        "mlp.c_proj.w": (4 * n_embd, n_embd),
        "mlp.c_proj.b": (n_embd,),
    }
    for i in range(hparams["n_layer"]):
        shapes.update({f"blocks.{i}.{name}": shape for name, shape in block.items()})
    return shapes


def nest(flat):
    """{"blocks.0.ln_1.g": x, "wte": y} -> {"blocks": [{"ln_1": {"g": x}}], "wte": y}"""
    params = {}
    for key, value in flat.items():
        node = params
        *path, leaf = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    params["blocks"] = [params["blocks"][str(i)] for i in range(len(params["blocks"]))]
    return params


def file_stamps(directory, names):
    """Size and modification time of each file: a cheap fingerprint that changes when a file is
    rewritten or truncated, without reading gigabytes to hash them on every load."""
    stamps = {}
    for name in names:
        stat = os.stat(os.path.join(directory, name))
        stamps[name] = [stat.st_size, stat.st_mtime_ns]
    return stamps


def read_checkpoint(ckpt_path):
    """Yield (flat key, float32 array) for each tensor of OpenAI's TensorFlow checkpoint, one at a time."""
    tf = import_tensorflow()
    try:
        for name, _ in tf.train.list_variables(ckpt_path):
            array = np.asarray(tf.train.load_variable(ckpt_path, name), dtype=np.float32)
            if array.ndim == 3 and array.shape[0] == 1:  # OpenAI stores conv weights as [1, n_in, n_out]
                array = array[0]
            yield tensor_key(name), array
    except (tf.errors.OpError, IndexError) as e:  # a truncated data file gives IndexError
        raise OSError(
            f"cannot read the checkpoint {ckpt_path} ({type(e).__name__}); delete its files to download them anew"
        ) from None


def convert_checkpoint(model_dir, hparams):
    """Write every tensor of the TensorFlow checkpoint as float32 .npy into model_dir/npy, with a
    manifest of what it was made from. Built in a temporary folder and renamed at the end."""
    shapes = expected_shapes(hparams)
    tmp_dir = tempfile.mkdtemp(dir=model_dir, prefix=f".{CONVERTED_DIR}.")
    try:
        for key, array in read_checkpoint(os.path.join(model_dir, "model.ckpt")):
            if array.shape != shapes.get(key):
                raise ValueError(
                    f"the checkpoint in {model_dir} has {key} of shape {array.shape}, hparams.json asks for {shapes.get(key)}"
                )
            if key.endswith(".w"):
                # Same [n_in, n_out] array, stored column by column: generating one token multiplies a
                # vector by each matrix, and BLAS streams that product faster along contiguous columns.
                array = np.asfortranarray(array)
            np.save(os.path.join(tmp_dir, f"{key}.npy"), array)
        tensor_files = [f"{key}.npy" for key in shapes]
        missing = [name for name in tensor_files if not os.path.exists(os.path.join(tmp_dir, name))]
        if missing:
            raise ValueError(
                f"the checkpoint in {model_dir} lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"
            )
        manifest = {"source": file_stamps(model_dir, CHECKPOINT_FILES), "tensors": file_stamps(tmp_dir, tensor_files)}
        with open(os.path.join(tmp_dir, MANIFEST), "w") as f:
            json.dump(manifest, f)
        converted_dir = os.path.join(model_dir, CONVERTED_DIR)
        shutil.rmtree(converted_dir, ignore_errors=True)
        give_usual_permissions(tmp_dir)
        os.rename(tmp_dir, converted_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def load_converted(model_dir, hparams):
    """Memory-map the .npy copy; None if it is missing, out of date or damaged."""
    converted_dir = os.path.join(model_dir, CONVERTED_DIR)
    shapes = expected_shapes(hparams)
    try:
        with open(os.path.join(converted_dir, MANIFEST)) as f:
            manifest = json.load(f)
        if manifest["source"] != file_stamps(model_dir, CHECKPOINT_FILES):
            return None
        if manifest["tensors"] != file_stamps(converted_dir, [f"{key}.npy" for key in shapes]):
            return None
        # np.asarray drops the np.memmap subclass, whose bookkeeping slows every operation, not the mapping.
        flat = {
            key: np.asarray(np.load(os.path.join(converted_dir, f"{key}.npy"), mmap_mode="r", allow_pickle=False))
            for key in shapes
        }
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if any(flat[key].shape != shape or flat[key].dtype != np.float32 for key, shape in shapes.items()):
        return None
    return nest(flat)


def load_hparams(model_dir):
    path = os.path.join(model_dir, "hparams.json")
    try:
        with open(path) as f:
            hparams = json.load(f)
        return {key: int(hparams[key]) for key in ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{path} is damaged ({type(e).__name__}: {e}); delete it and run again to download it anew"
        ) from None


def load_encoder_hparams_and_params(model_size, models_dir):
    """(encoder, hparams, params) of one of OpenAI's GPT-2 models, downloading what is missing."""
    check_model_size(model_size)
    model_dir = os.path.join(models_dir, model_size)
    missing = [name for name in FILES if not os.path.isfile(os.path.join(model_dir, name))]
    if missing:
        download_gpt2_files(model_size, model_dir, missing)
    encoder = get_encoder(model_size, models_dir)
    hparams = load_hparams(model_dir)
    params = load_converted(model_dir, hparams)
    if params is None:
        if os.path.isdir(os.path.join(model_dir, CONVERTED_DIR)):
            print(
                f"The converted copy in {model_dir}/{CONVERTED_DIR} is out of date or damaged: rebuilding it.",
                file=sys.stderr,
            )
        else:
            print(f"Converting the checkpoint in {model_dir} to NumPy arrays (only once).", file=sys.stderr)
        convert_checkpoint(model_dir, hparams)
        params = load_converted(model_dir, hparams)
        if params is None:
            raise OSError(f"could not read back the converted copy in {model_dir}/{CONVERTED_DIR}")
    return encoder, hparams, params
