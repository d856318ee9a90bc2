"""train.py's command line: every flag with its default and description, the checks of their values
before anything is loaded, and the checks that need the model (its memory, LoRA's rank).
"""

import argparse
import os

import numpy as np

from common import Parser, UsageError, checked, real, whole
from gpt2 import check_number, check_whole_number
from storage.model_folder import expected_shapes
from train import LORA_TARGETS
from utils import DEFAULT_MODEL_SIZE, DEFAULT_MODELS_DIR, MODEL_HPARAMS, check_model_choice

# Options that change nothing the run computes, the run folder itself (which may have moved), and where
# the steps are computed (the backend, its precision, its processes): a resumed run may be given other ones
FREE_TO_CHANGE = ("fresh", "steps", "models_dir", "eval_every", "sample_every", "save_every", "out")
FREE_TO_CHANGE += ("backend", "precision", "coordinator", "num_processes", "process_id")

FINE_TUNING_LR = 1e-4  # a small step: the weights already know English
LORA_LR = 1e-3  # the adapters start at zero and are all that moves: larger steps than a full fine-tune's
# From scratch: nanoGPT's CPU recipe for its character-level Shakespeare (4 layers, 4 heads, 128 wide)
SCRATCH = {"n_layer": 4, "n_head": 4, "n_embd": 128, "tokenizer": "bytes", "learning_rate": 1e-3}


def memory_needed(hparams, n_batch, block_size, lora_rank=None, lora_targets=("c_attn",)):
    """Bytes a training step needs, roughly: the weights as loaded and their trainable copy, their
    gradients and two moments (5 copies; with LoRA, one, the adapted matrices merged for the step, and
    the adapters with their gradients and moments), what each block keeps for the backward pass (16
    arrays of n_embd per token, and its attention weights), the logits and their gradient, and the
    gradient of one block's attention weights."""
    shapes = expected_shapes(hparams)
    n_params = sum(int(np.prod(shape)) for shape in shapes.values())
    weights = 5 * n_params
    if lora_rank:
        places = {place for target in lora_targets for place in LORA_TARGETS[target]}
        adapted = [shapes[f"blocks.0.{module}.{name}.w"] for module, name in places]
        merged = hparams["n_layer"] * sum(n_in * n_out for n_in, n_out in adapted)
        adapters = 4 * hparams["n_layer"] * sum(lora_rank * (n_in + n_out) for n_in, n_out in adapted)
        weights = n_params + merged + adapters
    tokens = n_batch * block_size
    activations = hparams["n_layer"] * 16 * tokens * hparams["n_embd"]
    logits = 2 * tokens * hparams["n_vocab"]
    attention_weights = (hparams["n_layer"] + 1) * n_batch * hparams["n_head"] * block_size * block_size
    return 4 * (weights + activations + logits + attention_weights)


def memory_available():
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) * 1024


def check_memory(hparams, options):
    needed = memory_needed(hparams, options.batch_size, options.block_size, options.lora_rank, options.lora_targets)
    available = memory_available()
    if needed > 0.9 * available:
        what = " (LoRA: one copy of the weights, the adapters and their moments, the activations)"
        raise MemoryError(
            f"this run needs about {needed / 1e9:.1f} GB{what if options.lora_rank else ''} and "
            f"{available / 1e9:.1f} GB are available: "
            "use a smaller --batch_size or --block_size (with --grad_accum for the same batch), a smaller model"
            + ("" if options.lora_rank else ", or LoRA (--lora_rank 8), which keeps one copy of the weights")
        )


