"""HuggingFace's GPT-2 model folders and the hub: config.json, model.safetensors, vocab.json, merges.txt.

The pieces utils.load_model puts together: the hyperparameters from config.json (refusing what the
model functions do not compute), the tensors of model.safetensors under our flat keys, the tokenizer,
a model already in HuggingFace's cache, and a download from the hub (or a mirror: HF_ENDPOINT).
"""

import hashlib
import json
import os
import re

from encoder import read_encoder, read_tokenizer_json

from . import safetensors_file
from .files import synced
from .model_folder import dotted
from .safetensors_file import SafetensorsError, read_header, read_tensors

CONFIG, WEIGHTS = "config.json", "model.safetensors"
TOKENIZER_FILES = ("vocab.json", "merges.txt")  # OpenAI's encoder.json and vocab.bpe under HuggingFace's names
DEFAULT_ENDPOINT = "https://huggingface.co"  # HF_ENDPOINT overrides it, as for HuggingFace's own tools
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")  # "distilgpt2", "openai-community/gpt2-medium"
REVISION = re.compile(r"[\w.-]+")  # a branch, tag or commit: no slashes, so it names one folder


def hparams_from_config(path):
    """Our hparams from config.json; a field that asks for something the model functions do not compute
    is refused with one line that names it."""
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON: {e.msg.lower()} at line {e.lineno}, column {e.colno}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a JSON object")
    n_embd = config.get("n_embd")
    # field: (what it must be, what it is by default, why)
    required = {
        "model_type": ("gpt2", None, "only GPT-2 is computed here"),
        "activation_function": ("gelu_new", "gelu_new", "gelu() computes GPT-2's tanh approximation, gelu_new"),
        "scale_attn_by_inverse_layer_idx": (False, False, "attention is scaled by 1/sqrt(d) alone"),
        "reorder_and_upcast_attn": (False, False, "attention is computed in float32 as it is"),
        "add_cross_attention": (False, False, "GPT-2 has no cross-attention"),
        "scale_attn_weights": (True, True, "attention scores are always scaled"),
        "tie_word_embeddings": (True, True, "the output layer is the token embedding wte, transposed"),
        "n_inner": (None, None, "the feed-forward layer is 4 * n_embd wide"),
        "layer_norm_epsilon": (1e-5, 1e-5, "layer_norm uses 1e-5"),
    }
    for field, (wanted, default, why) in required.items():
        value = config.get(field, default)
        if value != wanted and not (field == "n_inner" and value == 4 * n_embd):
            raise ValueError(f"{path}: {field} is {json.dumps(value)}, not {json.dumps(wanted)}: {why}")
    try:
        names = {
            "n_vocab": "vocab_size",
            "n_ctx": "n_positions",
            "n_embd": "n_embd",
            "n_head": "n_head",
            "n_layer": "n_layer",
        }
        hparams = {ours: int(config[theirs]) for ours, theirs in names.items()}
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} has no usable {e.args[0] if isinstance(e, KeyError) else 'size'} field") from None
    if hparams["n_embd"] % hparams["n_head"]:
        raise ValueError(f"{path}: n_embd {hparams['n_embd']} is not a multiple of n_head {hparams['n_head']}")
    return hparams


def flat_key(name):
    """HuggingFace's tensor name -> our flat key ("transformer.h.3.ln_1.weight" or "h.3.ln_1.weight" ->
    "blocks.3.ln_1.g"), or None for what holds no weight of ours: the causal-mask buffers of older files
    (h.N.attn.bias, h.N.attn.masked_bias) and lm_head.weight, the tied copy of wte."""
    parts = name.removeprefix("transformer.").split(".")
    if parts == ["lm_head", "weight"] or parts[-2:] in (["attn", "bias"], ["attn", "masked_bias"]):
        return None
    if parts[0] in ("wte", "wpe"):
        return parts[0]
    if parts[0] == "h":
        parts = ["blocks", *parts[1:]]
    *path, leaf = parts
    norm = path[-1].startswith("ln_")
    return ".".join([*path, {"weight": "g" if norm else "w", "bias": "b"}.get(leaf, leaf)])


def hf_name(key):
    """Our flat key -> the name HuggingFace's save_pretrained gives the tensor ("blocks.3.ln_1.g" ->
    "transformer.h.3.ln_1.weight"): flat_key's inverse."""
    parts = key.split(".")
    if parts[0] == "blocks":
        parts = ["h", *parts[1:]]
    if len(parts) == 1:  # wte, wpe
        return f"transformer.{parts[0]}.weight"
    return "transformer." + ".".join([*parts[:-1], {"g": "weight", "w": "weight", "b": "bias"}[parts[-1]]])


