"""HuggingFace's GPT2LMHeadModel (PyTorch, CPU, float32) holding the same weights as our NumPy model."""

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def hf_model(variables, hparams):
    """GPT2LMHeadModel with OpenAI's variables (as made by random_model.random_openai_variables)."""
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


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()  # [n_seq, n_vocab]


def hf_greedy(model, ids, n_tokens):
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            max_new_tokens=n_tokens,
            do_sample=False,
            num_beams=1,
            min_new_tokens=n_tokens,
            pad_token_id=0,
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        )
    return out[0, len(ids) :].tolist()


def hf_guide_windows(model, ids, n_ctx, stride):
    """The sliding-window loop of HuggingFace's perplexity guide: each window's loss from
    GPT2LMHeadModel(input_ids, labels=...), and the number of tokens that loss is the mean of."""
    losses, counts, previous_end = [], [], 0
    for begin in range(0, len(ids), stride):
        end = min(begin + n_ctx, len(ids))
        target_length = end - previous_end
        input_ids = torch.tensor([ids[begin:end]])
        target_ids = input_ids.clone()
        target_ids[:, :-target_length] = -100
        with torch.no_grad():
            losses.append(float(model(input_ids, labels=target_ids).loss))
        counts.append(int((target_ids[:, 1:] != -100).sum()))  # the model shifts labels left by one
        previous_end = end
        if end == len(ids):
            break
    return losses, counts


def hf_filter(logits, temperature, top_k, top_p):
    """HuggingFace's TemperatureLogitsWarper, TopKLogitsWarper and TopPLogitsWarper, in generate's order."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    scores = TemperatureLogitsWarper(temperature)(None, torch.from_numpy(logits))
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return scores.numpy()
