"""The training run: from the data and the starting model to the last save, resumed exactly after a
stop. The step is train.py's backward pass and AdamW (or, with --backend jax, the same step as one
jax.jit: training/jax_step.py); the data's kind (training/data.py) and the run folder
(training/saving.py) are behind methods of their own, so the loop reads the same for every kind.
"""

import os
import signal
import sys
import time

import numpy as np

from common import keep_freed_memory, run_command
from encoder import bytes_only
from gpt2 import plural
from storage import peft
from storage.model_folder import dotted
from train import (
    AdamW,
    clip_gradients,
    init_adapters,
    init_params,
    learning_rate_at,
    leaves,
    loss_and_grads,
    trainable,
    with_adapters,
)
from training.data import held_out_loss, read_data
from training.options import check_lora_rank, check_memory, parse_arguments, start_jax
from training.saving import (
    LOG,
    RunFolder,
    as_loaded,
    load_optimizer,
    load_run_params,
    open_run_folder,
    read_log,
    recorded_options,
)
from utils import load_gpt2_tokenizer, load_model


class TrainingRun:
    """The state of a run (weights, optimizer, random batches, step, log) and its loop."""

    def __init__(self, options):
        self.options = options
        writes = start_jax(options) == 0 if options.backend == "jax" else True  # one process of a run writes
        saved = open_run_folder(options, writes)
        self.data = read_data(options)  # bad data is refused before the model is loaded
        self.encoder, self.hparams, self.params = starting_model(options)
        self.n_head = self.hparams["n_head"]
        check_memory(self.hparams, options)
        check_lora_rank(options, self.params)
        keep_freed_memory()
        self.data.tokenize(self.encoder, self.hparams["n_ctx"])
        self.adapters, self.adapter_config = None, None
        if options.lora_rank:
            self.lora_scale = options.lora_alpha / options.lora_rank
            base = options.model or options.model_size
            self.adapter_config = peft.config_for(base, options.lora_rank, options.lora_alpha, options.lora_targets)
            self.adapters = trainable(
                peft.read(options.out, self.hparams["n_layer"])
                if saved
                else init_adapters(self.params, options.lora_rank, options.lora_targets, options.seed)
            )
        elif saved:
            self.params = load_run_params(options.out)
        self.optimizer = AdamW(self.trained, beta1=0.9, beta2=options.beta2, weight_decay=options.weight_decay)
        self.rng = np.random.default_rng(options.seed)
        self.step, self.elapsed, records = 0, 0.0, []
        if saved:
            records = self.resume(saved)
        self.take_step = self.step_function()
        self.records, self.folder = records, RunFolder(options.out, writes, records, self.step)

    @property
    def trained(self):  # what the optimizer moves: the adapters, or all the weights
        return self.params if self.adapters is None else self.adapters

    @property
    def lora(self):  # loss_and_grads' keywords for the adapters
        return {} if self.adapters is None else {"adapters": self.adapters, "lora_scale": self.lora_scale}

    def model(self):  # the weights as the model computes with them: the adapters merged
        return self.params if self.adapters is None else with_adapters(self.params, self.adapters, self.lora_scale)

    def step_function(self):  # (micro-batches, learning rate) -> the mean loss, the weights moved
        o = self.options
        if o.backend == "numpy":
            return NumpyStep(self)
        from training.jax_step import Step

        lora_scale = self.lora_scale if self.adapters is not None else None
        return Step(self.params, self.trained, self.optimizer, self.n_head, o.grad_clip, lora_scale, o.precision)

    def resume(self, saved):  # -> the log's records up to the save
        load_optimizer(self.options.out, self.optimizer)
        self.step, self.elapsed = saved["step"], saved["elapsed"]
        self.optimizer.step_count = self.step
        self.rng.bit_generator.state = saved["rng"]
        records, cut = read_log(os.path.join(self.options.out, LOG), self.step)
        if cut:
            print(cut, file=sys.stderr)
        print(f"resuming the run in {self.options.out} at step {self.step}", file=sys.stderr)
        return records

    def save(self):
        self.take_step.host()
        state = {"step": self.step, "rng": self.rng.bit_generator.state, "elapsed": self.elapsed}
        state["options"] = recorded_options(self.options)
        self.folder.save(
            self.step,
            self.trained,
            self.hparams,
            self.encoder,
            self.optimizer,
            state,
            self.adapter_config,
            self.records,
        )

    def train_step(self):
        """One optimizer step on grad_accum random micro-batches; returns the step's log record."""
        o, start = self.options, time.perf_counter()
        learning_rate = learning_rate_at(
            self.step + 1, o.learning_rate, o.warmup_steps, o.lr_schedule, o.steps, o.min_lr
        )
        micro_batches = [self.data.micro_batch(self.rng) for _ in range(o.grad_accum)]
        loss = self.take_step(micro_batches, learning_rate)
        self.step += 1
        seconds = time.perf_counter() - start
        self.elapsed += seconds
        tokens = sum(batch[:, :-1].size for batch, _ in micro_batches)
        record = {"step": self.step, "train_loss": loss, "learning_rate": learning_rate}
        record.update({"tokens_per_second": tokens / seconds, "elapsed": self.elapsed})
        if self.step % o.eval_every == 0 or self.step == o.steps:
            self.take_step.host()
            record["val_loss"] = held_out_loss(self.model(), self.data.held_out, self.n_head)
        self.records.append(record)
        self.folder.log(record)
        return record

    def train(self):
        """Steps until --steps, saving every --save_every and at the end. Ctrl-C, SIGTERM or SIGHUP (a
        closed terminal) ends the step under way, saves it, and exits 130, 143 or 129: the same command
        resumes."""
        from tqdm import tqdm

        o, stop, writes = self.options, [], self.folder.writes
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {s: signal.signal(s, lambda signum, frame: stop.append(stopping(signum))) for s in signals}
        bar = tqdm(
            total=o.steps, initial=self.step, unit="step", file=sys.stderr, dynamic_ncols=True, disable=not writes
        )
        try:
            while self.step < o.steps and not stop:
                record = self.train_step()
                bar.set_postfix(loss=f"{record['train_loss']:.3f}", tokens_per_s=f"{record['tokens_per_second']:.0f}")
                bar.update(1)
                if "val_loss" in record and writes:
                    bar.write(f"step {self.step}: held-out loss {record['val_loss']:.4f}", file=sys.stderr)
                if o.sample_every and self.step % o.sample_every == 0 and writes:
                    self.take_step.host()
                    bar.write(self.data.sample(self.model(), self.n_head, self.step), file=sys.stderr)
                if self.step % o.save_every == 0 or self.step == o.steps or stop:
                    self.save()
        finally:
            bar.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
        if stop:
            print(f"stopped at step {self.step}; saved in {o.out}: the same command resumes", file=sys.stderr)
            raise SystemExit(128 + stop[0])
        if writes:
            print(
                f"done: {plural(self.step, 'step')}, saved in {o.out}; python gpt2.py PROMPT --model {o.out}",
                file=sys.stderr,
            )
        self.take_step.host()
        return self.model()


