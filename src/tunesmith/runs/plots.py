"""Figures for run records: learning curves, confusion matrix, regression residuals.

Figures are drawn on :class:`matplotlib.figure.Figure` with the Agg canvas directly,
never through ``pyplot``: that needs no display, leaves the process-wide backend and
figure registry alone, and frees each figure when the function returns.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tunesmith.errors import DataError
from tunesmith.runs.artifacts import atomic_write_bytes

__all__ = [
    "plot_confusion_matrix",
    "plot_learning_curves",
    "plot_metric_by_group",
    "plot_per_user_comparison",
    "plot_ranking_at_k",
    "plot_residuals",
]

DPI = 120
_TRAIN = "#1f77b4"
_VALID = "#d62728"
_BEST = "#2ca02c"
_METRIC_COLORS = ("#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#1f77b4")
# ROC AUC and the like share one axis with accuracy; log loss does not fit on it
_SKIP_AUTO = {"valid_loss", "valid_log_loss"}


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return atomic_write_bytes(path, buf.getvalue())


def _number(value: Any) -> float:
    """A float for plotting; None and non-numbers become NaN (a gap in the line)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return math.nan
    return float(value)


def _style(ax: Any) -> None:
    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)


def plot_learning_curves(
    history: Sequence[dict[str, Any]],
    path: str | os.PathLike[str],
    *,
    metrics: Sequence[str] | None = None,
) -> Path:
    """Plot train/validation loss (left) and validation metrics (right) per epoch; save a PNG.

    Args:
        history: one dict per epoch, e.g. ``{"epoch": 1, "train_loss": .., "valid_loss": ..,
            "valid_accuracy": .., "lr": .., "best": True}``. The x axis is ``epoch``
            (or ``step``, or the row number). Rows with ``"best": True`` mark the best
            epoch; the last such row is used.
        path: where to write the PNG (dpi 120).
        metrics: validation metrics for the right panel, with or without the ``valid_``
            prefix; by default every numeric ``valid_*`` key except the losses.

    Returns:
        The path written.

    Raises:
        DataError: ``history`` is empty.
    """
    rows = list(history)
    if not rows:
        raise DataError("no training history to plot")
    xkey = "epoch" if all("epoch" in r for r in rows) else "step" if all("step" in r for r in rows) else None
    x = np.array([_number(r[xkey]) for r in rows] if xkey else np.arange(1, len(rows) + 1), dtype=float)
    xlabel = xkey or "epoch"

    if metrics is None:
        keys: list[str] = []
        for r in rows:
            for k, v in r.items():
                wanted = k.startswith("valid_") and k not in _SKIP_AUTO and k not in keys
                if wanted and not math.isnan(_number(v)):
                    keys.append(k)
    else:
        keys = [m if m.startswith("valid_") else f"valid_{m}" for m in metrics]
        keys = [k for k in keys if any(not math.isnan(_number(r.get(k))) for r in rows)]

    best_rows = [i for i, r in enumerate(rows) if r.get("best") is True]
    best = best_rows[-1] if best_rows else None

    fig = Figure(figsize=(11, 4.2) if keys else (6, 4.2))
    axes = fig.subplots(1, 2 if keys else 1, squeeze=False)[0]

    ax = axes[0]
    losses = (("train_loss", "train loss", _TRAIN), ("valid_loss", "validation loss", _VALID))
    for key, label, color in losses:
        y = np.array([_number(r.get(key)) for r in rows])
        if not np.all(np.isnan(y)):
            ax.plot(x, y, marker="o", markersize=4, linewidth=1.8, color=color, label=label)
    ax.set_title("Loss")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")

    if keys:
        mx = axes[1]
        for i, key in enumerate(keys):
            y = np.array([_number(r.get(key)) for r in rows])
            color = _METRIC_COLORS[i % len(_METRIC_COLORS)]
            label = key.removeprefix("valid_").replace("_", " ")
            mx.plot(x, y, marker="o", markersize=4, linewidth=1.8, color=color, label=label)
        mx.set_title("Validation metrics")
        mx.set_xlabel(xlabel)
        mx.set_ylabel("score")

    for a in axes:
        if best is not None:
            a.axvline(x[best], color=_BEST, linestyle="--", linewidth=1.2, label=f"best {xlabel} ({x[best]:g})")
        if len(x) <= 20 and np.all(np.isfinite(x)) and np.all(x == np.round(x)):
            a.set_xticks(x)
        _style(a)
        if a.get_legend_handles_labels()[0]:
            a.legend(frameon=False, fontsize=9)
    fig.suptitle("Learning curves", fontweight="bold")
    return _save(fig, path)


