"""Benchmarks of hopt's search policies (ROMUL.md's protocol); not part of the installed package."""
