"""The drift report: JSON round trip, escaped self-contained HTML, one plot per signal."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from tunesmith.errors import ArtifactError
from tunesmith.monitor.report import MAX_PLOTS, slugify, write_report

EVIL = "<script>alert(1)</script>"
IMG = '<img src="data:image/png;base64,'


def _signal(name: str, family: str, column: str | None, test: str, threshold: float, **extra: Any) -> dict[str, Any]:
    direction = "below" if family == "performance" else "above"
    sig = {"name": name, "family": family, "column": column, "test": test, "effect_name": "wasserstein/std"}
    return {**sig, "threshold": threshold, "band": None, "direction": direction, **extra}


def _cell(value: float | None, *, drift: bool = False, alert: bool = False, **extra: Any) -> dict[str, Any]:
    cell = {"value": value, "p_value": 0.5, "p_adjusted": 0.9, "lower": None, "upper": None, "note": None}
    return {**cell, "drift": drift, "alert": alert, **extra}


def _result() -> dict[str, Any]:
    signals = [
        _signal("performance:accuracy", "performance", None, "cbpe", 0.8, effect_name="accuracy"),
        _signal("performance:accuracy:realized", "performance", None, "realized", 0.8, effect_name="accuracy"),
        _signal("input:age", "input", "age", "ks", 0.1, band=[0.0, 0.05]),
        _signal(f"input:{EVIL}", "input", EVIL, "chi2", 0.1),
        _signal("representation:embedding", "representation", None, "mmd", 0.05),
    ]
    windows = []
    for i in range(3):
        alert = i == 2
        values = {
            "performance:accuracy": _cell(0.9 - 0.1 * i, alert=alert, lower=0.85 - 0.1 * i, upper=0.95 - 0.1 * i),
            "performance:accuracy:realized": _cell(0.91 - 0.12 * i if i else None, alert=alert),
            "input:age": _cell([0.02, 0.08, math.nan][i], note="too few rows" if i == 2 else None),
            f"input:{EVIL}": _cell(0.05 * (i + 1), drift=i >= 1),
            "representation:embedding": _cell(0.01 * (i + 1)),
        }
        label = f"rows {1000 * i}-{1000 * i + 999}"
        windows.append(
            {"index": i, "label": label, "start": str(1000 * i), "end": str(1000 * i + 999), "rows": 1000}
            | {"values": values, "alert": alert, "drift": i >= 1, "reasons": ["accuracy below 0.8"] if alert else []}
        )
    return {
        "format": "tunesmith-monitor",
        "version": 1,
        "created": "2026-12-07T10:00:00+00:00",
        "status": "alert",
        "exit_code": 4,
        "model": {"path": "models/churn", "kind": "tabular", "model_version": "3", "task": "classification"},
        "reference": {
            "rows": 5000,
            "source": "ref.csv",
            "performance": {"metric": "accuracy", "value": 0.9, "lower_threshold": 0.8},
        },
        "current": {"rows": 3000, "source": "cur.csv", "windowing": "rows", "window": "1000 rows"},
        "settings": {"alpha": 0.05, "note": EVIL},
        "signals": signals,
        "windows": windows,
        "top_changes": [
            {
                "signal": f"input:{EVIL}",
                "column": EVIL,
                "effect": 0.15,
                "windows_drifted": 2,
                "summary": "share of 'b' rose from 10% to 40%",
                "examples": [{EVIL: "b", "age": i, "text": "x" * 500} for i in range(8)],
            }
        ],
        "alerts": [{"window": 2, "label": windows[2]["label"], "signal": "performance:accuracy", "message": EVIL}],
        "warnings": ["reference has only 5000 rows"],
    }


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def test_report_files_json_and_html(tmp_path: Path) -> None:
    result = _result()
    before = copy.deepcopy(result)
    paths = write_report(result, tmp_path / "report")
    assert result == before  # the input is left alone

    assert paths["json"] == tmp_path / "report" / "report.json" and paths["json"].is_file()
    assert paths["html"].is_file() and paths["plots"].is_dir()
    loaded = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert loaded == _nan_to_none(_result())
    assert loaded["windows"][2]["values"]["input:age"]["value"] is None
    assert "NaN" not in paths["json"].read_text(encoding="utf-8")

    # realized accuracy is drawn on the estimated-accuracy plot, so 4 figures for 5 signals
    pngs = sorted(p.name for p in paths["plots"].iterdir())
    assert pngs == sorted(
        [
            "performance_accuracy.png",
            "input_age.png",
            "input_script_alert_1_script.png",
            "representation_embedding.png",
        ]
    )
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths["plots"].iterdir())

    page = paths["html"].read_text(encoding="utf-8")
    assert page.count(IMG) == 4
    assert EVIL not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page
    assert "#d62728" in page and ">alert</span>" in page  # red status badge
    # performance comes before the drift plots, which are grouped by family
    assert page.index("<h2>Performance</h2>") < page.index("<h2>Input drift</h2>") < page.index("Representation drift")
    # example rows: capped at 5, long strings truncated
    changes = page[page.index("What changed most") : page.index("All figures")]
    assert changes.count("<td>b</td>") == 5
    assert "x" * 200 not in changes and "x" * 199 + "…" in changes
    assert "<details>" in page and "too few rows" in page


def test_many_signals_plot_only_the_worst(tmp_path: Path) -> None:
    result = _result()
    result["signals"] = [_signal(f"input:c{i}", "input", f"c{i}", "ks", 0.1) for i in range(70)]
    for w in result["windows"]:
        w["values"] = {f"input:c{i}": _cell(0.01 * i * (w["index"] + 1)) for i in range(70)}
    paths = write_report(result, tmp_path)
    page = paths["html"].read_text(encoding="utf-8")
    assert page.count(IMG) == MAX_PLOTS == 60
    names = {p.name for p in paths["plots"].glob("*.png")}
    assert len(names) == 60
    # the ten smallest effects are left out of the plots but still in the table
    assert "input_c9.png" not in names and "input_c10.png" in names and "input_c69.png" in names
    assert "10 more signals are not plotted" in page
    assert ">input:c0</th>" in page


def test_writing_twice_overwrites_cleanly(tmp_path: Path) -> None:
    write_report(_result(), tmp_path)
    smaller = _result()
    smaller["signals"] = [s for s in smaller["signals"] if s["name"] != "input:age"]
    smaller["status"], smaller["exit_code"] = "ok", 0
    paths = write_report(smaller, tmp_path)
    assert not (paths["plots"] / "input_age.png").exists()
    assert len(list(paths["plots"].iterdir())) == 3
    assert json.loads(paths["json"].read_text(encoding="utf-8"))["status"] == "ok"
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_missing_optional_parts_and_bad_input(tmp_path: Path) -> None:
    paths = write_report({"status": "ok", "signals": [], "windows": []}, tmp_path / "empty")
    page = paths["html"].read_text(encoding="utf-8")
    assert "No alerts." in page and IMG not in page
    with pytest.raises(ArtifactError, match="not a monitoring result"):
        write_report({"format": "something-else"}, tmp_path / "x")
    (tmp_path / "file").write_text("")
    with pytest.raises(ArtifactError, match="is a file"):
        write_report(_result(), tmp_path / "file")


@pytest.mark.parametrize(
    ("name", "slug"),
    [("input:Age", "input_age"), ("../../etc/passwd", "etc_passwd"), ("..", "signal"), ("a b/c.d", "a_b_c.d")],
)
def test_slugify(name: str, slug: str) -> None:
    assert slugify(name) == slug
    assert re.fullmatch(r"[a-z0-9_.-]+", slugify(name))
