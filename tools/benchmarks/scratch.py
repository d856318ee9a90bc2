"""scratch: training from scratch with nanoGPT's CPU recipe, and where the step's time goes."""

import functools
import os
import time

from tools.benchmarks.timing import (
    median_of,
    median_seconds,
)

# From scratch: nanoGPT's CPU recipe for its character-level Shakespeare (batch 12 of 64 bytes)
SCRATCH_HPARAMS = {"n_vocab": 257, "n_ctx": 64, "n_embd": 128, "n_head": 4, "n_layer": 4}
SCRATCH_BATCH, SCRATCH_STEPS, SCRATCH_ROUNDS = 12, 20, 5


def measure_scratch_train(rounds=SCRATCH_ROUNDS, n_steps=SCRATCH_STEPS):
    """Seconds per step (the median of n_steps, each round) of nanoGPT's CPU recipe from scratch: ours,
    and PyTorch's GPT2LMHeadModel of that config with the same weights (dropout 0, torch.optim.AdamW,
    the same threads), alternating; and where our step's time goes."""
    import numpy as np

    import train
    from common import keep_freed_memory
    from storage.hf import flat_key
    from training.saving import as_loaded

    try:
        import torch
        import transformers
    except ImportError:
        torch = None
    keep_freed_memory()  # as python train.py does
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
        params = as_loaded((flat_key(name), p.detach().numpy()) for name, p in model.named_parameters())
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
