"""The speed and memory benchmarks: run each as `python -m bench.NAME` from the repository
root. bench/README.md says which one answers which question."""
