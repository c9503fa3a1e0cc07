"""Benchmarks: `make bench` (python -m benchmarks [NAME ...]). Each prints a table and writes build/bench/<name>.json."""
