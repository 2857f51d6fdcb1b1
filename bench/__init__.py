"""Benchmarks run by `make bench`: ``python -m bench.<name>``.

See bench/README.md for what each measures and how.
"""
