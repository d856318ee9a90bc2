"""gpt2.py's flags: the parser, with every flag's default and description, and the checks of their
values, whether they came from the command line or from cli.main()'s keywords. Every flag is checked
before anything is loaded or downloaded.
"""

import os
import shlex

import gpt2
import utils
from common import Parser, Switch, UsageError, checked, real, whole
from gpt2 import N_CTX, N_VOCAB, check_whole_number
from utils import DEFAULT_MODEL_SIZE, DEFAULT_MODELS_DIR

# Rows that decode together by default: more rows make more tokens per second, but the KV cache grows
# with them (a row of 124M with its full context takes 75 MB, of 1558M 630 MB); 16 keeps a
# full-context batch of the largest model near 10 GB.
DEFAULT_BATCH_SIZE = 16
MAX_SHOWN = 50  # --show_probs: candidates on one line, more than a learner reads
MAX_CONNECTIONS = 2048  # --serve: open connections, idle ones too (each holds a thread); more get 503 at once

EXAMPLES = """\
examples:
  python gpt2.py "Alan Turing theorized that computers would one day become" -n 8
  python gpt2.py "The meaning of life is" --temperature 0.8 --top_k 40 --seed 1 -n 100
  python gpt2.py "Once upon a time" --n_samples 4 --temperature 0.9 --seed 2
  echo "Once upon a time" | python gpt2.py - -n 60
  python gpt2.py "The capital of France is" -n 5 --show_probs 5
  python gpt2.py --file essay.txt --score
  python gpt2.py --jsonl prompts.jsonl -n 20 > completions.jsonl
  python gpt2.py --interactive --temperature 0.8 --top_k 40
  python gpt2.py "Hello, I'm a language model," --model distilgpt2
  python gpt2.py --serve --port 8000"""


