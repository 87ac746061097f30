"""Benchmarks for spmt-tui: ratios against baselines measured in the same run.

Run them with ``make bench`` (quick) or ``python -m benchmarks.run --full``; BENCHMARKS.md at the
repository root holds the latest results. They are not tests and ``make test`` does not run them.
"""
