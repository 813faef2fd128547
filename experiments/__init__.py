"""Research scripts beside bench/: not installed; `python -m experiments.x` from the repo root."""
