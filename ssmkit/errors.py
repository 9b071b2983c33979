"""Errors that the CLI turns into one line on stderr and exit code 2 (no traceback)."""


class UserError(Exception):
    """Something the user can fix: the message names the problem and the fix."""

    exit_code = 2


class RecipeError(UserError, ValueError):
    """A recipe or override is invalid."""


class DataError(UserError):
    """Data is missing or malformed; the message says which files are expected where and how to make them."""


def first_line(error: BaseException | str, limit: int | None = None, empty: str | None = None) -> str:
    """The first line of an exception's message (or of a text), cut to ``limit`` characters: what a one-line
    error quotes of a library's multi-line message. Without text: ``empty``, or the exception's type name."""
    text = str(error).strip()
    if not text:
        return empty if empty is not None else (type(error).__name__ if isinstance(error, BaseException) else "")
    line = text.splitlines()[0]
    return line[:limit] if limit is not None else line


def read_utf8(path, error: type[UserError] = UserError, fix: str = "", label: str | None = None,
              missing: UserError | None = None) -> str:
    """A file's text, decoded as UTF-8. Binary or non-UTF-8 bytes and an unreadable file are each one ``error``
    naming the file (``label``, default its path), the offending byte and ``fix``; a missing file raises
    ``missing`` where given (else the same one line as any unreadable file)."""
    name = label if label is not None else str(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        tail = f"; {fix}" if fix else ""
        raise error(f"{name}: not a UTF-8 text file (byte {e.start} is 0x{e.object[e.start]:02x}){tail}") from None
    except FileNotFoundError as e:
        if missing is not None:
            raise missing from None
        raise error(f"{name}: cannot read it ({e.strerror})") from None
    except OSError as e:
        raise error(f"{name}: cannot read it ({e.strerror})") from None
