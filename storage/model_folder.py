"""What every model folder shares, whatever its format: the shapes of a GPT-2's tensors, the flat
keys nested as the model functions take them, and the folder's lock."""

import contextlib
import errno
import os
import shutil
import sys

from . import npy_copy

LOCK_NOTICE_SECONDS = 2.0  # waiting longer than this for another process's lock is said on stderr


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


def dotted(path):  # ("blocks", 0, "attn", "c_attn", "w") -> "blocks.0.attn.c_attn.w": nest's flat key
    return ".".join(str(part) for part in path)


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


@contextlib.contextmanager
def model_lock(model_dir):
    """The folder's lock file, held while downloading and converting, so that two processes end with one
    correct copy: the second waits (and says so), then finds the work done. Holding it also proves that
    no live process owns the leftovers of a conversion, so they are removed then. A folder that holds
    nothing but the lock when the work fails (the first download failed) is removed."""
    from filelock import FileLock, Timeout

    try:
        os.makedirs(model_dir, exist_ok=True)
        lock = FileLock(os.path.join(model_dir, ".lock"))
        try:
            lock.acquire(timeout=LOCK_NOTICE_SECONDS)
        except Timeout:
            # one write, the line end with it: a Ctrl-C that comes now cannot cut the line from its end
            sys.stderr.write(f"waiting for another process that is downloading or converting {model_dir}\n")
            lock.acquire()
    except OSError as e:
        if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        raise OSError(
            f"{model_dir} is read-only and has no usable converted copy; "
            "run once where it is writable, or point --models_dir at a writable copy"
        ) from None
    try:
        for name in npy_copy.leftovers(model_dir):
            shutil.rmtree(os.path.join(model_dir, name), ignore_errors=True)
        yield
    except BaseException:
        if os.listdir(model_dir) == [".lock"]:
            os.remove(os.path.join(model_dir, ".lock"))
            os.rmdir(model_dir)
        raise
    finally:
        lock.release()
