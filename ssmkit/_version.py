"""The package version (floor 0: the CLI reads it without importing the facade)."""

__version__ = "0.1.0"
