"""The training run around train.py's lesson: `python train.py ...` runs training/__main__.py.

- options.py: the command line, every flag with its default and description, and their checks.
- data.py: the data's kinds, each one type: Texts (windows of documents) and Pairs (prompt and
  completion, only the completion counted). They read, tokenize once, batch, hold out and sample.
- loop.py: the run, from the data and the starting model to the last save; the step.
- saving.py: the run folder, saved all or none and resumed exactly.
- jax_step.py: --backend jax, the same step as one jax.jit on every device of one machine or many.
"""
