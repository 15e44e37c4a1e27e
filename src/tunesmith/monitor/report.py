"""Render a drift-monitoring result as ``report.json``, a self-contained ``report.html`` and PNG plots.

The HTML page needs nothing but a browser: plots are embedded as base64 PNG data URIs,
the CSS is inline and there is no JavaScript and no external URL, so the page can be
mailed or attached to a ticket as one file. Every string taken from the data (column
names, example rows, messages) is HTML-escaped, because column names and values come
from files the user does not control.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tunesmith.errors import ArtifactError
from tunesmith.runs.artifacts import atomic_write_bytes, atomic_write_text, json_safe

__all__ = ["MAX_PLOTS", "slugify", "write_report"]

MAX_PLOTS = 60
MAX_EXAMPLE_ROWS = 5
MAX_CELL_CHARS = 200
MAX_TICKS = 12
FIG_SIZE = (7.0, 2.6)
DPI = 90

_OK, _DRIFT, _ALERT = "#2e7d32", "#f0a202", "#d62728"
_LINE, _REALIZED, _REF = "#1f77b4", "#6a3d9a", "#555555"
_BADGE = {"ok": _OK, "drift": _DRIFT, "alert": _ALERT}
_FAMILIES = ("input", "representation", "output")
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
h3{font-size:1em;margin:1em 0 .2em}.badge{color:#fff;border-radius:4px;padding:.1em .5em;font-size:.9em}
table{border-collapse:collapse;font-size:.85em;margin:.4em 0}td,th{border:1px solid #ddd;padding:.2em .45em;
text-align:left;vertical-align:top}th{background:#f4f4f4}.small{font-size:.8em}.muted{color:#777}
td.alert{background:#fbe3e3}td.drift{background:#fff3d6}img{max-width:100%}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.8em}
"""


