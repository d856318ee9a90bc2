"""The command line of gpt2.py: what `python gpt2.py ...` runs, and how it prints its results.

gpt2.py holds the model, generation and scoring; this file the presentation: text streamed as it is
generated, several samples under headers, the learners' view of the probabilities, JSON Lines in and
out, and the interactive prompt. Every flag is checked before anything is loaded or downloaded.
At the end, what train.py's command line shares with it: the parser, the checks, the exit codes.
"""

import argparse
import difflib
import json
import math
import os
import re
import shutil
import signal
import sys
import textwrap

import numpy as np

import gpt2
import serve
import train
import utils
from gpt2 import N_CTX, N_VOCAB, check_whole_number, plural
from storage import hf
from storage.files import JsonlError, partial_path, read_jsonl, read_utf8, remove_leftovers
from utils import DEFAULT_MODEL_SIZE, DEFAULT_MODELS_DIR, load_model

# Rows that decode together by default: more rows make more tokens per second, but the KV cache grows
# with them (a row of 124M with its full context takes 75 MB, of 1558M 630 MB); 16 keeps a
# full-context batch of the largest model near 10 GB.
DEFAULT_BATCH_SIZE = 16
SAMPLE_HEADER = "======== SAMPLE {} ========"  # as OpenAI's sampling scripts print them
INTERACTIVE_PROMPT = "Model prompt >>> "
MAX_SHOWN = 50  # --show_probs: candidates on one line, more than a learner reads


class Run(argparse.Namespace):
    """One run of the command line: the flags as attributes (PARSER fills them), and the model once
    loaded (encoder, hparams, params, n_head). What every printing function takes."""

    @property
    def sampling(self):  # the options of gpt2.generate and its kin, once the model is loaded
        options = {
            name: getattr(self, name) for name in ("temperature", "top_k", "top_p", "seed", "stop_at_end_of_text")
        }
        return {**options, "end_of_text": self.encoder.end_of_text}

    @property
    def model_name(self):
        return self.model or self.model_size or DEFAULT_MODEL_SIZE

    def load(self):
        self.encoder, self.hparams, self.params = load_model(self.model_name, self.models_dir, self.revision)
        self.n_head = self.hparams["n_head"]


def describe_choice(encoder, logits, token_id, n_candidates):
    """One line for learners: the chosen token and the model's most likely candidates with their
    probabilities (softmax of the model's logits: its own belief, before temperature and filtering)."""
    probs = gpt2.softmax(logits.astype(np.float64))
    top = np.argsort(probs)[::-1][:n_candidates]
    chosen = f"{token_repr(encoder, token_id):>16} {probs[token_id]:6.1%} {bar(probs[token_id], 10)}"
    candidates = "  ".join(f"{token_repr(encoder, int(i))} {probs[i]:.1%}" for i in top)
    return f"{chosen}  │ {candidates}"


def token_repr(encoder, token_id):
    """A token as quoted text, with its spaces and newlines visible: " the" or "\\n"."""
    return json.dumps(encoder.decode([token_id]), ensure_ascii=False)


