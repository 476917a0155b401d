"""Where a suite's training or evaluation runs: its ``device`` setting as a torch device."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` is cuda when available, else cpu; any other name as torch reads it."""
    import torch  # lazily: the CLI and config-level code import this module without torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