def plot_confusion_matrix(
    cm: Sequence[Sequence[int]] | np.ndarray,
    labels: Sequence[str],
    path: str | os.PathLike[str],
    *,
    normalize: bool = True,
) -> Path:
    """Draw a confusion matrix (rows = true class, columns = predicted) as an annotated heat map.

    With ``normalize`` each row is divided by its total, so cells read as recall
    shares; the raw counts are printed under the shares. Returns the path written.

    Raises:
        DataError: ``cm`` is not square or does not match ``labels``.
    """
    counts = np.asarray(cm, dtype=float)
    k = len(labels)
    if counts.ndim != 2 or counts.shape != (k, k):
        raise DataError(f"confusion matrix of shape {counts.shape} does not match {k} labels")
    if normalize:
        totals = counts.sum(axis=1, keepdims=True)
        values = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    else:
        values = counts

    side = min(16.0, max(4.5, 0.65 * k + 2.5))
    fig = Figure(figsize=(side + 1.0, side))
    ax = fig.subplots()
    vmax = 1.0 if normalize else max(1.0, float(values.max()))
    im = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("share of true class" if normalize else "count")

    names = [str(label) for label in labels]
    short = [n if len(n) <= 18 else n[:17] + "…" for n in names]
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    font = 10 if k <= 10 else 8 if k <= 20 else 6
    ax.set_xticklabels(
        short,
        rotation=45 if k > 3 or max(map(len, short)) > 6 else 0,
        ha="right" if k > 3 or max(map(len, short)) > 6 else "center",
        fontsize=font,
    )
    ax.set_yticklabels(short, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = int(counts.sum())
    ax.set_title(f"Confusion matrix ({'rows normalized, ' if normalize else ''}n={total})")

    if k <= 30:  # past that, numbers become unreadable; colours still tell the story
        for i in range(k):
            for j in range(k):
                text = f"{values[i, j]:.2f}\n({int(counts[i, j])})" if normalize else f"{int(counts[i, j])}"
                color = "white" if values[i, j] > 0.55 * vmax else "#222222"
                ax.text(j, i, text, ha="center", va="center", color=color, fontsize=font - 1)
    return _save(fig, path)


def plot_residuals(
    y_true: Sequence[float] | np.ndarray,
    y_pred: Sequence[float] | np.ndarray,
    path: str | os.PathLike[str],
) -> Path:
    """Regression diagnostics: predicted vs true (with the identity line) and residuals vs predicted.

    Residuals are ``true - predicted``. Returns the path written.

    Raises:
        DataError: the arrays are empty or differ in length.
    """
    t = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(y_pred, dtype=float).ravel()
    if len(t) != len(p) or len(t) == 0:
        raise DataError(f"cannot plot residuals of {len(t)} true values and {len(p)} predictions")
    ok = np.isfinite(t) & np.isfinite(p)
    t, p = t[ok], p[ok]
    resid = t - p
    rmse = float(np.sqrt(np.mean(resid**2))) if len(resid) else math.nan
    mae = float(np.mean(np.abs(resid))) if len(resid) else math.nan

    fig = Figure(figsize=(11, 4.5))
    ax, rx = fig.subplots(1, 2)
    alpha = 0.7 if len(t) < 500 else 0.3
    ax.scatter(t, p, s=14, alpha=alpha, color=_TRAIN, edgecolors="none")
    if len(t):
        lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
        pad = 0.03 * (hi - lo or 1.0)
        ax.plot(
            [lo - pad, hi + pad],
            [lo - pad, hi + pad],
            color="#555555",
            linestyle="--",
            linewidth=1,
            label="perfect prediction",
        )
        ax.legend(frameon=False, fontsize=9)
    ax.set_xlabel("true value")
    ax.set_ylabel("predicted value")
    ax.set_title("Predicted vs true")

    rx.scatter(p, resid, s=14, alpha=alpha, color=_VALID, edgecolors="none")
    rx.axhline(0.0, color="#555555", linestyle="--", linewidth=1)
    rx.set_xlabel("predicted value")
    rx.set_ylabel("residual (true − predicted)")
    rx.set_title("Residuals")
    for a in (ax, rx):
        _style(a)
    fig.suptitle(f"Regression diagnostics (n={len(t)}, RMSE={rmse:.4g}, MAE={mae:.4g})", fontweight="bold")
    return _save(fig, path)


def _at_k(metrics: Any, name: str) -> dict[int, float]:
    """``{k: value}`` for every ``"<name>@<k>"`` key of a metrics dict (values may be NaN)."""
    found: dict[int, float] = {}
    if not isinstance(metrics, dict):
        return found
    for key, value in metrics.items():
        base, sep, k = str(key).partition("@")
        if sep and base == name and k.isdigit():
            found[int(k)] = _number(value)
    return found


def plot_ranking_at_k(
    models: dict[str, dict[str, Any]],
    path: str | os.PathLike[str],
    metrics: Sequence[str] = ("hr", "ndcg"),
) -> Path:
    """Plot ranking metrics against the cut-off k: one panel per metric, one line per model; save a PNG.

    Args:
        models: model name -> an evaluation dict, either ``{"overall": {"hr@10": .., ..}, ..}``
            (as from :func:`tunesmith.recsys.metrics.evaluate_ranking`) or the flat
            ``{"hr@10": .., ..}`` itself. Missing, None and NaN values leave gaps.
        path: where to write the PNG (dpi 120).
        metrics: metric names without the ``@k`` suffix, e.g. ``("hr", "ndcg")``.

    Returns:
        The path written.

    Raises:
        DataError: ``models`` or ``metrics`` is empty.
    """
    names = list(metrics)
    if not models or not names:
        raise DataError("plot_ranking_at_k needs at least one model and one metric")
    flat = {str(m): (d.get("overall", d) if isinstance(d, dict) else {}) for m, d in models.items()}

    fig = Figure(figsize=(max(5.5, 4.8 * len(names)), 4.3))
    axes = np.atleast_1d(fig.subplots(1, len(names))).ravel()
    for ax, name in zip(axes, names, strict=True):
        for i, (model, values) in enumerate(flat.items()):
            points = _at_k(values, name)
            ks = sorted(points)
            ys = [points[k] for k in ks]
            if not ks or all(math.isnan(y) for y in ys):
                continue
            ax.plot(ks, ys, marker="o", linewidth=1.6, color=_METRIC_COLORS[i % len(_METRIC_COLORS)], label=model)
        all_ks = sorted({k for values in flat.values() for k in _at_k(values, name)})
        if all_ks:
            ax.set_xticks(all_ks)
        else:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes, color="#777777")
        ax.set_xlabel("k (list length)")
        ax.set_ylabel(f"{name}@k")
        ax.set_title(f"{name.upper()}@k")
        _style(ax)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(frameon=False, fontsize=9)
    fig.suptitle("Ranking quality by cut-off", fontweight="bold")
    return _save(fig, path)


