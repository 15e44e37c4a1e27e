"""Numeric scaling: statistics from the training split, matching scikit-learn, saved as JSON."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import MinMaxScaler, RobustScaler, StandardScaler

from tunesmith.data.normalize import METHODS, NumericScaler
from tunesmith.errors import ArtifactError, ConfigError, DataError, NotFittedError

SKLEARN = {"standard": StandardScaler, "minmax": MinMaxScaler, "robust": RobustScaler}


def _frame(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    price = rng.lognormal(3.0, 1.0, n)
    price[[3, 17]] = np.nan
    return pd.DataFrame(
        {
            "price": price,
            "count": rng.integers(0, 100, n),
            "rating": pd.array(rng.integers(1, 6, n), dtype="Int64"),
            "flag": rng.random(n) > 0.5,
            "text": [f"review {i}" for i in range(n)],
            "__row__": np.arange(1, n + 1),
        }
    )


@pytest.mark.parametrize("method", METHODS)
def test_matches_sklearn_on_train_and_test(method) -> None:
    train, test = _frame(40, seed=0), _frame(20, seed=1)
    train.loc[5, "rating"] = pd.NA
    cols = ["price", "count", "rating"]
    scaler = NumericScaler(method).fit(train)
    assert scaler.fitted_columns == cols
    reference = SKLEARN[method]().fit(train[cols].astype("float64").to_numpy())
    for frame in (train, test):
        ours = scaler.transform(frame)[cols].to_numpy(dtype=float)
        theirs = reference.transform(frame[cols].astype("float64").to_numpy())
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12, equal_nan=True)
    assert np.isnan(scaler.transform(train).loc[[3, 17], "price"]).all()
    assert np.isnan(scaler.transform(train).loc[5, "rating"])


def test_standard_uses_population_std_and_train_statistics_only() -> None:
    train = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0, np.nan]})
    test = pd.DataFrame({"x": [10.0, 2.5]})
    scaler = NumericScaler().fit(train)
    mean, std = 2.5, np.std([1.0, 2.0, 3.0, 4.0])  # ddof=0: sqrt(1.25)
    assert scaler.center_ == {"x": mean} and scaler.scale_["x"] == pytest.approx(std)
    np.testing.assert_allclose(scaler.transform(test)["x"], [(10.0 - mean) / std, 0.0])
    # Fitting on the test rows instead would give them mean 0: it must not happen implicitly.
    assert scaler.transform(test)["x"].mean() != pytest.approx(0.0)


def test_minmax_maps_train_to_unit_interval_and_test_beyond() -> None:
    scaler = NumericScaler("minmax").fit(pd.DataFrame({"x": [2.0, 4.0, 6.0]}))
    np.testing.assert_allclose(scaler.transform(pd.DataFrame({"x": [2.0, 6.0, 8.0, 0.0]}))["x"], [0, 1, 1.5, -0.5])


def test_robust_uses_median_and_iqr() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 100.0]
    scaler = NumericScaler("robust").fit(pd.DataFrame({"x": values}))
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    assert scaler.center_["x"] == q50 == 3.0
    assert scaler.scale_["x"] == q75 - q25 == 2.0


@pytest.mark.parametrize("method", METHODS)
def test_constant_columns_get_scale_one(method) -> None:
    # 0.1 three times has a float std of about 1e-17, not 0: dividing by it would explode.
    df = pd.DataFrame({"c": [0.1, 0.1, 0.1], "k": [5, 5, 5]})
    scaler = NumericScaler(method).fit(df)
    assert scaler.scale_ == {"c": 1.0, "k": 1.0}
    out = scaler.transform(df)
    np.testing.assert_allclose(out[["c", "k"]].to_numpy(), 0.0, atol=1e-15)
    assert np.isfinite(scaler.transform(pd.DataFrame({"c": [1.1], "k": [6]})).to_numpy()).all()


def test_robust_zero_iqr_gets_scale_one() -> None:
    scaler = NumericScaler("robust").fit(pd.DataFrame({"x": [1, 1, 1, 1, 1, 9]}))
    assert (scaler.center_["x"], scaler.scale_["x"]) == (1.0, 1.0)


def test_all_missing_column_is_left_unchanged() -> None:
    df = pd.DataFrame({"x": [np.nan, np.nan], "y": [1.0, 3.0]})
    scaler = NumericScaler().fit(df)
    assert (scaler.center_["x"], scaler.scale_["x"]) == (0.0, 1.0)
    out = scaler.transform(pd.DataFrame({"x": [2.0, np.nan], "y": [1.0, 3.0]}))
    assert out["x"].iloc[0] == 2.0 and np.isnan(out["x"].iloc[1])
    np.testing.assert_allclose(out["y"], [-1.0, 1.0])


def test_auto_detection_skips_bool_text_and_row_numbers_and_copies() -> None:
    df = _frame()
    original = df.copy()
    out = NumericScaler().fit_transform(df)
    pd.testing.assert_frame_equal(df, original)  # input untouched
    for col in ("flag", "text", "__row__"):
        pd.testing.assert_series_equal(out[col], df[col])
    assert out["count"].dtype == np.float64
    assert list(out.columns) == list(df.columns)


def test_named_columns_only_those_are_scaled() -> None:
    df = _frame()
    scaler = NumericScaler(columns="count").fit(df)
    assert scaler.fitted_columns == ["count"]
    out = scaler.transform(df)
    pd.testing.assert_series_equal(out["price"], df["price"])
    assert out["count"].mean() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("column", ["text", "flag"])
def test_named_non_numeric_column_is_a_data_error(column) -> None:
    with pytest.raises(DataError, match="not numeric") as info:
        NumericScaler(columns=["price", column]).fit(_frame())
    assert info.value.column == column
    assert repr(column) in str(info.value)


def test_missing_column_is_a_data_error_naming_it() -> None:
    scaler = NumericScaler().fit(_frame())
    with pytest.raises(DataError, match="'count' not found") as info:
        scaler.transform(_frame().drop(columns=["count"]))
    assert info.value.column == "count"
    with pytest.raises(DataError, match="Did you mean 'price'"):
        NumericScaler(columns=["Price "]).fit(_frame())


def test_unknown_method_is_a_config_error_listing_choices() -> None:
    with pytest.raises(ConfigError) as info:
        NumericScaler("zscore")
    assert info.value.key == "method"
    assert "'zscore'" in str(info.value) and all(m in str(info.value) for m in METHODS)


def test_infinite_values_are_rejected_when_fitting() -> None:
    with pytest.raises(DataError, match="infinite") as info:
        NumericScaler().fit(pd.DataFrame({"x": [1.0, np.inf]}))
    assert info.value.column == "x"


def test_transform_before_fit_is_not_fitted_error() -> None:
    scaler = NumericScaler()
    assert not scaler.is_fitted
    with pytest.raises(NotFittedError):
        scaler.transform(_frame())


@pytest.mark.parametrize("method", METHODS)
def test_inverse_transform_round_trips(method) -> None:
    df = _frame()
    scaler = NumericScaler(method).fit(df)
    back = scaler.inverse_transform(scaler.transform(df))
    for col in ("price", "count", "rating"):
        np.testing.assert_allclose(back[col], df[col].to_numpy(dtype=float, na_value=np.nan), equal_nan=True)


@pytest.mark.parametrize("method", METHODS)
def test_to_dict_round_trips_through_json(method) -> None:
    train, test = _frame(seed=0), _frame(seed=1)
    scaler = NumericScaler(method).fit(train)
    again = NumericScaler.from_dict(json.loads(json.dumps(scaler.to_dict(), allow_nan=False)))
    assert again.is_fitted and again.method == method
    pd.testing.assert_frame_equal(again.transform(test), scaler.transform(test))

    unfitted = NumericScaler.from_dict(json.loads(json.dumps(NumericScaler("robust", ["a"]).to_dict())))
    assert not unfitted.is_fitted and unfitted.columns == ["a"]


def test_from_dict_rejects_malformed_state() -> None:
    state = NumericScaler().fit(pd.DataFrame({"x": [1.0, 2.0]})).to_dict()
    with pytest.raises(ArtifactError):
        NumericScaler.from_dict({**state, "version": 99})
    with pytest.raises(ArtifactError):
        NumericScaler.from_dict({**state, "scale": {"x": 0.0}})
    with pytest.raises(ArtifactError):
        NumericScaler.from_dict({**state, "scale": {}})
