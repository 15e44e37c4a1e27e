"""The result of an inspection: :class:`Finding` and :class:`InspectionReport`, and how the
report is written (Markdown, JSON and PNG plots).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from matplotlib.figure import Figure

from tunesmith.runs.artifacts import atomic_write_json, atomic_write_text, json_safe
from tunesmith.runs.plots import _save

if TYPE_CHECKING:
    from tunesmith.data.label_issues import LabelIssues
    from tunesmith.data.schema import Schema

Severity = Literal["error", "warning", "info"]
SEVERITIES: tuple[str, ...] = ("error", "warning", "info")

MAX_EXAMPLES = 20


@dataclass
class Finding:
    """One problem found in the data.

    ``rows`` holds up to 20 example rows (1-based data rows); ``count`` is how many rows
    (or pairs, or columns, as ``title`` says) are affected in all.
    """

    check: str
    severity: Severity
    title: str
    count: int
    action: str
    rows: list[int] = field(default_factory=list)
    column: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "check": self.check,
            "severity": self.severity,
            "title": self.title,
            "count": self.count,
            "column": self.column,
            "rows": self.rows[:MAX_EXAMPLES],
            "action": self.action,
            "details": self.details,
        }


@dataclass
class InspectionReport:
    """The profile of a data set and everything found wrong with it."""

    target: str
    file: str | None
    n_rows: int
    schema: Schema | None
    columns: list[dict[str, Any]]
    findings: list[Finding]
    class_counts: dict[str, int] = field(default_factory=dict)
    text_lengths: dict[str, Any] = field(default_factory=dict)
    label_issues: LabelIssues | None = None
    near_duplicate_pairs: list[tuple[int, int, float]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    examples: dict[int, str] = field(default_factory=dict)
    _token_counts: np.ndarray | None = None

    @property
    def imbalance_ratio(self) -> float | None:
        """Rows of the largest class over rows of the smallest (None for regression)."""
        counts = [c for c in self.class_counts.values() if c > 0]
        return max(counts) / min(counts) if counts else None

    def by_severity(self, severity: str) -> list[Finding]:
        """Findings of one severity (``error``, ``warning`` or ``info``)."""
        return [f for f in self.findings if f.severity == severity]

    def finding(self, check: str) -> Finding | None:
        """The first finding of ``check``, or None when that check found nothing."""
        return next((f for f in self.findings if f.check == check), None)

    @property
    def has_errors(self) -> bool:
        """True when any finding is an error (e.g. test rows that also appear in train)."""
        return bool(self.by_severity("error"))

    def summary(self) -> str:
        """A few lines for the terminal: size, task, and one line per finding, worst first."""
        task = self.schema.task if self.schema else "?"
        lines = [f"{self.n_rows} rows, target {self.target!r} ({task})"]
        if self.class_counts:
            ratio = self.imbalance_ratio
            shown = ", ".join(f"{k}: {v}" for k, v in self.class_counts.items())
            lines.append(f"classes: {shown}" + (f" (imbalance ratio {ratio:.1f})" if ratio else ""))
        if not self.findings:
            lines.append("no problems found")
        for f in self.findings:
            lines.append(f"[{f.severity}] {f.title}: {f.action}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (``report.json``)."""
        return {
            "file": self.file,
            "target": self.target,
            "n_rows": self.n_rows,
            "schema": self.schema.to_dict() if self.schema else None,
            "columns": self.columns,
            "class_counts": self.class_counts,
            "imbalance_ratio": self.imbalance_ratio,
            "text_lengths": self.text_lengths,
            "findings": [f.to_dict() for f in self.findings],
            "counts_by_severity": {s: len(self.by_severity(s)) for s in SEVERITIES},
            "label_issues": self.label_issues.to_dict() if self.label_issues is not None else None,
            "near_duplicate_pairs": [
                {"row_a": a, "row_b": b, "similarity": round(s, 4)} for a, b, s in self.near_duplicate_pairs[:200]
            ],
            "timings": self.timings,
            "settings": self.settings,
        }

    def write(self, out_dir: str | Path) -> Path:
        """Write ``report.md``, ``report.json`` and the plots under ``out_dir``; returns ``report.md``."""
        return write_report(self, Path(out_dir))


def example_rows(rows: np.ndarray | Sequence[int]) -> list[int]:
    return [int(r) for r in list(rows)[:MAX_EXAMPLES]]


def percent(n: int, total: int) -> str:
    return f"{100.0 * n / total:.1f}%" if total else "0%"


_BAR = "#1f77b4"
_FLAG = "#d62728"
_ICON = {"error": "ERROR", "warning": "warning", "info": "info"}