def plot_metric_by_group(
    models: dict[str, dict[str, Any]],
    path: str | os.PathLike[str],
    metric: str = "ndcg@10",
    *,
    xlabel: str = "history length (distinct items)",
    title: str | None = None,
) -> Path:
    """Draw one metric per user group (e.g. history length) as grouped bars, one bar per model; save a PNG.

    Args:
        models: model name -> an evaluation dict holding ``"by_history_length"``:
            ``{group label: {metric: .., "n_users": ..}}`` (or that group mapping itself).
            Groups with no users (``n_users`` 0 or missing in every model) are skipped;
            a None or NaN value draws no bar.
        path: where to write the PNG (dpi 120).
        metric: the metric key to plot, e.g. ``"ndcg@10"``.
        xlabel: what the groups are.
        title: the figure title (default: ``"<metric> by history length"``).

    Returns:
        The path written.

    Raises:
        DataError: ``models`` is empty.
    """
    if not models:
        raise DataError("plot_metric_by_group needs at least one model")
    groups_by_model: dict[str, dict[str, Any]] = {}
    for model, data in models.items():
        inner = data.get("by_history_length", data) if isinstance(data, dict) else {}
        groups_by_model[str(model)] = inner if isinstance(inner, dict) else {}

    labels: list[str] = []
    users: dict[str, int] = {}
    for inner in groups_by_model.values():
        for label, values in inner.items():
            n = _number(values.get("n_users") if isinstance(values, dict) else None)
            count = 0 if math.isnan(n) else int(n)
            if str(label) not in labels:
                labels.append(str(label))
            users[str(label)] = max(users.get(str(label), 0), count)
    labels = [label for label in labels if users[label] > 0]

    fig = Figure(figsize=(max(5.5, 1.6 * max(1, len(labels)) + 2.5), 4.5))
    ax = fig.subplots()
    n_models = len(groups_by_model)
    width = 0.8 / n_models
    x = np.arange(len(labels))
    for i, (model, inner) in enumerate(groups_by_model.items()):
        ys = [
            _number(inner.get(label, {}).get(metric) if isinstance(inner.get(label), dict) else None)
            for label in labels
        ]
        if all(math.isnan(y) for y in ys):
            continue  # no bar and no legend entry for a model without values
        heights = [0.0 if math.isnan(y) else y for y in ys]
        offset = (i - (n_models - 1) / 2) * width
        bars = ax.bar(x + offset, heights, width, color=_METRIC_COLORS[i % len(_METRIC_COLORS)], label=model)
        for bar, y in zip(bars, ys, strict=True):
            if math.isnan(y):
                bar.set_visible(False)
            else:
                ax.annotate(
                    f"{y:.3f}",
                    (bar.get_x() + bar.get_width() / 2, y),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax.set_xticks(x)
    ax.set_xticklabels([f"{label}\n(n={users[label]})" for label in labels])
    if not labels:
        ax.text(0.5, 0.5, "no users in any group", ha="center", va="center", transform=ax.transAxes, color="#777777")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} by history length")
    ax.set_ylim(bottom=0.0)
    _style(ax)
    ax.grid(False, axis="x")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(frameon=False, fontsize=9)
    return _save(fig, path)


