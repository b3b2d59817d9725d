"""Benchmarks for issue 5: see bench/run.py and docs/performance.md."""
