"""The two-sample tests and the false-discovery correction of the monitor."""

from __future__ import annotations

import numpy as np

from tunesmith.monitor.stats import (
    bbsd_test,
    benjamini_hochberg,
    categorical_test,
    lump,
    missing_test,
    mmd_test,
    numeric_test,
)


def test_numeric_test_null_is_calm_and_a_shift_is_large() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=5000)
    same = numeric_test(ref, rng.normal(size=500), cap=5000, rng=rng)
    moved = numeric_test(ref, rng.normal(0.5, 1, size=500), cap=5000, rng=rng)
    assert same.p_value > 0.01 and same.effect < 0.1
    assert moved.p_value < 1e-6
    assert 0.4 < moved.effect < 0.6  # Wasserstein distance in reference standard deviations


def test_numeric_null_p_values_are_uniform_enough() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(size=3000)
    ps = [numeric_test(ref, rng.normal(size=300), cap=5000, rng=rng).p_value for _ in range(300)]
    assert 0.01 <= np.mean(np.array(ps) < 0.05) <= 0.09


def test_numeric_effect_ignores_missing_values_and_missing_share_is_tested() -> None:
    rng = np.random.default_rng(2)
    ref = rng.normal(size=1000)
    cur = rng.normal(size=1000)
    cur[:300] = np.nan
    assert numeric_test(ref, cur, cap=5000, rng=rng).effect < 0.15
    res = missing_test(~np.isfinite(ref), ~np.isfinite(cur))
    assert res.p_value < 1e-10
    assert res.effect == 0.3


def test_categorical_test_effect_is_jensen_shannon() -> None:
    rng = np.random.default_rng(3)
    ref = rng.choice(["a", "b"], size=4000, p=[0.5, 0.5])
    same = categorical_test(ref, rng.choice(["a", "b"], size=400), cap=5000, rng=rng)
    moved = categorical_test(ref, np.array(["a"] * 400), cap=5000, rng=rng)
    assert same.p_value > 0.01 and same.effect < 0.05
    assert moved.p_value < 1e-20
    # JS distance between (0.5, 0.5) and (1, 0), base 2: sqrt(1 - 0.5*H(0.25,0.75)...) ~ 0.56
    assert 0.5 < moved.effect < 0.6


def test_lump_keeps_frequent_values_and_marks_unseen_ones() -> None:
    out = lump(np.array(["a", "b", "z", "c"]), ["a", "b"], seen={"a", "b", "c"})
    assert out.tolist() == ["a", "b", "(unseen)", "(other)"]


def test_bbsd_tests_the_positive_class_of_a_binary_model() -> None:
    rng = np.random.default_rng(4)
    p = rng.beta(2, 2, size=2000)
    ref = np.column_stack([1 - p, p])
    q = rng.beta(5, 2, size=500)
    res = bbsd_test(ref, np.column_stack([1 - q, q]))
    assert res.test == "bbsd" and res.p_value < 1e-10 and res.effect > 0.2
    q = rng.beta(2, 2, size=500)
    assert bbsd_test(ref, np.column_stack([1 - q, q])).p_value > 0.01


def test_mmd_permutation_test_finds_a_mean_shift_in_many_dimensions() -> None:
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(300, 32))
    same = mmd_test(ref, rng.normal(size=(100, 32)), permutations=200, rng=rng)
    moved = mmd_test(ref, rng.normal(0.4, 1, size=(100, 32)), permutations=200, rng=rng)
    assert same.p_value > 0.05
    assert moved.p_value <= 1 / 201 + 1e-12  # no permutation reaches it; never exactly 0
    assert moved.effect > same.effect


def test_benjamini_hochberg_matches_the_textbook_example() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan])
    adjusted = benjamini_hochberg(p)
    # Sorted 0.005, 0.01, 0.03, 0.04 with m = 4: 0.02, 0.02, 0.04, 0.04.
    np.testing.assert_allclose(adjusted[:4], [0.02, 0.04, 0.04, 0.02])
    assert np.isnan(adjusted[4])


def test_rare_categories_are_pooled_so_small_windows_keep_their_false_alarm_rate() -> None:
    rng = np.random.default_rng(6)
    p = 1 / np.arange(1, 51)
    p /= p.sum()
    cats = np.array([f"c{i}" for i in range(50)])
    ref = rng.choice(cats, size=20000, p=p)
    ps = [categorical_test(ref, rng.choice(cats, size=100, p=p), cap=5000, rng=rng).p_value for _ in range(400)]
    assert np.mean(np.array(ps) < 0.01) <= 0.025


def test_merge_sparse_pools_columns_expected_fewer_than_five_times() -> None:
    from tunesmith.monitor.stats import merge_sparse

    table = np.array([[500.0, 400.0, 300.0, 60.0, 3.0, 2.0, 0.0], [50.0, 45.0, 40.0, 30.0, 20.0, 0.0, 0.0]])
    merged = merge_sparse(table)
    assert merged.tolist() == [[500.0, 400.0, 300.0, 65.0], [50.0, 45.0, 40.0, 50.0]]  # the rare three pooled
    expected = np.outer(merged.sum(axis=1), merged.sum(axis=0)) / merged.sum()
    assert expected.min() >= 5 and merged.sum() == table.sum()
    # A pool still too rare folds into the smallest kept category.
    merged = merge_sparse(np.array([[500.0, 400.0, 3.0, 2.0], [50.0, 45.0, 1.0, 0.0]]))
    assert merged.tolist() == [[500.0, 405.0], [50.0, 46.0]]


def test_ks_and_wasserstein_on_a_cached_sorted_reference_match_scipy() -> None:
    from scipy import stats as sps

    from tunesmith.monitor.stats import SortedReference, ks_sorted, wasserstein_sorted

    rng = np.random.default_rng(7)
    for ref, cur in [
        (rng.normal(size=20000), rng.normal(0.1, 1.2, size=700)),
        (rng.integers(0, 5, size=5000).astype(float), rng.integers(0, 6, size=300).astype(float)),  # ties
    ]:
        prepared = SortedReference.of(ref)
        d, p = ks_sorted(prepared.values, np.sort(cur))
        expected = sps.ks_2samp(ref, cur, method="asymp")
        assert abs(d - expected.statistic) < 1e-12
        assert abs(p - expected.pvalue) < 1e-9
        w = wasserstein_sorted(prepared.values, np.sort(cur))
        assert abs(w - sps.wasserstein_distance(ref, cur)) < 0.01 * max(w, 0.01)
