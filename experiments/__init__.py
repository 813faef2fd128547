"""Research scripts beside bench/: not installed; run as `python -m experiments.x` from the repo."""
