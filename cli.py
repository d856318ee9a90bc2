"""The command line of gpt2.py: what `python gpt2.py ...` runs, and how it prints its results.

gpt2.py holds the model, generation and scoring; this file the presentation: text streamed as it is
generated, several samples under headers, the learners' view of the probabilities, JSON Lines in and
out, and the interactive prompt. Every flag is checked before anything is loaded or downloaded.
"""

import contextlib
import difflib
import inspect
import json
import math
import signal
import sys

import numpy as np

import gpt2
from files import megabytes
from gpt2 import END_OF_TEXT, check_whole_number, plural

# Rows that decode together by default: more rows make more tokens per second, but the KV cache grows
# with them (a row of 124M with its full context takes 75 MB, of 1558M 630 MB); 16 keeps a
# full-context batch of the largest model near 10 GB.
DEFAULT_BATCH_SIZE = 16
SAMPLE_HEADER = "======== SAMPLE {} ========"  # as OpenAI's sampling scripts print them
INTERACTIVE_PROMPT = "Model prompt >>> "
# Every GPT-2 has OpenAI's vocabulary, <|endoftext|> its last entry, and a context of 1024 tokens: the
# flags are checked against these before a model is loaded (a smaller context, once it is).
N_VOCAB, N_CTX = END_OF_TEXT + 1, 1024
# Text read from a file or standard input: 100 MB is some 25 million tokens, far more than anyone
# scores in one run, and `python gpt2.py - < /dev/zero` must not read until the memory runs out.
MAX_INPUT_BYTES = 100_000_000


class Run:
    """One run of the command line: main()'s arguments as attributes, and the model once loaded
    (encoder, hparams, params, n_head). What every printing function takes."""

    def __init__(self, flags):
        self.__dict__.update(flags)

    @property
    def sampling(self):  # the options of gpt2.generate and its kin
        return {
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop_at_end_of_text": self.stop_at_end_of_text,
        }

    def load(self):
        from utils import load_model

        model = self.model or self.model_size or "124M"
        self.encoder, self.hparams, self.params = load_model(model, self.models_dir, self.revision)
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
        return decode_utf8(read_bytes(run.file), run.file)
    if run.prompt == "-":  # `echo text |` adds a newline that is not part of the prompt
        return decode_utf8(read_bytes("-"), "standard input").removesuffix("\n").removesuffix("\r")
    return run.prompt


def read_bytes(path):
    """The bytes of a file, or of standard input for "-", read piece by piece so that Ctrl-C stops it,
    and at most MAX_INPUT_BYTES of them."""
    source = "standard input" if path == "-" else path
    pieces, size = [], 0
    try:
        with contextlib.nullcontext(sys.stdin.buffer) if path == "-" else open(path, "rb") as f:
            while piece := f.read(1 << 20):
                size += len(piece)
                if size > MAX_INPUT_BYTES:
                    raise ValueError(
                        f"{source} holds more than {megabytes(MAX_INPUT_BYTES)} of text, the most read at once"
                    )
                pieces.append(piece)
    except OSError as e:
        raise ValueError(f"cannot read {source}: {e.strerror}") from None
    return b"".join(pieces)


def decode_utf8(data, source):
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{source} is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start})") from None


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
    ids = [END_OF_TEXT] * bool(run.prepend_end_of_text) + run.encoder.encode(text)
    if len(ids) < 2:
        hint = "" if run.prepend_end_of_text else " (--prepend_end_of_text scores a one-token text)"
        raise ValueError(f"the text has {plural(len(ids), 'token')}; scoring needs 2, the first is only context{hint}")
    return ids


# JSON Lines: one JSON object per line in, one per result out, with the input's keys carried over, so
# that an "id" stays with its result. Generation reads "prompt", scoring "text".


class JsonlError(ValueError):
    """A line of the JSON Lines input is not what it should be."""


