"""PEFT's LoRA adapter folders: adapter_config.json and adapter_model.safetensors.

PEFT keeps, for each adapted nn.Linear-like layer, lora_A.weight [r, n_in] and lora_B.weight [n_out, r],
named after the module they sit beside ("base_model.model.transformer.h.0.attn.c_attn.lora_A.weight").
GPT-2's layers are Conv1D, whose weights are [n_in, n_out] (fan_in_fan_out): the layer's weight grows by
scaling * (lora_B.weight @ lora_A.weight).T = scaling * lora_A.weight.T @ lora_B.weight.T, which are
train.py's lora_a [n_in, r] and lora_b [r, n_out]. scaling is lora_alpha / r (lora_alpha / sqrt(r)
with use_rslora).
"""

import json
import math
import os
import re

import numpy as np

from storage import safetensors_file
from storage.files import read_utf8, synced

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
TENSOR_NAME = re.compile(
    r"(?:base_model\.model\.)?(?:transformer\.)?h\.(\d+)\.(attn|mlp)\.(c_attn|c_proj|c_fc)\.lora_([AB])(?:\.default)?\.weight"
)


def is_adapter_folder(folder):
    return os.path.isfile(os.path.join(folder, CONFIG))


def config_for(base, rank, alpha, targets):
    """adapter_config.json's fields for LoRA adapters on base (a model's name or path, as given)."""
    return {
        "peft_type": "LORA",
        "base_model_name_or_path": base,
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": list(targets),
        "fan_in_fan_out": True,
        "lora_dropout": 0.0,
        "bias": "none",
        "task_type": "CAUSAL_LM",
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
    }


def write(folder, config, adapters, suffix=""):
    """The two files (each name + suffix) of adapters, {"blocks": [{"attn": {"c_attn": {"lora_a", "lora_b"}}}]}."""
    with open(os.path.join(folder, CONFIG + suffix), "w") as f:
        json.dump(config, f, indent=2)
        synced(f)
    tensors = {}
    for i, block in enumerate(adapters["blocks"]):
        for module, layers in block.items():
            for name, adapter in layers.items():
                prefix = f"base_model.model.transformer.h.{i}.{module}.{name}"
                tensors[f"{prefix}.lora_A.weight"] = adapter["lora_a"].T
                tensors[f"{prefix}.lora_B.weight"] = adapter["lora_b"].T
    safetensors_file.write(os.path.join(folder, WEIGHTS + suffix), tensors)


def read_config(folder):
    """adapter_config.json, refused in one line where it is not LoRA as train.py and gpt2.py compute it."""
    path = os.path.join(folder, CONFIG)
    try:
        config = json.loads(read_utf8(path))
        rank, alpha, base = config["r"], config["lora_alpha"], config["base_model_name_or_path"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a PEFT adapter config ({e})") from None
    unsupported = [key for key in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save") if config.get(key)]
    if config.get("peft_type", "LORA") != "LORA" or unsupported:
        raise ValueError(f"{path}: only plain LoRA adapters load here, not {config.get('peft_type')} {unsupported}")
    if not isinstance(base, str) or not isinstance(rank, int) or rank < 1 or not isinstance(alpha, (int, float)):
        raise ValueError(f"{path} names no base model, or has no whole rank r and number lora_alpha")
    return config


def scaling(config):
    return config["lora_alpha"] / (math.sqrt(config["r"]) if config.get("use_rslora") else config["r"])


def read(folder, n_layer):
    """The adapters of a folder, in train.py's layout (a dict for each of n_layer blocks)."""
    path = os.path.join(folder, WEIGHTS)
    found = {}
    for name, array in safetensors_file.read_tensors(path):
        match = TENSOR_NAME.fullmatch(name)
        if not match or int(match[1]) >= n_layer:
            raise ValueError(f"{path}: {name} is no LoRA adapter of a GPT-2 layer of this model")
        i, module, layer, which = int(match[1]), match[2], match[3], match[4]
        found.setdefault((i, module, layer), {})["lora_a" if which == "A" else "lora_b"] = np.ascontiguousarray(array.T)
    blocks = [{} for _ in range(n_layer)]
    for (i, module, layer), adapter in found.items():
        if len(adapter) != 2:
            raise ValueError(f"{path}: h.{i}.{module}.{layer} has lora_A or lora_B but not both")
        blocks[i].setdefault(module, {})[layer] = adapter
    return {"blocks": blocks}