def plot_per_user_comparison(
    shared: Sequence[float] | np.ndarray,
    personal: Sequence[float] | np.ndarray,
    path: str | os.PathLike[str],
    *,
    metric: str = "ROC AUC",
    sizes: Sequence[float] | np.ndarray | None = None,
) -> Path:
    """One point per user: the shared model's score (x) against the personalised one (y); save a PNG.

    Points above the diagonal are users the personalisation helped. ``sizes`` (e.g. each
    user's training rows) scales the points. Pairs with a NaN are left out.

    Raises:
        DataError: ``shared`` and ``personal`` differ in length.
    """
    x = np.asarray(shared, dtype=float)
    y = np.asarray(personal, dtype=float)
    if x.shape != y.shape:
        raise DataError(f"plot_per_user_comparison needs one personal score per shared score: {len(x)} vs {len(y)}")
    keep = ~(np.isnan(x) | np.isnan(y))
    s = (
        np.full(len(x), 12.0)
        if sizes is None
        else 4.0 + 40.0 * np.sqrt(np.asarray(sizes, dtype=float) / max(1.0, float(np.nanmax(sizes))))
    )
    fig = Figure(figsize=(5.5, 5.0))
    ax = fig.subplots()
    better = keep & (y > x)
    worse = keep & (y < x)
    same = keep & (y == x)
    for mask, colour, label in ((better, _BEST, "helped"), (worse, _VALID, "hurt"), (same, "#999999", "unchanged")):
        if mask.any():
            ax.scatter(x[mask], y[mask], s=s[mask], alpha=0.5, color=colour, label=f"{label} ({int(mask.sum())})")
    lo = float(min(np.nanmin(x[keep]), np.nanmin(y[keep]))) if keep.any() else 0.0
    hi = float(max(np.nanmax(x[keep]), np.nanmax(y[keep]))) if keep.any() else 1.0
    ax.plot([lo, hi], [lo, hi], color="#555555", linewidth=0.8, linestyle="--")
    mean_x = float(np.mean(x[keep])) if keep.any() else math.nan
    mean_y = float(np.mean(y[keep])) if keep.any() else math.nan
    ax.set_xlabel(f"shared model {metric}")
    ax.set_ylabel(f"personalised {metric}")
    ax.set_title(f"per-user {metric}: mean {mean_x:.3f} shared, {mean_y:.3f} personalised", fontsize=10)
    _style(ax)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(frameon=False, fontsize=9, loc="lower right")
    return _save(fig, path)
