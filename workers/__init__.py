"""Trainables: one interval of training each, usable without hopt running (see hopt_cli.trainable)."""
