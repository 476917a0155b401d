"""The one exception type for mistakes a user can fix; cli.py prints it as one line, exit 2."""
from __future__ import annotations


class ForgetbenchError(Exception):
    """A user-facing error: what is wrong, where (file and field), and how to fix it."""

    exit_code = 2


def unreachable(exc: BaseException) -> bool:
    """The error (or one it came from) says the hub could not be reached: offline mode, no
    network, a time-out, a file the cache does not hold."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return any(isinstance(e, (ConnectionError, TimeoutError)) or type(e).__name__ in (
        "OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectError", "ConnectTimeout") for e in chain)
