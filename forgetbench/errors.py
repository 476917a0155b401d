"""The one exception type for mistakes a user can fix; cli.py prints it as one line, exit 2."""
from __future__ import annotations


class ForgetbenchError(Exception):
    """A user-facing error: what is wrong, where (file and field), and how to fix it."""

    exit_code = 2
