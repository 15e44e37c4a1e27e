"""Interaction logs: who interacted with what, when, and how it went.

:func:`read_interactions` turns a table of events (a file or a DataFrame) into
:class:`Interactions`: users and items re-coded as dense integer codes, times as epoch seconds,
rows sorted by user and time. Every row it drops or reorders is counted in
``Interactions.report``; nothing is dropped silently. Row numbers in errors are 1-based data
rows of the source (header excluded).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from tunesmith.data.io import read_table
from tunesmith.data.schema import ROW_COLUMN, did_you_mean, missing_mask
from tunesmith.data.validate import row_numbers
from tunesmith.errors import ConfigError, DataError

__all__ = ["Interactions", "k_core", "read_features", "read_interactions"]

MATRIX_VALUES = ("binary", "count", "rating", "weight", "label")
DUPLICATES = ("error", "drop", "keep")
ORDERS = ("sort", "strict")
_LABEL_TRUE = frozenset({"1", "1.0", "true"})
_LABEL_FALSE = frozenset({"0", "0.0", "false"})


@dataclass
class Interactions:
    """An interaction log with users and items coded as ``0..n-1``.

    ``frame`` has the columns ``user`` (int32 code), ``item`` (int32 code), ``time`` (float64,
    epoch seconds), ``row`` (int64, the 1-based data row of the source) and, when they were
    read, ``rating`` (float64), ``label`` (int8, 0/1) and ``weight`` (float64). Its rows are
    sorted stably by ``(user, time, row)`` with a fresh ``RangeIndex``.

    ``users[c]`` and ``items[c]`` are the original ids (str) of code ``c``. ``report`` says
    what reading and filtering did: ``rows_in``, ``rows_out``, ``dropped`` (rows per reason)
    and, where they apply, ``out_of_order`` and ``k_core``.
    """

    frame: pd.DataFrame
    users: np.ndarray
    items: np.ndarray
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        """Number of user codes (rows of :meth:`matrix`)."""
        return len(self.users)

    @property
    def n_items(self) -> int:
        """Number of item codes (columns of :meth:`matrix`)."""
        return len(self.items)

    def __len__(self) -> int:
        return len(self.frame)

    def matrix(self, value: str = "binary") -> sp.csr_matrix:
        """The ``n_users x n_items`` user-item matrix (float64).

        ``value`` is ``"binary"`` (1 for every pair that occurs), ``"count"`` (events per
        pair) or the name of a column read with the log (``"rating"``, ``"weight"``,
        ``"label"``), whose values are summed over repeated events of a pair.
        """
        if value not in MATRIX_VALUES:
            raise ConfigError(
                f"unknown matrix value {value!r}", key="value", hint=f"Use one of: {', '.join(MATRIX_VALUES)}"
            )
        if value in ("binary", "count"):
            data = np.ones(len(self.frame), dtype=np.float64)
        elif value not in self.frame.columns:
            raise ConfigError(
                f"the log has no {value} column",
                key="value",
                hint=f"Read it with read_interactions(..., {value}=<column>) or use 'binary' or 'count'",
            )
        else:
            data = self.frame[value].to_numpy(dtype=np.float64)
        user = self.frame["user"].to_numpy()
        item = self.frame["item"].to_numpy()
        m = sp.csr_matrix((data, (user, item)), shape=(self.n_users, self.n_items), dtype=np.float64)
        m.sum_duplicates()
        if value == "binary":
            m.data[:] = 1.0
        return m

    def sequences(self) -> list[np.ndarray]:
        """Each user's item codes in time order (int32), indexed by user code; empty for a user with no rows."""
        item = self.frame["item"].to_numpy(dtype=np.int32)
        counts = np.bincount(self.frame["user"].to_numpy(), minlength=self.n_users)
        return np.split(item, np.cumsum(counts)[:-1])

    def take(self, mask: np.ndarray) -> Interactions:
        """The rows where the boolean ``mask`` (one value per row of ``frame``) is true.

        The id maps are shared, so codes mean the same in both logs (some users or items may
        then have no rows). The report counts the rows left out as ``dropped["not_taken"]``.
        """
        keep = np.asarray(mask)
        if keep.dtype != np.bool_ or keep.shape != (len(self.frame),):
            raise ConfigError(
                f"mask must be a boolean array of length {len(self.frame)}, got {keep.dtype} of shape {keep.shape}",
                key="mask",
            )
        frame = self.frame.loc[keep].reset_index(drop=True)
        report = {"rows_in": len(self.frame), "rows_out": len(frame), "dropped": {"not_taken": int((~keep).sum())}}
        return Interactions(frame, self.users, self.items, report)

    def positive_mask(self, *, min_rating: float | None = None) -> np.ndarray:
        """Boolean mask of the rows that count as positive feedback.

        With ``min_rating``: rows whose rating is at least ``min_rating``. Otherwise rows with
        ``label == 1`` when the log has labels, else every row (implicit feedback).
        """
        if min_rating is not None:
            if "rating" not in self.frame.columns:
                raise ConfigError(
                    "min_rating needs a rating column",
                    key="min_rating",
                    hint="Read the log with read_interactions(..., rating=<column>)",
                )
            return self.frame["rating"].to_numpy() >= min_rating
        if "label" in self.frame.columns:
            return self.frame["label"].to_numpy() == 1
        return np.ones(len(self.frame), dtype=bool)


