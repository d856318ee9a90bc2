"""What HuggingFace's GPT2LMHeadModel computes (PyTorch, CPU, float32): logits, greedy ids, the perplexity
guide's windows, the sampling warpers. random_model.hf_model makes the model with our random weights."""

import torch


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()  # [n_seq, n_vocab], of a half-precision model too


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