def _style(ax: Any) -> None:
    ax.grid(True, axis="y", alpha=0.3, linewidth=0.6)
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)


def plot_class_balance(counts: dict[str, int], path: Path) -> Path:
    """Bar chart of rows per class, most frequent first (at most 40 classes shown)."""
    items = sorted(counts.items(), key=lambda kv: -kv[1])[:40]
    fig = Figure(figsize=(max(4.5, 0.35 * len(items) + 2.5), 3.6))
    ax = fig.subplots()
    names = [k if len(k) <= 16 else k[:15] + "…" for k, _ in items]
    ax.bar(range(len(items)), [v for _, v in items], color=_BAR)
    ax.set_xticks(range(len(items)))
    ax.set_xticklabels(names, rotation=45 if len(items) > 4 else 0, ha="right" if len(items) > 4 else "center")
    ax.set_ylabel("rows")
    ax.set_title("Class balance")
    _style(ax)
    return _save(fig, path)


def plot_text_lengths(tokens: np.ndarray, max_length: int, path: Path) -> Path:
    """Histogram of tokens per text, with the ``max_length`` cut-off marked."""
    fig = Figure(figsize=(6.0, 3.6))
    ax = fig.subplots()
    top = max(int(np.percentile(tokens, 99.5)) + 1, max_length + 1) if len(tokens) else max_length + 1
    ax.hist(np.clip(tokens, 0, top), bins=min(60, max(10, top // 4)), color=_BAR)
    ax.axvline(max_length, color=_FLAG, linestyle="--", linewidth=1.2, label=f"max_length = {max_length}")
    ax.set_xlabel("tokens per text")
    ax.set_ylabel("texts")
    ax.set_title("Text length")
    ax.legend(frameon=False)
    _style(ax)
    return _save(fig, path)


def plot_missing(columns: list[dict[str, Any]], path: Path) -> Path:
    """Horizontal bars of the missing share of every column."""
    cols = columns[:50]
    fig = Figure(figsize=(6.0, max(2.2, 0.3 * len(cols) + 1.2)))
    ax = fig.subplots()
    shares = [100.0 * c["missing_fraction"] for c in cols]
    ax.barh(range(len(cols)), shares, color=[_FLAG if s > 20 else _BAR for s in shares])
    ax.set_yticks(range(len(cols)))
    ax.set_yticklabels([c["column"][:24] for c in cols])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("% missing")
    ax.set_title("Missing values per column")
    ax.grid(True, axis="x", alpha=0.3, linewidth=0.6)
    return _save(fig, path)


def plot_label_quality(quality: np.ndarray, flagged: np.ndarray, path: Path) -> Path:
    """Histogram of label quality (out-of-fold probability of the given label), flagged rows in red."""
    fig = Figure(figsize=(6.0, 3.6))
    ax = fig.subplots()
    bins = [i / 40 for i in range(41)]
    # Stacked, so a bin holding both kinds shows both rather than one hiding the other.
    ax.hist(
        [quality[~flagged], quality[flagged]],
        bins=bins,
        stacked=True,
        color=[_BAR, _FLAG],
        label=["kept", "flagged as likely error"],
    )
    ax.set_xlabel("label quality (out-of-fold probability of the given label)")
    ax.set_ylabel("rows")
    ax.set_title("Label quality")
    ax.legend(frameon=False)
    _style(ax)
    return _save(fig, path)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return [*out, ""]


def _excerpt(text: str | None, n: int = 120) -> str:
    if text is None:
        return ""
    return text if len(text) <= n else text[: n - 1] + "…"


def render_markdown(report: InspectionReport, images: dict[str, str]) -> str:
    """The Markdown report; ``images`` maps plot keys to file names relative to the report."""
    lines = [f"# Data inspection: {Path(report.file).name if report.file else 'data frame'}", ""]
    task = report.schema.task if report.schema else "?"
    n_err, n_warn, n_info = (len(report.by_severity(s)) for s in ("error", "warning", "info"))
    lines += [
        f"{report.n_rows} rows, target `{report.target}` ({task}). "
        f"Findings: {n_err} error(s), {n_warn} warning(s), {n_info} note(s).",
        "",
        "## Findings",
        "",
    ]
    if report.findings:
        lines += _table(
            ["severity", "check", "finding", "count", "example rows", "suggested action"],
            [
                [_ICON[f.severity], f.check, f.title, f.count, ", ".join(map(str, f.rows[:8])), f.action]
                for f in report.findings
            ],
        )
    else:
        lines += ["No problems found.", ""]

    lines += ["## Columns", ""]
    lines += _table(
        ["column", "role", "dtype", "missing", "unique", "most frequent (share)"],
        [
            [
                c["column"],
                c["role"],
                c["dtype"],
                f"{c['missing']} ({100 * c['missing_fraction']:.1f}%)",
                c["unique"],
                f"{_excerpt(c['top'], 40)} ({100 * c['top_fraction']:.1f}%)" if c["top"] is not None else "-",
            ]
            for c in report.columns
        ],
    )
    if "missing" in images:
        lines += [f"![missing values]({images['missing']})", ""]

    if report.class_counts:
        total = sum(report.class_counts.values())
        lines += ["## Class balance", ""]
        ratio = report.imbalance_ratio
        if ratio:
            lines += [f"Imbalance ratio (largest / smallest class): {ratio:.2f}", ""]
        lines += _table(
            ["label", "rows", "share"],
            [[k, v, f"{100 * v / max(1, total):.1f}%"] for k, v in report.class_counts.items()],
        )
        if "class_balance" in images:
            lines += [f"![class balance]({images['class_balance']})", ""]

    tl = report.text_lengths
    if tl.get("tokens"):
        lines += ["## Text length", ""]
        lines += _table(
            ["unit", "min", "median", "p90", "p99", "max"],
            [
                [unit, *(tl[unit].get(k) for k in ("min", "median", "p90", "p99", "max"))]
                for unit in ("characters", "tokens")
                if tl.get(unit)
            ],
        )
        if "text_lengths" in images:
            lines += [f"![text length]({images['text_lengths']})", ""]

    issues = report.label_issues
    if issues is not None:
        lines += [
            "## Likely label errors",
            "",
            f"{issues.n_issues} of {len(issues.table)} rows flagged ({issues.mode} mode, {issues.folds}-fold "
            f"out-of-fold probabilities, out-of-fold accuracy {issues.oof_accuracy:.3f}). "
            "Worst first; label quality is the out-of-fold probability of the given label.",
            "",
        ]
        lines += _table(
            ["row", "given", "suggested", "label quality", "text"],
            [
                [
                    int(r["row"]),
                    r["given_label"],
                    r["suggested_label"],
                    float(r["label_quality"]),
                    _excerpt(report.examples.get(int(r["row"]))),
                ]
                for r in issues.issues.head(25).to_dict("records")
            ],
        )
        if "label_quality" in images:
            lines += [f"![label quality]({images['label_quality']})", ""]

    if report.near_duplicate_pairs:
        lines += ["## Near-duplicate texts (most similar first)", ""]
        lines += _table(
            ["row", "row", "cosine", "text", "text"],
            [
                [a, b, s, _excerpt(report.examples.get(a), 60), _excerpt(report.examples.get(b), 60)]
                for a, b, s in report.near_duplicate_pairs[:10]
            ],
        )

    for f in report.findings:
        if f.check == "conflicting_labels":
            lines += ["## Conflicting labels (first groups)", ""]
            lines += _table(
                ["rows", "labels"],
                [[", ".join(map(str, g["rows"])), ", ".join(g["labels"])] for g in f.details.get("examples", [])[:10]],
            )

    lines += ["## Timings", ""]
    lines += _table(["step", "seconds"], [[k, v] for k, v in report.timings.items()])
    lines += ["Row numbers are 1-based data rows (the header is not counted).", ""]
    return "\n".join(lines)


def write_report(report: InspectionReport, out_dir: Path) -> Path:
    """Write plots, ``report.md`` and ``report.json`` into ``out_dir`` (created if needed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = out_dir / "plots"
    plots.mkdir(exist_ok=True)
    images: dict[str, str] = {}
    if report.columns:
        plot_missing(report.columns, plots / "missing.png")
        images["missing"] = "plots/missing.png"
    if report.class_counts:
        plot_class_balance(report.class_counts, plots / "class_balance.png")
        images["class_balance"] = "plots/class_balance.png"
    if report._token_counts is not None and len(report._token_counts):
        plot_text_lengths(
            report._token_counts, int(report.text_lengths.get("max_length", 128)), plots / "text_lengths.png"
        )
        images["text_lengths"] = "plots/text_lengths.png"
    if report.label_issues is not None:
        table = report.label_issues.table
        plot_label_quality(
            table["label_quality"].to_numpy(dtype=float),
            table["is_issue"].to_numpy(dtype=bool),
            plots / "label_quality.png",
        )
        images["label_quality"] = "plots/label_quality.png"
    data = report.to_dict()
    data["plots"] = images
    atomic_write_json(out_dir / "report.json", json_safe(data))
    return atomic_write_text(out_dir / "report.md", render_markdown(report, images))
