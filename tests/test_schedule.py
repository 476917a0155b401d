import math

import pytest

from forgetbench.schedule import lr_at

# The standard fine-tuning shape: 1000 steps, 100 of warmup, peak 2e-5, floor 1e-6.
KW = dict(total_steps=1000, peak=2e-5, warmup_steps=100, floor=1e-6)


def test_cosine_with_warmup_values():
    assert lr_at(0, **KW) == pytest.approx(2e-7)        # first warmup step: peak/100
    assert lr_at(49, **KW) == pytest.approx(1e-5)       # halfway up
    assert lr_at(99, **KW) == pytest.approx(2e-5)       # warmup reaches the peak
    assert lr_at(100, **KW) == pytest.approx(2e-5)      # decay starts at the peak
    mid = 100 + (999 - 100) / 2
    assert lr_at(int(mid), **KW) == pytest.approx(
        1e-6 + (2e-5 - 1e-6) * 0.5 * (1 + math.cos(math.pi * (int(mid) - 100) / 899)))
    assert lr_at(999, **KW) == pytest.approx(1e-6)      # last step at the floor
    lrs = [lr_at(s, **KW) for s in range(100, 1000)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))    # monotone decay
    assert min(lrs) >= 1e-6


def test_constant_with_warmup():
    assert lr_at(0, kind="constant", **KW) == pytest.approx(2e-7)
    assert {lr_at(s, kind="constant", **KW) for s in range(100, 1000)} == {2e-5}


def test_no_warmup_and_degenerate_lengths():
    assert lr_at(0, total_steps=10, peak=1.0, warmup_steps=0, floor=0.1) == pytest.approx(1.0)
    assert lr_at(9, total_steps=10, peak=1.0, warmup_steps=0, floor=0.1) == pytest.approx(0.1)
    assert lr_at(0, total_steps=1, peak=1.0, warmup_steps=0, floor=0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        lr_at(0, total_steps=10, peak=1.0, warmup_steps=0, kind="linear")
