"""ONNX export: parity with PyTorch, int8 accuracy in the card, the predictor API and batch scoring."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from tests.conftest import make_reviews
from tunesmith import FineTuner, load
from tunesmith.errors import ArtifactError, ConfigError, DataError
from tunesmith.export import export_onnx, load_predictor
from tunesmith.export.batch import predict_file
from tunesmith.export.onnx import check_parity

onnx = pytest.importorskip("onnx")


def _params(tmp, **extra):
    return {
        "backbone": "tiny-text",
        "strategy": "full",
        "epochs": 3,
        "batch_size": 8,
        "lr": 3e-3,
        "max_length": 32,
        "progress": False,
        "runs_dir": str(tmp / "runs"),
        "num_threads": 1,
        **extra,
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny classifier fitted from a CSV file (so its test rows are recorded) and saved."""
    tmp = tmp_path_factory.mktemp("export")
    data = tmp / "reviews.csv"
    make_reviews(80, seed=1).to_csv(data, index=False)
    ft = FineTuner(**_params(tmp)).fit(data, target="label")
    folder = ft.save(tmp / "model")
    return {"folder": folder, "data": data, "ft": ft, "tmp": tmp}


@pytest.fixture
def model_copy(trained, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(trained["folder"], folder)
    return folder


def test_export_fp32_and_int8_match_pytorch_and_write_the_card(trained, model_copy):
    result = export_onnx(model_copy, quantize="int8", data=trained["data"])
    assert (model_copy / "onnx" / "model.onnx").is_file()
    assert (model_copy / "onnx" / "model.int8.onnx").is_file()
    assert result.parity["max_abs_diff"] < 1e-4
    # The training file was recognised by its hash: the checks ran on the run's own test split.
    assert result.parity["source"] == "the run's test split of reviews.csv"
    assert result.int8 is not None
    assert result.int8["rows_scored"] == trained["ft"].split_sizes_["test"]
    assert abs(result.int8["accuracy_fp32"] - trained["ft"].test_metrics_["accuracy"]) < 1e-9
    # A tiny model scored on a handful of rows: one flipped label near the decision boundary
    # is within int8 rounding; more than that (or 10% of the rows) is not.
    rows = result.int8["rows_scored"]
    flipped = round((1 - result.int8["label_agreement"]) * rows)
    assert flipped <= max(1, rows // 10), result.int8
    info = json.loads((model_copy / "onnx" / "export.json").read_text())
    assert info["files"] == {"fp32": "onnx/model.onnx", "int8": "onnx/model.int8.onnx"}
    assert info["int8"]["accuracy_drop_points"] == result.int8["accuracy_drop_points"]
    card = (model_copy / "card.md").read_text()
    assert "## ONNX export" in card and "int8 accuracy change" in card
    # A second export replaces the section instead of stacking another one.
    export_onnx(model_copy, data=trained["data"])
    card = (model_copy / "card.md").read_text()
    assert card.count("## ONNX export") == 1
    assert not (model_copy / "onnx" / "model.int8.onnx").exists(), "a stale int8 graph must not outlive its fp32 one"


def test_onnx_predictions_equal_the_estimator(trained, model_copy):
    export_onnx(model_copy)
    frame = make_reviews(30, seed=9)
    expected = load(model_copy).predict(frame)
    onnx_pred = load_predictor(model_copy, backend="onnx", precision="fp32", threads=1)
    torch_pred = load_predictor(model_copy, backend="torch", threads=1)
    got, proba = onnx_pred.predict_frame(frame)
    assert list(got) == list(expected)
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert list(torch_pred.predict_frame(frame)[0]) == list(expected)
    rows = onnx_pred.predict_rows(["great fun movie", {"text": "awful boring movie"}])
    assert [r.label for r in rows] == list(load(model_copy).predict(["great fun movie", "awful boring movie"]))
    assert onnx_pred.version == torch_pred.version == onnx_pred.metadata()["model_version"]


def test_small_batches_run_on_one_thread_with_the_same_outputs(trained, model_copy):
    export_onnx(model_copy)
    frame = make_reviews(40, seed=3)
    texts = [str(t) for t in frame["text"]] + [" ".join(["a long and winding review"] * 6)]
    predictor = load_predictor(model_copy, precision="fp32", threads=2)
    single = load_predictor(model_copy, precision="fp32", threads=1)
    assert predictor._small_session is not predictor._session and single._small_session is single._session
    calls: list[int] = []
    for session in (predictor._small_session, predictor._session):
        run = session.run
        session.run = lambda names, feed, run=run: (calls.append(feed["input_ids"].size), run(names, feed))[1]
    together = predictor.logits(texts)
    batch_calls = list(calls)
    alone = np.concatenate([predictor.logits([t]) for t in texts[:3]])
    # Whole batches and lone rows, on either session, give the same outputs in input order.
    assert np.allclose(together[:3], alone, atol=1e-5) and np.allclose(together, single.logits(texts), atol=1e-5)
    assert min(calls) <= 128 < max(calls)  # both sessions were used
    # Rows are cut into calls by length: the long review is a call of its own, padding nobody.
    assert len(batch_calls) >= 2 and sum(batch_calls) < len(texts) * 36


def test_tokenizer_truncates_like_training(trained, model_copy):
    export_onnx(model_copy)
    predictor = load_predictor(model_copy, precision="fp32", threads=1)
    long_text = " ".join(["great film and a fun story"] * 40)
    backbone = load(model_copy).backbone_
    assert predictor._tokenize([long_text]) == backbone.tokenize([long_text], 32)


def _tamper(path) -> None:
    """Shift one class's bias in the graph: a wrong graph that still loads and runs."""
    proto = onnx.load(str(path))
    bias = next(t for t in proto.graph.initializer if t.name == "head.linear.bias")
    values = onnx.numpy_helper.to_array(bias).copy()
    values[0] += 0.5
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    onnx.save(proto, str(path))


def test_parity_check_fails_on_a_tampered_graph(trained, model_copy):
    export_onnx(model_copy)
    graph = model_copy / "onnx" / "model.onnx"
    assert check_parity(model_copy, graph)["max_abs_diff"] < 1e-4
    _tamper(graph)
    with pytest.raises(ArtifactError, match=r"max \|logit difference\| 0\.5 over 64 rows is above the tolerance"):
        check_parity(model_copy, graph)


def test_failed_export_leaves_the_previous_one(trained, model_copy, monkeypatch):
    export_onnx(model_copy)
    before = (model_copy / "onnx" / "model.onnx").read_bytes()
    import tunesmith.export.text_export as mod

    real = mod.write_graph

    def tampered(ft, path, *, opset=mod.OPSET):
        real(ft, path, opset=opset)
        _tamper(path)

    monkeypatch.setattr(mod, "write_graph", tampered)
    with pytest.raises(ArtifactError, match="disagrees with the PyTorch model"):
        export_onnx(model_copy, quantize="int8")
    assert (model_copy / "onnx" / "model.onnx").read_bytes() == before
    assert not (model_copy / "onnx" / "model.int8.onnx").exists()
    assert not list(model_copy.glob(".export-*")), "the scratch folder must be removed"


def test_int8_gate_on_accuracy_drop(trained, model_copy, monkeypatch):
    import tunesmith.export.text_export as mod

    real = mod._int8_accuracy

    def costly(*args, **kwargs):
        out = real(*args, **kwargs)
        out["accuracy_drop_points"] = 1.5  # as if int8 had cost 1.5 points
        return out

    monkeypatch.setattr(mod, "_int8_accuracy", costly)
    with pytest.raises(ArtifactError, match="int8 costs 1.50 accuracy points .* more than the 0.5 allowed"):
        export_onnx(model_copy, quantize="int8", data=trained["data"], max_accuracy_drop=0.5)
    assert not (model_copy / "onnx").exists(), "a failed first export leaves no onnx folder"
    result = export_onnx(model_copy, quantize="int8", data=trained["data"], max_accuracy_drop=2.0)
    assert result.int8["accuracy_drop_points"] == 1.5
    with pytest.raises(ArtifactError, match="gate was set but accuracy was not measured"):
        export_onnx(model_copy, quantize="int8", max_accuracy_drop=2.0)


def test_export_without_data_uses_generated_sentences(model_copy):
    result = export_onnx(model_copy, quantize="int8", sample_size=40)
    assert result.parity["source"] == "generated sentences" and result.parity["rows"] == 40
    assert "accuracy_note" in result.int8


def test_other_rows_are_used_whole(model_copy, tmp_path):
    other = tmp_path / "held_out.jsonl"
    make_reviews(24, seed=5).to_json(other, orient="records", lines=True)
    result = export_onnx(model_copy, quantize="int8", data=other)
    assert result.parity["source"] == "all rows of held_out.jsonl"
    assert result.int8["rows_scored"] == 24


def test_lora_and_regression_models_export(tmp_path):
    lora = FineTuner(**_params(tmp_path, strategy="lora", lr=1e-2)).fit(make_reviews(48), target="label")
    folder = lora.save(tmp_path / "lora")
    assert export_onnx(folder).parity["max_abs_diff"] < 1e-4
    rng = np.random.default_rng(0)
    reg = make_reviews(48).assign(score=lambda d: np.where(d.label == "pos", 4.0, 1.0) + rng.normal(0, 0.1, len(d)))
    ft = FineTuner(**_params(tmp_path)).fit(reg.drop(columns="label"), target="score")
    folder = ft.save(tmp_path / "reg")
    result = export_onnx(folder, quantize="int8", data=reg.drop(columns="label"))
    assert "mae_change" in result.int8
    with pytest.raises(ArtifactError, match="int8 raises the MAE"):
        export_onnx(folder, quantize="int8", data=reg.drop(columns="label"), max_mae_increase=-1.0)
    values, proba = load_predictor(folder, precision="fp32", threads=1).predict_frame(reg)
    assert proba is None
    assert np.allclose(values, ft.predict(reg), atol=1e-4)


def test_several_columns_build_the_training_text(tmp_path):
    df = make_reviews(48).assign(
        title=lambda d: np.where(np.arange(len(d)) % 3 == 0, "a film", "the movie"),
        year=lambda d: 1990 + np.arange(len(d)) % 7,
    )
    ft = FineTuner(**_params(tmp_path, text_column=["text", "title"])).fit(df, target="label")
    folder = ft.save(tmp_path / "multi")
    export_onnx(folder)
    predictor = load_predictor(folder, precision="fp32", threads=1)
    assert list(predictor.predict_frame(df)[0]) == list(ft.predict(df))
    row = df.drop(columns="label").iloc[0].to_dict()
    assert predictor.predict_rows([row])[0].label == ft.predict(df.iloc[:1])[0]
    with pytest.raises(DataError, match="bare string, but this model reads several text columns: text, title"):
        predictor.predict_rows(["a film"])


def test_errors_name_what_is_wrong(trained, model_copy):
    with pytest.raises(ArtifactError, match="tunesmith export"):
        load_predictor(model_copy, backend="onnx")
    with pytest.raises(ConfigError, match="backend"):
        load_predictor(model_copy, backend="tensorrt")
    with pytest.raises(ArtifactError, match="never saved"):
        export_onnx(FineTuner(**_params(model_copy.parent)).fit(make_reviews(24), target="label"))
    predictor = load_predictor(model_copy, backend="torch", threads=1)
    with pytest.raises(DataError, match=r"inputs\[1\] has unknown field 'txt'"):
        predictor.rows_to_frame([{"text": "fine"}, {"txt": "oops"}])
    with pytest.raises(DataError, match=r"inputs\[0\] has no text: field 'text' is required"):
        predictor.rows_to_frame([{"text": ""}])
    with pytest.raises(DataError, match=r"inputs\[0\]\.text must be a string, got int"):
        predictor.rows_to_frame([{"text": 5}])
    for blank in ("   ", "\u00a0"):
        with pytest.raises(DataError, match=r"inputs\[0\] has no text"):
            predictor.rows_to_texts([{"text": blank}])
        with pytest.raises(DataError, match=r"inputs\[0\] has no text"):
            predictor.rows_to_texts([blank])
    predictor.close()
    assert predictor.estimator is None and predictor._model is None
    (model_copy / "onnx").mkdir()
    (model_copy / "onnx" / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(ArtifactError, match="cannot be loaded"):
        load_predictor(model_copy, backend="onnx", precision="fp32")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_predict_file_streams_in_chunks(trained, model_copy, tmp_path, suffix):
    export_onnx(model_copy)
    frame = make_reviews(50, seed=4).drop(columns="label")
    frame.loc[3, "text"] = None
    src = tmp_path / f"in{suffix}"
    if suffix == ".csv":
        frame.to_csv(src, index=False)
    elif suffix == ".jsonl":
        frame.to_json(src, orient="records", lines=True)
    else:
        frame.to_parquet(src, index=False)
    out = tmp_path / f"out{suffix}"
    seen = []
    predictor = load_predictor(model_copy, precision="fp32", threads=1)
    result = predict_file(
        predictor, src, out, probabilities=True, chunk_rows=16, stream_above=0, progress=lambda *a: seen.append(a)
    )
    assert result.streamed and result.rows == 50 and result.empty_text_rows == 1
    assert len(seen) == 4  # 16 + 16 + 16 + 2 rows
    assert seen[-1][0] == seen[-1][1], "the last progress call reports the whole file"
    got = pd.read_parquet(out) if suffix == ".parquet" else pd.read_csv(out) if suffix == ".csv" else None
    if got is None:
        got = pd.read_json(out, lines=True)
    assert len(got) == 50
    whole = predict_file(predictor, src, tmp_path / f"whole{suffix}", probabilities=True)
    assert not whole.streamed
    if suffix == ".jsonl":
        lines = out.read_text().splitlines()
        assert len(lines) == 50 and all(line.strip() for line in lines), "no blank lines between chunks"
    else:
        again = pd.read_parquet(whole.output) if suffix == ".parquet" else pd.read_csv(whole.output)
        pd.testing.assert_frame_equal(again.reset_index(drop=True), got.reset_index(drop=True), check_dtype=False)
    with pytest.warns(UserWarning, match="no text"):
        expected = load(model_copy).predict(frame.fillna(""))
    assert list(got["prediction"]) == list(expected)
    assert np.allclose(got["proba_neg"] + got["proba_pos"], 1.0, atol=1e-5)


def test_predict_file_missing_text_column(trained, model_copy, tmp_path):
    src = tmp_path / "bad.csv"
    pd.DataFrame({"review": ["a", "b"]}).to_csv(src, index=False)
    predictor = load_predictor(model_copy, backend="torch", threads=1)
    with pytest.raises(DataError, match="column 'text' used in training is missing"):
        predict_file(predictor, src, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_cli_export_then_predict_with_onnx(trained, model_copy, tmp_path, capsys):
    from tests.cli.test_cli import cli

    code, out, err = cli(capsys, "export", str(model_copy), "--quantize", "int8", "--data", str(trained["data"]))
    assert code == 0, err
    assert "parity (fp32 vs PyTorch" in out and "int8 accuracy on the run's test split" in out
    unlabeled = tmp_path / "new.csv"
    make_reviews(20, seed=8).drop(columns="label").to_csv(unlabeled, index=False)
    out_file = tmp_path / "pred.csv"
    code, out, err = cli(capsys, "predict", str(model_copy), str(unlabeled), "-o", str(out_file), "--backend", "onnx")
    assert code == 0, err
    assert "(onnx int8, model " in out
    assert len(pd.read_csv(out_file)) == 20
    code, _, err = cli(capsys, "export", str(model_copy), "--format", "tflite")
    assert code == 2 and "format" in err and "onnx" in err
    code, _, err = cli(capsys, "predict", str(model_copy), str(unlabeled), "-o", str(out_file), "--backend", "jax")
    assert code == 2 and "backend" in err


def test_predict_file_formats_and_parquet_schema(trained, model_copy, tmp_path):
    predictor = load_predictor(model_copy, backend="torch", threads=1)
    frame = make_reviews(40, seed=6).drop(columns="label")
    # A column empty in the first chunk and filled later, and integers that meet a missing value.
    frame["note"] = [None] * 20 + ["seen"] * 20
    frame["count"] = [1] * 30 + [None] * 10
    frame.loc[:29, "count"] = 1
    src = tmp_path / "in.csv"
    frame.to_csv(src, index=False)
    out = tmp_path / "out.parquet"
    predict_file(predictor, src, out, chunk_rows=16, stream_above=0)
    got = pd.read_parquet(out)
    assert got["note"].isna().sum() == 20 and got["note"].iloc[20:].tolist() == ["seen"] * 20
    assert got["count"].isna().sum() == 10
    # Small inputs go through write_table: JSON and compressed output work.
    for name in ("out.json", "out.csv.gz"):
        result = predict_file(predictor, src, tmp_path / name)
        assert not result.streamed and result.rows == 40
    assert len(pd.read_json(tmp_path / "out.json")) == 40
    assert len(pd.read_csv(tmp_path / "out.csv.gz")) == 40
    with pytest.raises(DataError, match="uncompressed CSV, TSV, JSONL or Parquet"):
        predict_file(predictor, src, tmp_path / "big.json", stream_above=0)


def test_onnx_prediction_and_the_server_do_not_load_torch():
    # Serving an exported graph needs ONNX Runtime, not PyTorch: importing the predictor path
    # and the server must not pull torch in (it costs seconds and hundreds of MB per worker).
    import subprocess
    import sys

    code = (
        "import sys; import tunesmith.export.runtime, tunesmith.serve.app, tunesmith.serve.command; "
        "from tunesmith.estimators import registry; "
        "assert registry.get('text').predictor is not None and registry.get('recommender').serving == 'recommend'; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False", out.stderr
