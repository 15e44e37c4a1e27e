"""Two-sample tests with effect sizes, and the false-discovery correction over many of them.

Every test returns a :class:`TestResult`: the test statistic, its p-value and an effect size on
a scale people can read (a p-value alone says nothing once windows are large). Tests take
plain arrays; which column or signal they belong to is the caller's business.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon

OTHER = "(other)"
UNSEEN = "(unseen)"
MISSING = "(missing)"


@dataclass(frozen=True)
class TestResult:
    """One test: ``statistic``, ``p_value`` and an ``effect`` named by ``effect_name``."""

    test: str
    statistic: float
    p_value: float
    effect: float
    effect_name: str


def _sample(x: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) <= cap else x[rng.choice(len(x), cap, replace=False)]


@dataclass(frozen=True)
class SortedReference:
    """A reference column prepared once: its finite values sorted, and its spread.

    The spread is the larger of the standard deviation and the interquartile range / 1.349
    (the standard deviation of a normal with that range); a constant column uses the size of
    its value (at least 1).
    """

    values: np.ndarray
    spread: float

    @classmethod
    def of(cls, x: np.ndarray) -> SortedReference:
        values = np.sort(np.asarray(x, dtype=float)[np.isfinite(x)])
        if len(values) < 2:
            return cls(values, 1.0)
        q75, q25 = np.percentile(values, [75, 25])
        spread = max(float(np.std(values)), float(q75 - q25) / 1.349)
        if spread <= 0:
            spread = max(abs(float(np.mean(values))), 1.0)
        return cls(values, spread)


def ks_sorted(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov D and its asymptotic p-value (scipy's ``asymp``); both sorted.

    The empirical distribution functions are compared at every point of both samples with
    binary searches, so the (large, cached) reference is never sorted again.
    """
    n, m = len(a), len(b)
    at_b = np.abs(np.searchsorted(a, b, side="right") / n - np.searchsorted(b, b, side="right") / m)
    at_a = np.abs(np.searchsorted(a, a, side="right") / n - np.searchsorted(b, a, side="right") / m)
    d = float(max(at_b.max(), at_a.max()))
    big, small = max(n, m), min(n, m)
    p = float(np.clip(sps.kstwo.sf(d, np.round(big * small / (big + small))), 0.0, 1.0))
    return d, p


def wasserstein_sorted(a: np.ndarray, b: np.ndarray) -> float:
    """The 1-Wasserstein distance of two sorted samples: the mean gap of their quantile functions.

    Evaluated on a grid of at least 2,000 quantile levels (four per row of the smaller
    sample): within a fraction of a percent of the exact value, without sorting the reference.
    """
    k = max(2000, 4 * min(len(a), len(b)))
    u = (np.arange(k) + 0.5) / k
    qa = a[np.minimum((u * len(a)).astype(np.int64), len(a) - 1)]
    qb = b[np.minimum((u * len(b)).astype(np.int64), len(b) - 1)]
    return float(np.mean(np.abs(qa - qb)))


def numeric_test(
    ref: np.ndarray | SortedReference, cur: np.ndarray, *, cap: int, rng: np.random.Generator
) -> TestResult:
    """Kolmogorov-Smirnov test; effect: Wasserstein distance in units of the reference's spread.

    ``ref`` is the reference's values or their :class:`SortedReference`. Missing values are
    left out (their share is tested by :func:`missing_test`).
    """
    prepared = ref if isinstance(ref, SortedReference) else SortedReference.of(ref)
    a = prepared.values
    b = np.sort(_sample(cur[np.isfinite(cur)], cap, rng))
    if len(a) < 2 or len(b) < 2:
        return TestResult("ks", float("nan"), 1.0, 0.0, "wasserstein/std")
    d, p = ks_sorted(a, b)
    return TestResult("ks", d, p, wasserstein_sorted(a, b) / prepared.spread, "wasserstein/std")