def make_parser():
    parser = Parser(
        prog="python gpt2.py",
        usage="python gpt2.py PROMPT [flags]\n"
        "       python gpt2.py (--file PATH | --jsonl PATH | --interactive) [flags]\n"
        "       python gpt2.py --serve [--host ADDRESS] [--port PORT] [flags]",
        description="Continue PROMPT with GPT-2 and print the new text as it is generated. With --score, "
        "measure how well GPT-2 predicts the text instead.",
        epilog=EXAMPLES,
    )
    # fmt: off
    text = parser.add_argument_group("the text")
    text.add_argument("prompt", nargs="?", metavar="PROMPT", help='the text to continue. "-" reads it from standard input (a pipe, or a file: - < notes.txt); "--" before a prompt that starts with "-". An empty prompt "" starts a fresh document, from <|endoftext|>.')
    text.add_argument("--file", metavar="PATH", help="read the text from this file (UTF-8) instead of the prompt (default: none)")
    text.add_argument("--jsonl", metavar="PATH", help='read one JSON object per line from this file ("-" for standard input) and print one per result: generation reads "prompt" and adds "sample", "completion" and "n_tokens"; --score reads "text" and adds "n_tokens", "n_scored", "nll" and "perplexity". Other keys are kept. (default: none)')
    text.add_argument("--interactive", action=Switch, help='ask for prompts one after another ("Model prompt >>> "), with the model loaded once. Ctrl-C stops a generation; Ctrl-D, or the end of piped input, ends.')
    model = parser.add_argument_group("the model")
    model.add_argument("--model_size", metavar="SIZE", help=f"which of OpenAI's models: 124M, 355M, 774M or 1558M (bigger writes better, slower) (default: {DEFAULT_MODEL_SIZE})")
    model.add_argument("--model", metavar="NAME_OR_PATH", help="instead of --model_size, any GPT-2: a folder in OpenAI's layout or HuggingFace's (config.json, model.safetensors, vocab.json, merges.txt), a training run's folder (a LoRA run's too), a PEFT adapter folder (its base, the adapters merged), or a model on the HuggingFace hub such as distilgpt2 or openai-community/gpt2-medium (from HuggingFace's cache if it is there) (default: none)")
    model.add_argument("--revision", metavar="REVISION", default="main", help="with --model NAME, the hub's branch, tag or commit to take (default: %(default)s)")
    model.add_argument("--save_model", metavar="DIR", help="instead of generating, write the model to a new folder DIR in HuggingFace's layout, for tools that know no LoRA adapters: a LoRA run's (or PEFT's) adapters merged into its base (default: none)")
    model.add_argument("--models_dir", metavar="DIR", default=DEFAULT_MODELS_DIR, help="the folder for the models; a missing model is downloaded there first, and the converted copy of every model is kept there (default: $GPT2_MODELS_DIR, else the models folder beside gpt2.py: %(default)s)")
    generation = parser.add_argument_group("generation")
    generation.add_argument("-n", "--n_tokens_to_generate", metavar="N", type=whole, default=40, help="how many tokens to add at most. A token is a word or a piece of one; 100 tokens are about 75 English words. The prompt and the new tokens must fit in the model's context, 1024 tokens (default: %(default)s)")
    generation.add_argument("--temperature", metavar="T", type=real, default=0.0, help="0 always takes the most likely token, so the same prompt gives the same text. Above 0 the next token is drawn at random: 0.7 stays close to the likely words, 1 samples the model as it is, above 1 gets more surprising (default: %(default)s)")
    generation.add_argument("--top_k", metavar="K", type=whole, default=0, help="when sampling, draw only from the K most likely tokens (40 is a common choice); 0 means no limit (default: %(default)s)")
    generation.add_argument("--top_p", metavar="P", type=real, default=1.0, help="when sampling, draw only from the most likely tokens that together have probability P (nucleus sampling; 0.9 is common); 1 means no limit (default: %(default)s)")
    generation.add_argument("--seed", metavar="N", type=whole, help="a whole number that makes sampling repeatable: the same seed gives the same text (default: none, each run differs)")
    generation.add_argument("--stop_at_end_of_text", action=Switch, default=True, help="stop when the model ends the document (<|endoftext|>); --nostop_at_end_of_text goes on past it")
    generation.add_argument("--n_samples", metavar="N", type=whole, default=1, help='how many continuations of the prompt to make; each is printed whole under a header line "======== SAMPLE i ========". With a seed, the same command prints the same samples (default: %(default)s)')
    generation.add_argument("--show_probs", metavar="N", type=whole, default=0, help=f"for learners: after each new token, show it and the model's N most likely candidates (at most {MAX_SHOWN}) with their probabilities, then the whole text. With --score, show each token of the text with the probability the model gave it and its surprisal (-log2 of it, in bits) (default: %(default)s)")
    parser.add_argument_group("speed and memory").add_argument("--batch_size", metavar="N", type=whole, default=DEFAULT_BATCH_SIZE, help="how many continuations are made together, and with --serve how many requests: more is faster per token and takes more memory. Greedy text is the same whatever it is; sampled text too, but for a rare draw that the rounding of other groupings moves (default: %(default)s)")
    scoring = parser.add_argument_group("scoring")
    scoring.add_argument("--score", action=Switch, help="instead of generating, print how well the model predicts the text: the mean negative log-likelihood per token and the perplexity (lower is better)")
    scoring.add_argument("--stride", metavar="N", type=whole, help="with --score, on a text longer than the context, start a new window every N tokens; smaller strides give tokens more context (default: the context, 1024: no overlap)")
    scoring.add_argument("--prepend_end_of_text", action=Switch, help="with --score, put <|endoftext|> before the text so that its first token is scored too (by default it is only context)")
    serving = parser.add_argument_group("serving")
    serving.add_argument("--serve", action=Switch, help="load the model once and answer over HTTP until Ctrl-C or SIGTERM (which give the requests in flight a few seconds to finish): a page that shows the model at work (its tokens, its probabilities, its attention) at http://HOST:PORT/, and OpenAI's completions API at /v1/completions for the openai client and curl. Requests are decoded together, up to --batch_size of them, one that comes later joining the others; each brings its own options")
    serving.add_argument("--host", metavar="ADDRESS", default="127.0.0.1", help="with --serve, the address to listen on: 127.0.0.1 is this machine only, 0.0.0.0 opens it to the network, to anyone who reaches the port: there is no authentication (default: %(default)s)")
    serving.add_argument("--port", metavar="PORT", type=whole, default=8000, help="with --serve, the port to listen on; 0 takes any free one, printed at the start (default: %(default)s)")
    serving.add_argument("--max_connections", metavar="N", type=whole, default=MAX_CONNECTIONS, help="with --serve, how many connections it holds open at once (idle ones too); a client beyond them gets status 503 at once (default: %(default)s)")
    # fmt: on
    return parser, {action.dest for group in (generation, scoring) for action in group._group_actions}


