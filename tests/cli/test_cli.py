"""The command line: thin, helpful, and never a stack trace for a user error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import make_reviews
from tunesmith.cli import main

COMMANDS = [
    "fit",
    "evaluate",
    "predict",
    "demo",
    "backbones",
    "export",
    "serve",
    "tune",
    "inspect",
    "clean",
    "personalize",
    "recommend",
    "label",
]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_help_on_every_command(command, capsys):
    try:
        main([command, "--help"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    assert "Usage" in capsys.readouterr().out


def test_user_error_is_one_line_without_traceback(tmp_path):
    proc = run_cli("fit", str(tmp_path / "nope.csv"), "--target", "label", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "nope.csv" in lines[0]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process: (exit status, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_bad_override_names_setting(tmp_path, capsys):
    data = tmp_path / "d.csv"
    make_reviews(20).to_csv(data, index=False)
    code, _, err = cli(capsys, "fit", str(data), "-t", "label", "learning_rate=1e-3")
    assert code == 2 and "did you mean 'lr'" in err


def test_fit_predict_evaluate_roundtrip(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "reviews.csv"
    make_reviews(48).to_csv(data, index=False)
    code, out, err = cli(
        capsys,
        "fit",
        str(data),
        "--target",
        "label",
        "backbone=tiny-text",
        "epochs=2",
        "batch_size=8",
        "lr=3e-3",
        "progress=false",
        "runs_dir=runs",
        "-o",
        "model",
    )
    assert code == 0, err[-2000:]
    assert "TF-IDF" in out and "gain over" in out
    model = tmp_path / "model"
    assert (model / "model.safetensors").is_file()
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "report.md").is_file()

    unlabeled = tmp_path / "new.jsonl"
    make_reviews(10, seed=3)[["text"]].to_json(unlabeled, orient="records", lines=True)
    out = tmp_path / "pred.parquet"
    code, _, err = cli(capsys, "predict", str(model), str(unlabeled), "-o", str(out), "--proba")
    assert code == 0, err[-2000:]
    pred = pd.read_parquet(out)
    assert len(pred) == 10 and {"prediction", "proba_neg", "proba_pos"} <= set(pred.columns)

    code, _, err = cli(capsys, "evaluate", str(model), str(data), "--json", str(tmp_path / "m.json"))
    assert code == 0, err[-2000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["n"] == 48


def test_evaluate_unseen_label_is_clear(tmp_path):
    data = tmp_path / "reviews.csv"
    make_reviews(32).to_csv(data, index=False)
    assert (
        run_cli(
            "fit",
            str(data),
            "-t",
            "label",
            "backbone=tiny-text",
            "epochs=1",
            "progress=false",
            "baselines=false",
            "runs_dir=",
            "-o",
            "m",
            cwd=tmp_path,
        ).returncode
        == 0
    )
    bad = make_reviews(6)
    bad.loc[2, "label"] = "meh"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    proc = run_cli("evaluate", "m", "bad.csv", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "bad.csv" in proc.stderr and "row 3" in proc.stderr and "'meh'" in proc.stderr


def test_load_missing_model_folder(tmp_path):
    proc = run_cli("predict", str(tmp_path / "none"), "x.csv", "-o", "y.csv", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "none" in proc.stderr


def test_kind_choices_come_from_the_registry(tmp_path, capsys):
    path = tmp_path / "reviews.csv"
    make_reviews(20).to_csv(path, index=False)
    with pytest.raises(SystemExit) as exc:
        main(["fit", str(path), "-t", "label", "--kind", "sound"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "recommender" in err and "tabular" in err and "Traceback" not in err
    # A kind that `fit` does not train names the command that does.
    with pytest.raises(SystemExit) as exc:
        main(["fit", str(path), "-t", "label", "--kind", "recommender"])
    assert exc.value.code == 2 and "tunesmith recommend fit" in capsys.readouterr().err


def test_cv_works_for_a_tabular_model(tmp_path, capsys):
    rng = __import__("numpy").random.default_rng(0)
    n = 120
    x = rng.normal(size=n)
    frame = pd.DataFrame({"x": x, "z": rng.normal(size=n), "label": (x > 0).astype(int)})
    path = tmp_path / "table.csv"
    frame.to_csv(path, index=False)
    out = tmp_path / "model"
    main(
        [
            *("fit", str(path), "-t", "label", "--kind", "tabular", "--cv", "2", "-o", str(out)),
            *("n_estimators=10", "epochs=1", "progress=false", "hidden=[8]"),
        ]
    )
    printed = capsys.readouterr().out
    assert "2-fold stratified cross-validation" in printed and "chosen on validation" in printed
    assert (out / "tunesmith.json").is_file()


def test_tune_takes_a_kind_and_detects_tables(tmp_path, capsys):
    rng = __import__("numpy").random.default_rng(0)
    x = rng.normal(size=120)
    path = tmp_path / "table.csv"
    pd.DataFrame({"x": x, "z": rng.normal(size=120), "label": (x > 0).astype(int)}).to_csv(path, index=False)
    out = tmp_path / "tuning"
    settings = ["n_estimators=10", "epochs=1", "hidden=[8]", "progress=false"]
    main(["tune", str(path), "-t", "label", *settings, "--trials", "2", "-o", str(out), "-q"])
    assert "2 trials" in capsys.readouterr().out and (out / "best_config.yaml").is_file()
    with pytest.raises(SystemExit) as exc:
        main(["tune", str(path), "-t", "label", "--kind", "sound", "-o", str(out), "-q"])
    assert exc.value.code == 2 and "tabular" in capsys.readouterr().err
