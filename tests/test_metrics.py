import math

import pytest

from forgetbench import metrics


def test_definitions():
    assert metrics.delta(0.8, 0.6) == pytest.approx(-0.2)
    assert metrics.forgetting(0.8, 0.6) == pytest.approx(0.2)
    assert metrics.retention(0.8, 0.6) == pytest.approx(0.75)
    assert metrics.retention(0.0, 0.6) is None


def test_paired_stderr_against_hand_computation():
    before = [1, 1, 0, 1, 0, 1]
    after = [0, 1, 0, 0, 1, 1]
    d = [-1, 0, 0, -1, 1, 0]
    mean = sum(d) / 6
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 5)
    assert metrics.paired_stderr(before, after) == pytest.approx(sd / math.sqrt(6))
    assert metrics.paired_stderr(before, before) == 0.0
    assert metrics.paired_stderr([1], [0]) is None


def test_pareto_front():
    # (learning, forgetting): 0 and 2 are optimal; 1 is beaten by 0; 3 ties 2 on forgetting
    # with less learning
    pts = [(10, 1), (8, 2), (20, 5), (15, 5)]
    assert metrics.pareto_front(pts) == [0, 2]
    assert metrics.pareto_front([(1, 1), (1, 1)]) == [0, 1]  # equal points do not dominate
