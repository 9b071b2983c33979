"""Shared test set-up. Its presence puts tests/ on sys.path (pytest's prepend import mode), so test files
can import the shared helpers in tests/helpers.py."""