def make_parser():
    parser = Parser(prog="python train.py", epilog="example: python train.py notes/ --out runs/notes --steps 300")
    # fmt: off
    add = parser.add_argument
    add("data", nargs="+", help='UTF-8 text files, folders of them, or .jsonl files with a "text" field, or with "prompt" and "completion" to learn to answer')
    add("--out", required=True, help="the run folder: the model (HuggingFace's layout), optimizer state, log.jsonl, loss.svg")
    add("--model_size", help=f"which of OpenAI's models to start from: 124M, 355M, 774M or 1558M (default: {DEFAULT_MODEL_SIZE})")
    add("--model", help="instead, any model gpt2.py loads: a folder (a run folder too) or a hub name")
    add("--models_dir", default=DEFAULT_MODELS_DIR, help="where models, converted copies and tokenized data are kept (default: %(default)s)")
    add("--from_scratch", action="store_true", help="instead, a new GPT of the shape below, its weights drawn as GPT-2's were")
    add("--n_layer", type=whole, help=f"with --from_scratch: blocks (default: {SCRATCH['n_layer']})")
    add("--n_head", type=whole, help=f"with --from_scratch: attention heads per block (default: {SCRATCH['n_head']})")
    add("--n_embd", type=whole, help=f"with --from_scratch: the width, a multiple of --n_head (default: {SCRATCH['n_embd']})")
    add("--n_ctx", type=whole, help="with --from_scratch: the context, at least --block_size (default: --block_size)")
    add("--tokenizer", choices=["bytes", "gpt2"], help=f"with --from_scratch: bytes, 257 tokens (each byte and <|endoftext|>: any UTF-8 text, characters to learn), or gpt2, GPT-2's 50257 (default: {SCRATCH['tokenizer']})")
    add("--lora_rank", type=whole, help="train LoRA adapters of this rank (8 is usual) beside frozen weights, instead of every weight: for 774M and 1558M, which a full fine-tune cannot fit in a laptop's memory, or for adapters of a few MB; the run folder is PEFT's (default: off)")
    add("--lora_alpha", type=real, help="with --lora_rank: the adapters' scale is lora_alpha / lora_rank (default: twice the rank)")
    add("--lora_targets", type=lora_targets, help=f"with --lora_rank: which matrices of each block, comma-separated, from {', '.join(LORA_TARGETS)} (c_proj: both) (default: c_attn, PEFT's for GPT-2)")
    add("--steps", type=whole, default=1000, help="optimizer steps in all (default: %(default)s)")
    add("--batch_size", type=whole, default=4, help="windows (or prompt/completion pairs) per micro-batch (default: %(default)s)")
    add("--block_size", type=whole, default=256, help="tokens per window (default: %(default)s)")
    add("--grad_accum", type=whole, default=1, help="micro-batches per step (default: %(default)s)")
    add("--learning_rate", type=real, help=f"peak learning rate (default: {FINE_TUNING_LR}, with LoRA {LORA_LR}, from scratch {SCRATCH['learning_rate']})")
    add("--warmup_steps", type=whole, default=20, help="steps of linear warm-up (default: %(default)s)")
    add("--lr_schedule", choices=["constant", "cosine"], default="cosine", help="after warm-up; cosine goes down to --min_lr (default: %(default)s)")
    add("--min_lr", type=real, help="the cosine's floor, reached at the last step (default: a tenth of --learning_rate)")
    add("--beta2", type=real, default=0.95, help="AdamW's decay of its second moment: 0.99 for small models and batches, as nanoGPT's character-level recipe (default: %(default)s)")
    add("--weight_decay", type=real, default=0.1, help="AdamW's decay of the matrices and embeddings (default: %(default)s)")
    add("--grad_clip", type=real, default=1.0, help="the largest global gradient norm (default: %(default)s)")
    add("--val_fraction", type=real, default=0.05, help="the end of the text held out (default: %(default)s)")
    add("--val_file", help="held-out text instead of a fraction (default: none)")
    add("--eval_every", type=whole, default=50, help="held-out loss every N steps (default: %(default)s)")
    add("--sample_every", type=whole, default=100, help="a short sample every N steps, 0 for none (default: %(default)s)")
    add("--save_every", type=whole, default=100, help="save every N steps, and at the end (default: %(default)s)")
    add("--seed", type=whole, default=1, help="the random windows' seed (default: %(default)s)")
    add("--backend", choices=["numpy", "jax"], default="numpy", help="numpy: train.py's backward pass, on this CPU; jax: the same step by jax.grad in one jax.jit, on every GPU, TPU or CPU device JAX sees, of one machine or many (pip install jax, or jax[cuda12] for NVIDIA GPUs) (default: %(default)s)")
    add("--precision", choices=list(PRECISIONS), default="float32", help="with --backend jax: bf16 matrix products, the weights and optimizer state staying float32, for speed on GPUs and TPUs (default: %(default)s)")
    add("--coordinator", help="with --backend jax, a run of several processes (one per machine or GPU): HOST:PORT where process 0 listens, the same for every process (default: none; on SLURM and Cloud TPU, JAX finds the processes itself)")
    add("--num_processes", type=whole, help="with --coordinator: how many processes the run has")
    add("--process_id", type=whole, help="with --coordinator: this process's number, from 0 (which writes the run folder) to --num_processes - 1")
    add("--fresh", action="store_true", help="start over in a run folder that holds a run, which is first moved aside to OUT.previous-N (nothing is deleted)")
    # fmt: on
    n_batch, block_size = parser.get_default("batch_size"), parser.get_default("block_size")
    needed = memory_needed(MODEL_HPARAMS[DEFAULT_MODEL_SIZE], n_batch, block_size) / 1e9
    parser.description = (
        f"Fine-tune GPT-2 on your own text, or train a GPT from scratch, in NumPy. The defaults suit a CPU: "
        f"{DEFAULT_MODEL_SIZE}, batches of {n_batch} windows of {block_size} tokens (about {needed:.1f} GB of memory), "
        f"a small learning rate for fine-tuning; from scratch, {SCRATCH['n_layer']} layers of "
        f"{SCRATCH['n_head']} heads {SCRATCH['n_embd']} wide on bytes, nanoGPT's CPU recipe, which trains in minutes."
    )
    return parser


