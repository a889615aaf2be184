"""The version of refdiff (read by setup.py with a regex, not by import)."""

__version__ = "0.1.0"