def missing_test(ref_missing: np.ndarray, cur_missing: np.ndarray) -> TestResult:
    """Two-proportion test of the share of missing values; effect: the absolute change in share."""
    n1, n2 = len(ref_missing), len(cur_missing)
    k1, k2 = int(ref_missing.sum()), int(cur_missing.sum())
    p1, p2 = k1 / max(n1, 1), k2 / max(n2, 1)
    pooled = (k1 + k2) / max(n1 + n2, 1)
    se = np.sqrt(pooled * (1 - pooled) * (1 / max(n1, 1) + 1 / max(n2, 1)))
    z = 0.0 if se == 0 else (p2 - p1) / se
    p = float(2 * sps.norm.sf(abs(z)))
    return TestResult("two-proportion", float(z), p, abs(p2 - p1), "missing share change")


def category_codes(ref: np.ndarray, max_categories: int) -> list[str]:
    """The reference's most frequent values (as strings), the categories a test keeps apart."""
    values, counts = np.unique(ref.astype(str), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return [str(v) for v in values[order][:max_categories]]


def lump(values: np.ndarray, kept: list[str], *, seen: set[str] | None = None) -> np.ndarray:
    """Values outside ``kept`` become ``(other)`` (or ``(unseen)`` when never in the reference)."""
    text = values.astype(str)
    keep = np.isin(text, kept)
    if seen is None:
        return np.where(keep, text, OTHER)
    unseen = ~np.isin(text, list(seen))
    return np.where(keep, text, np.where(unseen, UNSEEN, OTHER))


def counts_of(values: np.ndarray) -> dict[str, int]:
    """How often each value occurs (the reference side of :func:`categorical_test`, computed once)."""
    uniq, counts = np.unique(values.astype(str), return_counts=True)
    return {str(u): int(c) for u, c in zip(uniq, counts, strict=True)}


def categorical_test(
    ref: np.ndarray | dict[str, int], cur: np.ndarray, *, cap: int, rng: np.random.Generator
) -> TestResult:
    """Chi-square test of the two frequency tables; effect: Jensen-Shannon distance (base 2, 0-1).

    ``ref`` is the reference's values or their counts (:func:`counts_of`).
    """
    ref_counts = ref if isinstance(ref, dict) else counts_of(ref)
    cur_counts = counts_of(_sample(cur, cap, rng))
    cats = sorted(set(ref_counts) | set(cur_counts))
    a = np.array([ref_counts.get(c, 0) for c in cats], dtype=float)
    b = np.array([cur_counts.get(c, 0) for c in cats], dtype=float)
    if len(cats) < 2 or not a.sum() or not b.sum():
        return TestResult("chi2", 0.0, 1.0, 0.0, "jensen-shannon")
    effect = float(jensenshannon(a / a.sum(), b / b.sum(), base=2))
    table = merge_sparse(np.vstack([a, b]))
    if table.shape[1] < 2:
        return TestResult("chi2", 0.0, 1.0, 0.0 if np.isnan(effect) else effect, "jensen-shannon")
    chi2, p, _, _ = sps.chi2_contingency(table, correction=False)
    return TestResult("chi2", float(chi2), float(p), 0.0 if np.isnan(effect) else effect, "jensen-shannon")


def merge_sparse(table: np.ndarray, least: float = 5.0) -> np.ndarray:
    """The 2 x k table with every category expected fewer than ``least`` times in a row pooled into one.

    The chi-square approximation needs expected counts of about five or more: with many rare
    categories and a small window its p-values are far too small, and false alarms follow.
    """
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return table
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    sparse = expected.min(axis=0) < least
    if not sparse.any():
        return table
    merged = np.hstack([table[:, ~sparse], table[:, sparse].sum(axis=1, keepdims=True)])
    pooled = np.outer(merged.sum(axis=1), merged[:, -1]) / merged.sum()
    if merged.shape[1] > 2 and pooled.min() < least:
        # The pooled column is still rare: fold it into the smallest kept category.
        smallest = int(np.argmin(merged[:, :-1].sum(axis=0)))
        merged[:, smallest] += merged[:, -1]
        merged = merged[:, :-1]
    return merged


def bbsd_test(ref_proba: np.ndarray | list[np.ndarray], cur_proba: np.ndarray) -> TestResult:
    """Black-box shift detection: a KS test per class probability, Bonferroni over the classes.

    The test of *Failing Loudly* (Rabanser et al., 2019) on the model's softmax outputs; a
    binary model has one free column, so only the positive class is tested. ``ref_proba`` is
    the reference's probabilities, or their columns already sorted (:func:`sorted_columns`).
    Effect: the largest KS statistic D over the classes.
    """
    ref_cols = ref_proba if isinstance(ref_proba, list) else sorted_columns(ref_proba)
    k = cur_proba.shape[1]
    columns = [k - 1] if k == 2 else list(range(k))
    ds, ps = [], []
    for j in columns:
        d, p = ks_sorted(ref_cols[j], np.sort(cur_proba[:, j]))
        ds.append(d)
        ps.append(p)
    p = min(1.0, min(ps) * len(columns))
    return TestResult("bbsd", max(ds), p, max(ds), "ks D")


def mean_shift_test(ref_proba: np.ndarray, cur_proba: np.ndarray) -> TestResult:
    """Welch's t-test of each class's mean probability, Bonferroni over the classes.

    A change in the mix of classes (label shift) moves the mean predicted probability before
    it changes the shape KS looks at: on a 500-row window this test finds a shift of the
    positive share from 0.58 to 0.75 that BBSD's KS misses half the time. Effect: the largest
    change of a mean, in reference standard deviations.
    """
    k = cur_proba.shape[1]
    columns = [k - 1] if k == 2 else list(range(k))
    effects, ps = [], []
    for j in columns:
        a, b = ref_proba[:, j], cur_proba[:, j]
        sd = float(np.std(a))
        with warnings.catch_warnings():
            # Outputs that barely vary (a model that says the same to everything) lose precision.
            warnings.simplefilter("ignore", RuntimeWarning)
            res = sps.ttest_ind(a, b, equal_var=False)
        ps.append(float(res.pvalue) if np.isfinite(res.pvalue) else 1.0)
        effects.append(abs(float(np.mean(b) - np.mean(a))) / sd if sd > 0 else 0.0)
    p = min(1.0, min(ps) * len(columns))
    return TestResult("welch", max(effects), p, max(effects), "mean shift / std")


def sorted_columns(proba: np.ndarray) -> list[np.ndarray]:
    """Each column of ``proba`` sorted (the reference side of :func:`bbsd_test`, prepared once)."""
    return [np.sort(proba[:, j]) for j in range(proba.shape[1])]


def _sq_distances(x: np.ndarray) -> np.ndarray:
    sq = np.einsum("ij,ij->i", x, x)
    d = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    np.maximum(d, 0.0, out=d)
    return d


def mmd_test(ref: np.ndarray, cur: np.ndarray, *, permutations: int, rng: np.random.Generator) -> TestResult:
    """Maximum mean discrepancy with a Gaussian kernel and a permutation test.

    The kernel is exp(-|x - y|^2 / m) with m the median squared distance of the pooled sample
    (the median heuristic);
    the p-value counts permutations of the pooled rows whose MMD reaches the observed one
    (with the +1 correction, so it is never 0). Effect: the MMD itself (0 for equal
    distributions, at most sqrt(2)).
    """
    x = np.vstack([ref, cur]).astype(np.float64)
    n, m = len(ref), len(cur)
    d = _sq_distances(x)
    upper = d[np.triu_indices(len(x), 1)]
    med = float(np.median(upper[upper > 0])) if np.any(upper > 0) else 1.0
    kernel = np.exp(-d / med)
    total = n + m
    signs = np.empty((total, permutations + 1))
    base = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    signs[:, 0] = base
    for i in range(1, permutations + 1):
        signs[:, i] = base[rng.permutation(total)]
    stats_ = np.einsum("ip,ip->p", signs, kernel @ signs)
    stats_ = np.maximum(stats_, 0.0)
    observed = stats_[0]
    p = float((1 + np.sum(stats_[1:] >= observed)) / (permutations + 1))
    return TestResult("mmd", float(observed), p, float(np.sqrt(observed)), "mmd")


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (NaN stays NaN); controls the false-discovery rate.

    Under the global null (nothing drifts anywhere) it also bounds the chance of any false
    alarm in the whole report by ``alpha``.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    q = p[ok]
    if not len(q):
        return out
    order = np.argsort(q)
    ranked = q[order] * len(q) / np.arange(1, len(q) + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    adjusted = np.empty_like(q)
    adjusted[order] = np.minimum(ranked, 1.0)
    out[ok] = adjusted
    return out
