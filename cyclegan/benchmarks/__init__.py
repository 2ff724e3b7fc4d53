"""Measurements behind docs/benchmarks.md, one module per job (scripts/benchmark.py runs them).
Timings live here, never in tests; nothing the trainer or the translator runs imports this package."""
