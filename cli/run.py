"""What `python gpt2.py ...` does with its flags, and how it prints its results: text streamed as it
is generated, several samples under headers, the learners' view of the probabilities, JSON Lines in
and out, the interactive prompt, scoring; --save_model and --serve hand over to storage/ and serve/.
"""

import argparse
import json
import math
import os
import shutil
import sys

import numpy as np

import gpt2
from batching import generate_batch_stream
from cli.flags import PARSER, check_flags, several_words
from common import run_command
from gpt2 import plural
from storage import hf
from storage.files import JsonlError, partial_path, read_jsonl, read_utf8, remove_leftovers, source_name
from utils import DEFAULT_MODEL_SIZE, load_model

SAMPLE_HEADER = "======== SAMPLE {} ========"  # as OpenAI's sampling scripts print them
INTERACTIVE_PROMPT = "Model prompt >>> "


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
    """The text to work on: the prompt, or the text of standard input ("-") or of the file. A fresh
    document is asked for by the prompt "": standard input or a file that holds no text is refused, as a
    --jsonl that holds no line is."""
    if run.file is None and run.prompt != "-":
        return run.prompt
    source = "-" if run.file is None else run.file
    text = read_utf8(source)
    if source == "-":  # `echo text |` adds a newline that is not part of the prompt
        text = text.removesuffix("\n").removesuffix("\r")
    if not text.strip() and not run.score:  # (scoring refuses a text of under two tokens itself)
        raise ValueError(f'{source_name(source)} holds no text to continue (for a fresh document, give the prompt "")')
    return text


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
    steps = generate_batch_stream(
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
    (Ctrl-D, or the end of a pipe) ends it with exit 0. The prompt goes to the terminal; when the
    prompts come from a pipe or a file it goes to stderr, as Python's own does, so that standard output
    holds the results only."""
    at_terminal = sys.stdin.isatty()
    shown = sys.stdout if at_terminal else sys.stderr
    while True:
        try:
            if not at_terminal:
                print(INTERACTIVE_PROMPT, end="", file=sys.stderr, flush=True)
            text = input(INTERACTIVE_PROMPT if at_terminal else "")  # at a terminal, readline knows the prompt
        except EOFError:
            print(file=shown)
            return
        except KeyboardInterrupt:
            print(file=shown)
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
        if not records:
            raise ValueError(f"{source} holds no JSON lines: nothing to {'score' if run.score else 'continue'}")
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
        import train  # leaves(): the tree walk of the optimizer, loaded only for this

        hf.write_model(work, run.encoder, run.hparams, train.leaves(run.params))
        os.rename(work, run.save_model)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    print(f"saved the model in {run.save_model}: python gpt2.py PROMPT --model {run.save_model}", file=sys.stderr)
    return run.save_model


def serve_model(run):
    from serve.app import App  # the server's modules, loaded only for --serve
    from serve.server import bind, serve

    server = bind(run.host, run.port, run.max_connections)  # before loading: a port in use fails at once
    run.load()
    serve(server, App(run.model_name, run.encoder, run.params, run.n_head, run.batch_size))


def run_command_line(args):
    """`python gpt2.py ARGS...`."""
    run_command(lambda: execute(PARSER.parse(args, Run(), several_words)))
