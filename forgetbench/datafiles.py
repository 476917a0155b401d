"""The suite's JSONL data files: rows of {"prompt", "completion"} (the loss covers the
completion only, as in SFT) or {"text"} (every token, as for pretraining-like replay data),
read with their line numbers so that every mistake names the file and line. Training
(train/data.py) and the leakage guard read them here; no torch.
"""
from __future__ import annotations

import json
from pathlib import Path

from forgetbench.errors import ForgetbenchError


def read_rows(path: Path) -> list[dict]:
    """Rows of a JSONL data file, each checked to be a prompt/completion pair or a text."""
    return [row for _, row in numbered_rows(path)]


def numbered_rows(path: Path) -> list[tuple[int, dict]]:
    """(file line, row) of each row of a JSONL data file (blank lines are skipped)."""
    rows = []
    with open(path, "rb") as fh:  # bytes, decoded line by line: a bad byte is named with its line
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ForgetbenchError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[exc.start]:02x} "
                                       f"at offset {exc.start} of the line); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ForgetbenchError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            ok = isinstance(row, dict) and (
                isinstance(row.get("text"), str)
                or (isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str)))
            if not ok:
                raise ForgetbenchError(f"{path}:{lineno}: each row needs string fields "
                                       '"prompt" and "completion", or "text"')
            rows.append((lineno, row))
    if not rows:
        raise ForgetbenchError(f"{path}: no rows")
    return rows
