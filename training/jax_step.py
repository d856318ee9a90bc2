"""train.py's step on JAX (--backend jax): for GPUs, TPUs, and every device of one machine or many.

The model is gpt2.py's own functions with `np` bound to jax.numpy (the README's "What next"), the
loss gpt2.lm_loss (for prompt/completion pairs, the same next-token losses counted by their mask),
and the gradients jax.value_and_grad's instead of train.py's backward pass. Clipping and AdamW are
train.py's arithmetic written again on jax.numpy, with the same constants, rather than optax's
(whose clipping leaves out train.py's 1e-6): so a run folder moves between the backends, and the
two give the same steps. The whole step, micro-batches, clipping and update, is one jax.jit.

Data parallel, by JAX's own sharding: the weights and the optimizer's moments are replicated on every
device, each micro-batch is split across the devices along its rows, and the compiler adds the sum
of the gradients across devices (and across processes: one per machine or per GPU, joined by
jax.distributed). Every process reads the same data with the same seed and hands JAX its own
devices' rows.
"""

import functools
import importlib.util
import os
import sys
import threading

import numpy as np

import gpt2
import train

try:
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P
except ImportError:
    raise ImportError("--backend jax needs JAX: pip install jax (or jax[cuda12] for NVIDIA GPUs)") from None

INITIALIZATION_SECONDS = 120  # how long the processes of a run wait for each other to start
MATMUL_PRECISION = {"float32": "highest", "bf16": "bfloat16"}  # for each of train.py's --precision


