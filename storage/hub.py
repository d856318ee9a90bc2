"""A model in HuggingFace's layout: downloaded from the hub (or a mirror: HF_ENDPOINT) into a folder,
or given as a folder, then converted once into its copy under models_dir, so that read-only folders
and HuggingFace's cache are never written into."""

import os
import sys

import numpy as np

from . import hf, npy_copy
from .download import NotFound, download_file, http_session
from .files import megabytes
from .model_folder import expected_shapes, model_lock, nest


def check_revision(revision):
    if not isinstance(revision, str) or not hf.REVISION.fullmatch(revision) or ".." in revision:
        raise ValueError(f"{revision!r} is not a revision: a branch, tag or commit such as main or v1.0")


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
                needed = 4 * sum(int(np.prod(shape)) for shape in shapes.values())
                print(conversion_note(name, work_dir, needed), file=sys.stderr)
                npy_copy.write(work_dir, hf.tensors(weights), shapes, source, needed, weights, hf.CONFIG)
        flat = npy_copy.load(work_dir, shapes, source)
        if flat is None:
            raise OSError(f"could not read back the converted copy in {work_dir}/npy")
    return encoder, hparams, nest(flat)


def conversion_note(name, work_dir, n_bytes):
    """What converting a folder's weights costs, said once per conversion: where the copy goes and its
    size; and, for weights that changed since (a training run's, after each save), why it comes again."""
    if os.path.isdir(os.path.join(work_dir, npy_copy.CONVERTED_DIR)):
        return f"The weights of {name} changed since they were converted: converting them again in {work_dir}."
    return (
        f"Converting the weights of {name} to NumPy arrays in {work_dir}: {megabytes(n_bytes)} kept for fast "
        "loads, again only when the weights change (delete the folder to free the space)."
    )
