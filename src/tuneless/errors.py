"""One exception type so the CLI can turn every user mistake into a one-line message."""


class TunelessError(Exception):
    """A problem with the user's input (model, file, option); the message names it."""


class UnsupportedModelError(TunelessError):
    """The model has nothing tuneless can safely reduce."""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """An exception's first message line (its type name when it has none), cut at `limit`:
    what a one-line error quotes from a library's multi-line message."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return line if limit is None else line[:limit]