def parse_arguments(args):
    options = make_parser().parse(args)
    for name, low in (("steps", 1), ("batch_size", 1), ("block_size", 2), ("grad_accum", 1), ("warmup_steps", 0)):
        checked(check_whole_number, name, getattr(options, name), low)
    for name, low in (("eval_every", 1), ("sample_every", 0), ("save_every", 1), ("seed", 0)):
        checked(check_whole_number, name, getattr(options, name), low)
    check_shape_flags(options)
    check_lora_flags(options)
    check_backend_flags(options)
    if options.learning_rate is None:
        options.learning_rate = (
            SCRATCH["learning_rate"] if options.from_scratch else LORA_LR if options.lora_rank else FINE_TUNING_LR
        )
    for name in ("learning_rate", "weight_decay", "grad_clip"):
        checked(check_number, name, getattr(options, name), 0)
    if options.min_lr is not None:
        checked(check_number, "min_lr", options.min_lr, 0, options.learning_rate)
    checked(check_number, "beta2", options.beta2, 0, 1, False, True)
    checked(check_number, "val_fraction", options.val_fraction, 0, 1, False, True)
    if options.val_file is not None and options.val_fraction != 0.05:
        raise UsageError("give --val_fraction or --val_file, not both")
    if options.val_file is not None:
        options.val_fraction = 0.0
    if not options.from_scratch:
        checked(check_model_choice, options.model, options.model_size)
        options.model_size = options.model_size or (DEFAULT_MODEL_SIZE if options.model is None else None)
    if os.path.exists(options.out) and not os.path.isdir(options.out):
        raise UsageError(f"--out {options.out} is a file: give a folder for the run")
    return options


def check_shape_flags(options):
    """--from_scratch's shape, its defaults filled in; the shape flags are for it alone."""
    shape = ("n_layer", "n_head", "n_embd", "n_ctx", "tokenizer")
    if not options.from_scratch:
        given = [name for name in shape if getattr(options, name) is not None]
        if given:
            raise UsageError(f"--{given[0]} is for --from_scratch: a model's own shape cannot change")
        return
    if options.model is not None or options.model_size is not None:
        raise UsageError("--from_scratch starts from no model: not with --model or --model_size")
    for name in shape:
        if getattr(options, name) is None:
            setattr(options, name, options.block_size if name == "n_ctx" else SCRATCH[name])
    for name in ("n_layer", "n_head", "n_embd", "n_ctx"):
        checked(check_whole_number, name, getattr(options, name), 1)
    if options.n_embd % options.n_head:
        raise UsageError(f"--n_embd {options.n_embd} is not a multiple of --n_head {options.n_head}")
    if options.n_ctx < options.block_size:
        raise UsageError(f"--n_ctx {options.n_ctx} is shorter than --block_size {options.block_size}")


