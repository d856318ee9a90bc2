"""serve: requests at once through python gpt2.py --serve, and the page's views as a client sees them."""

import contextlib
import functools
import json
import statistics
import subprocess
import sys
import time

from tools.benchmarks.timing import (
    REPO_DIR,
    median_of,
    seconds,
)

SERVE_CLIENTS, SERVE_TOKENS, SERVE_ROUNDS = 8, 64, 3


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
