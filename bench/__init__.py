"""Reproducible benchmarks: each prints its figures and writes bench/results/<name>.json."""