def check_flags(run):
    """Every value, before anything is loaded or downloaded."""
    modes = {"a prompt": run.prompt is not None, "--file": run.file is not None, "--jsonl": run.jsonl is not None}
    modes = [name for name, given in {**modes, "--interactive": run.interactive}.items() if given]
    if run.save_model is not None:
        check_saving(run, modes)
    elif run.serve:
        check_serving(run, modes)
    elif run.host != PARSER.get_default("host") or run.port != PARSER.get_default("port"):
        raise UsageError("--host and --port go with --serve")
    elif not modes:
        raise UsageError("give a prompt (or - to read standard input, --file PATH, --jsonl PATH or --interactive)")
    if len(modes) > 1 and run.save_model is None:
        both = "both " if len(modes) == 2 else "all of "
        raise UsageError(f"give one of a prompt, --file, --jsonl and --interactive, not {both}{' and '.join(modes)}")
    if run.prompt is not None and not isinstance(run.prompt, str):
        raise UsageError(f"the prompt must be text, not {run.prompt!r}")
    if run.prompt is not None:
        check_utf8(run.prompt)
    checked(utils.check_model_choice, run.model, run.model_size)
    if run.revision != "main" and run.model is None:
        raise UsageError("--revision goes with --model NAME, a model on the HuggingFace hub")
    if run.model is not None:
        checked(utils.check_revision, run.revision)
    checked(utils.check_models_dir, run.models_dir)
    checked(check_whole_number, "show_probs", run.show_probs, 0, MAX_SHOWN)
    for name in ("n_samples", "batch_size"):
        checked(check_whole_number, name, getattr(run, name), 1)
    if not run.score:
        checked(check_whole_number, "n_tokens_to_generate", run.n_tokens_to_generate, 1, N_CTX)
    if run.stride is not None:
        checked(check_whole_number, "stride", run.stride, 1, N_CTX)
    checked(gpt2.check_sampling, run.temperature, run.top_k, run.top_p, run.seed, N_VOCAB)
    check_combinations(run)


def check_combinations(run):
    """Flags that mean nothing together, refused rather than silently ignored."""
    if run.show_probs and (run.n_samples > 1 or run.jsonl is not None):
        raise UsageError("--show_probs shows one text at a time: not with --n_samples or --jsonl")
    if run.score and (run.interactive or run.n_samples > 1):
        raise UsageError("--score measures a given text: not with --interactive or --n_samples")
    if not run.score and (run.stride is not None or run.prepend_end_of_text):
        flag = "--stride" if run.stride is not None else "--prepend_end_of_text"
        raise UsageError(f"{flag} goes with --score, which measures a text; generation does not use it")
    if run.temperature == 0 and (run.top_k or run.top_p < 1) and not run.score:
        flag = "--top_k" if run.top_k else "--top_p"
        raise UsageError(f"{flag} filters what sampling draws from: it needs a --temperature above 0 (0 is greedy)")


def check_saving(run, modes):
    if modes or run.serve:
        raise UsageError(f"--save_model writes the model and generates nothing: not with {(modes or ['--serve'])[0]}")
    if os.path.lexists(run.save_model):
        raise UsageError(f"--save_model {run.save_model} exists: give a new folder")


def check_serving(run, modes):
    """--serve answers requests, which bring their own prompts and options: no others on the command line."""
    if modes:
        raise UsageError(f"--serve takes its prompts from requests: not with {modes[0]}")
    for name in sorted(REQUEST_OPTIONS):
        if getattr(run, name) != PARSER.get_default(name):
            raise UsageError(f"--{name} is not for --serve: each request gives its own options")
    if not isinstance(run.host, str) or not run.host:
        raise UsageError(f"--host must be an address such as 127.0.0.1, not {run.host!r}")
    checked(check_whole_number, "port", run.port, 0, 65535)
    checked(check_whole_number, "max_connections", run.max_connections, 1)


def several_words(word, run, args):  # a second word: the prompt was not quoted, or flags came after "--"
    if "--" in args and args.index("--") < args.index(word):  # "--": every word after it is the prompt
        end = args.index("--")
        flags = args[:end] + args[end + 2 :]
        return (
            f"unexpected argument {word!r}: after --, every word is the prompt; give the flags before it, "
            f"as in {shlex.join(['python', 'gpt2.py', *flags, '--', args[end + 1]])}"
        )
    return f"unexpected argument {word!r}: a prompt of several words goes in quotes, as in python gpt2.py {f'{run.prompt} {word}'!r}"


def check_utf8(prompt):
    """A command line's bytes that are not UTF-8 reach Python as lone surrogates (PEP 383): named here,
    before the encoder would fail on them with a codec's message."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:
        raw = prompt[e.start : e.end].encode("utf-8", "surrogateescape")
        raise UsageError(
            f"the prompt is not UTF-8 text (its byte {raw[0]:#04x} at character {e.start}): give it in UTF-8"
        ) from None


PARSER, REQUEST_OPTIONS = make_parser()  # REQUEST_OPTIONS: the flags that a request to --serve brings itself
