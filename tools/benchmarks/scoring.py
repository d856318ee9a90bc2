"""score: reading a long text with its windows."""

from tools.benchmarks.timing import (
    REPEATS,
    median_seconds,
)

SCORE_TOKENS = 4096


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
