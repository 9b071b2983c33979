"""Errors that the CLI turns into one line on stderr and exit code 2 (no traceback)."""


class UserError(Exception):
    """Something the user can fix: the message names the problem and the fix."""

    exit_code = 2


class RecipeError(UserError, ValueError):
    """A recipe or override is invalid."""


class DataError(UserError):
    """Data is missing or malformed; the message says which files are expected where and how to make them."""
