"""hopt: population based training with ROMUL, coordinated through one shared directory."""
__version__ = "0.1.0"
