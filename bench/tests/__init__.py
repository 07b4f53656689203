"""Tests of the benchmarks' own machinery (statistics, core isolation); `make test` runs them with the rest."""
