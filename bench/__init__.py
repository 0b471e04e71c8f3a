"""Benchmarks of mindrun (not installed with the package): run them as modules from the
repository root, e.g. `python -m bench.throughput --help`; see bench/README.md."""