class NumpyStep:
    """train.py's step: the gradients of the micro-batches, clipped, and AdamW's update, in place."""

    def __init__(self, run):
        self.run = run

    def __call__(self, micro_batches, learning_rate):  # -> the mean loss
        run = self.run
        loss, grads = accumulated_grads(run.params, micro_batches, run.n_head, **run.lora)
        clip_gradients(grads, run.options.grad_clip)
        run.optimizer.step(run.trained, grads, learning_rate)
        return loss

    def host(self):  # the weights are the host's own arrays
        pass


def starting_model(options):
    """(encoder, hparams, params) that the run starts from: any model gpt2.py loads, or with
    --from_scratch a new one of the shape given."""
    if not options.from_scratch:
        encoder, hparams, params = load_model(options.model or options.model_size, options.models_dir)
        return encoder, hparams, params if options.lora_rank else trainable(params)  # LoRA's stay read-only
    encoder = bytes_only() if options.tokenizer == "bytes" else load_gpt2_tokenizer(options.models_dir)
    hparams = {"n_vocab": len(encoder.encoder), "n_ctx": options.n_ctx, "n_embd": options.n_embd}
    hparams.update(n_head=options.n_head, n_layer=options.n_layer)
    params = init_params(**hparams, seed=options.seed)
    return encoder, hparams, as_loaded((dotted(path), array) for path, array in leaves(params))


def accumulated_grads(params, micro_batches, n_head, **lora):
    """The mean loss and gradients of several micro-batches (batch, mask): the same, up to rounding, as
    one batch that holds them all when each has as many predictions that count (each micro-batch's
    are already a mean over its own)."""
    total, losses = None, []
    for batch, mask in micro_batches:
        loss, grads = loss_and_grads(params, batch, n_head, mask, **lora)
        losses.append(float(loss))
        if total is None:
            total = grads
        else:
            for (_, t), (_, g) in zip(leaves(total), leaves(grads)):
                t += g
    for _, g in leaves(total):
        g /= np.float32(len(losses))
    return float(np.mean(losses)), total


def stopping(signum):
    """A signal that stops the run. After SIGHUP the terminal is gone, and writing to it would fail
    before the save: what is left to say goes nowhere."""
    if signum == signal.SIGHUP and sys.stderr.isatty():
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
    return signum


def main(args=None):
    """`python train.py ...`: gpt2.py's conventions (one line for each mistake, its exit codes)."""
    return run_command(lambda: TrainingRun(parse_arguments(sys.argv[1:] if args is None else args)).train())