def slugify(name: str) -> str:
    """A file-name-safe form of ``name``: lower case, only ``[a-z0-9_.-]``, never empty or hidden."""
    slug = re.sub(r"[^a-z0-9_.-]+", "_", str(name).lower()).strip("._")
    return slug[:100] or "signal"


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any) -> float | None:
    """A finite float, or None for missing, boolean or non-numeric values."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _fmt(value: Any) -> str:
    number = _num(value)
    if number is None:
        return "—" if value is None else _esc(value)
    return f"{number:.4g}"


def _truncate(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= MAX_CELL_CHARS else text[: MAX_CELL_CHARS - 1] + "…"


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else []


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


# --- plots -----------------------------------------------------------------------------------


def _cell(window: Mapping[str, Any], signal: str) -> dict[str, Any]:
    return _dict(_dict(window.get("values")).get(signal))


def _series(windows: Sequence[Mapping[str, Any]], signal: str, key: str = "value") -> list[float | None]:
    return [_num(_cell(w, signal).get(key)) for w in windows]


def _score(signal: Mapping[str, Any], windows: Sequence[Mapping[str, Any]]) -> float:
    """How far a signal went past its threshold at worst: max value / threshold (threshold / value below)."""
    values = [v for v in _series(windows, str(signal.get("name"))) if v is not None]
    if not values:
        return -math.inf
    threshold = _num(signal.get("threshold"))
    if threshold is None or threshold <= 0:
        return max(values)
    if signal.get("direction") == "below":
        return max(threshold / v if v > 0 else math.inf for v in values)
    return max(values) / threshold


def _new_axes() -> tuple[Any, Any]:
    # A bare Figure on the Agg canvas, never pyplot: no display needed, the user's
    # interactive backend and pyplot's figure registry are left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIG_SIZE)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    return fig, ax


def _png(fig: Any, ax: Any, labels: Sequence[str], ylabel: str) -> bytes:
    step = max(1, math.ceil(len(labels) / MAX_TICKS))
    ticks = list(range(0, len(labels), step))
    ax.set_xticks(ticks)
    ax.set_xticklabels([labels[i] for i in ticks], fontsize=7, rotation=20 if len(ticks) > 6 else 0, ha="right")
    ax.tick_params(axis="y", labelsize=7)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_xlim(-0.5, max(len(labels) - 0.5, 0.5))
    if ax.get_legend_handles_labels()[0]:
        # outside the axes, so it never hides a point
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _flag_markers(ax: Any, windows: Sequence[Mapping[str, Any]], signal: str, ys: Sequence[float | None]) -> None:
    """Amber markers on drifted windows, red on alert windows; windows without a value are skipped."""
    for flag, colour, label in (("drift", _DRIFT, "drift"), ("alert", _ALERT, "alert")):
        xs = [
            i
            for i, w in enumerate(windows)
            if ys[i] is not None
            and _cell(w, signal).get(flag)
            and (flag == "alert" or not _cell(w, signal).get("alert"))
        ]
        if xs:
            ax.scatter(xs, [ys[i] for i in xs], color=colour, s=28, zorder=5, label=label)


def _line(ax: Any, ys: Sequence[float | None], **kwargs: Any) -> None:
    pts = [(i, y) for i, y in enumerate(ys) if y is not None]
    if pts:
        # dense series get smaller markers so the line stays readable
        style = {"marker": "o", "markersize": 3 if len(ys) <= 60 else 1.5, "linewidth": 1.2, **kwargs}
        ax.plot([p[0] for p in pts], [p[1] for p in pts], **style)


def _plot_drift(signal: Mapping[str, Any], windows: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> bytes:
    name = str(signal.get("name"))
    fig, ax = _new_axes()
    band = _list(signal.get("band"))
    if len(band) == 2 and _num(band[0]) is not None and _num(band[1]) is not None:
        ax.axhspan(_num(band[0]), _num(band[1]), color=_REF, alpha=0.12, label="reference band")
    ys = _series(windows, name)
    _line(ax, ys, color=_LINE)
    threshold = _num(signal.get("threshold"))
    if threshold is not None:
        ax.axhline(threshold, color=_ALERT, linestyle="--", linewidth=1, label="threshold")
    _flag_markers(ax, windows, name, ys)
    return _png(fig, ax, labels, str(signal.get("effect_name") or "value"))


def _plot_performance(
    signal: Mapping[str, Any],
    realized: Sequence[Mapping[str, Any]],
    windows: Sequence[Mapping[str, Any]],
    labels: Sequence[str],
    reference: Mapping[str, Any],
) -> bytes:
    name = str(signal.get("name"))
    fig, ax = _new_axes()
    ys = _series(windows, name)
    lows, highs = _series(windows, name, "lower"), _series(windows, name, "upper")
    span = [i for i in range(len(windows)) if lows[i] is not None and highs[i] is not None]
    if span:
        ax.fill_between(span, [lows[i] for i in span], [highs[i] for i in span], color=_LINE, alpha=0.18, lw=0)
    label = "estimated" if signal.get("test") in ("estimate", "cbpe") else "realized"
    _line(ax, ys, color=_LINE if label == "estimated" else _REALIZED, label=label)
    for other in realized:
        _line(ax, _series(windows, str(other.get("name"))), color=_REALIZED, label="realized", marker="s")
    ref_value = _num(reference.get("value"))
    if ref_value is not None:
        ax.axhline(ref_value, color=_REF, linestyle="--", linewidth=1, label="reference")
    below = signal.get("direction", "below") == "below"
    threshold = _num(signal.get("threshold"))
    if threshold is None:
        threshold = _num(reference.get("lower_threshold" if below else "upper_threshold"))
    if threshold is not None:
        where = "lower" if below else "upper"
        ax.axhline(threshold, color=_ALERT, linestyle="--", linewidth=1, label=f"{where} threshold")
    for sig in [signal, *realized]:
        sname = str(sig.get("name"))
        series = _series(windows, sname)
        xs = [i for i, w in enumerate(windows) if series[i] is not None and _cell(w, sname).get("alert")]
        if xs:
            ax.scatter(xs, [series[i] for i in xs], color=_ALERT, s=30, zorder=5)
    metric = reference.get("metric") or signal.get("effect_name") or "performance"
    return _png(fig, ax, labels, str(metric))


# --- HTML ------------------------------------------------------------------------------------


def _kv_table(rows: Mapping[str, Any]) -> str:
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in rows.items())
    return f"<table>{body}</table>"


def _summary(result: Mapping[str, Any]) -> str:
    model, ref, cur = _dict(result.get("model")), _dict(result.get("reference")), _dict(result.get("current"))
    perf = _dict(ref.get("performance"))
    ref_rows = {"rows": ref.get("rows"), "source": ref.get("source")}
    if perf:
        ref_rows[str(perf.get("metric") or "metric")] = perf.get("value")
        for side in ("lower", "upper"):
            if perf.get(f"{side}_threshold") is not None:
                ref_rows[f"{side} threshold"] = perf.get(f"{side}_threshold")
    cur_rows = {k: cur.get(k) for k in ("rows", "source", "windowing", "window")}
    cells = [("Model", _kv_table(model)), ("Reference", _kv_table(ref_rows)), ("Current", _kv_table(cur_rows))]
    inner = "".join(f"<td><b>{title}</b>{table}</td>" for title, table in cells)
    return f'<table class="small"><tr>{inner}</tr></table>'


def _figure_html(slug_name: str, signal: Mapping[str, Any], png: bytes, windows: Sequence[Any]) -> str:
    name = str(signal.get("name"))
    drifted = sum(1 for w in windows if _cell(w, name).get("drift"))
    alerted = sum(1 for w in windows if _cell(w, name).get("alert"))
    info = (
        f"test {_esc(signal.get('test'))} · {_esc(signal.get('effect_name'))} · threshold "
        f"{_fmt(signal.get('threshold'))} ({_esc(signal.get('direction') or 'above')}) · "
        f"drift in {drifted} of {len(windows)} windows, alert in {alerted}"
    )
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<h3 id="{_esc(slug_name)}">{_esc(name)}</h3><div class="small muted">{info}</div>'
        f'<img src="data:image/png;base64,{data}" alt="{_esc(name)}">'
    )


def _examples(rows: Any) -> str:
    rows = [r for r in _list(rows)[:MAX_EXAMPLE_ROWS] if isinstance(r, Mapping)]
    if not rows:
        return ""
    cols: list[str] = []
    for row in rows:
        cols += [str(k) for k in row if str(k) not in cols]
    head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_esc(_truncate(row.get(c)))}</td>" for c in cols) + "</tr>" for row in rows)
    return f'<table class="small"><tr>{head}</tr>{body}</table>'


def _top_changes(items: Sequence[Any]) -> str:
    rows = [
        f"<tr><td>{_esc(c.get('signal'))}</td><td>{_esc(c.get('column'))}</td><td>{_fmt(c.get('effect'))}</td>"
        f"<td>{_fmt(c.get('windows_drifted'))}</td><td>{_esc(c.get('summary'))}</td>"
        f"<td>{_examples(c.get('examples'))}</td></tr>"
        for c in items
        if isinstance(c, Mapping)
    ]
    if not rows:
        return "<p>No signal changed enough to list.</p>"
    titles = ("signal", "column", "effect", "windows drifted", "summary", "examples")
    head = "<tr>" + "".join(f"<th>{t}</th>" for t in titles) + "</tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _all_figures(signals: Sequence[Mapping[str, Any]], windows: Sequence[Mapping[str, Any]]) -> str:
    head = "<tr><th>signal</th>" + "".join(f"<th>{_esc(w.get('label'))}</th>" for w in windows) + "</tr>"
    rows = []
    for sig in signals:
        name = str(sig.get("name"))
        cells = []
        for w in windows:
            cell = _cell(w, name)
            cls = ' class="alert"' if cell.get("alert") else ' class="drift"' if cell.get("drift") else ""
            note = f"<br><i>{_esc(cell.get('note'))}</i>" if cell.get("note") else ""
            cells.append(f"<td{cls}>{_fmt(cell.get('value'))}<br>p={_fmt(cell.get('p_adjusted'))}{note}</td>")
        rows.append(f"<tr><th>{_esc(name)}</th>{''.join(cells)}</tr>")
    return (
        "<details><summary>Every figure: value and adjusted p-value per window and signal</summary>"
        f'<table class="small">{head}{"".join(rows)}</table></details>'
    )


def _page(result: Mapping[str, Any], figures: Mapping[str, str], skipped: Sequence[str]) -> str:
    status = str(result.get("status") or "unknown")
    signals = [s for s in _list(result.get("signals")) if isinstance(s, Mapping)]
    windows = [w for w in _list(result.get("windows")) if isinstance(w, Mapping)]
    colour = _BADGE.get(status, "#777")
    parts = [
        f'<h1>Drift monitoring report <span class="badge" style="background:{colour}">{_esc(status)}</span></h1>',
        f'<p class="small muted">exit code {_fmt(result.get("exit_code"))} · created {_esc(result.get("created"))}'
        f" · {len(windows)} windows · {len(signals)} signals</p>",
        _summary(result),
        "<h2>Alerts</h2>",
    ]
    alerts = [a for a in _list(result.get("alerts")) if isinstance(a, Mapping)]
    items = "".join(
        f"<li><b>{_esc(a.get('label'))}</b> · {_esc(a.get('signal'))}: {_esc(a.get('message'))}</li>" for a in alerts
    )
    parts.append(f"<ul>{items}</ul>" if alerts else "<p>No alerts.</p>")
    perf = [s for s in signals if s.get("family") == "performance" and str(s.get("name")) in figures]
    if perf:
        parts.append("<h2>Performance</h2>")
        parts += [figures[str(s.get("name"))] for s in perf]
    families = [*_FAMILIES, *sorted({str(s.get("family")) for s in signals} - {*_FAMILIES, "performance"})]
    for family in families:
        members = [s for s in signals if str(s.get("family")) == family and str(s.get("name")) in figures]
        if members:
            parts.append(f"<h2>{_esc(family.capitalize())} drift</h2>")
            parts += [figures[str(s.get("name"))] for s in members]
    if skipped:
        parts.append(
            f'<p class="small">{len(skipped)} more signals are not plotted (only the {MAX_PLOTS} furthest past '
            f"their thresholds are); their figures are in the table below: {_esc(', '.join(skipped))}</p>"
        )
    parts += ["<h2>What changed most</h2>", _top_changes(_list(result.get("top_changes")))]
    parts += ["<h2>All figures</h2>", _all_figures(signals, windows)]
    warnings = _list(result.get("warnings"))
    if warnings:
        parts.append("<h2>Warnings</h2><ul>" + "".join(f"<li>{_esc(w)}</li>" for w in warnings) + "</ul>")
    settings = json.dumps(result.get("settings") or {}, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    parts.append(f"<h2>Settings</h2><pre>{_esc(settings)}</pre>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Drift monitoring report: {_esc(status)}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(parts)}</body></html>\n"
    )


# --- entry point -----------------------------------------------------------------------------


def _unique_slugs(names: Sequence[str]) -> dict[str, str]:
    """Distinct file names even when two signal names slugify alike (``a:b`` and ``a b``)."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for name in names:
        base = slug = slugify(name)
        n = 2
        while slug in used:
            slug, n = f"{base}-{n}", n + 1
        used.add(slug)
        out[name] = slug
    return out


