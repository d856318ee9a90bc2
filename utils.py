"""GPT-2 model folders: `load_encoder_hparams_and_params(model_size, models_dir)` for OpenAI's, and
`load_model(name_or_path, models_dir)` for any GPT-2, HuggingFace's layout and hub included.

The first load of a model downloads its seven files into models_dir/model_size (download.py) and
converts the checkpoint (read by checkpoint.py, every tensor's checksum verified) into the converted
copy in models_dir/model_size/npy (npy_copy.py). Every later load checks the files cheaply and
memory-maps that copy: a few milliseconds. A missing or damaged file is downloaded again; a file that
stays wrong is named in the error, with what to do. The work is done under the folder's lock, so two
processes end with one correct copy.
"""

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys

import numpy as np

import hf
import npy_copy
from checkpoint import CheckpointError, gpt2_tensors
from download import NotFound, download_file, download_files, http_session
from encoder import read_encoder
from files import sha256_of

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
CHECKPOINT_DATA = "model.ckpt.data-00000-of-00001"
CHECKPOINT_FILES = (CHECKPOINT_DATA, "model.ckpt.index")  # what the converted copy is made from
TOKENIZER_SHA256 = {  # the same two files serve every model size
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
DEFAULT_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"  # GPT2_BASE_URL overrides it
LOCK_NOTICE_SECONDS = 2.0  # waiting longer than this for another process's lock is said on stderr


def check_model_size(model_size):
    if model_size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {model_size!r}: choose one of {', '.join(MODEL_SIZES)}")


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


def load_hparams(model_dir):
    with open(os.path.join(model_dir, "hparams.json")) as f:
        hparams = json.load(f)
    return {key: int(hparams[key]) for key in ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer")}


def source_fingerprint(model_dir):
    """What a converted copy is made from, by content: the index file's sha256 (a few kilobytes that
    hold every tensor's offset, size and crc32c) and the data file's size."""
    return {
        "model.ckpt.index": sha256_of(os.path.join(model_dir, "model.ckpt.index")),
        CHECKPOINT_DATA: os.path.getsize(os.path.join(model_dir, CHECKPOINT_DATA)),
    }


def damaged_files(model_dir):
    """{name: what is wrong} for OpenAI's seven files in model_dir, from checks that cost milliseconds:
    each file is there, the tokenizer files have OpenAI's sha256, hparams.json is valid, and the
    checkpoint data has the size that hparams.json implies (4 bytes per parameter)."""
    problems = {name: "missing" for name in FILES if not os.path.isfile(os.path.join(model_dir, name))}
    for name, sha256 in TOKENIZER_SHA256.items():
        if name not in problems and sha256_of(os.path.join(model_dir, name)) != sha256:
            problems[name] = "not OpenAI's file (its sha256 differs)"
    if "hparams.json" not in problems:
        try:
            hparams = load_hparams(model_dir)
        except (ValueError, KeyError, TypeError) as e:
            problems["hparams.json"] = f"not valid ({type(e).__name__}: {e})"
        else:
            expected = 4 * sum(int(np.prod(shape)) for shape in expected_shapes(hparams).values())
            if CHECKPOINT_DATA not in problems:
                size = os.path.getsize(os.path.join(model_dir, CHECKPOINT_DATA))
                if size != expected:
                    problems[CHECKPOINT_DATA] = f"{size} bytes where hparams.json implies {expected}"
    return problems


def load_ready(model_dir):
    """(hparams, params) if the folder needs no work: its files are sound, no leftovers of a killed
    conversion wait to be removed, and the converted copy is current. None otherwise."""
    if damaged_files(model_dir) or (npy_copy.leftovers(model_dir) and os.access(model_dir, os.W_OK)):
        return None
    hparams = load_hparams(model_dir)
    flat = npy_copy.load(model_dir, expected_shapes(hparams), source_fingerprint(model_dir))
    return None if flat is None else (hparams, nest(flat))


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
            print(f"waiting for another process that is downloading or converting {model_dir}", file=sys.stderr)
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


def download(model_size, model_dir, names):
    """OpenAI's files from GPT2_BASE_URL: a URL ({base}/{model_size}/{file}), or a folder laid out the same."""
    base = os.environ.get("GPT2_BASE_URL", DEFAULT_BASE_URL).rstrip("/")
    hint = "check the connection (or a proxy), or set GPT2_BASE_URL to a mirror or to a folder with the files"
    download_files(f"{base}/{model_size}", sorted(names), model_dir, TOKENIZER_SHA256, hint)


def repair(model_size, model_dir):
    """Under the folder's lock: download what is missing or damaged, then convert the checkpoint if the
    converted copy is not current. A checkpoint that cannot be converted is downloaded again once.
    model_size None: a folder given by its path, from which nothing is downloaded."""
    with model_lock(model_dir):
        fetched = set()
        while problems := damaged_files(model_dir):
            if model_size is None:
                name = sorted(problems)[0]
                raise OSError(f"{model_dir}/{name} is {problems[name]} (a folder given by its path is not downloaded)")
            again = fetched & set(problems)
            if again:  # downloaded afresh and still wrong: the source is at fault
                name = sorted(again)[0]
                raise OSError(
                    f"{model_dir}/{name} is {problems[name]} even after downloading it again; "
                    "check GPT2_BASE_URL or the network, delete the file and run again"
                )
            for name, reason in problems.items():
                if reason != "missing":  # a first download shows only its progress bars
                    print(f"{model_dir}/{name}: {reason}; downloading it again", file=sys.stderr)
            download(model_size, model_dir, problems)
            fetched |= set(problems)
        hparams = load_hparams(model_dir)
        shapes = expected_shapes(hparams)
        if npy_copy.load(model_dir, shapes, source_fingerprint(model_dir)) is not None:
            return
        if os.path.isdir(os.path.join(model_dir, npy_copy.CONVERTED_DIR)):
            print(f"The converted copy in {model_dir}/npy is out of date or damaged: rebuilding it.", file=sys.stderr)
        else:
            print(f"Converting the checkpoint in {model_dir} to NumPy arrays (only once).", file=sys.stderr)
        for attempt in (1, 2):
            try:
                tensors = gpt2_tensors(os.path.join(model_dir, "model.ckpt"))
                needed = os.path.getsize(os.path.join(model_dir, CHECKPOINT_DATA))  # as many bytes as the data
                return npy_copy.write(model_dir, tensors, shapes, source_fingerprint(model_dir), needed)
            except (CheckpointError, npy_copy.SourceError) as e:
                if model_size is None:
                    raise
                if attempt == 2 or fetched >= set(CHECKPOINT_FILES):
                    raise CheckpointError(f"{e}, even as just downloaded; delete {model_dir} and run again") from None
                print(f"{e}: downloading the checkpoint again", file=sys.stderr)
                download(model_size, model_dir, [*CHECKPOINT_FILES, "model.ckpt.meta"])
                fetched |= set(CHECKPOINT_FILES)


def load_openai_folder(model_dir, model_size=None):
    """(encoder, hparams, params) from a folder in OpenAI's layout, repaired from OpenAI's storage if
    model_size names what it holds."""
    ready = load_ready(model_dir)
    if ready is None:
        repair(model_size, model_dir)
        ready = load_ready(model_dir)
        if ready is None:
            raise OSError(f"could not read back the converted copy in {model_dir}/npy")
    hparams, params = ready
    return read_encoder(os.path.join(model_dir, "encoder.json"), os.path.join(model_dir, "vocab.bpe")), hparams, params


def load_encoder_hparams_and_params(model_size, models_dir):
    """(encoder, hparams, params) of one of OpenAI's GPT-2 models, downloading what is missing."""
    check_model_size(model_size)  # before any path is built from it
    return load_openai_folder(os.path.join(models_dir, model_size), model_size)


# HuggingFace's layout (hf.py): a folder given by its path, a model in HuggingFace's cache, or one
# downloaded from the hub into models_dir. Their converted copy always goes under models_dir, so that
# read-only folders and HuggingFace's cache are never written into.


def check_model_name(name_or_path):
    """What load_model would make of it, before anything is loaded: "openai", "folder" or "hub"."""
    if name_or_path in MODEL_SIZES:
        return "openai"
    if os.path.isdir(name_or_path):
        return "folder"
    if hf.HUB_NAME.fullmatch(name_or_path) and ".." not in name_or_path:
        return "hub"
    raise ValueError(
        f"{name_or_path!r} is neither a folder nor a model name: give one of {', '.join(MODEL_SIZES)}, "
        "a folder in OpenAI's or HuggingFace's layout, or a name on the HuggingFace hub such as distilgpt2"
    )


def check_revision(revision):
    if not isinstance(revision, str) or not hf.REVISION.fullmatch(revision) or ".." in revision:
        raise ValueError(f"{revision!r} is not a revision: a branch, tag or commit such as main or v1.0")


def load_model(name_or_path, models_dir="models", revision="main"):
    """(encoder, hparams, params) of any GPT-2: one of OpenAI's sizes ("124M"), a folder in OpenAI's
    layout or HuggingFace's, or a model on the HuggingFace hub ("distilgpt2",
    "openai-community/gpt2-medium") at a revision (a branch, tag or commit), taken from HuggingFace's
    cache when it is there and downloaded into models_dir otherwise."""
    kind = check_model_name(name_or_path)
    if kind == "openai":
        return load_encoder_hparams_and_params(name_or_path, models_dir)
    if kind == "folder" and os.path.isfile(os.path.join(name_or_path, "hparams.json")):
        return load_openai_folder(name_or_path)
    if kind == "folder":
        path = os.path.realpath(name_or_path)
        slug = f"{os.path.basename(path)}-{hashlib.sha256(path.encode()).hexdigest()[:10]}"
        return load_hf_folder(name_or_path, os.path.join(models_dir, "hf", "local", slug), name_or_path)
    check_revision(revision)
    work_dir = os.path.join(models_dir, "hf", f"{name_or_path.replace('/', '--')}@{revision}")
    folder = hf.cache_snapshot(name_or_path, revision)
    if folder is None:
        folder = work_dir
        if not hf.is_complete(folder):  # a first download, or one cut short
            with model_lock(folder):
                download_from_hub(name_or_path, revision, folder)
    return load_hf_folder(folder, work_dir, name_or_path)


def download_from_hub(repo, revision, folder):
    """The files of a HuggingFace model that are not in folder yet: config.json, model.safetensors
    (checked against the sha256 the hub gives for it), and the tokenizer, as vocab.json and merges.txt
    or else tokenizer.json."""
    base = hf.hub_url(repo, revision)
    hint = "check the connection (or a proxy), the model's name and revision, or set HF_ENDPOINT to a mirror"
    with http_session() as session:

        def get(name):
            if not os.path.isfile(os.path.join(folder, name)):
                download_file(session, f"{base}/{name}", os.path.join(folder, name), hint=hint)

        get(hf.CONFIG)
        try:
            get(hf.WEIGHTS)
        except NotFound:
            raise OSError(
                f"{repo} has no {hf.WEIGHTS} at {revision} ({base}/{hf.WEIGHTS}: HTTP 404); only safetensors weights are read, never pytorch_model.bin, a pickle"
            ) from None
        try:
            for name in hf.TOKENIZER_FILES:
                get(name)
        except NotFound:
            get("tokenizer.json")


def load_hf_folder(folder, work_dir, name):
    """(encoder, hparams, params) from a folder in HuggingFace's layout, its converted copy in work_dir;
    name: the model as the user named it, for the messages."""
    config, weights = os.path.join(folder, hf.CONFIG), os.path.join(folder, hf.WEIGHTS)
    if not os.path.isfile(config):
        raise OSError(
            f"{folder} has no {hf.CONFIG}: not a model folder in HuggingFace's layout (nor OpenAI's: no hparams.json)"
        )
    if not os.path.isfile(weights):
        raise OSError(f"{name} cannot be read: {hf.missing_weights_reason(folder)}")
    hparams = hf.hparams_from_config(config)
    encoder = hf.read_tokenizer(folder)
    shapes = expected_shapes(hparams)
    hf.check_tensors(weights, shapes)  # a damaged file is named before any work
    source = hf.fingerprint(weights)
    flat = npy_copy.load(work_dir, shapes, source)
    if flat is None:
        with model_lock(work_dir):
            if npy_copy.load(work_dir, shapes, source) is None:
                print(f"Converting the weights of {name} to NumPy arrays in {work_dir} (only once).", file=sys.stderr)
                needed = 4 * sum(int(np.prod(shape)) for shape in shapes.values())
                npy_copy.write(work_dir, hf.tensors(weights), shapes, source, needed, weights, hf.CONFIG)
        flat = npy_copy.load(work_dir, shapes, source)
        if flat is None:
            raise OSError(f"could not read back the converted copy in {work_dir}/npy")
    return encoder, hparams, nest(flat)