def read_jsonl(path, field):
    """The objects of a JSON Lines file ("-": standard input), each checked to hold the text field.
    Blank lines are skipped. A bad line stops everything with its line number, before any model work."""
    source = "standard input" if path == "-" else path
    records = []
    for number, line in enumerate(decode_utf8(read_bytes(path), source).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise JsonlError(
                f"{source} line {number}: not JSON: {e.msg.lower().removesuffix(' at')} at column {e.colno}"
            ) from None
        if not isinstance(record, dict):
            raise JsonlError(f"{source} line {number}: not a JSON object but {type(record).__name__}")
        if field not in record:
            raise JsonlError(f'{source} line {number}: no "{field}" key')
        if not isinstance(record[field], str):
            raise JsonlError(f'{source} line {number}: "{field}" is not a string but {type(record[field]).__name__}')
        records.append((number, record))
    return source, records


def write_jsonl(record):
    """A whole line, flushed: an interruption loses only the results in flight."""
    sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def jsonl_generation(run, source, records):
    prompts, rows = [], []
    for number, record in records:
        ids = run.encoder.encode(record["prompt"]) or [END_OF_TEXT]
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
    input_ids = input_ids or [END_OF_TEXT]
    if run.n_samples == 1:
        return print_generation(run, input_ids)
    return print_samples(run, input_ids)


def main(
    prompt=None,
    n_tokens_to_generate=40,
    model_size=None,
    model=None,
    revision="main",
    models_dir="models",
    temperature=0.0,
    top_k=0,
    top_p=1.0,
    seed=None,
    stop_at_end_of_text=True,
    show_probs=0,
    file=None,
    score=False,
    stride=None,
    prepend_end_of_text=False,
    n_samples=1,
    batch_size=DEFAULT_BATCH_SIZE,
    jsonl=None,
    interactive=False,
    serve=False,
    host="127.0.0.1",
    port=8000,
):
    """Continue PROMPT with GPT-2 and print the new text as it is generated; returns the text.
    With --score, measure how well GPT-2 predicts the text instead; returns the perplexity.

    Args:
        prompt: the text to continue. "-" reads it from standard input (a pipe, or a file: - < notes.txt).
            An empty prompt "" starts a fresh document, from <|endoftext|>.
        n_tokens_to_generate: how many tokens to add at most. A token is a word or a piece of one;
            100 tokens are about 75 English words. The prompt and the new tokens must fit in 1024.
        model_size: which of OpenAI's models: 124M (the default), 355M, 774M or 1558M (bigger writes
            better, slower).
        model: instead of --model_size, any GPT-2: a folder in OpenAI's layout or HuggingFace's
            (config.json, model.safetensors, vocab.json, merges.txt), or a model on the HuggingFace hub
            such as distilgpt2 or openai-community/gpt2-medium (from HuggingFace's cache if it is there).
        revision: with --model NAME, the hub's branch, tag or commit to take (default main).
        models_dir: the folder for the models; a missing model is downloaded there first, and the
            converted copy of every model is kept there.
        temperature: 0 (the default) always takes the most likely token, so the same prompt gives the
            same text. Above 0 the next token is drawn at random: 0.7 stays close to the likely
            words, 1 samples the model as it is, above 1 gets more surprising.
        top_k: when sampling, draw only from the k most likely tokens (40 is a common choice); 0 means no limit.
        top_p: when sampling, draw only from the most likely tokens that together have probability
            top_p (nucleus sampling; 0.9 is common); 1 means no limit.
        seed: a whole number that makes sampling repeatable: the same seed gives the same text.
            Without it, every run differs.
        stop_at_end_of_text: stop when the model ends the document (<|endoftext|>); --nostop_at_end_of_text
            goes on past it.
        show_probs: for learners: after each new token, show it and the model's N most likely candidates
            with their probabilities, then the whole text. With --score, show each token of the text
            with the probability the model gave it and its surprisal (-log2 of it, in bits).
        file: read the text from this file (UTF-8) instead of the prompt.
        score: instead of generating, print how well the model predicts the text: the mean negative
            log-likelihood per token and the perplexity (lower is better).
        stride: with --score, on a text longer than the context (1024 tokens), start a new window
            every STRIDE tokens (default 1024: no overlap); smaller strides give tokens more context.
        prepend_end_of_text: with --score, put <|endoftext|> before the text so that its first token is
            scored too (by default it is only context).
        n_samples: how many continuations of the prompt to make; each is printed whole under a header
            line "======== SAMPLE i ========". With a seed, the same command prints the same samples.
        batch_size: how many continuations are made together (default 16): more is faster per token
            and takes more memory; the text is the same whatever it is.
        jsonl: read one JSON object per line from this file ("-" for standard input) and print one per
            result: generation reads "prompt" and adds "sample", "completion" and "n_tokens"; --score
            reads "text" and adds "n_tokens", "n_scored", "nll" and "perplexity". Other keys are kept.
        interactive: ask for prompts one after another ("Model prompt >>> "), with the model loaded once.
            Ctrl-C stops a generation; Ctrl-D, or the end of piped input, ends.
        serve: load the model once and answer over HTTP until Ctrl-C: a page that shows the model at work
            (its tokens, its probabilities, its attention) at http://HOST:PORT/, and OpenAI's completions
            API at /v1/completions for the openai client and curl. Requests are decoded together, up to
            --batch_size of them, one that comes later joining the others; each brings its own options.
        host: with --serve, the address to listen on: 127.0.0.1, this machine only (0.0.0.0 opens it to the network).
        port: with --serve, the port to listen on (0: any free one, printed at the start).
    """
    run = Run(locals())
    check_flags(run)
    if serve:
        return serve_model(run)
    if jsonl is not None:
        source, records = read_jsonl(str(jsonl), "text" if score else "prompt")
    elif not interactive:
        text = read_text(run)
    run.load()
    if jsonl is not None:
        return jsonl_scoring(run, source, records) if score else jsonl_generation(run, source, records)
    if interactive:
        return interactive_loop(run)
    if score:
        return print_score(run, scoring_ids(run, text))
    return generate_text(run, run.encoder.encode(text))


def serve_model(run):
    import serve

    server = serve.bind(run.host, run.port)  # before loading: a port in use fails at once
    run.load()
    name = run.model or run.model_size or "124M"
    serve.serve(server, serve.App(name, run.encoder, run.params, run.n_head, run.batch_size))


class UsageError(ValueError):
    """A mistake in what the command line was given: exit code 2, before anything is loaded."""


def check_flags(run):
    """Every value main() is given, before anything is loaded or downloaded."""
    from utils import check_model_name, check_model_size, check_revision

    modes = {"a prompt": run.prompt is not None, "--file": run.file is not None, "--jsonl": run.jsonl is not None}
    modes = [name for name, given in {**modes, "--interactive": run.interactive}.items() if given]
    if run.serve:
        check_serving(run, modes)
    elif run.host != "127.0.0.1" or run.port != 8000:
        raise UsageError("--host and --port go with --serve")
    elif not modes:
        raise UsageError("give a prompt (or - to read standard input, --file PATH, --jsonl PATH or --interactive)")
    if len(modes) > 1:
        both = "both " if len(modes) == 2 else "all of "
        raise UsageError(f"give one of a prompt, --file, --jsonl and --interactive, not {both}{' and '.join(modes)}")
    if run.prompt is not None and not isinstance(run.prompt, str):
        raise UsageError(f"the prompt must be text, not {run.prompt!r} (on the command line, give it first)")
    if run.model is not None and run.model_size is not None:
        raise UsageError("give --model or --model_size, not both")
    try:
        if run.model is not None:
            check_model_name(run.model)
            check_revision(run.revision)
        if run.model_size is not None:
            check_model_size(run.model_size)
        for name, low in (("show_probs", 0), ("n_samples", 1), ("batch_size", 1)):
            check_whole_number(name, getattr(run, name), low)
        if not run.score:
            check_whole_number("n_tokens_to_generate", run.n_tokens_to_generate, 1, N_CTX)
        if run.stride is not None:
            check_whole_number("stride", run.stride, 1, N_CTX)
        gpt2.check_sampling(run.temperature, run.top_k, run.top_p, run.seed, N_VOCAB)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if run.show_probs and (run.n_samples > 1 or run.jsonl is not None):
        raise UsageError("--show_probs shows one text at a time: not with --n_samples or --jsonl")
    if run.score and (run.interactive or run.n_samples > 1):
        raise UsageError("--score measures a given text: not with --interactive or --n_samples")
    if not run.score and (run.stride is not None or run.prepend_end_of_text):
        flag = "--stride" if run.stride is not None else "--prepend_end_of_text"
        raise UsageError(f"{flag} goes with --score, which measures a text; generation does not use it")


def fire_arguments(args):
    """The command line's words as fire should get them, or a UsageError for a word main() does not take.
    fire alone would run with a misspelt flag ignored (after downloading the model), and would read the
    second word of an unquoted prompt as the value of n_tokens_to_generate."""
    parameters = inspect.signature(main).parameters
    switches = {name for name, parameter in parameters.items() if isinstance(parameter.default, bool)}
    flags = {name for name in parameters if name not in switches} | switches | {f"no{name}" for name in switches}
    result, positional, i = [], [], 0
    while i < len(args):
        arg = args[i]
        if arg == "-n" or arg.startswith("-n="):  # fire's short form of the only flag with an n, before n_samples
            arg = "--n_tokens_to_generate" + arg[2:]
        if arg.startswith("-") and arg != "-":
            name, has_value, value = arg.lstrip("-").partition("=")
            if not arg.startswith("--") or name not in flags:
                close = [flag for flag in sorted(flags) if flag.startswith(name)] if name else []
                close = close or difflib.get_close_matches(name, sorted(flags), n=1)  # a start, or a near spelling
                hint = f"; did you mean --{close[0]}?" if close else "; see --help"
                raise UsageError(f"unknown flag {arg.partition('=')[0]}{hint}")
            if not has_value and (name in switches or name.removeprefix("no") in switches):
                # with its value written out: fire would take a bare switch's next word for its value
                result.append(f"--{name}=True" if name in switches else f"--{name.removeprefix('no')}=False")
                i += 1
                continue
            if not has_value:
                if i + 1 == len(args) or args[i + 1].startswith("--"):
                    raise UsageError(f"--{name} needs a value")
                i += 1
                value = args[i]
            # fire reads values as Python literals and a lone "-" as its separator of chained commands:
            # text flags, and "-", go quoted, so that they arrive as typed
            result.append(f"--{name}={repr(value) if name in TEXT_FLAGS or value == '-' else value}")
            i += 1
            continue
        positional.append(arg)
        if len(positional) > 1:
            raise UsageError(
                f"unexpected argument {arg!r}: a prompt of several words goes in quotes, as in "
                f"python gpt2.py {' '.join(positional)!r}"
            )
        result.append(repr(arg))  # the prompt, exactly as typed (fire would read "42" as a number)
        i += 1
    return result


def check_serving(run, modes):
    """--serve answers requests, which bring their own prompts and options: no others on the command line."""
    if modes:
        raise UsageError(f"--serve takes its prompts from requests: not with {modes[0]}")
    defaults = {name: p.default for name, p in inspect.signature(main).parameters.items()}
    for name in (
        "n_tokens_to_generate",
        "temperature",
        "top_k",
        "top_p",
        "seed",
        "stop_at_end_of_text",
        "show_probs",
        "score",
        "stride",
        "prepend_end_of_text",
        "n_samples",
    ):
        if getattr(run, name) != defaults[name]:
            raise UsageError(f"--{name} is not for --serve: each request gives its own options")
    if not isinstance(run.host, str) or not run.host:
        raise UsageError(f"--host must be an address such as 127.0.0.1, not {run.host!r}")
    try:
        check_whole_number("port", run.port, 0, 65535)
    except ValueError as e:
        raise UsageError(str(e)) from None


TEXT_FLAGS = {"prompt", "model_size", "model", "revision", "models_dir", "file", "jsonl", "host"}
METAVARS = {
    "model_size": "SIZE",
    "model": "NAME_OR_PATH",
    "revision": "REVISION",
    "models_dir": "DIR",
    "file": "PATH",
    "jsonl": "PATH",
    "temperature": "T",
    "top_p": "P",
    "host": "ADDRESS",
    "port": "PORT",
}
DEFAULTS_SHOWN = {
    "model_size": "124M",
    "model": "none",
    "seed": "none: each run differs",
    "stride": f"the context, {N_CTX}",
    "file": "none",
    "jsonl": "none",
}
EXAMPLES = """\
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


def help_text():
    """--help: main()'s docstring laid out for the terminal: every flag with its default and its whole
    description (fire's own help cuts descriptions at a later line holding a colon)."""
    doc = inspect.getdoc(main)
    summary, args = doc.split("\n\nArgs:\n")
    descriptions, name = {}, None
    for line in args.splitlines():
        if not line.startswith("        ") and ":" in line:
            name, _, text = line.strip().partition(":")
            descriptions[name] = [text.strip()]
        else:
            descriptions[name].append(line.strip())
    lines = [
        "usage: python gpt2.py PROMPT [flags]",
        "       python gpt2.py (--file PATH | --jsonl PATH | --interactive) [flags]",
        "       python gpt2.py --serve [--host ADDRESS] [--port PORT] [flags]",
        "",
    ]
    lines += [summary, "", "arguments:"]
    for name, parameter in inspect.signature(main).parameters.items():
        if name == "prompt":
            heading = "  PROMPT"
        elif isinstance(parameter.default, bool):
            heading = f"  --{'no' if parameter.default else ''}{name}"
        else:
            short = "-n, " if name == "n_tokens_to_generate" else ""
            default = DEFAULTS_SHOWN.get(name, parameter.default)
            heading = f"  {short}--{name} {METAVARS.get(name, 'N')}  (default: {default})"
        lines += [heading, *(f"      {text}" for text in descriptions[name])]
    return "\n".join([*lines, "", "examples:", EXAMPLES])


class Terminated(BaseException):
    """SIGTERM (docker stop, systemd) or SIGHUP (a closed terminal), raised where the program is, so that
    whatever it was writing is cleaned up on the way out, as for Ctrl-C."""


def terminate(signum, frame):
    raise Terminated(signum)


def fail(message, exit_code):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(exit_code)


def run_command_line(args):
    """`python gpt2.py ARGS...`: main() through fire, with one line on stderr for each mistake, and the
    exit code: 2 for a usage mistake, 1 for a failure at run time, 130 for Ctrl-C, 128 + N for signal N."""
    if "-h" in args or "--help" in args:
        return print(help_text())
    try:
        command = fire_arguments(args)
    except UsageError as e:
        fail(e, 2)
    import fire

    try:
        fire.Fire(main, command=command, serialize=lambda result: None)  # main has printed it already
    except UsageError as e:
        fail(e, 2)
    except (ValueError, OSError, ImportError) as e:
        fail(e, 1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Terminated as e:
        print(f"terminated ({signal.Signals(e.args[0]).name})", file=sys.stderr)
        sys.exit(128 + e.args[0])


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    run_command_line(sys.argv[1:])
