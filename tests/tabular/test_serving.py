"""Tabular models after training: ONNX export with parity, predictors, the HTTP server and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

import tunesmith
from tests.cli.test_cli import cli
from tunesmith.errors import ConfigError, DataError
from tunesmith.tabular import TabularFineTuner

FAST = {
    "n_estimators": 60,
    "epochs": 8,
    "progress": False,
    "hidden": (32,),
    "early_stopping_rounds": 20,
    "runs_dir": "",
}


def table(n: int = 400, seed: int = 0) -> pd.DataFrame:
    data = load_breast_cancer(as_frame=True)
    df = data.frame.iloc[:, [0, 1, 2, 3, 20, 21, 22, 27]].copy()
    df.columns = ["radius", "texture", "perimeter", "area", "worst_radius", "worst_texture", "worst_perim", "worst_cp"]
    rng = np.random.default_rng(seed)
    df["clinic"] = rng.choice(["north", "south", "east"], len(df))
    df.loc[rng.random(len(df)) < 0.05, "texture"] = np.nan
    df["diagnosis"] = np.where(data.target == 1, "benign", "malignant")
    return df.iloc[:n].reset_index(drop=True)


@pytest.fixture(scope="module", params=["lightgbm", "neural", "ensemble"])
def saved(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    df = table()
    ft = TabularFineTuner(model=request.param, **FAST).fit(df, target="diagnosis")
    assert ft.chosen_ == request.param
    return ft.save(tmp_path_factory.mktemp("tab") / "model")


def test_onnx_export_matches_native_predictions(saved):
    pytest.importorskip("onnxmltools")
    from tunesmith.export import export_onnx
    from tunesmith.export.runtime import load_predictor

    result = export_onnx(saved, data=table(200, seed=1))
    assert result.parity["max_abs_diff"] < 1e-4 and result.parity["rows"] > 0
    info = json.loads((saved / "onnx" / "export.json").read_text())
    assert info["parity"]["graph"] in ("lightgbm", "neural", "ensemble")
    rows = table(30, seed=2).drop(columns="diagnosis").to_dict("records")
    onnx_side = load_predictor(saved, backend="onnx")
    native = load_predictor(saved, backend="torch")
    a, b = onnx_side.predict_rows(rows), native.predict_rows(rows)
    assert [p.label for p in a] == [p.label for p in b]
    for x, y in zip(a, b, strict=True):
        assert x.probabilities is not None and y.probabilities is not None
        assert abs(x.probabilities["benign"] - y.probabilities["benign"]) < 1e-4
    with pytest.raises(ConfigError, match="text models only"):
        export_onnx(saved, quantize="int8")


def test_rows_are_checked_and_missing_fields_are_missing_values(saved):
    from tunesmith.export.runtime import load_predictor

    p = load_predictor(saved, backend="torch")
    with pytest.raises(DataError, match="unknown field 'colour'"):
        p.predict_rows([{"radius": 12.0, "colour": "red"}])
    with pytest.raises(DataError, match="must be an object"):
        p.predict_rows(["just text"])
    with pytest.raises(DataError, match="radius"):
        p.predict_rows([{"radius": "twelve"}])
    out = p.predict_rows([{"radius": 14.0}])  # every other column imputed as in training
    assert out[0].label in ("benign", "malignant")


def test_server_predicts_rows_of_a_tabular_model(saved):
    from fastapi.testclient import TestClient

    from tunesmith.serve import ServeSettings, create_app

    rows = table(5, seed=3).drop(columns="diagnosis")
    rows = rows.astype(object).where(rows.notna(), None).to_dict("records")
    settings = ServeSettings(backend="torch", threads=1, api_key=None, admin_token=None)
    with TestClient(create_app(saved, settings)) as client:
        for _ in range(500):
            if client.get("/ready").status_code == 200:
                break
        r = client.post("/v1/predict", json={"inputs": rows})
        assert r.status_code == 200, r.text
        assert len(r.json()["predictions"]) == 5
        bad = client.post("/v1/predict", json={"inputs": [{"nope": 1}]})
        assert bad.status_code == 422 and "nope" in bad.text


def test_cli_fits_a_table_without_text_as_tabular(tmp_path, capsys):
    csv = tmp_path / "clinic.csv"
    table().to_csv(csv, index=False)
    out = tmp_path / "model"
    code, stdout, err = cli(
        capsys,
        "fit",
        str(csv),
        "-t",
        "diagnosis",
        "-o",
        str(out),
        "n_estimators=40",
        "epochs=3",
        "progress=false",
        "hidden=[16]",
    )
    assert code == 0, err
    assert "lightgbm" in stdout and "neural" in stdout and "chosen on validation" in stdout
    model = tunesmith.load(out)
    assert isinstance(model, TabularFineTuner)
    pred = tmp_path / "pred.csv"
    code, _, err = cli(capsys, "predict", str(out), str(csv), "-o", str(pred), "--proba")
    assert code == 0, err
    frame = pd.read_csv(pred)
    assert {"prediction", "proba_benign"} <= set(frame.columns) and len(frame) == 400
    code, stdout, err = cli(capsys, "evaluate", str(out), str(csv))
    assert code == 0, err
    assert "accuracy" in stdout
    code, _, err = cli(capsys, "fit", str(csv), "-t", "diagnosis", "-o", str(tmp_path / "m2"), "lr_typo=1")
    assert code != 0 and "unknown setting" in err and "Traceback" not in err
