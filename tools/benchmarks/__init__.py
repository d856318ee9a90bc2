"""The parts of tools/bench.py, one per file; timing.py is what they share."""