PRECISIONS = ("float32", "bf16")
PROCESS_FLAGS = ("coordinator", "num_processes", "process_id")


def check_backend_flags(options):
    """--backend jax's options: --precision, and a run of several processes."""
    given = [name for name in PROCESS_FLAGS if getattr(options, name) is not None]
    if options.backend != "jax":
        given = (["precision"] if options.precision != "float32" else []) + given
        if given:
            raise UsageError(f"--{given[0]} is for --backend jax")
        return
    if options.coordinator is None:
        if given:
            raise UsageError(f"--{given[0]} is for a run of several processes: give --coordinator HOST:PORT too")
        return
    host, _, port = options.coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--coordinator must be HOST:PORT, such as 10.0.0.1:1234, not {options.coordinator!r}")
    if len(given) < len(PROCESS_FLAGS):
        raise UsageError("--coordinator needs --num_processes N and --process_id I (0 to N - 1) too")
    checked(check_whole_number, "num_processes", options.num_processes, 1)
    checked(check_whole_number, "process_id", options.process_id, 0, options.num_processes - 1)


def start_jax(options):
    """--backend jax: JAX imported and the run's processes joined, before any work; this process's
    index. A micro-batch that the devices cannot share evenly is refused."""
    from training import jax_step  # without JAX: what to install, in one line

    n_devices, n_processes, index = jax_step.start(options.coordinator, options.num_processes, options.process_id)
    if options.batch_size % n_devices:
        where = f" of {n_processes} processes" if n_processes > 1 else ""
        raise UsageError(
            f"--batch_size {options.batch_size} does not divide among the {n_devices} devices{where} that JAX sees: "
            f"give a multiple of {n_devices}"
        )
    return index


def lora_targets(text):  # --lora_targets: "c_attn,c_fc" -> ["c_attn", "c_fc"]
    targets = [name.strip() for name in text.split(",")]
    unknown = [name for name in targets if name not in LORA_TARGETS]
    if unknown:  # argparse shows an ArgumentTypeError's message (a ValueError's it replaces)
        raise argparse.ArgumentTypeError(f"{unknown[0]!r} is not one of {', '.join(LORA_TARGETS)}")
    return targets


def check_lora_flags(options):
    """--lora_rank's options, their defaults filled in; they are for it alone."""
    if options.lora_rank is None:
        given = [name for name in ("lora_alpha", "lora_targets") if getattr(options, name) is not None]
        if given:
            raise UsageError(f"--{given[0]} is for --lora_rank")
        return
    if options.from_scratch:
        raise UsageError("--lora_rank adapts a model's weights: not with --from_scratch, whose weights are all new")
    checked(check_whole_number, "lora_rank", options.lora_rank, 1)
    options.lora_alpha = 2.0 * options.lora_rank if options.lora_alpha is None else options.lora_alpha
    checked(check_number, "lora_alpha", options.lora_alpha, 0, None, True)
    options.lora_targets = options.lora_targets or ["c_attn"]
    size = options.model_size or (DEFAULT_MODEL_SIZE if options.model is None else None)
    if size in MODEL_HPARAMS and options.lora_rank > MODEL_HPARAMS[size]["n_embd"]:
        raise UsageError(f"--lora_rank {options.lora_rank} is above {size}'s width, {MODEL_HPARAMS[size]['n_embd']}")


def check_lora_rank(options, params):  # a model known only once loaded: its rank checked against its widths
    if options.lora_rank and options.lora_rank > params["wte"].shape[1]:
        raise ValueError(f"--lora_rank {options.lora_rank} is above the model's width, {params['wte'].shape[1]}")
