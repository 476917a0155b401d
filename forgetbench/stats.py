"""Statistics for comparing two checkpoints item by item (``forgetbench compare``) and for the sweep reports.

Pure functions on numpy arrays; no I/O.

``wilson``                 interval for a proportion (a score on n items), fine at 0 and n.
``mcnemar_exact``          exact two-sided McNemar p for paired binary items:
                           b = right→wrong, c = wrong→right, p = min(1, 2·P(X ≤ min(b, c))), X ~ Bin(b + c, ½).
``bootstrap_mean``         the mean over tasks of each task's mean, resampled over training replicates
                           (seeds), items, or clusters of items; gives a ``Bootstrap``.
``seeds_and_items``        the same with an interval that covers a few training seeds honestly (a t term).
``Bootstrap.interval``     percentile interval of the resampled statistic.
``Bootstrap.p_at_most``    one-sided p for H0: true value ≤ threshold, (1 + #{θ*ᵦ ≤ threshold}) / (1 + B);
``Bootstrap.p_at_least``   and its mirror. The release gate asks one-sided questions ("did it forget
                           more than the tolerance?"), so its p-values are one-sided.
``min_detectable_effect``  the smallest true paired difference the comparison would detect (power).
``holm``                   Holm–Bonferroni adjusted p-values when the gate tests several tasks.

Conventions: deltas are after − before per item; intervals are two-sided at ``level``; every
resampling is seeded, so the same inputs give the same numbers.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

Z95 = 1.959963984540054

# Elements per (draws × items) block in bootstrap_mean: a few float64/int64 blocks of this
# size live at once, ~16 MB each, so n = 10_000 items and 10_000 resamples stay far under 200 MB.
_BLOCK = 1 << 21


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


def _z(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson(successes: int, n: int, level: float = 0.95) -> Interval:
    """Wilson score interval: (p̂ + z²/2n ± z·√(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n); n = 0 gives (0, 1)."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return Interval(0.0, 1.0)
    z = _z(level)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(max(0.0, center - half), min(1.0, center + half))


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p: b items went right→wrong, c wrong→right; under H0 each of the
    n = b + c flips goes either way with probability ½, so p = min(1, 2·Σ_{i≤k} C(n, i) / 2ⁿ), k = min(b, c).

    Summed in exact integers from i = k downwards (C(n, i−1) = C(n, i)·i / (n − i + 1)), stopping
    once the geometric bound on the rest is below 2⁻⁶⁴ of the sum: exact to float precision for
    any n, and a few thousand terms at most for n = 100_000.
    """
    if b < 0 or c < 0:
        raise ValueError(f"flip counts must be >= 0, got b={b}, c={c}")
    n, k = b + c, min(b, c)
    if 2 * k >= n:  # b == c (including 0, 0): P(X <= n/2) >= 1/2
        return 1.0
    term = math.comb(n, k)
    total = 0
    i = k
    while True:
        total += term
        if i == 0:
            break
        term = term * i // (n - i + 1)
        i -= 1
        # the terms left, from C(n, i) down, shrink by at least r = i / (n - i + 1) each step:
        # their sum <= term / (1 - r) = term * (n - i + 1) / (n - 2i + 1)
        if term * (n - i + 1) < (total >> 64) * (n - 2 * i + 1):
            break
    return min(1.0, 2 * total / (1 << n))


@dataclass(frozen=True, eq=False)  # eq=False: comparing ndarrays field by field is ambiguous
class Bootstrap:
    estimate: float  # the statistic on the data as observed
    samples: np.ndarray  # the statistic on each resample (float64, length = resamples)

    def interval(self, level: float = 0.95) -> Interval:
        """Percentile interval: the (1 − level)/2 and (1 + level)/2 quantiles of the samples."""
        _z(level)  # validates level
        low, high = np.quantile(self.samples, [(1 - level) / 2, (1 + level) / 2])
        return Interval(float(low), float(high))

    def p_at_most(self, threshold: float) -> float:
        """One-sided p for H0: true value ≤ threshold: (1 + #{samples ≤ threshold}) / (1 + B)."""
        return (1 + int(np.count_nonzero(self.samples <= threshold))) / (1 + len(self.samples))

    def p_at_least(self, threshold: float) -> float:
        """One-sided p for H0: true value ≥ threshold: (1 + #{samples ≥ threshold}) / (1 + B)."""
        return (1 + int(np.count_nonzero(self.samples >= threshold))) / (1 + len(self.samples))


def _as_tasks(tasks: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each task as a float64 [R, n_t] array, R the same for all."""
    if len(tasks) == 0:
        raise ValueError("bootstrap_mean needs at least one task")
    arrays = [np.asarray(x, dtype=np.float64) for x in tasks]
    ndims = {x.ndim for x in arrays}
    if not ndims <= {1, 2} or len(ndims) > 1:
        raise ValueError(f"tasks must be all 1-D (items) or all 2-D (replicates x items), got ndims {sorted(ndims)}")
    arrays = [x[None, :] if x.ndim == 1 else x for x in arrays]
    reps = {x.shape[0] for x in arrays}
    if len(reps) > 1:
        raise ValueError(f"every task needs the same number of replicate rows, got {sorted(reps)}")
    for t, x in enumerate(arrays):
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"task {t} is empty (shape {x.shape})")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"task {t} has non-finite values")
    return arrays


def _units(x: np.ndarray, labels, t: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The task as resampling units: per-replicate sums over each unit [R, K] and unit sizes
    (None when every unit is one item, the item bootstrap)."""
    if labels is None:
        return x, None
    labels = list(labels)
    if len(labels) != x.shape[1]:
        raise ValueError(f"task {t}: {len(labels)} cluster labels for {x.shape[1]} items")
    index: dict = {}
    codes = np.array([index.setdefault(label, len(index)) for label in labels], dtype=np.intp)
    sums = np.zeros((x.shape[0], len(index)))
    np.add.at(sums, (slice(None), codes), x)
    return sums, np.bincount(codes).astype(np.float64)


def bootstrap_mean(tasks: Sequence[np.ndarray], clusters: Sequence[np.ndarray | None] | None = None,
                   *, resamples: int = 10_000, seed: int = 0) -> Bootstrap:
    """Bootstrap of θ = (1/T) Σ_t mean_{r, i} x_t[r, i], the mean over tasks of each task's mean.

    ``tasks[t]`` is 1-D (n_t items) or 2-D [R, n_t] (R training replicates, the same items in
    the same order in every row). Each draw resamples the R replicate rows with replacement
    (one draw shared by all tasks: replicate r is the same training run everywhere; only when
    R > 1) and, per task, the items with replacement, or whole clusters when ``clusters[t]``
    gives each item's label (the task's mean is then over all items of the drawn clusters).
    One item draw serves every row, since items are paired across replicates.

    With units u (items, or clusters holding s_u items and per-row sums S[r, u]), a draw's task
    mean is Σ_{drawn u} (wᵀS)_u / Σ_{drawn u} s_u, w the drawn rows' counts / R; draws are
    computed together in blocks of ~2M elements.
    """
    arrays = _as_tasks(tasks)
    if clusters is None:
        clusters = [None] * len(arrays)
    if len(clusters) != len(arrays):
        raise ValueError(f"{len(clusters)} cluster label arrays for {len(arrays)} tasks")
    units = [_units(x, labels, t) for t, (x, labels) in enumerate(zip(arrays, clusters))]
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")

    reps = arrays[0].shape[0]
    estimate = float(np.mean([x.mean() for x in arrays]))
    rng = np.random.default_rng(seed)
    step = max(1, _BLOCK // max(max(sums.shape[1] for sums, _ in units), reps))
    samples = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, step):
        draws = min(step, resamples - start)
        if reps > 1:
            picked_rows = rng.integers(0, reps, size=(draws, reps)) + np.arange(draws)[:, None] * reps
            row_weights = np.bincount(picked_rows.ravel(), minlength=draws * reps).reshape(draws, reps) / reps
        total = np.zeros(draws)
        for sums, sizes in units:
            k = sums.shape[1]
            picked = rng.integers(0, k, size=(draws, k))
            if reps > 1:
                drawn = np.take_along_axis(row_weights @ sums, picked, axis=1).sum(axis=1)
            else:
                drawn = sums[0][picked].sum(axis=1)
            total += drawn / (k if sizes is None else sizes[picked].sum(axis=1))
        samples[start:start + draws] = total / len(arrays)
    return Bootstrap(estimate, samples)


def seeds_and_items(tasks: Sequence[np.ndarray], clusters: Sequence[np.ndarray | None] | None = None,
                    *, resamples: int = 10_000, seed: int = 0) -> Bootstrap:
    """The mean of [R, n_t] replicate arrays (as :func:`bootstrap_mean`) with an interval that
    covers both the items and the training seeds, for a handful of seeds.

    Resampling 3 seed rows has only 10 distinct draws and shrinks the spread between seeds by
    (R − 1)/R, so its interval is about the range of the seeds: far too narrow. Here each draw
    is the item bootstrap of the seed-averaged items plus the seeds' own uncertainty, a draw
    of s/√R · T(R − 1) (s: the sample sd of the R per-seed estimates, T: Student's t with R − 1
    degrees of freedom), so the half-widths combine about in quadrature and three seeds give
    t(2) = 4.3 standard errors, not 2. One replicate row: exactly :func:`bootstrap_mean`."""
    arrays = _as_tasks(tasks)
    reps = arrays[0].shape[0]
    if reps == 1:
        return bootstrap_mean(arrays, clusters, resamples=resamples, seed=seed)
    items = bootstrap_mean([x.mean(axis=0) for x in arrays], clusters, resamples=resamples, seed=seed)
    per_seed = np.mean([x.mean(axis=1) for x in arrays], axis=0)  # [R]
    spread = float(per_seed.std(ddof=1)) / math.sqrt(reps)
    noise = np.random.default_rng([seed, reps]).standard_t(reps - 1, size=resamples) * spread
    return Bootstrap(items.estimate, items.samples + noise)


def min_detectable_effect(se: float, n: int, *, binary: bool, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true paired difference detected with probability ``power`` at two-sided ``alpha``:
    z = z_{1−α/2} + z_{power}, mde = z·se, and for a binary metric at least z² / (n + z²).

    The binary floor is the most favourable case (every flip one way): with no flips observed
    se is 0, yet 64 items still cannot see a small loss. n is items, or clusters when clustered.
    """
    if se < 0 or n < 0:
        raise ValueError(f"need se >= 0 and n >= 0, got se={se}, n={n}")
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must be in (0, 1), got alpha={alpha}, power={power}")
    normal = NormalDist()
    z = normal.inv_cdf(1 - alpha / 2) + normal.inv_cdf(power)
    mde = z * se
    if binary:
        mde = max(mde, z * z / (n + z * z))
    return mde


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input order: with p₍₁₎ ≤ … ≤ p₍ₘ₎,
    adj₍ᵢ₎ = min(1, max_{j ≤ i} (m − j + 1)·p₍ⱼ₎)."""
    m = len(pvalues)
    if any(not 0.0 <= p <= 1.0 for p in pvalues):  # also refuses NaN
        raise ValueError(f"p-values must be in [0, 1], got {list(pvalues)}")
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
