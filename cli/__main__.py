"""`python gpt2.py ARGS...` (or `python -m cli ARGS...`)."""

import sys

from cli.run import run_command_line
from common import keep_freed_memory, stop_on_signals

stop_on_signals()
keep_freed_memory()  # the model's large arrays come from memory already mapped, not fresh pages
run_command_line(sys.argv[1:])