def _require(df: pd.DataFrame, column: str, what: str, file: str | Path | None) -> None:
    if column not in df.columns:
        raise DataError(
            f"{what} column {column!r} not found", file=file, column=column, hint=did_you_mean(column, df.columns)
        )


def _first_bad(bad: np.ndarray, rows: np.ndarray) -> int:
    """The 1-based data row of the first true entry of ``bad``."""
    return int(rows[int(np.argmax(bad))])


def _id_strings(series: pd.Series) -> np.ndarray:
    """Ids as strings (object array). Whole-number floats lose their ``.0``: a column of ids
    read as floats (because a cell was empty) must still match the same ids read as integers.
    """
    if pd.api.types.is_float_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64)
        if np.all(np.isfinite(values)) and np.all(values == np.round(values)):
            return values.astype(np.int64).astype(str).astype(object)
    return series.astype(str).to_numpy(dtype=object)


def _ids(df: pd.DataFrame, column: str, what: str, rows: np.ndarray, file: str | Path | None) -> np.ndarray:
    missing = missing_mask(df[column]).to_numpy(dtype=bool)
    if missing.any():
        raise DataError(
            f"{what} is missing",
            file=file,
            row=_first_bad(missing, rows),
            column=column,
            hint="Fill in or remove the rows without one",
        )
    return _id_strings(df[column])


def _times(series: pd.Series, column: str, rows: np.ndarray, file: str | Path | None) -> np.ndarray:
    """Epoch seconds (float64) from numbers or date-time strings; naive date-times count as UTC."""
    missing = missing_mask(series).to_numpy(dtype=bool)
    if missing.any():
        raise DataError("time is missing", file=file, row=_first_bad(missing, rows), column=column)
    if pd.api.types.is_bool_dtype(series.dtype):
        raise DataError("time holds true/false values, not times", file=file, row=int(rows[0]), column=column)
    if pd.api.types.is_numeric_dtype(series.dtype):
        out = series.to_numpy(dtype=np.float64)
    elif pd.api.types.is_datetime64_any_dtype(series.dtype):
        out = _epoch(pd.Series(series))
    else:
        numbers = pd.to_numeric(series, errors="coerce")
        if not numbers.isna().any():
            out = numbers.to_numpy(dtype=np.float64)
        else:
            text = series.astype(str)
            # One inferred format parses fast; mixed formats fall back to parsing each value.
            parsed = pd.to_datetime(text, errors="coerce", utc=True)
            if parsed.isna().any():
                parsed = pd.to_datetime(text, errors="coerce", utc=True, format="mixed")
            bad = parsed.isna().to_numpy()
            if bad.any():
                i = int(np.argmax(bad))
                raise DataError(
                    f"time {series.iloc[i]!r} is neither a number (epoch seconds) nor a date-time",
                    file=file,
                    row=int(rows[i]),
                    column=column,
                    hint="Use epoch seconds or ISO 8601 date-times such as 2024-05-01T12:30:00",
                )
            out = _epoch(parsed)
    bad = ~np.isfinite(out)
    if bad.any():
        raise DataError("time is not a finite number", file=file, row=_first_bad(bad, rows), column=column)
    return out


