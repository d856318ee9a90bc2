"""The developers' tools: bench.py (where we stand against HuggingFace, PyTorch, llama.cpp and the
hardware) and random_model.py (random weights in every layout, for the tests and the benchmarks)."""
