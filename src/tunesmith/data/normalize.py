"""Scaling numeric columns with statistics learnt on the training split only.

:class:`NumericScaler` is fitted on the training frame and then applied unchanged to
validation, test and serving data, so no statistic of held-out rows leaks into training.
Its state is a small JSON-safe dict (:meth:`NumericScaler.to_dict`) saved with the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.data.schema import ROW_COLUMN, did_you_mean
from tunesmith.errors import ArtifactError, ConfigError, DataError, NotFittedError

METHODS = ("standard", "minmax", "robust")
"""Scaling methods: ``standard`` (mean 0, population std 1), ``minmax`` (to [0, 1]),
``robust`` (median 0, interquartile range 1)."""

_STATE_VERSION = 1


def _is_numeric(series: pd.Series) -> bool:
    # bool is numeric to pandas, but scaling a flag turns it into two arbitrary floats.
    return pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype)


def _as_float(series: pd.Series) -> np.ndarray:
    # to_numpy with na_value handles nullable Int64/Float64 columns, whose <NA> plain
    # astype(float) rejects.
    return series.to_numpy(dtype=np.float64, na_value=np.nan)


class NumericScaler:
    """Scale numeric columns with per-column statistics learnt by :meth:`fit`.

    ``transform`` computes ``(x - center) / scale`` per column:

    ``"standard"``
        center = mean, scale = population standard deviation (``ddof=0``, as
        scikit-learn's ``StandardScaler``).
    ``"minmax"``
        center = minimum, scale = maximum - minimum, so training values land in [0, 1].
    ``"robust"``
        center = median, scale = interquartile range (75th - 25th percentile, linear
        interpolation, as scikit-learn's ``RobustScaler``).

    Missing values are ignored when fitting and stay missing. A scale of 0 (a constant
    column, or an interquartile range of 0) is replaced by 1, so such a column is only
    shifted. A column with no values at all in the training data gets center 0 and
    scale 1 (left unchanged).

    Parameters
    ----------
    method:
        One of :data:`METHODS`.
    columns:
        Columns to scale; ``None`` scales every numeric column (bool columns and the
        ``__row__`` row-number column excluded) found by :meth:`fit`.
    """

    def __init__(self, method: str = "standard", columns: Sequence[str] | None = None) -> None:
        if method not in METHODS:
            raise ConfigError(
                f"unknown scaling method {method!r}", key="method", hint=f"Valid methods: {', '.join(METHODS)}"
            )
        if isinstance(columns, str):
            columns = [columns]
        if columns is not None:
            columns = list(dict.fromkeys(columns))
            if not columns:
                raise ConfigError(
                    "is empty", key="columns", hint="Give column names, or None to scale every numeric column"
                )
        self.method = method
        self.columns: list[str] | None = columns
        self.center_: dict[str, float] = {}
        self.scale_: dict[str, float] = {}
        self._fitted = False

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` (or :meth:`from_dict`) has set the statistics."""
        return self._fitted

    @property
    def fitted_columns(self) -> list[str]:
        """The columns this scaler transforms (after :meth:`fit`)."""
        return list(self.center_)

    def fit(self, df: pd.DataFrame) -> NumericScaler:
        """Learn each column's center and scale from ``df`` (the training split only)."""
        if self.columns is None:
            names = [str(c) for c in df.columns if c != ROW_COLUMN and _is_numeric(df[c])]
        else:
            names = list(self.columns)
            for name in names:
                self._check_column(df, name)

        center: dict[str, float] = {}
        scale: dict[str, float] = {}
        for name in names:
            values = _as_float(df[name])
            if np.isinf(values).any():
                raise DataError(
                    "has infinite values; the scaler cannot fit on them",
                    column=name,
                    hint="Replace them with missing values or finite numbers",
                )
            finite = values[~np.isnan(values)]
            if finite.size == 0:
                center[name], scale[name] = 0.0, 1.0
                continue
            if self.method == "standard":
                c, s = float(finite.mean()), float(finite.std(ddof=0))
            elif self.method == "minmax":
                c, s = float(finite.min()), float(finite.max() - finite.min())
            else:
                q25, q50, q75 = np.percentile(finite, [25.0, 50.0, 75.0])
                c, s = float(q50), float(q75 - q25)
            # Test constancy on the data, not on s: the std of identical floats can come out
            # as 1e-17 instead of 0 and dividing by it would blow the column up.
            if s == 0.0 or finite.min() == finite.max():
                s = 1.0
            center[name], scale[name] = c, s
        self.center_, self.scale_ = center, scale
        self._fitted = True
        return self

    def transform(self, df: pd.DataFrame) -> pd.DataFrame:
        """A copy of ``df`` with the fitted columns scaled (as float64); other columns untouched."""
        return self._apply(df, inverse=False)

    def fit_transform(self, df: pd.DataFrame) -> pd.DataFrame:
        """:meth:`fit` on ``df``, then :meth:`transform` it."""
        return self.fit(df).transform(df)

    def inverse_transform(self, df: pd.DataFrame) -> pd.DataFrame:
        """A copy of ``df`` with the fitted columns mapped back to their original units."""
        return self._apply(df, inverse=True)

    def _apply(self, df: pd.DataFrame, *, inverse: bool) -> pd.DataFrame:
        if not self._fitted:
            raise NotFittedError("this NumericScaler is not fitted", hint="Call fit() on the training data first")
        for name in self.center_:
            self._check_column(df, name)
        out = df.copy()
        for name, c in self.center_.items():
            values = _as_float(df[name])
            s = self.scale_[name]
            out[name] = values * s + c if inverse else (values - c) / s
        return out

    def _check_column(self, df: pd.DataFrame, name: str) -> None:
        if name not in df.columns:
            raise DataError(f"scaler column {name!r} not found", column=name, hint=did_you_mean(name, df.columns))
        if not _is_numeric(df[name]):
            raise DataError(
                f"is not numeric (dtype {df[name].dtype}); only numeric columns can be scaled",
                column=name,
                hint="Convert it to numbers, or leave it out of columns",
            )

    def to_dict(self) -> dict[str, Any]:
        """The settings and fitted statistics as a JSON-safe dict (see :meth:`from_dict`)."""
        return {
            "version": _STATE_VERSION,
            "method": self.method,
            "columns": None if self.columns is None else list(self.columns),
            "fitted": self._fitted,
            "center": dict(self.center_),
            "scale": dict(self.scale_),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NumericScaler:
        """Rebuild a scaler saved by :meth:`to_dict`, fitted statistics included."""
        if not isinstance(data, Mapping) or data.get("version") != _STATE_VERSION:
            raise ArtifactError(
                "scaler state is not a NumericScaler.to_dict() of a known version",
                hint=f"Expected version {_STATE_VERSION}",
            )
        center, scale = data.get("center"), data.get("scale")
        if not isinstance(center, Mapping) or not isinstance(scale, Mapping) or set(center) != set(scale):
            raise ArtifactError("scaler state is malformed: 'center' and 'scale' must name the same columns")
        if any(not isinstance(v, (int, float)) for v in [*center.values(), *scale.values()]) or any(
            float(v) == 0.0 for v in scale.values()
        ):
            raise ArtifactError("scaler state is malformed: statistics must be numbers and scales non-zero")
        scaler = cls(method=data.get("method", ""), columns=data.get("columns"))
        scaler.center_ = {str(k): float(v) for k, v in center.items()}
        scaler.scale_ = {str(k): float(scale[k]) for k in center}
        scaler._fitted = bool(data.get("fitted", False))
        return scaler

    def __repr__(self) -> str:
        state = f"{len(self.center_)} columns" if self._fitted else "not fitted"
        return f"NumericScaler(method={self.method!r}, {state})"


__all__ = ["METHODS", "NumericScaler"]
