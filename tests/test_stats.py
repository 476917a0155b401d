import numpy as np
import pytest
from scipy import stats as scipy_stats

from forgetbench import stats


def test_identical_before_and_after_shows_no_change():
    before = np.random.default_rng(0).integers(0, 2, size=(3, 50)).astype(float)
    boot = stats.bootstrap_mean([before - before], resamples=500)
    assert boot.estimate == 0.0
    assert boot.interval() == stats.Interval(0.0, 0.0)
    assert stats.mcnemar_exact(0, 0) == 1.0


@pytest.mark.parametrize("b, c", [(0, 1), (1, 0), (0, 5), (3, 10), (10, 3), (7, 7), (20, 45),
                                  (2400, 2600), (2600, 2400), (2450, 2550), (0, 5000), (49_500, 50_500)])
def test_mcnemar_matches_scipy_binomial_test(b, c):
    expected = scipy_stats.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue
    assert stats.mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("k, n", [(0, 10), (10, 10), (3, 10), (1, 64), (150, 200), (2500, 5000)])
@pytest.mark.parametrize("level", [0.95, 0.9])
def test_wilson_matches_scipy(k, n, level):
    ci = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    got = stats.wilson(k, n, level)
    assert (got.low, got.high) == pytest.approx((ci.low, ci.high), rel=1e-12, abs=1e-12)
    assert stats.wilson(0, 0) == stats.Interval(0.0, 1.0)


def test_paired_interval_covers_the_true_delta_about_95_percent_of_the_time():
    # before ~ Bernoulli(0.8); right->wrong with p 0.1, wrong->right with p 0.15:
    # E[after - before] = -0.8 * 0.1 + 0.2 * 0.15 = -0.05
    rng = np.random.default_rng(20240)
    n, true_delta, covered = 200, -0.05, 0
    for i in range(1000):
        before = rng.random(n) < 0.8
        u = rng.random(n)
        after = np.where(before, u >= 0.1, u < 0.15)
        ci = stats.bootstrap_mean([after.astype(float) - before], resamples=400, seed=i).interval()
        covered += ci.low <= true_delta <= ci.high
    assert 930 <= covered <= 970


def test_cluster_bootstrap_is_wider_when_items_in_a_cluster_agree():
    rng = np.random.default_rng(1)
    per_cluster = rng.choice([-1.0, 0.0, 1.0], size=40, p=[0.2, 0.6, 0.2])
    values, labels = np.repeat(per_cluster, 3), np.repeat(np.arange(40), 3)
    items = stats.bootstrap_mean([values], resamples=2000).interval()
    clustered = stats.bootstrap_mean([values], [labels], resamples=2000).interval()
    assert clustered.high - clustered.low > 1.4 * (items.high - items.low)  # ~ sqrt(3) expected


def test_one_item_per_cluster_is_the_item_bootstrap():
    values = np.random.default_rng(2).normal(size=30)
    items = stats.bootstrap_mean([values], resamples=300, seed=5)
    singletons = stats.bootstrap_mean([values], [[f"item{i}" for i in range(30)]], resamples=300, seed=5)
    np.testing.assert_allclose(singletons.samples, items.samples, rtol=1e-12)


def test_replicates_that_disagree_widen_the_interval():
    x = np.random.default_rng(3).normal(size=100)
    offsets = np.array([-1.0, -0.3, 0.4, 0.9])  # mean 0: the estimate is the same either way
    varied = stats.bootstrap_mean([x + offsets[:, None]], resamples=2000)
    repeated = stats.bootstrap_mean([np.tile(x, (4, 1))], resamples=2000)
    assert varied.estimate == pytest.approx(repeated.estimate)
    width = {k: b.interval().high - b.interval().low for k, b in (("varied", varied), ("repeated", repeated))}
    assert width["varied"] > 2 * width["repeated"]


def test_one_replicate_draw_is_shared_by_all_tasks():
    # rows constant over items: only the replicate draw moves the statistic; were each task to
    # draw its own rows, the mean of two identical tasks would vary ~sqrt(2) less than one task
    rows = np.repeat(np.array([[0.0], [1.0], [3.0]]), 20, axis=1)
    one = stats.bootstrap_mean([rows], resamples=3000).samples.std()
    two = stats.bootstrap_mean([rows, rows], resamples=3000).samples.std()
    assert two == pytest.approx(one, rel=0.1)


def test_1d_input_is_a_single_replicate():
    x = np.random.default_rng(4).normal(size=40)
    a = stats.bootstrap_mean([x, 2 * x[:25]], resamples=500, seed=9)
    b = stats.bootstrap_mean([x[None, :], 2 * x[None, :25]], resamples=500, seed=9)
    assert a.estimate == b.estimate
    np.testing.assert_array_equal(a.samples, b.samples)


def test_bootstrap_is_seeded_and_its_statistic_is_the_mean_of_task_means():
    rng = np.random.default_rng(5)
    tasks = [rng.normal(size=(2, 10)), rng.normal(size=(2, 30))]
    a, b = (stats.bootstrap_mean(tasks, resamples=200, seed=1) for _ in range(2))
    assert a.samples.dtype == np.float64 and a.samples.shape == (200,)
    np.testing.assert_array_equal(a.samples, b.samples)
    assert not np.array_equal(a.samples, stats.bootstrap_mean(tasks, resamples=200, seed=2).samples)
    assert a.estimate == pytest.approx((tasks[0].mean() + tasks[1].mean()) / 2)


