"""hopt's own cost: throughput and critical-section timings (overhead.py), large experiments (scale.py)."""
