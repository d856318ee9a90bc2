"""decode: generation's speed (prefill, one text, many at once) against HuggingFace's, and llama.cpp's where it is built; its memory."""

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile

from tools.benchmarks.timing import (
    HPARAMS_124M,
    in_fresh_process,
    median_of,
    peak_rss_megabytes,
    read_bandwidth,
    seconds,
)

HF_SAMPLING = {"do_sample": True, "temperature": 1.0, "top_k": 0}  # as ours: HF's default would be top_k=50


def bytes_read_per_token(params):
    """Every weight is read once per generated token, except the position table (one row) and the
    token table's rows (though the whole table is read again as the output layer)."""

    def total(node):
        if isinstance(node, dict):
            return sum(total(value) for value in node.values())
        if isinstance(node, list):
            return sum(total(value) for value in node)
        return node.nbytes

    n_embd = params["wte"].shape[1]
    return total(params) - params["wpe"].nbytes + n_embd * params["wte"].itemsize


# The references: HuggingFace and llama.cpp on the same weights


def hf_generate(model, prompts, n_tokens, **options):
    """HuggingFace's generate making n_tokens after each prompt (a list of token-id lists; several of
    different lengths are padded at the left, as its docs say), greedy unless options say."""
    import torch

    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    torch.manual_seed(1)
    with torch.no_grad():
        model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=n_tokens,
            min_new_tokens=n_tokens,
            pad_token_id=0,
            use_cache=True,
            **{"do_sample": False, **options},
        )


def llama_cpp_model(llama_cpp_dir, models_dir, hf):
    """The random 124M model as an F32 GGUF file for llama.cpp, made once with llama.cpp's own converter
    from HuggingFace's copy of the same weights."""
    from tools.random_model import tokenizer_dir

    gguf = os.path.join(models_dir, "124M-f32.gguf")
    if os.path.exists(gguf):
        return gguf
    with tempfile.TemporaryDirectory() as hf_dir:
        hf.save_pretrained(hf_dir)
        config_path = os.path.join(hf_dir, "config.json")
        with open(config_path) as f:
            config = json.load(f)
        with open(config_path, "w") as f:
            json.dump({**config, "n_ctx": HPARAMS_124M["n_ctx"]}, f)  # the converter reads GPT-2's old key
        tokenizer = tokenizer_dir()
        shutil.copy(os.path.join(tokenizer, "encoder.json"), os.path.join(hf_dir, "vocab.json"))  # HF's names
        shutil.copy(os.path.join(tokenizer, "vocab.bpe"), os.path.join(hf_dir, "merges.txt"))
        converter = os.path.join(llama_cpp_dir, "convert_hf_to_gguf.py")
        try:
            in_fresh_process(converter, hf_dir, "--outtype", "f32", "--outfile", gguf + ".tmp")
        except subprocess.CalledProcessError as error:
            last_line = (error.stderr.strip().splitlines() or ["(no message)"])[-1]
            sys.exit(f"llama.cpp's converter failed: {last_line}")
    os.replace(gguf + ".tmp", gguf)
    return gguf


def llama_cpp_decode_rate(llama_cpp_dir, gguf, n_prompt, n_new):
    """llama-bench's token generation: n_new tokens after n_prompt tokens of context, tokens/s."""
    llama_bench = os.path.join(llama_cpp_dir, "build", "bin", "llama-bench")
    threads = str(len(os.sched_getaffinity(0)))
    command = [llama_bench, "-m", gguf, "-p", "0", "-n", str(n_new), "-d", str(n_prompt), "-t", threads, "-r", "1"]
    result = subprocess.run(command + ["-o", "json"], check=True, capture_output=True, text=True)
    return json.loads(result.stdout)[0]["avg_ts"]


# Generation


class Workload:
    """The prompts every round generates from, and the sizes of the measurements."""

    n_prompt, n_new, n_prefill, n_ragged_new = 16, 128, 512, 64

    def __init__(self, n_vocab):
        import numpy as np

        rng = np.random.RandomState(1)
        self.prompt = rng.randint(0, n_vocab, self.n_prompt).tolist()
        self.long_prompt = rng.randint(0, n_vocab, self.n_prefill).tolist()
        self.ragged = [rng.randint(0, n_vocab, n).tolist() for n in np.linspace(8, 400, 8).astype(int)]


