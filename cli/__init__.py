"""The command line of gpt2.py: `python gpt2.py ...` runs cli/__main__.py.

- flags.py: the parser, every flag's default and description, and the checks of their values.
- run.py: what a run does with them, and how it prints its results.

`cli.main(prompt, **flags)` does in Python what the command line does: it prints the text as it comes
and returns it.
"""

from cli.run import main, run_command_line

__all__ = ["main", "run_command_line"]