def _epoch(parsed: pd.Series) -> np.ndarray:
    if parsed.dt.tz is None:
        parsed = parsed.dt.tz_localize("UTC")
    seconds = (parsed - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    return seconds.to_numpy(dtype=np.float64)


def _numbers(series: pd.Series, column: str, what: str, rows: np.ndarray, file: str | Path | None) -> np.ndarray:
    missing = missing_mask(series).to_numpy(dtype=bool)
    if missing.any():
        raise DataError(f"{what} is missing", file=file, row=_first_bad(missing, rows), column=column)
    if pd.api.types.is_bool_dtype(series.dtype):
        values = np.full(len(series), np.nan)
    else:
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{what} {series.iloc[i]!r} is not a number", file=file, row=int(rows[i]), column=column)
    return values


def _labels(series: pd.Series, column: str, rows: np.ndarray, file: str | Path | None) -> np.ndarray:
    missing = missing_mask(series).to_numpy(dtype=bool)
    if missing.any():
        raise DataError("label is missing", file=file, row=_first_bad(missing, rows), column=column)
    text = series.astype(str).str.strip().str.lower().to_numpy(dtype=object)
    positive = np.isin(text, list(_LABEL_TRUE))
    bad = ~(positive | np.isin(text, list(_LABEL_FALSE)))
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"label {series.iloc[i]!r} is not 0/1 or true/false",
            file=file,
            row=int(rows[i]),
            column=column,
            hint="A label says whether the interaction was positive: 1/true or 0/false",
        )
    return positive.astype(np.int8)


def _check_choice(value: str, choices: tuple[str, ...], key: str) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {key} {value!r}", key=key, hint=f"Use one of: {', '.join(choices)}")


def _load(data: str | Path | pd.DataFrame, file: str | Path | None) -> tuple[pd.DataFrame, str | Path | None]:
    if isinstance(data, pd.DataFrame):
        return data, file
    if isinstance(data, (str, Path)):
        return read_table(data), file if file is not None else data
    raise ConfigError(f"data must be a path or a pandas DataFrame, got {type(data).__name__}", key="data")


