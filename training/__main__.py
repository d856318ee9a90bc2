"""`python train.py ARGS...` (or `python -m training ARGS...`)."""

from common import stop_on_signals
from training.loop import main

stop_on_signals()
main()
