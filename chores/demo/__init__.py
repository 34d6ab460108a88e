"""Synthetic runner documents (`corpus`) for the demo, the tests and the benchmarks.

May import: `chores.core`.
"""
