"""Benchmarks: `python -m bench.<name>`; each compares against a plain baseline measured in the same run."""
