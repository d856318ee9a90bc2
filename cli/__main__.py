"""`python gpt2.py ARGS...` (or `python -m cli ARGS...`)."""

import sys

from cli.run import run_command_line
from common import stop_on_signals

stop_on_signals()
run_command_line(sys.argv[1:])