def read_interactions(
    data: str | Path | pd.DataFrame,
    *,
    user: str = "user_id",
    item: str = "item_id",
    time: str | None = "timestamp",
    rating: str | None = None,
    label: str | None = None,
    weight: str | None = None,
    duplicates: Literal["error", "drop", "keep"] = "error",
    order: Literal["sort", "strict"] = "sort",
    file: str | Path | None = None,
) -> Interactions:
    """Read an interaction log from a file (CSV, TSV, Parquet, JSONL) or a DataFrame.

    Parameters
    ----------
    data:
        A path (read with :func:`tunesmith.data.io.read_table`) or a DataFrame.
    user, item:
        Columns of the user and item ids (any type; compared as strings).
    time:
        Column of the event time: numbers (epoch seconds) or date-time strings (converted to
        epoch seconds; without a time zone they count as UTC). ``None``: the log has no times
        and each user's events are in file order (``time`` is then the data row).
    rating, weight:
        Optional numeric columns. ``label``: optional 0/1 (or true/false) column.
    duplicates:
        What to do with events that repeat an earlier row's (user, item, time):
        ``"error"`` raises, ``"drop"`` keeps the first (counted in ``report["dropped"]``),
        ``"keep"`` keeps them all.
    order:
        A user's events out of time order in the file are sorted (``"sort"``, counted in
        ``report["out_of_order"]``) or refused (``"strict"``).
    file:
        Name used in errors when ``data`` is a DataFrame read from somewhere.

    Raises
    ------
    tunesmith.errors.DataError
        A column not found (with the closest name), a missing user/item/time/rating value, a
        time that is neither a number nor a date-time, a rating or weight that is not a number,
        a label that is not 0/1, a duplicate event (``duplicates="error"``) or an event earlier
        than its user's previous one (``order="strict"``): naming the 1-based data row.
    """
    _check_choice(duplicates, DUPLICATES, "duplicates")
    _check_choice(order, ORDERS, "order")
    df, file = _load(data, file)
    roles = {"user": user, "item": item, "time": time, "rating": rating, "label": label, "weight": weight}
    for role, column in roles.items():
        if column is not None:
            _require(df, column, role, file)
    rows = row_numbers(df)
    if len(df) == 0:
        raise DataError("the log has no rows", file=file)

    user_ids = _ids(df, user, "user id", rows, file)
    item_ids = _ids(df, item, "item id", rows, file)
    times = _times(df[time], time, rows, file) if time is not None else rows.astype(np.float64)
    columns: dict[str, np.ndarray] = {}
    if rating is not None:
        columns["rating"] = _numbers(df[rating], rating, "rating", rows, file)
    if label is not None:
        columns["label"] = _labels(df[label], label, rows, file)
    if weight is not None:
        columns["weight"] = _numbers(df[weight], weight, "weight", rows, file)

    # Sorted ids give codes that do not depend on the order of the rows in the file.
    user_codes, users = pd.factorize(user_ids, sort=True)
    item_codes, items = pd.factorize(item_ids, sort=True)
    frame = pd.DataFrame(
        {
            "user": user_codes.astype(np.int32),
            "item": item_codes.astype(np.int32),
            "time": times,
            "row": rows.astype(np.int64),
            **columns,
        }
    )
    report: dict[str, Any] = {"rows_in": len(frame), "rows_out": len(frame), "dropped": {"duplicate": 0}}

    key = ["user", "item", "time"]
    repeated = frame.duplicated(subset=key, keep="first").to_numpy()
    if repeated.any():
        if duplicates == "error":
            i = int(np.argmax(repeated))
            row = frame["row"].to_numpy()
            same = frame[key].to_numpy()
            hit = int(np.flatnonzero((same[:i] == same[i]).all(axis=1))[0])
            raise DataError(
                f"duplicate event: user {user_ids[i]!r}, item {item_ids[i]!r} at the same time as row {int(row[hit])}",
                file=file,
                row=int(row[i]),
                hint="Pass duplicates='drop' to keep the first of each, or duplicates='keep' to keep them all",
            )
        if duplicates == "drop":
            frame = frame.loc[~repeated].reset_index(drop=True)
            report["dropped"]["duplicate"] = int(repeated.sum())

    # Out of order = earlier than the same user's previous event in file order.
    by_user = frame.sort_values(["user", "row"], kind="stable")
    u = by_user["user"].to_numpy()
    t = by_user["time"].to_numpy()
    earlier = np.zeros(len(by_user), dtype=bool)
    earlier[1:] = (u[1:] == u[:-1]) & (t[1:] < t[:-1])
    if earlier.any():
        if order == "strict":
            late = by_user["row"].to_numpy()[earlier]
            first = int(np.argmin(late))
            pos = int(np.flatnonzero(earlier)[first])
            raise DataError(
                f"event time {t[pos]:g} is earlier than the same user's previous event "
                f"(row {int(by_user['row'].iloc[pos - 1])}, time {t[pos - 1]:g})",
                file=file,
                row=int(late[first]),
                column=time,
                hint="Sort the log by user and time, or pass order='sort'",
            )
        report["out_of_order"] = int(earlier.sum())
    frame = frame.sort_values(["user", "time", "row"], kind="stable").reset_index(drop=True)
    report["rows_out"] = len(frame)
    if file is not None:
        report["source"] = str(file)
    return Interactions(frame, np.asarray(users, dtype=object), np.asarray(items, dtype=object), report)


