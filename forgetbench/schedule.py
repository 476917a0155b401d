"""Learning-rate schedules: pure functions of the step, so resuming needs no scheduler state."""
from __future__ import annotations

import math

SCHEDULES = ("cosine", "constant")


def lr_at(step: int, *, total_steps: int, peak: float, warmup_steps: int,
          kind: str = "cosine", floor: float = 0.0) -> float:
    """The learning rate of optimizer step ``step`` (0-based) out of ``total_steps``.

    Warmup, for step < W:      lr = peak · (step + 1) / W
    ``constant`` after warmup: lr = peak
    ``cosine`` after warmup:   lr = floor + (peak − floor) · ½ · (1 + cos(π · t)),
                               t = (step − W) / (total_steps − 1 − W), clipped to [0, 1]
    so the first step after warmup runs at the peak and the last step at the floor.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; expected one of {SCHEDULES}")
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if kind == "constant":
        return peak
    span = total_steps - 1 - warmup_steps
    t = 1.0 if span <= 0 else min(1.0, max(0.0, (step - warmup_steps) / span))
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
