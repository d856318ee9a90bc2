"""train: train.py's step (NumPy and JAX, and on a GPU against PyTorch) and a run's peak memory."""

import functools

from tools.benchmarks.timing import (
    hf_model_124M,
    median_of,
    median_seconds,
    peak_rss_megabytes,
    seconds,
)

TRAIN_BATCH, TRAIN_SEQ, TRAIN_ROUNDS = 4, 256, 3


def measure_train(params, n_head, rounds=TRAIN_ROUNDS, n_batch=TRAIN_BATCH, n_seq=TRAIN_SEQ):
    """Seconds of one training step (forward, backward, clipping, AdamW) on n_batch x n_seq tokens: ours,
    and PyTorch's (GPT2LMHeadModel with the same weights, dropout 0, torch.optim.AdamW, the same
    threads), alternating; and NumPy's float32 matrix-multiply rate, for the 6 x parameters x tokens
    bound."""
    import numpy as np

    import train
    from common import keep_freed_memory

    keep_freed_memory()  # as python train.py does
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
    """train.py --backend jax's step (training/jax_step.py's Step: gpt2.py's loss and its gradients by JAX, clipping
    and AdamW, one jax.jit over every device) on a copy of the weights, compiled before it is returned,
    and the devices it runs on; (None, None) without JAX."""
    try:
        from training import jax_step as train_jax
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
    from training import jax_step as train_jax

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
        "import numpy as np, common, train, utils\n"
        "common.keep_freed_memory()\n"
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
