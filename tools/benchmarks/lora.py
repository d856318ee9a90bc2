"""lora: LoRA's step against the full step and PEFT's, and its memory at 774M and 1558M."""

import functools
import os

from tools.benchmarks.timing import (
    hf_model_124M,
    in_fresh_process,
    median_of,
    peak_rss_megabytes,
    seconds,
)
from tools.benchmarks.train_step import TRAIN_BATCH, TRAIN_SEQ

LORA_ROUNDS = 5  # LoRA's two ratios are close to their targets: two more rounds against the noise


def measure_lora_train(params, n_head, rounds=LORA_ROUNDS, n_batch=TRAIN_BATCH, n_seq=TRAIN_SEQ, rank=8):
    """Seconds of one LoRA step (rank 8 on c_attn, clipping, AdamW on the adapters; the base read where
    it was loaded) on n_batch x n_seq tokens of the 124M shape, in the same rounds as the full
    fine-tuning step of train.py and PEFT's on HuggingFace's model (the same adapters, torch.optim.AdamW)."""
    import numpy as np

    import train
    from common import keep_freed_memory

    keep_freed_memory()  # as python train.py does
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
    from training.options import memory_needed
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
            "estimate": memory_needed(hparams, n_batch, n_seq, lora_rank=8) / 1e6,
            "full": memory_needed(hparams, n_batch, n_seq) / 1e6,
        }
    return rows


def report_lora_memory(rows):
    print(f"peak RSS of a LoRA run (rank 8 on c_attn; one step at {TRAIN_BATCH} x {TRAIN_SEQ}), random weights:")
    for size, row in rows.items():
        print(
            f"  {size}: {row['peak'] / 1e3:.1f} GB (the trainer's estimate: {row['estimate'] / 1e3:.1f} GB; "
            f"a full fine-tune's: {row['full'] / 1e3:.1f} GB)"
        )
