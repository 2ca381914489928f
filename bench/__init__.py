"""Benchmark suite (a package so its module names never clash with tests/ under --doctest-modules)."""
