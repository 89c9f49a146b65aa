"""deployzoo: official checkpoints to verified, benchmarked offline inference."""

__version__ = "0.1.0"
