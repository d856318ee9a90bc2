"""What the programs share, kept out of the lessons: the command lines' parser, usage errors and exit
codes, and the signals that stop a program; the thread per core and the allocator's settings that make
NumPy's elementwise work fast (train.py's backward and AdamW, the server's lens).
"""

import argparse
import ctypes
import difflib
import os
import re
import signal
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# The command lines: gpt2.py's and train.py's share one parser, one way of checking a value, and one
# set of exit codes. A usage mistake is refused before anything is loaded, with exit code 2.


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
        the message extra_positional(word, the options, args) makes of it."""
        try:
            options, extras = self.parse_known_args(args, namespace)
        except UsageError:  # a flag missing or misused: an unknown one is the likelier mistake, said first
            self.refuse_unknown_flags(
                word for word in args[: args.index("--") if "--" in args else None] if word[:2] == "--"
            )
            raise
        self.refuse_unknown_flags(extras)
        if extras:
            raise UsageError(
                extra_positional(extras[0], options, args) if extra_positional else f"unexpected {extras[0]!r}"
            )
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


# Exit codes and signals.


class Terminated(BaseException):
    """SIGTERM (docker stop, systemd) or SIGHUP (a closed terminal), raised where the program is, so that
    whatever it was writing is cleaned up on the way out, as for Ctrl-C."""


def terminate(signum, frame):
    raise Terminated(signum)


def stop_on_signals():
    """SIGTERM and SIGHUP end the program as Ctrl-C does, through Terminated (a command's start)."""
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)


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


# Elementwise work on every core.

# NumPy runs an elementwise operation on one core, over a whole array at a time, while its matrix
# products use every core. The long chains of elementwise passes (gelu and its backward, the softmaxes,
# AdamW) go instead a piece at a time, each piece small enough that all of its passes find it in the
# processor's cache, with a thread per core (NumPy lets go of the interpreter's lock inside its loops).
# The pieces depend only on the array's shape, so the results are the same, bit for bit, on any number
# of cores.

PIECE = 1 << 18  # numbers: 1 MB of float32 per array
THREADS = ThreadPoolExecutor(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())


def on_every_core(work, n, piece=PIECE):
    """work(slice) for slices of at most `piece` that cover range(n), spread over a thread per core
    (one slice is done here: handing it to a thread would only add the wait)."""
    if n <= piece:
        return work(slice(0, n))
    for _ in THREADS.map(work, [slice(start, start + piece) for start in range(0, n, piece)]):
        pass


def keep_freed_memory():
    """Have glibc's malloc keep the memory of freed arrays for the next ones. By default it hands an
    array of more than 128 KB back to the system when it is freed, so the next one starts on fresh
    pages, each a page fault when first written; a step makes hundreds of such arrays. From here on
    an array of up to 32 MB comes from the heap, and the heap keeps 64 MB free at its top. Without
    glibc (macOS, musl), nothing changes."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError):
        return
    m_top_pad, m_mmap_threshold = -2, -3  # glibc's malloc.h
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_top_pad, 64 << 20)


def by_rows(function, *arrays):  # arrays [..., n] of one shape -> function(*arrays), a few rows at a time
    """For a function that works on each row (the last axis) apart from the others."""
    rows = [a.reshape(-1, a.shape[-1]) for a in arrays]
    out = np.empty(rows[0].shape, dtype=np.float32)

    def work(piece):
        out[piece] = function(*(r[piece] for r in rows))

    on_every_core(work, len(out), max(1, PIECE // out.shape[-1]))
    return out.reshape(arrays[0].shape)