def write_report(result: Mapping[str, Any], folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``report.json``, ``report.html`` and ``plots/<signal>.png`` for a monitoring result.

    Args:
        result: the monitoring result (a JSON-ready dict with ``status``, ``signals``,
            ``windows``, ``top_changes``, ``alerts`` ...). Optional keys may be missing.
            NaN and infinite numbers are written as ``null``.
        folder: the output folder; created if missing. Files from an earlier report in
            it are replaced, and PNGs in ``plots/`` that this report does not draw are removed.

    Returns:
        ``{"json": report.json, "html": report.html, "plots": the plots folder}``.

    Raises:
        ArtifactError: ``result`` is not a monitoring result, or ``folder`` is a file.

    With more than :data:`MAX_PLOTS` drift signals only those that went furthest past
    their thresholds are plotted; every signal's figures are still in the HTML table.
    Each file is written to a temporary name and renamed into place.
    """
    if not isinstance(result, Mapping):
        raise ArtifactError(f"a monitoring result must be a dict, got {type(result).__name__}")
    if result.get("format", "tunesmith-monitor") != "tunesmith-monitor":
        raise ArtifactError(
            f"this is not a monitoring result (format {result.get('format')!r})",
            hint="Pass the dict that the monitor returns, or its report.json loaded with json.load.",
        )
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise ArtifactError("the report folder is a file", path=out, hint="Choose a folder name for the report.")
    safe: dict[str, Any] = json_safe(dict(result))
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)

    signals = [s for s in _list(safe.get("signals")) if isinstance(s, Mapping) and s.get("name") is not None]
    windows = [w for w in _list(safe.get("windows")) if isinstance(w, Mapping)]
    labels = [str(w.get("label", w.get("index", i))) for i, w in enumerate(windows)]
    slugs = _unique_slugs([str(s["name"]) for s in signals])
    perf = [s for s in signals if s.get("family") == "performance"]
    drift = [s for s in signals if s.get("family") != "performance"]
    if len(drift) > MAX_PLOTS:
        keep = {id(s) for s in sorted(drift, key=lambda s: _score(s, windows), reverse=True)[:MAX_PLOTS]}
        skipped = [str(s["name"]) for s in drift if id(s) not in keep]
        drift = [s for s in drift if id(s) in keep]
    else:
        skipped = []

    # A realized-accuracy signal is drawn on the estimated-accuracy plot of the same metric.
    estimated = [s for s in perf if s.get("test") != "realized"]
    overlays: dict[str, list[Mapping[str, Any]]] = {str(s["name"]): [] for s in estimated}
    alone: list[Mapping[str, Any]] = []
    for sig in (s for s in perf if s.get("test") == "realized"):
        host = next((e for e in estimated if e.get("effect_name") == sig.get("effect_name")), None)
        host = host or (estimated[0] if estimated else None)
        if host is None:
            alone.append(sig)
        else:
            overlays[str(host["name"])].append(sig)

    reference = _dict(_dict(safe.get("reference")).get("performance"))
    figures: dict[str, str] = {}
    written: set[str] = set()
    jobs = [(s, True) for s in [*estimated, *alone]] + [(s, False) for s in drift]
    for sig, is_perf in jobs:
        name = str(sig["name"])
        if is_perf:
            png = _plot_performance(sig, overlays.get(name, []), windows, labels, reference)
        else:
            png = _plot_drift(sig, windows, labels)
        atomic_write_bytes(plots_dir / f"{slugs[name]}.png", png)
        written.add(f"{slugs[name]}.png")
        figures[name] = _figure_html(slugs[name], sig, png, windows)
    for stale in plots_dir.glob("*.png"):
        if stale.name not in written:
            stale.unlink(missing_ok=True)

    json_path = atomic_write_text(
        out / "report.json", json.dumps(safe, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    )
    html_path = atomic_write_text(out / "report.html", _page(safe, figures, skipped))
    return {"json": json_path, "html": html_path, "plots": plots_dir}