def measure_generation(params, n_head, hf, llama_cpp, rounds):
    """One dict of numbers per round. Each round measures everything one after the other, so that a slow
    spell of the machine hits all alike, and ratios are taken within a round.
    Decode is the rate of the tokens after the first: (n_new - 1) tokens over the time of a call for
    n_new tokens minus that of a call for one (prompt and first token), as llama.cpp's token-generation
    figure leaves the prompt out: the bound is a cost per generated token, and the prompt's pass is
    measured on its own as prefill. llama_cpp: (its source folder, the GGUF file), or None."""
    import batching
    import gpt2

    work = Workload(len(params["wte"]))
    sampling = {"temperature": 1.0, "top_k": 0, "seed": 1, "stop_at_end_of_text": False}  # always n_new tokens

    def ours(ids, n_tokens):  # always n_tokens
        return seconds(gpt2.generate, ids, params, n_head, n_tokens, stop_at_end_of_text=False)

    def ours_batch(prompts, n_tokens, **options):
        return seconds(batching.generate_batch, prompts, params, n_head, n_tokens, **options)

    def hf_time(prompts, n_tokens, **options):
        return seconds(hf_generate, hf, prompts, n_tokens, **options)

    def decode_rate(time_for):  # tokens/s after the first token
        first = time_for(1)
        return (work.n_new - 1) / (time_for(work.n_new) - first)

    ours(work.prompt, 8)  # warm up: the memory-mapped weights come into memory
    if hf is not None:
        hf_time([work.prompt], 8)
    rows = []
    for _ in range(rounds):
        row = {"decode": decode_rate(lambda n: ours(work.prompt, n))}
        row["prefill"] = work.n_prefill / ours(work.long_prompt, 1)
        row["bound"] = read_bandwidth() / bytes_read_per_token(params)
        for n_samples in (8, 32):
            row[f"samples_{n_samples}"] = (
                n_samples * work.n_new / ours_batch([work.prompt] * n_samples, work.n_new, **sampling)
            )
        row["ragged"] = ours_batch(work.ragged, work.n_ragged_new, stop_at_end_of_text=False)
        row["ragged_one_by_one"] = sum(ours(ids, work.n_ragged_new) for ids in work.ragged)
        if hf is not None:
            row["hf_decode"] = decode_rate(lambda n: hf_time([work.prompt], n))
            row["hf_prefill"] = work.n_prefill / hf_time([work.long_prompt], 1)
            row["hf_samples_8"] = (
                8 * work.n_new / hf_time([work.prompt], work.n_new, **HF_SAMPLING, num_return_sequences=8)
            )
            row["hf_ragged"] = hf_time(work.ragged, work.n_ragged_new)
        if llama_cpp is not None:
            row["llama_cpp_decode"] = llama_cpp_decode_rate(*llama_cpp, work.n_prompt, work.n_new)
        rows.append(row)
    return rows


def report_generation(rows, weight_bytes):
    median = functools.partial(median_of, rows)

    w = Workload
    print(f"generation, 124M shape, random weights, medians of {len(rows)} rounds:")
    print(
        f"  bound: {weight_bytes / 1e6:.0f} MB of weights per token at {median('bound') * weight_bytes / 1e9:.1f} GB/s "
        f"(NumPy matrix-vector product over 512 MB) = {median('bound'):.1f} tokens/s"
    )
    print(
        f"  decode ({w.n_prompt}-token prompt, {w.n_new} new tokens, rate after the first): "
        f"gpt2.py {median('decode'):.1f} tokens/s = {median('decode', 'bound'):.0%} of the bound"
    )
    print(
        f"  prefill ({w.n_prefill}-token prompt to first new token): gpt2.py {median('prefill'):.0f} tokens/s "
        f"({w.n_prefill / median('prefill'):.2f} s)"
    )
    print(f"  many samples of the {w.n_prompt}-token prompt, {w.n_new} new tokens each (sampling), total new tokens/s:")
    for n in (8, 32):
        print(
            f"    {n:>2} samples: gpt2.py {median(f'samples_{n}'):.1f} tokens/s "
            f"= {median(f'samples_{n}', 'decode'):.2f}x its batch-1 decode"
        )
    print(
        f"  8 prompts of 8 to 400 tokens, {w.n_ragged_new} new tokens each: gpt2.py batched {median('ragged'):.2f} s, "
        f"one by one {median('ragged_one_by_one'):.2f} s: {median('ragged_one_by_one', 'ragged'):.2f}x"
    )
    if "hf_decode" not in rows[0]:
        print(
            "  (transformers is not installed: no HuggingFace figures, and no llama.cpp ones, whose model file it writes)"
        )
        return
    print(
        f"  8 samples: HuggingFace num_return_sequences=8 {median('hf_samples_8'):.1f} tokens/s; "
        f"gpt2.py is {median('samples_8', 'hf_samples_8'):.2f}x"
    )
    print(
        f"  8 ragged prompts: HuggingFace, padded at the left, {median('hf_ragged'):.2f} s; "
        f"gpt2.py is {median('hf_ragged', 'ragged'):.2f}x"
    )
    print(f"  decode:  HuggingFace {median('hf_decode'):.1f} tokens/s; gpt2.py is {median('decode', 'hf_decode'):.2f}x")
    print(
        f"  prefill: HuggingFace {median('hf_prefill'):.0f} tokens/s ({w.n_prefill / median('hf_prefill'):.2f} s); "
        f"gpt2.py is {median('prefill', 'hf_prefill'):.2f}x"
    )
    if "llama_cpp_decode" in rows[0]:
        print(
            f"  decode:  llama.cpp F32 (llama-bench, {w.n_new} tokens after {w.n_prompt}) "
            f"{median('llama_cpp_decode'):.1f} tokens/s = {median('llama_cpp_decode', 'bound'):.0%} of the bound; "
            f"gpt2.py is {median('decode', 'llama_cpp_decode'):.2f}x"
        )


def measure_memory(models_dir):
    """Peak RSS of the command line making one sample and eight, 128 new tokens each."""
    command = ("gpt2.py", "Hello", "-n", "128", "--temperature", "1", "--models_dir", models_dir)
    return {"one": peak_rss_megabytes(*command), "eight": peak_rss_megabytes(*command, "--n_samples", "8")}


def report_memory(memory):
    print(
        f"peak RSS of python gpt2.py 'Hello' -n 128: {memory['one']:.0f} MB; with --n_samples 8: {memory['eight']:.0f} MB"
    )
