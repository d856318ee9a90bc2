"""encoder: encoder.py's speed against tiktoken's, on ordinary text and on a hostile long word."""

import glob
import hashlib
import os
import random
import statistics
import string
import sysconfig

from tools.benchmarks.timing import (
    REPEATS,
    median_seconds,
    seconds,
)

LONG_WORD_LETTERS = 40_000  # a word as a hostile client may send: BPE's cost grows with a word's length


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
