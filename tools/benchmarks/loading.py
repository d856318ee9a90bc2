"""load: a model's first load (converting the checkpoint) and every later one, and the command's start."""

import os
import shutil
import statistics

from tools.benchmarks.timing import (
    hf_model_124M,
    in_fresh_process,
    make_random_model,
    median_seconds,
    seconds,
)

LOAD_REPEATS, FIRST_LOADS = 5, 3  # later loads are quick: more of them


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