def gpt2_on_jax():
    """gpt2.py loaded once more, as a module of its own whose functions find jax.numpy as `np`."""
    spec = importlib.util.spec_from_file_location("gpt2_on_jax", gpt2.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.np = jnp
    return module


def start(coordinator=None, num_processes=None, process_id=None):
    """Join the run's other processes (with a coordinator, or on a cluster JAX recognises); returns
    (devices, processes, this process's index)."""
    if coordinator is not None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPUs' collectives across processes

        def give_up():  # JAX ends a process that waited too long with a crash report: one line instead
            print(
                f"error: the run's {num_processes} processes did not all join through {coordinator} within "
                f"{INITIALIZATION_SECONDS} s: start each (--process_id 0 to {num_processes - 1}) with process 0's "
                "address as --coordinator",
                file=sys.stderr,
            )
            os._exit(1)  # from this thread, before anything is written

        watchdog = threading.Timer(INITIALIZATION_SECONDS, give_up)
        watchdog.start()
        try:
            jax.distributed.initialize(
                coordinator, num_processes, process_id, initialization_timeout=2 * INITIALIZATION_SECONDS
            )
        finally:
            watchdog.cancel()
    else:
        try:
            jax.distributed.initialize()  # SLURM, Open MPI, Cloud TPU: JAX finds the others itself
        except ValueError:  # not on a cluster that JAX knows: this process alone
            pass
    return jax.device_count(), jax.process_count(), jax.process_index()


def devices():  # what the run computes on, for people: "8 x cpu", "2 processes x 8 x NVIDIA H100 80GB HBM3"
    processes = f"{jax.process_count()} processes x " if jax.process_count() > 1 else ""
    return f"{processes}{jax.local_device_count()} x {jax.local_devices()[0].device_kind}"


def to_devices(tree, sharding):  # host arrays -> arrays on the devices, as sharding places them
    return jax.tree_util.tree_map(
        lambda a: jax.make_array_from_callback(a.shape, sharding, lambda index: np.asarray(a[index])), tree
    )


def from_devices(array):  # a replicated array -> NumPy's (this process's copy)
    return np.asarray(array.addressable_data(0))


class Step:
    """The optimizer's step as one jax.jit on every device: called with the step's micro-batches
    (batch, mask) and learning rate, it moves the weights (or LoRA's adapters) and the optimizer's
    moments, which stay on the devices; host() copies them back into the trainer's NumPy arrays."""

    def __init__(self, params, trained, optimizer, n_head, grad_clip, lora_scale=None, precision="float32"):
        self.trained, self.optimizer, self.precision = trained, optimizer, precision
        # Auto: the compiler decides where each array of the step lies, from the inputs' places
        mesh = jax.make_mesh((jax.device_count(),), ("rows",), axis_types=(jax.sharding.AxisType.Auto,))
        self.replicated, self.rows = NamedSharding(mesh, P()), NamedSharding(mesh, P(None, "rows"))
        paths = [path for path, _ in train.leaves(trained)]  # jax flattens dicts and lists in the same order
        self.state = to_devices(
            (trained, [optimizer.m[path] for path in paths], [optimizer.v[path] for path in paths]), self.replicated
        )
        self.frozen = None if lora_scale is None else to_devices(params, self.replicated)
        self.on_host = True  # whether the trainer's arrays hold what the devices hold
        options = {"n_head": n_head, "grad_clip": grad_clip, "lora_scale": lora_scale, "optimizer": optimizer}
        decays = [train.decays(path) for path in paths]
        self.step = jax.jit(functools.partial(step, gpt2_on_jax(), decays, **options), donate_argnums=0)

    def __call__(self, micro_batches, learning_rate):  # -> the mean loss
        o = self.optimizer
        o.step_count += 1
        scalars = {  # as train.AdamW.update computes them, in float64 on the host
            "decayed": 1.0 - learning_rate * o.weight_decay,
            "rate": learning_rate / (1.0 - o.beta1**o.step_count),
            "root_correction2": (1.0 - o.beta2**o.step_count) ** 0.5,
        }
        batches, weights = stacked(micro_batches)
        with jax.default_matmul_precision(MATMUL_PRECISION[self.precision]):
            self.state, loss = self.step(
                self.state,
                self.frozen,
                to_devices(batches, self.rows),
                None if weights is None else to_devices(weights, self.rows),
                {name: np.float32(value) for name, value in scalars.items()},
            )
        self.on_host = False
        return float(from_devices(loss))

    def host(self):
        """The weights and moments, copied into the trainer's arrays (for held-out losses, samples, saves),
        once after each step however often it is asked."""
        if self.on_host:
            return
        self.on_host = True
        trained, m, v = self.state
        for (path, host), device, m_i, v_i in zip(train.leaves(self.trained), jax.tree_util.tree_leaves(trained), m, v):
            host[...] = from_devices(device)
            self.optimizer.m[path][...] = from_devices(m_i)
            self.optimizer.v[path][...] = from_devices(v_i)


def stacked(micro_batches):
    """The micro-batches (ids, mask or None) as ids [n_micro, n_batch, n_seq + 1], and for pairs the
    weights [n_micro, n_batch, n_seq] of the predictions that count (those of each micro-batch summing
    to 1; None for text). Pairs' batches, of many lengths, are padded to the next power of two (the
    padding does not count), so that the step is compiled for a few lengths only."""
    if all(mask is None for _, mask in micro_batches):
        return np.stack([batch for batch, _ in micro_batches]), None
    length = 1 << (max(batch.shape[1] for batch, _ in micro_batches) - 1).bit_length()
    batches, weights = [], []
    for batch, mask in micro_batches:
        padding = ((0, 0), (0, length - batch.shape[1]))
        batches.append(np.pad(batch, padding, mode="edge"))  # more of each row's own padding, <|endoftext|>
        weights.append(np.pad(mask / mask.sum(), padding).astype(np.float32))
    return np.stack(batches), np.stack(weights)


def step(model, decays, state, frozen, batches, weights, scalars, n_head, grad_clip, lora_scale, optimizer):
    """One optimizer step, traced by jax.jit: the mean loss of the micro-batches and the new state."""
    trained, m, v = state

    def loss_of(trained, micro_batch):  # ids [n_batch, n_seq + 1], or for pairs (ids, weights [n_batch, n_seq])
        params = trained if frozen is None else train.with_adapters(frozen, trained, lora_scale)
        if not isinstance(micro_batch, tuple):  # text: every prediction counts
            return jnp.mean(jax.vmap(lambda row: model.lm_loss(params, row, n_head))(micro_batch))
        ids, weights = micro_batch  # pairs: the completions' predictions, their weights summing to 1
        nlls = jax.vmap(lambda row: model.next_token_nlls(model.gpt2(row[:-1], **params, n_head=n_head), row[1:]))
        return jnp.sum(nlls(ids) * weights)

    def accumulate(total, micro_batch):
        return jax.tree_util.tree_map(jnp.add, total, jax.value_and_grad(loss_of)(trained, micro_batch)), None

    zeros = (jnp.float32(0), jax.tree_util.tree_map(jnp.zeros_like, trained))
    (loss, grads), _ = jax.lax.scan(accumulate, zeros, batches if weights is None else (batches, weights))
    n_micro = batches.shape[0]
    grads = [g / n_micro for g in jax.tree_util.tree_leaves(grads)]
    norm = jnp.sqrt(sum(jnp.vdot(g, g) for g in grads))
    grads = [g * jnp.minimum(1.0, grad_clip / (norm + 1e-6)) for g in grads]
    new_p, new_m, new_v = [], [], []
    for p, g, m_i, v_i, decay in zip(jax.tree_util.tree_leaves(trained), grads, m, v, decays):
        if decay and optimizer.weight_decay:
            p = p * scalars["decayed"]
        m_i = m_i * optimizer.beta1 + g * (1.0 - optimizer.beta1)
        v_i = v_i * optimizer.beta2 + (g * g) * (1.0 - optimizer.beta2)
        p = p - m_i / (jnp.sqrt(v_i) / scalars["root_correction2"] + optimizer.eps) * scalars["rate"]
        new_p.append(p)
        new_m.append(m_i)
        new_v.append(v_i)
    new_trained = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(trained), new_p)
    return (new_trained, new_m, new_v), loss / n_micro
