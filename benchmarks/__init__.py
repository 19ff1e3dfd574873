"""Benchmarks: the search policies on ROMUL.md's toys (policies.py), hopt's own cost (overhead.py, scale.py),
and the trainables' throughput (throughput.py); not part of the installed package."""