def k_core(inter: Interactions, *, min_user: int = 5, min_item: int = 5) -> Interactions:
    """Keep only users with at least ``min_user`` rows and items with at least ``min_item`` rows.

    Dropping a user can push an item under its minimum and the other way round, so the
    filter repeats until nothing changes. Users and items are then re-coded densely (in the
    order of their old codes). ``report["k_core"]`` counts the rounds and the users and items
    dropped; ``report["dropped"]["k_core"]`` the rows.
    """
    for key, value in (("min_user", min_user), ("min_item", min_item)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ConfigError(f"{key} must be a whole number >= 0, got {value!r}", key=key)
    user = inter.frame["user"].to_numpy()
    item = inter.frame["item"].to_numpy()
    keep = np.ones(len(user), dtype=bool)
    rounds = 0
    while True:
        rounds += 1
        user_n = np.bincount(user[keep], minlength=inter.n_users)
        item_n = np.bincount(item[keep], minlength=inter.n_items)
        ok = keep & (user_n[user] >= min_user) & (item_n[item] >= min_item)
        if ok.sum() == keep.sum():
            break
        keep = ok
    if not keep.any():
        raise DataError(
            f"no interactions left after k-core filtering (min_user={min_user}, min_item={min_item})",
            hint="Lower min_user or min_item",
        )
    kept_users = np.unique(user[keep])
    kept_items = np.unique(item[keep])
    # Old codes are sorted, so searchsorted maps them densely and keeps the frame's sort order.
    frame = inter.frame.loc[keep].reset_index(drop=True)
    frame["user"] = np.searchsorted(kept_users, frame["user"].to_numpy()).astype(np.int32)
    frame["item"] = np.searchsorted(kept_items, frame["item"].to_numpy()).astype(np.int32)
    report = copy.deepcopy(inter.report)
    report.setdefault("rows_in", len(inter.frame))
    dropped = report.setdefault("dropped", {})
    dropped["k_core"] = dropped.get("k_core", 0) + int((~keep).sum())
    report["rows_out"] = len(frame)
    report["k_core"] = {
        "min_user": int(min_user),
        "min_item": int(min_item),
        "rounds": rounds,
        "rows_dropped": int((~keep).sum()),
        "users_dropped": inter.n_users - len(kept_users),
        "items_dropped": inter.n_items - len(kept_items),
    }
    return Interactions(frame, inter.users[kept_users], inter.items[kept_items], report)


def read_features(data: str | Path | pd.DataFrame, key: str, *, file: str | Path | None = None) -> pd.DataFrame:
    """A user or item feature table (file or DataFrame) indexed by its id column ``key`` as str.

    Ids are written the way :func:`read_interactions` writes them, so ``frame.loc[inter.items]``
    lines features up with item codes. The other columns are kept as read.

    Raises
    ------
    tunesmith.errors.DataError
        ``key`` not found (with the closest name), a missing id or an id given twice (naming
        both rows).
    """
    df, file = _load(data, file)
    _require(df, key, "key", file)
    rows = row_numbers(df)
    ids = _ids(df, key, "id", rows, file)
    repeated = pd.Series(ids).duplicated(keep="first").to_numpy()
    if repeated.any():
        i = int(np.argmax(repeated))
        first = int(np.flatnonzero(ids == ids[i])[0])
        raise DataError(
            f"id {ids[i]!r} is given twice (first at row {int(rows[first])})",
            file=file,
            row=int(rows[i]),
            column=key,
            hint="Keep one row per id",
        )
    out = df.drop(columns=[c for c in (key, ROW_COLUMN) if c in df.columns]).copy()
    out.index = pd.Index(ids, name=key, dtype=object)
    return out