def bar(fraction, width):
    eighths = round(fraction * width * 8)
    return ("█" * (eighths // 8) + " ▏▎▍▌▋▊▉"[eighths % 8]).rstrip().ljust(width)


def read_text(run):
    """The text to work on: the prompt, standard input if it is "-", or the file."""
    if run.file is not None:
        text = read_utf8(run.file)
        if not text.strip() and not run.score:
            raise ValueError(f'{run.file} holds no text to continue (for a fresh document, give the prompt "")')
        return text
    if run.prompt == "-":  # `echo text |` adds a newline that is not part of the prompt
        return read_utf8("-").removesuffix("\n").removesuffix("\r")
    return run.prompt


def print_generation(run, input_ids):
    tokens = gpt2.generate_stream(input_ids, run.params, run.n_head, run.n_tokens_to_generate, **run.sampling)
    if run.show_probs:
        print(
            f"{'next token':>16} {'prob':>6} {'':10}  │ the model's {run.show_probs} most likely next tokens",
            flush=True,
        )
        ids = []
        for token_id, logits in tokens:
            print(describe_choice(run.encoder, logits, token_id, run.show_probs), flush=True)
            ids.append(token_id)
        text = run.encoder.decode(ids)
        print(f"\n{text}")
        return text
    pieces = []
    for piece in run.encoder.decode_stream(token_id for token_id, _ in tokens):
        print(piece, end="", flush=True)  # a character split over several tokens comes out once complete
        pieces.append(piece)
    print()
    return "".join(pieces)


def print_samples(run, input_ids):
    """n_samples continuations of one prompt, each whole under its header; returns their texts."""
    if run.temperature == 0:  # every sample would be the same: make it once
        print(
            f"temperature 0 (greedy) gives {run.n_samples} identical samples, so the text is made once; "
            "for different samples, sample with a temperature above 0 (--temperature 0.8, say)",
            file=sys.stderr,
        )
        rows = [
            gpt2.generate(input_ids, run.params, run.n_head, run.n_tokens_to_generate, **run.sampling)
        ] * run.n_samples
    else:
        rows = batch_by_batch(run, [input_ids] * run.n_samples)
    texts = []
    for ids in rows:
        texts.append(run.encoder.decode(ids))
        print(f"{SAMPLE_HEADER.format(len(texts))}\n{texts[-1]}", flush=True)
    return texts


def batch_by_batch(run, prompts):
    """The new ids of each prompt, in order, given out a batch at a time, as soon as that batch is done."""
    new_ids, done = [[] for _ in prompts], 0
    steps = gpt2.generate_batch_stream(
        prompts, run.params, run.n_head, run.n_tokens_to_generate, **run.sampling, batch_size=run.batch_size
    )
    for step in steps:
        for row, token_id, _ in step:
            while row >= done + run.batch_size:  # a later batch has begun: the ones before it are done
                yield from new_ids[done : done + run.batch_size]
                done += run.batch_size
            new_ids[row].append(token_id)
    yield from new_ids[done:]


def print_score(run, input_ids):
    nlls = gpt2.token_nlls(input_ids, run.params, run.n_head, run.stride)
    scored = ~np.isnan(nlls)
    if run.show_probs:
        print(f"{'token':>16} {'prob':>6} {'':10}  surprisal")
        for token_id, nll in zip(input_ids, nlls):
            if np.isnan(nll):
                print(f"{token_repr(run.encoder, token_id):>16} {'':6} {'':10}  (context only)")
            else:
                prob = math.exp(-nll)
                print(
                    f"{token_repr(run.encoder, token_id):>16} {prob:6.1%} {bar(prob, 10)}  {nll / math.log(2):5.1f} bits"
                )
        print()
    mean_nll = float(np.nanmean(nlls))  # as score() computes it
    n_ctx = run.hparams["n_ctx"]
    print(
        f"{plural(len(input_ids), 'token')}, {int(scored.sum())} scored (windows of {n_ctx}, stride {run.stride or n_ctx})"
    )
    print(f"mean negative log-likelihood: {mean_nll:.4f} nats per token ({mean_nll / math.log(2):.4f} bits)")
    print(f"perplexity: {math.exp(mean_nll):.4f}")
    return math.exp(mean_nll)


def scoring_ids(run, text):
    """The ids to score: the text's, after <|endoftext|> with --prepend_end_of_text."""
    ids = [run.encoder.end_of_text] * bool(run.prepend_end_of_text) + run.encoder.encode(text)
    if len(ids) < 2:
        hint = "" if run.prepend_end_of_text else " (--prepend_end_of_text scores a one-token text)"
        raise ValueError(f"the text has {plural(len(ids), 'token')}; scoring needs 2, the first is only context{hint}")
    return ids


# JSON Lines: one JSON object per line in, one per result out, with the input's keys carried over, so
# that an "id" stays with its result. Generation reads "prompt", scoring "text".


def write_jsonl(record):
    """A whole line, flushed: an interruption loses only the results in flight."""
    sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def jsonl_generation(run, source, records):
    prompts, rows = [], []
    for number, record in records:
        ids = run.encoder.encode(record["prompt"]) or [run.encoder.end_of_text]
        try:
            gpt2.check_prompt(ids, run.n_tokens_to_generate, run.hparams["n_ctx"])
        except ValueError as e:
            raise JsonlError(f"{source} line {number}: {e}") from None
        for sample in range(1, run.n_samples + 1):
            prompts.append(ids)
            rows.append((record, sample))
    for (record, sample), ids in zip(rows, batch_by_batch(run, prompts)):
        write_jsonl({**record, "sample": sample, "completion": run.encoder.decode(ids), "n_tokens": len(ids)})


def jsonl_scoring(run, source, records):
    texts = []
    for number, record in records:
        try:
            texts.append(scoring_ids(run, record["text"]))
        except ValueError as e:
            raise JsonlError(f"{source} line {number}: {e}") from None
    for (_, record), ids in zip(records, texts):  # one at a time: scoring is compute-bound (docs/performance.md)
        nlls = gpt2.token_nlls(ids, run.params, run.n_head, run.stride)
        nll = float(np.nanmean(nlls))  # as score() computes it
        scored = int((~np.isnan(nlls)).sum())
        write_jsonl({**record, "n_tokens": len(ids), "n_scored": scored, "nll": nll, "perplexity": math.exp(nll)})


def interactive_loop(run):
    """Like OpenAI's interactive_conditional_samples.py: a prompt, its continuation, and again. At a
    terminal, Ctrl-C stops a generation and asks again; at the prompt it ends the program (exit 130),
    and so does Ctrl-C at any time when the prompts come from a pipe or a file. The end of the input
    (Ctrl-D, or the end of a pipe) ends it with exit 0."""
    at_terminal = sys.stdin.isatty()
    while True:
        try:
            text = input(INTERACTIVE_PROMPT)
        except EOFError:
            print()
            return
        except KeyboardInterrupt:
            print()
            sys.exit(130)
        if not text.strip():
            continue
        try:
            generate_text(run, run.encoder.encode(text))
        except KeyboardInterrupt:
            if not at_terminal:
                raise
            print("\n(stopped)", file=sys.stderr, flush=True)
        except ValueError as e:  # a prompt too long for the context: say so and ask again
            print(f"error: {e}", file=sys.stderr, flush=True)


def generate_text(run, input_ids):
    input_ids = input_ids or [run.encoder.end_of_text]
    if run.n_samples == 1:
        return print_generation(run, input_ids)
    return print_samples(run, input_ids)


def main(prompt=None, **flags):
    """Continue PROMPT with GPT-2 and print the new text as it is generated; returns the text. With
    score=True, print how well GPT-2 predicts the text instead; returns the perplexity. The keyword
    arguments are the command line's flags, with its defaults (`python gpt2.py --help`)."""
    run = PARSER.parse_args([], namespace=Run())
    unknown = sorted(set(flags) - set(vars(run)))
    if unknown:
        raise TypeError(f"main() got an unexpected keyword argument {unknown[0]!r}")
    vars(run).update(flags, prompt=prompt)
    return execute(run)


def execute(run):
    check_flags(run)
    if run.save_model is not None:
        run.load()
        return save_model(run)
    if run.serve:
        return serve_model(run)
    if run.jsonl is not None:
        source, records = read_jsonl(str(run.jsonl), "text" if run.score else "prompt")
    elif not run.interactive:
        text = read_text(run)
    run.load()
    if run.jsonl is not None:
        return jsonl_scoring(run, source, records) if run.score else jsonl_generation(run, source, records)
    if run.interactive:
        return interactive_loop(run)
    if run.score:
        return print_score(run, scoring_ids(run, text))
    return generate_text(run, run.encoder.encode(text))


def save_model(run):
    """The model as loaded (adapters merged) in a new folder, written beside it and renamed into place
    whole: a folder by that name is complete (and one of a killed run's is gone at the next)."""
    target = run.save_model.rstrip(os.sep)
    remove_leftovers(os.path.dirname(target) or ".", of=os.path.basename(target))
    work = partial_path(target)
    os.makedirs(work)
    try:
        hf.write_model(work, run.encoder, run.hparams, train.leaves(run.params))
        os.rename(work, run.save_model)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    print(f"saved the model in {run.save_model}: python gpt2.py PROMPT --model {run.save_model}", file=sys.stderr)
    return run.save_model


def serve_model(run):
    server = serve.bind(run.host, run.port, run.max_connections)  # before loading: a port in use fails at once
    run.load()
    serve.serve(server, serve.App(run.model_name, run.encoder, run.params, run.n_head, run.batch_size))


# The command line. PARSER holds every flag with its default and its description; check_flags
# checks the values, whether they came from the command line or from main()'s keywords.


class UsageError(ValueError):
    """A mistake in what a command line was given: exit code 2, before anything is loaded."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help's descriptions wrapped between words only: a name such as openai-community/gpt2-medium is
    never cut at a hyphen."""

    def _split_lines(self, text, width):
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class Parser(argparse.ArgumentParser):
    """argparse as gpt2.py's and train.py's command lines use it: whole flag names only, a one-line
    UsageError for every mistake (with a "did you mean" for a misspelt flag), and --help that shows
    each flag's default."""

    def __init__(self, **options):
        super().__init__(allow_abbrev=False, formatter_class=HelpFormatter, **options)

    def error(self, message):
        argument = re.match(r"argument (?:\S+/)?(\S+): (.*)", message)
        if argument and argument[2] == "expected one argument":
            message = f"{argument[1]} needs a value"
        elif argument:  # "--seed must be a whole number", "--lr_schedule: invalid choice"
            message = f"{argument[1]}{'' if argument[2].startswith('must') else ':'} {argument[2]}"
        raise UsageError(message)

    def parse(self, args, namespace=None, extra_positional=None):
        """The flags of args; an unknown flag is refused with the closest known one, an extra word with
        the message extra_positional(word, the options) makes of it."""
        try:
            options, extras = self.parse_known_args(args, namespace)
        except UsageError:  # a flag missing or misused: an unknown one is the likelier mistake, said first
            self.refuse_unknown_flags(
                word for word in args[: args.index("--") if "--" in args else None] if word[:2] == "--"
            )
            raise
        self.refuse_unknown_flags(extras)
        if extras:
            raise UsageError(extra_positional(extras[0], options) if extra_positional else f"unexpected {extras[0]!r}")
        return options

    def refuse_unknown_flags(self, words):
        for flag in (word.partition("=")[0] for word in words):
            if flag.startswith("-") and flag != "-" and flag not in self._option_string_actions:
                raise UsageError(f"unknown flag {flag}{self.hint(flag)}")

    def hint(self, flag):
        names = sorted(s[2:] for action in self._actions for s in action.option_strings if s.startswith("--"))
        name = flag.lower().lstrip("-")
        close = [known for known in names if known.startswith(name)] if flag.startswith("--") and name else []
        close = close or difflib.get_close_matches(name, names, n=1)  # a start, or a near spelling
        return f"; did you mean --{close[0]}?" if close else "; see --help"


class Switch(argparse.Action):
    """--NAME and --noNAME, the spellings of fire and absl (argparse's own would be --no-NAME)."""

    def __init__(self, option_strings, dest, default=False, help=None):
        names = [*option_strings, f"--no{option_strings[0][2:]}"]
        super().__init__(names, dest, nargs=0, default=default, help=f"{help} (default: {'on' if default else 'off'})")

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, not option_string.startswith("--no"))


def number_type(convert, kind):  # an argparse type (the bounds are checked with the other values)
    def parse(text):
        try:
            return convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {kind}, not {text!r}") from None

    return parse


whole, real = number_type(int, "a whole number"), number_type(float, "a number")


def checked(check, *args):
    """check(*args), its ValueError a UsageError: the one way the command lines check a value."""
    try:
        check(*args)
    except ValueError as e:
        raise UsageError(str(e)) from None


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
    serving.add_argument("--serve", action=Switch, help=f"load the model once and answer over HTTP until Ctrl-C or SIGTERM (which give the requests in flight up to {serve.SHUTDOWN_SECONDS} s to finish): a page that shows the model at work (its tokens, its probabilities, its attention) at http://HOST:PORT/, and OpenAI's completions API at /v1/completions for the openai client and curl. Requests are decoded together, up to --batch_size of them, one that comes later joining the others; each brings its own options")
    serving.add_argument("--host", metavar="ADDRESS", default="127.0.0.1", help="with --serve, the address to listen on: 127.0.0.1 is this machine only, 0.0.0.0 opens it to the network, to anyone who reaches the port: there is no authentication (default: %(default)s)")
    serving.add_argument("--port", metavar="PORT", type=whole, default=8000, help="with --serve, the port to listen on; 0 takes any free one, printed at the start (default: %(default)s)")
    serving.add_argument("--max_connections", metavar="N", type=whole, default=serve.MAX_CONNECTIONS, help="with --serve, how many connections it holds open at once (idle ones too); a client beyond them gets status 503 at once (default: %(default)s)")
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
    check_model_flags(run.model, run.model_size)
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


def check_model_flags(model, model_size):  # gpt2.py's and train.py's --model and --model_size
    if model is not None and model_size is not None:
        raise UsageError("give --model or --model_size, not both")
    if model is not None:
        checked(utils.check_model_name, model)
    if model_size is not None:
        checked(utils.check_model_size, model_size)


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


def several_words(word, run):  # a second word: the prompt was not quoted
    return f"unexpected argument {word!r}: a prompt of several words goes in quotes, as in python gpt2.py {f'{run.prompt} {word}'!r}"


PARSER, REQUEST_OPTIONS = make_parser()  # REQUEST_OPTIONS: the flags that a request to --serve brings itself


class Terminated(BaseException):
    """SIGTERM (docker stop, systemd) or SIGHUP (a closed terminal), raised where the program is, so that
    whatever it was writing is cleaned up on the way out, as for Ctrl-C."""


def terminate(signum, frame):
    raise Terminated(signum)


def run_command(work):
    """work() as a command: one line on stderr for each mistake, and the exit code: 2 for a usage mistake,
    1 for a failure at run time, 130 for Ctrl-C, 128 + N for signal N (141: the reader left, as `| head`)."""
    try:
        return work()
    except (ValueError, OSError, ImportError, MemoryError) as e:  # UsageError among them
        if isinstance(e, BrokenPipeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
            sys.exit(128 + signal.SIGPIPE)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, UsageError) else 1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Terminated as e:
        print(f"terminated ({signal.Signals(e.args[0]).name})", file=sys.stderr)
        sys.exit(128 + e.args[0])


def run_command_line(args):
    """`python gpt2.py ARGS...`."""
    run_command(lambda: execute(PARSER.parse(args, Run(), several_words)))


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    run_command_line(sys.argv[1:])
