"""GPT-2 model folders: `load_encoder_hparams_and_params(model_size, models_dir)` for OpenAI's, and
`load_model(name_or_path, models_dir)` for any GPT-2, HuggingFace's layout and hub included.

The first load of one of OpenAI's models downloads its seven files into models_dir/model_size and
converts the checkpoint (every tensor's checksum verified) into the converted copy in
models_dir/model_size/npy. The formats and the storage are in the folder storage/. Every later load checks the files cheaply and
memory-maps that copy: a few milliseconds. A missing or damaged file is downloaded again; a file that
stays wrong is named in the error, with what to do. The work is done under the folder's lock, so two
processes end with one correct copy.
"""

import hashlib
import json
import os
import sys

import numpy as np

from encoder import read_encoder
from storage import hf, hub, npy_copy, peft
from storage.checkpoint import CheckpointError, gpt2_tensors
from storage.download import download_files
from storage.files import sha256_of
from storage.hub import check_revision
from storage.model_folder import expected_shapes, model_lock, nest

# OpenAI's four models, as their hparams.json files give them
MODEL_HPARAMS = {
    size: {"n_vocab": 50257, "n_ctx": 1024, "n_embd": n_embd, "n_head": n_head, "n_layer": n_layer}
    for size, n_layer, n_embd, n_head in (
        ("124M", 12, 768, 12),
        ("355M", 24, 1024, 16),
        ("774M", 36, 1280, 20),
        ("1558M", 48, 1600, 25),
    )
}
MODEL_SIZES = tuple(MODEL_HPARAMS)
DEFAULT_MODEL_SIZE = MODEL_SIZES[0]  # the smallest: the one a CPU runs best
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
# Where models are kept unless --models_dir says otherwise: the same folder wherever the program runs
DEFAULT_MODELS_DIR = os.environ.get("GPT2_MODELS_DIR") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "models"
)


def check_models_dir(models_dir):
    if os.path.exists(models_dir) and not os.path.isdir(models_dir):
        raise ValueError(f"--models_dir {models_dir} is a file, not a folder: give a folder for the models")


def check_model_size(model_size):
    if model_size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {model_size!r}: choose one of {', '.join(MODEL_SIZES)}")


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


def load_gpt2_tokenizer(models_dir):
    """OpenAI's tokenizer alone (encoder.json and vocab.bpe), downloaded into models_dir/124M if missing."""
    model_dir = os.path.join(models_dir, "124M")
    missing = [name for name in ("encoder.json", "vocab.bpe") if not os.path.exists(os.path.join(model_dir, name))]
    if missing:
        os.makedirs(model_dir, exist_ok=True)
        with model_lock(model_dir):
            download("124M", model_dir, missing)
    return read_encoder(os.path.join(model_dir, "encoder.json"), os.path.join(model_dir, "vocab.bpe"))


def load_encoder_hparams_and_params(model_size, models_dir):
    """(encoder, hparams, params) of one of OpenAI's GPT-2 models, downloading what is missing."""
    check_model_size(model_size)  # before any path is built from it
    return load_openai_folder(os.path.join(models_dir, model_size), model_size)


def check_model_choice(model, model_size):
    """gpt2.py's and train.py's --model and --model_size: one or the other, each a model load_model knows."""
    if model is not None and model_size is not None:
        raise ValueError("give --model or --model_size, not both")
    if model is not None:
        check_model_name(model)
    if model_size is not None:
        check_model_size(model_size)


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


def load_model(name_or_path, models_dir=DEFAULT_MODELS_DIR, revision="main"):
    """(encoder, hparams, params) of any GPT-2: one of OpenAI's sizes ("124M"), a folder in OpenAI's
    layout or HuggingFace's, or a model on the HuggingFace hub ("distilgpt2",
    "openai-community/gpt2-medium") at a revision (a branch, tag or commit), taken from HuggingFace's
    cache when it is there and downloaded into models_dir otherwise."""
    kind = check_model_name(name_or_path)
    if kind == "folder" and peft.is_adapter_folder(name_or_path):
        return load_adapted(name_or_path, models_dir)
    if kind == "openai":
        return load_encoder_hparams_and_params(name_or_path, models_dir)
    if kind == "folder" and os.path.isfile(os.path.join(name_or_path, "hparams.json")):
        return load_openai_folder(name_or_path)
    if kind == "folder":
        path = os.path.realpath(name_or_path)
        slug = f"{os.path.basename(path)}-{hashlib.sha256(path.encode()).hexdigest()[:10]}"
        return hub.load_hf_folder(name_or_path, os.path.join(models_dir, "hf", "local", slug), name_or_path)
    check_revision(revision)
    work_dir = os.path.join(models_dir, "hf", f"{name_or_path.replace('/', '--')}@{revision}")
    folder = hf.cache_snapshot(name_or_path, revision)
    if folder is None:
        folder = work_dir
        if not hf.is_complete(folder):  # a first download, or one cut short
            with model_lock(folder):
                hub.download_from_hub(name_or_path, revision, folder)
    return hub.load_hf_folder(folder, work_dir, name_or_path)


def load_adapted(folder, models_dir=DEFAULT_MODELS_DIR):
    """(encoder, hparams, params) of a LoRA adapter folder (PEFT's, or a `train.py --lora_rank` run):
    the base model it names, loaded as load_model loads any, with the adapters merged into its
    weights once."""
    import train  # the merge is LoRA's own arithmetic, beside its backward

    config = peft.read_config(folder)
    base = config["base_model_name_or_path"]
    if os.path.isdir(base) and os.path.samefile(base, folder):
        raise ValueError(f"{folder}: the adapters name their own folder as their base model")
    try:  # a relative path is read from the current folder, as PEFT reads it
        encoder, hparams, params = load_model(base, models_dir)
    except (ValueError, OSError) as e:
        error = ValueError if isinstance(e, ValueError) else OSError
        raise error(f"{folder}: its base model ({base!r}, from {peft.CONFIG}): {e}") from None
    adapters = peft.read(folder, hparams["n_layer"])
    for i, block in enumerate(adapters["blocks"]):
        for module, layers in block.items():
            for name, adapter in layers.items():
                n_in, n_out = params["blocks"][i][module][name]["w"].shape
                if adapter["lora_a"].shape != (n_in, config["r"]) or adapter["lora_b"].shape != (config["r"], n_out):
                    raise ValueError(
                        f"{folder}: the adapters of h.{i}.{module}.{name} do not fit {base} (or rank {config['r']})"
                    )
    return encoder, hparams, train.with_adapters(params, adapters, peft.scaling(config))
