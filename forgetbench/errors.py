"""The one exception type for mistakes a user can fix; cli.py prints it as one line, exit 2."""
from __future__ import annotations

import reprlib


class ForgetbenchError(Exception):
    """A user-facing error: what is wrong, where (file and field), and how to fix it."""

    exit_code = 2


def unreachable(exc: BaseException) -> bool:
    """The error (or one it came from) says the hub could not be reached: offline mode, no
    network, a time-out, a file the cache does not hold."""
    return any(isinstance(e, (ConnectionError, TimeoutError)) or type(e).__name__ in (
        "OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectError", "ConnectTimeout") for e in causes(exc))


def causes(exc: BaseException | None) -> list[BaseException]:
    """The error and those it came from (``raise ... from``, or raised while handling), first to last."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


# An echoed value is cut to this many characters, and its repr is built only that far: a YAML
# file of a few hundred bytes whose aliases nest lists in lists has a repr of gigabytes.
_SHOWN_LIMIT = 200
_LEAF = reprlib.Repr()
_LEAF.maxstring = _LEAF.maxother = _LEAF.maxlong = _SHOWN_LIMIT


def shown(value: object) -> str:
    """``repr(value)`` as an error message echoes a user's value: at most a few hundred
    characters, however big the value."""
    text, pieces = "", _repr_pieces(value, 0)
    while len(text) <= _SHOWN_LIMIT and (piece := next(pieces, None)) is not None:
        text += piece
    return text if len(text) <= _SHOWN_LIMIT else text[:_SHOWN_LIMIT - 3] + "..."


def _repr_pieces(value: object, depth: int):
    """The repr of a value (lists and dicts as YAML makes them) in pieces, item by item."""
    if isinstance(value, (list, dict)) and depth < 32:
        brackets = "{}" if isinstance(value, dict) else "[]"
        yield brackets[0]
        for i, item in enumerate(value.items() if isinstance(value, dict) else value):
            yield ", " if i else ""
            if isinstance(value, dict):
                yield from _repr_pieces(item[0], depth + 1)
                yield ": "
                item = item[1]
            yield from _repr_pieces(item, depth + 1)
        yield brackets[1]
    else:
        yield _LEAF.repr(value)
