"""Run records, plots and the report / model card."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml

from tunesmith.errors import ArtifactError, DataError
from tunesmith.runs import record as record_module
from tunesmith.runs.plots import plot_confusion_matrix, plot_learning_curves, plot_residuals
from tunesmith.runs.record import RunRecord, environment_info
from tunesmith.runs.report import render_report

PNG = b"\x89PNG\r\n\x1a\n"

HISTORY = [
    {
        "epoch": 1,
        "train_loss": 0.69,
        "valid_loss": 0.60,
        "valid_accuracy": 0.70,
        "valid_f1_macro": 0.68,
        "lr": 1e-4,
        "best": True,
    },
    {
        "epoch": 2,
        "train_loss": 0.40,
        "valid_loss": 0.45,
        "valid_accuracy": 0.82,
        "valid_f1_macro": 0.81,
        "lr": 5e-5,
        "best": True,
    },
    {
        "epoch": 3,
        "train_loss": 0.20,
        "valid_loss": 0.50,
        "valid_accuracy": 0.80,
        "valid_f1_macro": 0.79,
        "lr": 0.0,
    },
]


def _is_png(path):
    data = path.read_bytes()
    return data[:8] == PNG and len(data) > 1024


# --- RunRecord ---------------------------------------------------------------------------------


def test_run_record_writes_its_files(tmp_path):
    rec = RunRecord.create(tmp_path / "runs", "reviews v2/test")
    assert rec.path.parent == tmp_path / "runs"
    assert re.fullmatch(r"\d{8}-\d{6}-reviews-v2-test", rec.path.name)
    cfg = {"backbone": "minilm-l6", "lr": 5e-5, "epochs": 3, "lora_targets": None}
    rec.write_config(cfg)
    text = (rec.path / "config.yaml").read_text()
    assert yaml.safe_load(text) == cfg
    assert list(yaml.safe_load(text)) == list(cfg)  # keys keep their order
    rec.write_data({"file": "reviews.csv", "sha256": "ab" * 32, "rows": {"train": 8, "valid": 1, "test": 1}})
    assert json.loads((rec.path / "data.json").read_text())["rows"]["train"] == 8
    rec.write_environment(seed=7)
    env = json.loads((rec.path / "environment.json").read_text())
    assert env["seed"] == 7 and env["packages"]["torch"] and env["packages"]["numpy"]
    for i in range(4):
        rec.log_epoch({"epoch": i + 1, "train_loss": np.float32(1.0 / (i + 1)), "valid_roc_auc": float("nan")})
    lines = (rec.path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4
    assert json.loads(lines[0]) == {"epoch": 1, "train_loss": 1.0, "valid_roc_auc": None}
    assert [h["epoch"] for h in rec.history()] == [1, 2, 3, 4]
    rec.write_json("metrics.json", {"test": {"accuracy": 0.9}})
    rec.write_text("report.md", "# hi\n")
    assert (rec.path / "report.md").read_text() == "# hi\n"
    with pytest.raises(ArtifactError, match="plain file name"):
        rec.write_text("../escape.md", "x")
    assert RunRecord(rec.path).history() == rec.history()


def test_run_record_name_clash_gets_a_suffix(tmp_path, monkeypatch):
    monkeypatch.setattr(record_module.time, "strftime", lambda fmt, *a: "20240102-030405")
    a = RunRecord.create(tmp_path, "fit")
    b = RunRecord.create(tmp_path, "fit")
    c = RunRecord.create(tmp_path, "")
    assert [a.path.name, b.path.name, c.path.name] == [
        "20240102-030405-fit",
        "20240102-030405-fit-2",
        "20240102-030405-fit-3",
    ]


def test_run_record_unwritable_root(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="cannot create a run folder"):
        RunRecord.create(tmp_path / "file" / "runs")


def test_history_skips_a_truncated_last_line(tmp_path):
    rec = RunRecord.create(tmp_path)
    rec.log_epoch({"epoch": 1})
    with (rec.path / "metrics.jsonl").open("a") as fh:
        fh.write('{"epoch": 2, "train_lo')
    assert rec.history() == [{"epoch": 1}]
    assert RunRecord(tmp_path / "none").history() == []


def test_environment_info():
    env = environment_info(seed=3)
    assert env["seed"] == 3
    assert set(env["packages"]) >= {
        "torch",
        "transformers",
        "peft",
        "accelerate",
        "tokenizers",
        "safetensors",
        "numpy",
        "pandas",
        "scikit-learn",
        "tunesmith",
    }
    hw = env["hardware"]
    assert hw["cpu_count"] >= 1 and hw["torch_threads"] >= 1 and isinstance(hw["cuda_available"], bool)
    assert hw["memory_total_bytes"] is None or hw["memory_total_bytes"] > 0
    json.dumps(env, allow_nan=False)
    assert record_module._package_version("surely-not-an-installed-package") is None


# --- plots -------------------------------------------------------------------------------------


def test_learning_curves_png(tmp_path):
    path = plot_learning_curves(HISTORY, tmp_path / "plots" / "curves.png")
    assert _is_png(path)
    only = plot_learning_curves(HISTORY, tmp_path / "acc.png", metrics=["accuracy"])
    assert _is_png(only)
    # no validation: one panel, steps on x, a None value is a gap
    plain = plot_learning_curves(
        [{"step": 1, "train_loss": 1.0}, {"step": 2, "train_loss": None}], tmp_path / "plain.png"
    )
    assert _is_png(plain)
    with pytest.raises(DataError):
        plot_learning_curves([], tmp_path / "empty.png")


def test_confusion_matrix_png(tmp_path):
    path = plot_confusion_matrix([[5, 1], [2, 7]], ["negative", "positive"], tmp_path / "cm.png")
    assert _is_png(path)
    counts = plot_confusion_matrix(
        [[5, 1, 0], [2, 7, 1], [0, 0, 0]], ["a", "b", "c"], tmp_path / "cm2.png", normalize=False
    )
    assert _is_png(counts)
    with pytest.raises(DataError):
        plot_confusion_matrix([[1, 2]], ["a", "b"], tmp_path / "bad.png")


def test_residuals_png(tmp_path):
    rng = np.random.default_rng(0)
    t = rng.normal(size=60)
    assert _is_png(plot_residuals(t, t + rng.normal(scale=0.3, size=60), tmp_path / "res.png"))


def test_plots_leave_pyplot_alone(tmp_path):
    import sys

    before = sys.modules.get("matplotlib.pyplot")
    plot_learning_curves(HISTORY, tmp_path / "c.png")
    if before is None:
        assert "matplotlib.pyplot" not in sys.modules
    else:
        assert before.get_fignums() == []


# --- report ------------------------------------------------------------------------------------


def _classification_info():
    per_class = {
        "neg": {"precision": 0.8, "recall": 0.9, "f1": 0.85, "support": 10},
        "pos": {"precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 10},
    }
    return {
        "title": "minilm-l6 fine-tuned on reviews.csv",
        "task": "binary",
        "backbone": "minilm-l6",
        "strategy": "full",
        "labels": ["neg", "pos"],
        "metrics": {
            "accuracy": 0.85,
            "f1_macro": 0.85,
            "roc_auc": 0.93,
            "log_loss": 0.35,
            "n": 20,
            "per_class": per_class,
            "confusion_matrix": [[9, 1], [2, 8]],
        },
        "baselines": {
            "majority": {
                "accuracy": 0.5,
                "f1_macro": 0.3333,
                "roc_auc": 0.5,
                "log_loss": 0.6931,
                "model": "majority class",
                "n": 20,
            },
            "tfidf": {
                "accuracy": 0.9,
                "f1_macro": 0.9,
                "roc_auc": None,
                "log_loss": 0.3,
                "model": "TF-IDF 1-2 grams + logistic regression",
            },
        },
        "config": {"backbone": "minilm-l6", "lr": 5e-5, "epochs": 5, "max_length": 128, "progress": True},
        "data": {
            "file": "reviews.csv",
            "sha256": "0123456789abcdef" * 4,
            "rows": {"after_cleaning": 200, "train": 160, "valid": 20, "test": 20},
            "dropped": {"data": {"dropped_total": 3, "summary": "3 rows dropped: 2 empty text, 1 missing label"}},
            "split": {"strategy": "stratified", "notes": []},
            "target": "label",
            "text_columns": ["text"],
        },
        "training": {
            "epochs_run": 4,
            "best_epoch": 2,
            "monitor": "valid_f1_macro",
            "stopped_early": True,
            "stop_reason": "valid_f1_macro did not improve for 2 epoch(s)",
            "train_seconds": 75.2,
            "train_examples_per_s": 8.51,
            "parameters": {"trainable": 1000, "total": 4000},
        },
        "environment": environment_info(seed=0),
    }


def test_report_tables_and_gains():
    text = render_report(
        {
            **_classification_info(),
            "images": {"learning_curves": "learning_curves.png", "confusion_matrix": "confusion_matrix.png"},
        }
    )
    assert text.startswith("# minilm-l6 fine-tuned on reviews.csv\n")
    assert "**Task:** binary classification" in text and "**Best epoch:** 2 of 4" in text
    assert "**Train rows:** 160" in text
    assert "## Test metrics: fine-tuned vs baselines" in text
    assert "| model | accuracy | f1_macro | roc_auc | log_loss |" in text
    assert "| **fine-tuned** (minilm-l6, full) | 0.8500 | 0.8500 | 0.9300 | 0.3500 |" in text
    assert "| majority class | 0.5000 | 0.3333 | 0.5000 | 0.6931 |" in text
    assert "| TF-IDF 1-2 grams + logistic regression | 0.9000 | 0.9000 | - | 0.3000 |" in text
    assert "vs majority class: **+35.00 points** (0.8500 vs 0.5000)" in text
    assert "vs TF-IDF 1-2 grams + logistic regression: **-5.00 points**" in text
    assert "does not beat TF-IDF" in text
    assert "| neg | 0.8000 | 0.9000 | 0.8500 | 10 |" in text
    assert "| pos | 2 | 8 |" in text  # confusion matrix row
    assert "sha256 `0123456789ab`" in text and "3 rows dropped: 2 empty text" in text
    assert "| train | 160 |" in text
    assert "stopped early: valid_f1_macro did not improve" in text and "1 min 15 s" in text
    assert "8.5 examples/s" in text and "| `lr` | 5e-05 |" in text
    assert "`progress`" not in text  # bookkeeping settings stay out of the card
    assert "![learning curves](learning_curves.png)" in text
    assert "![confusion matrix](confusion_matrix.png)" in text
    assert "| `torch` |" in text
    assert "## Intended use and limitations" in text and "tunesmith.load(" in text


def test_report_without_images_or_optional_sections():
    text = render_report(_classification_info())
    assert "![" not in text
    minimal = render_report({})
    assert minimal.startswith("# tunesmith model") and "tunesmith.load(" in minimal
    assert "## Test metrics" not in minimal and "## Data" not in minimal


def test_report_regression_columns_and_gain_direction():
    info = {
        "title": "price model",
        "task": "regression",
        "metrics": {"mae": 1.0, "rmse": 1.5, "r2": 0.8, "n": 30},
        "baselines": {"majority": {"mae": 3.0, "rmse": 4.0, "r2": 0.0, "model": "training mean"}},
        "images": {"residuals": "residuals.png"},
        "model_path": "runs/x/model",
    }
    text = render_report(info)
    assert "| model | mae | rmse | r2 |" in text
    assert "| training mean | 3.0000 | 4.0000 | 0.0000 |" in text
    assert "**rmse**" in text and "lower is better" in text
    assert "vs training mean: **-2.5, -62.5%** (1.5000 vs 4.0000)" in text
    assert "does not beat" not in text
    assert "![residuals](residuals.png)" in text
    assert 'tunesmith.load("runs/x/model")' in text and "predict_proba" not in text


def test_report_escapes_table_cells():
    info = _classification_info()
    info["baselines"] = {"odd": {"accuracy": 0.5, "model": "a | b"}}
    assert "| a \\| b | 0.5000 |" in render_report(info)


def test_report_shows_intervals_and_compares_them_when_no_gain_is_given():
    info = {
        "task": "binary",
        "metrics": {"accuracy": 0.842, "accuracy_ci": [0.822, 0.861], "n": 1066},
        "baselines": {
            "tfidf": {"accuracy": 0.776, "accuracy_ci": [0.75, 0.80]},
            "frozen": {"accuracy": 0.83, "accuracy_ci": [0.81, 0.85]},
        },
    }
    text = render_report(info)
    assert "| 0.842 [0.822, 0.861] |" in text and "Brackets: 95% bootstrap" in text
    assert "vs TF-IDF + linear: **+6.60 points** (0.8420 vs 0.7760); larger than the noise (unpaired" in text
    assert "vs frozen embeddings + linear: **+1.20 points** (0.8420 vs 0.8300); within the noise" in text
    assert "**Within the noise:**" in text
    gains = {"frozen": {"verdict": "larger than the noise", "ci": [0.004, 0.02], "paired": True}}
    assert "95% interval [+0.40, +2.00]: larger than the noise (paired bootstrap)" in render_report(
        {**info, "gains": gains}
    )