def test_bootstrap_draws_follow_the_definition():
    # A literal per-draw reference replaying the module's random draws (rows, then each task's
    # items or clusters): drawn rows shared by the tasks, one item draw for all rows, a
    # clustered task's mean over every item of the drawn clusters.
    rng = np.random.default_rng(6)
    tasks = [rng.normal(size=(3, 7)), rng.normal(size=(3, 9))]
    labels = np.array(list("aabbbcdde"))
    boot = stats.bootstrap_mean(tasks, [None, labels], resamples=50, seed=11)

    names = list(dict.fromkeys(labels))
    draw = np.random.default_rng(11)
    row_draws = draw.integers(0, 3, size=(50, 3))
    item_draws = draw.integers(0, 7, size=(50, 7))
    cluster_draws = draw.integers(0, len(names), size=(50, len(names)))
    for b in range(50):
        first = tasks[0][row_draws[b]][:, item_draws[b]].mean()
        items = np.concatenate([np.flatnonzero(labels == names[c]) for c in cluster_draws[b]])
        second = tasks[1][row_draws[b]][:, items].mean()
        assert boot.samples[b] == pytest.approx((first + second) / 2, rel=1e-12)


def test_bootstrap_memory_stays_bounded_for_large_tasks():
    import tracemalloc

    x = np.random.default_rng(7).normal(size=(2, 10_000))
    tracemalloc.start()
    try:
        stats.bootstrap_mean([x], resamples=600)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200e6


def test_bootstrap_p_values_and_interval_on_known_samples():
    boot = stats.Bootstrap(0.25, np.array([0.1, 0.2, 0.3, 0.4]))
    assert boot.p_at_most(0.25) == pytest.approx(3 / 5)
    assert boot.p_at_most(0.3) == pytest.approx(4 / 5)  # ties count against H0's rejection
    assert boot.p_at_most(0.0) == pytest.approx(1 / 5)
    assert boot.p_at_least(0.25) == pytest.approx(3 / 5)
    assert boot.p_at_least(0.3) == pytest.approx(3 / 5)
    assert boot.p_at_least(1.0) == pytest.approx(1 / 5)
    wide = stats.Bootstrap(50.0, np.arange(101, dtype=float))
    assert (wide.interval(0.9).low, wide.interval(0.9).high) == pytest.approx((5.0, 95.0))


def test_holm_against_hand_computation():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> 0.06 (monotone)
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert stats.holm([0.2]) == [0.2]
    assert stats.holm([]) == []


def test_min_detectable_effect():
    assert stats.min_detectable_effect(0.0, 64, binary=True) > 0.10
    assert stats.min_detectable_effect(0.0, 200, binary=True) == pytest.approx(0.038, abs=5e-4)
    z = stats.Z95 + 0.8416212335729143
    assert stats.min_detectable_effect(0.05, 200, binary=True) == pytest.approx(z * 0.05)
    assert stats.min_detectable_effect(0.0, 64, binary=False) == 0.0


@pytest.mark.parametrize("call", [
    lambda: stats.bootstrap_mean([np.zeros((2, 5)), np.zeros((3, 5))]),
    lambda: stats.bootstrap_mean([np.zeros(5), np.zeros((2, 5))]),
    lambda: stats.bootstrap_mean([np.zeros(5)], [np.arange(4)]),
    lambda: stats.bootstrap_mean([np.zeros(5), np.zeros(5)], [np.arange(5)]),
    lambda: stats.bootstrap_mean([np.array([0.0, np.nan])]),
    lambda: stats.bootstrap_mean([]),
    lambda: stats.wilson(11, 10),
    lambda: stats.mcnemar_exact(-1, 3),
    lambda: stats.holm([0.5, 1.5]),
])
def test_bad_input_is_refused(call):
    with pytest.raises(ValueError):
        call()


def test_seeds_and_items_covers_a_seed_dominated_effect_where_resampling_three_seeds_does_not():
    """Three seeds whose effects scatter (sd 0.05) around a true effect of 0, small item noise:
    resampling the seed rows gives an interval about the seeds' range, which misses 0 far more
    often than 5%; seeds_and_items keeps the miss rate near or under 5%."""
    rng = np.random.default_rng(7)
    misses_rows = misses_t = 0
    runs = 300
    for _ in range(runs):
        seed_effects = rng.normal(0, 0.05, size=(3, 1))
        data = seed_effects + rng.normal(0, 0.02, size=(3, 50))
        rows = stats.bootstrap_mean([data], resamples=400, seed=1).interval()
        both = stats.seeds_and_items([data], resamples=400, seed=1).interval()
        misses_rows += not rows.low <= 0 <= rows.high
        misses_t += not both.low <= 0 <= both.high
    assert misses_rows / runs > 0.15
    assert misses_t / runs <= 0.07


def test_seeds_and_items_with_one_row_is_the_item_bootstrap():
    x = np.random.default_rng(0).random((1, 30))
    a, b = stats.seeds_and_items([x], resamples=300), stats.bootstrap_mean([x], resamples=300)
    assert a.estimate == b.estimate and np.array_equal(a.samples, b.samples)