def config_for(hparams, end_of_text=50256):
    """config.json for a GPT-2 of these hyperparameters, as save_pretrained writes it; end_of_text: the
    id of its tokenizer's <|endoftext|>."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": hparams["n_vocab"],
        "n_positions": hparams["n_ctx"],
        "n_ctx": hparams["n_ctx"],
        "n_embd": hparams["n_embd"],
        "n_head": hparams["n_head"],
        "n_layer": hparams["n_layer"],
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": True,
        "bos_token_id": end_of_text,
        "eos_token_id": end_of_text,
    }


def write_tokenizer(encoder, folder, suffix=""):
    """vocab.json and merges.txt (each name + suffix) of an Encoder, as HuggingFace names OpenAI's two files."""
    with open(os.path.join(folder, "vocab.json" + suffix), "w", encoding="utf-8") as f:
        json.dump(encoder.encoder, f, ensure_ascii=False)
        synced(f)
    merges = sorted(encoder.bpe_ranks, key=encoder.bpe_ranks.get)
    with open(os.path.join(folder, "merges.txt" + suffix), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        synced(f)


def write_model(folder, encoder, hparams, weights, suffix=""):
    """A model folder as save_pretrained writes one (config.json, model.safetensors, vocab.json,
    merges.txt; each name + suffix) from weights, (path, array) pairs of nested params (train.leaves)."""
    with open(os.path.join(folder, CONFIG + suffix), "w") as f:
        json.dump(config_for(hparams, encoder.end_of_text), f, indent=2)
        synced(f)
    named = {hf_name(dotted(path)): array for path, array in weights}
    safetensors_file.write(os.path.join(folder, WEIGHTS + suffix), named)
    write_tokenizer(encoder, folder, suffix)


def tensors(weights_path):
    """Yield (flat key, float32 array) of a model.safetensors file. Conv1D weights are stored as
    [n_in, n_out], as ours."""
    for name, array in read_tensors(weights_path):
        key = flat_key(name)
        if key is not None:
            yield key, array


def check_tensors(weights_path, shapes):
    """Every tensor that shapes ({flat key: shape}, from config.json) asks for is in the file with that
    shape: checked on the file's header, before any work."""
    header, _ = read_header(weights_path)
    found = {flat_key(name): shape for name, (_, shape, _, _) in header.items() if flat_key(name) is not None}
    missing = [key for key in shapes if key not in found]
    if missing:
        raise SafetensorsError(f"{weights_path} lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    for key, shape in found.items():
        if shape != shapes.get(key):
            raise SafetensorsError(f"{weights_path} has {key} of shape {shape}, {CONFIG} asks for {shapes.get(key)}")


def fingerprint(weights_path):
    """What a converted copy is made from, by content, cheaply: the size of model.safetensors and the
    sha256 of its header (every tensor's name, dtype, shape, offsets) and of 64 blocks of 4 KiB spread
    over its data, which differ in any two trainings."""
    size, digest = os.path.getsize(weights_path), hashlib.sha256()
    with open(weights_path, "rb") as f:
        header_length = int.from_bytes(f.read(8), "little")
        digest.update(f.read(header_length))
        for i in range(64):
            f.seek(8 + header_length + (size - 8 - header_length) * i // 64)
            digest.update(f.read(4096))
    return {WEIGHTS: [size, digest.hexdigest()]}


def read_tokenizer(folder):
    """The tokenizer of a HuggingFace folder: vocab.json and merges.txt, or else tokenizer.json."""
    vocabulary, merges = (os.path.join(folder, name) for name in TOKENIZER_FILES)
    if os.path.isfile(vocabulary) and os.path.isfile(merges):
        return read_encoder(vocabulary, merges)
    if os.path.isfile(os.path.join(folder, "tokenizer.json")):
        return read_tokenizer_json(os.path.join(folder, "tokenizer.json"))
    raise OSError(f"{folder} has no tokenizer: neither vocab.json and merges.txt nor tokenizer.json")


def is_complete(folder):
    """Whether a folder holds config.json, the weights and a tokenizer."""
    has = [os.path.isfile(os.path.join(folder, name)) for name in (CONFIG, WEIGHTS, *TOKENIZER_FILES, "tokenizer.json")]
    return has[0] and has[1] and ((has[2] and has[3]) or has[4])


def missing_weights_reason(folder):
    """Why a folder without model.safetensors cannot be read."""
    if os.path.isfile(os.path.join(folder, "pytorch_model.bin")):
        return (
            "it has only pytorch_model.bin, a pickle, which can run code when it is loaded; "
            "model.safetensors holds the same weights safely (save_pretrained writes it)"
        )
    if os.path.isfile(os.path.join(folder, "model.safetensors.index.json")):
        return "its weights are split over several safetensors files, which are not read yet"
    return "it has no model.safetensors"


def cache_snapshot(repo, revision):
    """The folder of repo at revision in HuggingFace's cache, if it is there with config.json and the
    weights: HF_HUB_CACHE, or HF_HOME/hub, or ~/.cache/huggingface/hub, laid out as
    models--{org}--{name}/snapshots/{commit}/ with refs/{branch} naming the commit."""
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface"), "hub"
    )
    repo_dir = os.path.join(hub, "models--" + repo.replace("/", "--"))
    commit = revision
    if not re.fullmatch(r"[0-9a-f]{40}", revision):
        try:
            with open(os.path.join(repo_dir, "refs", revision)) as f:
                commit = f.read().strip()
        except OSError:
            return None
    snapshot = os.path.join(repo_dir, "snapshots", commit)
    complete = all(os.path.isfile(os.path.join(snapshot, name)) for name in (CONFIG, WEIGHTS))
    return snapshot if complete else None


def hub_url(repo, revision):
    endpoint = os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")
    return f"{endpoint}/{repo}/resolve/{revision}"
