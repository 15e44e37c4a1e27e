"""Image fine-tuning end to end on the tiny random CNN: inputs, training controls, artifacts, export, serving."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import tunesmith
from tests.cli.test_cli import cli
from tunesmith.backbones import backbone_modality, create_backbone, create_image_backbone, list_backbones
from tunesmith.errors import ArtifactError, ConfigError, DataError
from tunesmith.estimators.image import ImageFineTuner

# Tiny data has few images per class, where strategy="auto" would pick fewshot: these tests are about full fine-tuning.
FAST = {
    "backbone": "tiny-image",
    "image_size": 16,
    "progress": False,
    "batch_size": 32,
    "lr": 3e-3,
    "runs_dir": "",
    "strategy": "full",
}


def stripes(n: int, seed: int = 0, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Three classes told apart by where a bright band lies: learnable in a few epochs by a tiny CNN."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = np.zeros((n, size, size), dtype=np.float32)
    band = size // 3
    for i, c in enumerate(y):
        x[i, c * band : (c + 1) * band, :] = 1.0
    x = np.clip(x + rng.normal(0, 0.15, x.shape), 0, 1)
    return x, y


def write_folder(root: Path, n: int = 60, seed: int = 0) -> Path:
    x, y = stripes(n, seed)
    names = ["top", "middle", "bottom"]
    for i, (img, c) in enumerate(zip(x, y, strict=True)):
        folder = root / names[c]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageFineTuner, Path]:
    x, y = stripes(300)
    ft = ImageFineTuner(**FAST, epochs=4).fit(x, y)
    folder = ft.save(tmp_path_factory.mktemp("img") / "model")
    return ft, folder


def test_registry_knows_image_backbones():
    names = list_backbones()
    assert "efficientnet-lite0" in names and "tiny-image" in names
    assert backbone_modality("tiny-image") == "image" and backbone_modality("minilm-l6") == "text"
    b = create_image_backbone("tiny-image", image_size=24)
    assert b.preprocessing.size == 24 and b.num_layers == len(b.layer_groups()) - 1
    assert b(torch.zeros(2, 3, 24, 24)).shape == (2, b.hidden_size)
    with pytest.raises(ConfigError, match="image backbone"):
        create_backbone("tiny-image")
    with pytest.raises(ConfigError, match="Did you mean 'tiny-image'"):
        create_image_backbone("tiny-imag")


def test_efficientnet_lite0_loads_imagenet_weights_offline():
    pytest.importorskip("efficientnet_lite_pytorch")
    b = create_image_backbone("efficientnet-lite0", image_size=32)
    assert b.hidden_size == 1280 and b.fingerprint.startswith("sha256:")
    # stem, seven stages, head conv: freezing and layer-wise learning rates see nine groups
    assert len(b.layer_groups()) == 9
    again = create_image_backbone("efficientnet-lite0", image_size=32)
    for (k, v), (_, w) in zip(b.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(v, w), k


def test_fit_on_arrays_learns_and_beats_majority(fitted):
    ft, _ = fitted
    assert ft.test_metrics_["accuracy"] >= 0.9
    assert ft.test_metrics_["accuracy"] > ft.baseline_metrics_["majority"]["accuracy"] + 0.4
    assert "frozen" in ft.baseline_metrics_
    assert ft.split_sizes_ == {"train": 240, "valid": 30, "test": 30}
    assert set(ft.predict(stripes(5, seed=3)[0])) <= {0, 1, 2}
    bn = ft.training_info_["batchnorm"]
    assert bn["mode"] == "recalibrate" and bn["recalibrated_layers"] == 3


def test_save_load_identical_and_preprocessing_stored(fitted):
    ft, folder = fitted
    meta = json.loads((folder / "tunesmith.json").read_text())
    assert meta["kind"] == "image" and meta["preprocessing"]["size"] == 16
    assert not list(folder.glob("*.pkl")) and (folder / "card.md").is_file()
    loaded = tunesmith.load(folder)
    assert isinstance(loaded, ImageFineTuner)
    x = stripes(20, seed=5)[0]
    np.testing.assert_allclose(loaded.predict_proba(x), ft.predict_proba(x), atol=1e-6)


def test_same_seed_same_model_including_augmentation():
    x, y = stripes(120)
    opts = {**FAST, "epochs": 2, "augment": {"hflip": 0.5, "rotate": 10, "noise": 0.05, "mixup": 0.2}}
    a = ImageFineTuner(**opts).fit(x, y)
    b = ImageFineTuner(**opts).fit(x, y)
    np.testing.assert_array_equal(a.predict_proba(x[:10]), b.predict_proba(x[:10]))
    c = ImageFineTuner(**{**opts, "seed": 1}).fit(x, y)
    assert not np.array_equal(a.predict_proba(x[:10]), c.predict_proba(x[:10]))


def test_folder_input_and_label_names(tmp_path):
    root = write_folder(tmp_path / "imgs")
    ft = ImageFineTuner(**FAST, epochs=1, test_size=0.2).fit(root)
    assert list(ft.classes_) == ["bottom", "middle", "top"]
    preds = ft.predict(root / "top")
    assert len(preds) == len(list((root / "top").glob("*.png")))


def test_table_paths_refuse_escape_and_corrupt_images_are_named_or_skipped(tmp_path):
    root = write_folder(tmp_path / "imgs")
    rows = [{"file": str(p.relative_to(root)), "y": p.parent.name} for p in sorted(root.rglob("*.png"))]
    (root / "top" / "broken.png").write_bytes(b"not an image at all")
    table = pd.DataFrame([*rows, {"file": "top/broken.png", "y": "top"}])
    with pytest.raises(DataError, match="broken.png") as err:
        ImageFineTuner(**FAST, epochs=1, target="y", path_column="file", root=str(root)).fit(table)
    assert err.value.row == len(rows) + 1
    ft = ImageFineTuner(**FAST, epochs=1, target="y", path_column="file", root=str(root), on_error="skip").fit(table)
    skipped = ft.data_info_["decode"]["skipped"]
    assert len(skipped) == 1 and "broken.png" in str(skipped[0])
    # predictions must line up with the inputs: never skip there
    with pytest.raises(DataError, match="broken.png"):
        ft.predict(table)
    scored = ft.evaluate(table)
    assert scored["dropped"]["dropped_total"] == 1 and scored["n"] == len(rows)
    escape = pd.DataFrame({"file": ["../outside.png"], "y": ["top"]})
    with pytest.raises(DataError, match="escape"):
        ImageFineTuner(**FAST, target="y", path_column="file", root=str(root)).fit(escape)


def test_head_only_keeps_backbone_and_its_batchnorm_statistics():
    x, y = stripes(150)
    reference = create_image_backbone("tiny-image", image_size=16).state_dict()
    ft = ImageFineTuner(**{**FAST, "strategy": "head_only"}, epochs=2).fit(x, y)
    for k, v in ft.model_.backbone.state_dict().items():
        assert torch.equal(v, reference[k]), f"{k} changed although the backbone was frozen"
    assert ft.training_info_["batchnorm"]["recalibrated_layers"] == 0


def test_frozen_batchnorm_mode_keeps_statistics_but_trains_weights():
    x, y = stripes(150)
    reference = create_image_backbone("tiny-image", image_size=16).state_dict()
    ft = ImageFineTuner(**FAST, epochs=1, batchnorm="frozen").fit(x, y)
    state = ft.model_.backbone.state_dict()
    stats = [k for k in state if k.endswith(("running_mean", "running_var"))]
    convs = [k for k in state if k.endswith("0.weight")]
    assert stats and all(torch.equal(state[k], reference[k]) for k in stats)
    assert any(not torch.equal(state[k], reference[k]) for k in convs)


def test_gradual_unfreezing_and_layer_decay_run():
    x, y = stripes(120)
    ft = ImageFineTuner(**FAST, epochs=3, gradual_unfreeze=True, layer_lr_decay=0.5, early_stopping=False).fit(x, y)
    assert len(ft.history_) == 3


def test_pretrained_false_differs_from_registry_weights():
    x, y = stripes(60)
    ft = ImageFineTuner(**FAST, epochs=1, pretrained=False, baselines=False).fit(x, y)
    reference = create_image_backbone("tiny-image", image_size=16).state_dict()
    first = next(k for k in reference if k.endswith("weight"))
    assert not torch.allclose(ft.model_.backbone.state_dict()[first], reference[first])


def test_bad_settings_are_named():
    with pytest.raises(ConfigError) as err:
        ImageFineTuner(batchnorm="sometimes")
    assert err.value.key == "batchnorm"
    with pytest.raises(ConfigError) as err:
        ImageFineTuner(epochs=0)
    assert err.value.key == "epochs"
    with pytest.raises(ConfigError, match="focal"):
        ImageFineTuner(**FAST, loss="focal", augment={"mixup": 0.2}).fit(*stripes(30))


def test_local_backbone_folder_loads_weights_only(tmp_path):
    src = create_image_backbone("tiny-image")
    folder = tmp_path / "bb"
    folder.mkdir()
    torch.save(src.body.state_dict(), folder / "weights.pth")
    (folder / "config.json").write_text(json.dumps({"architecture": "tiny-image", "image_size": 20}))
    assert backbone_modality(str(folder)) == "image"
    b = create_image_backbone(str(folder))
    assert b.preprocessing.size == 20
    for k, v in src.body.state_dict().items():
        assert torch.equal(b.body.state_dict()[k], v)
    (folder / "config.json").write_text(json.dumps({"architecture": "efficientnet-lite0"}))
    with pytest.raises(ConfigError, match="miss"):
        create_image_backbone(str(folder))


def test_onnx_export_parity_and_predictors_agree(fitted, tmp_path):
    pytest.importorskip("onnxruntime")
    from tunesmith.export import export_onnx
    from tunesmith.export.runtime import load_predictor

    _, folder = fitted
    result = export_onnx(folder)
    assert result.parity["max_abs_diff"] < 1e-4
    with pytest.raises(ConfigError, match="text models only"):
        export_onnx(folder, quantize="int8")
    x = (stripes(8, seed=9)[0] * 255).astype(np.uint8)
    rows = []
    for img in x:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        rows.append({"image": base64.b64encode(buf.getvalue()).decode()})
    onnx_side = load_predictor(folder, backend="onnx")
    torch_side = load_predictor(folder, backend="torch")
    a = onnx_side.predict_rows(rows)
    b = torch_side.predict_rows(rows)
    assert [p.label for p in a] == [p.label for p in b]
    with pytest.raises(DataError, match=r"inputs\[0\].image is not valid base64"):
        onnx_side.predict_rows([{"image": "%%%"}])
    with pytest.raises(DataError, match="unknown field 'text'"):
        onnx_side.predict_rows([{"text": "hello"}])


def test_serving_an_image_model(fitted):
    from fastapi.testclient import TestClient

    from tunesmith.serve import ServeSettings, create_app

    _, folder = fitted
    img = (stripes(1, seed=4)[0][0] * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG")
    payload = {"inputs": [{"image": base64.b64encode(buf.getvalue()).decode()}]}
    settings = ServeSettings(backend="torch", threads=1, api_key=None, admin_token=None)
    with TestClient(create_app(folder, settings)) as client:
        for _ in range(500):
            if client.get("/ready").status_code == 200:
                break
        r = client.post("/v1/predict", json=payload)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["predictions"][0]["label"] in (0, 1, 2)
        assert client.get("/v1/metadata").json()["input_schema"]["image_field"] == "image"
        bad = client.post("/v1/predict", json={"inputs": [{"image": "not-base64!"}]})
        assert bad.status_code == 422 and "base64" in bad.text


def test_cli_fit_predict_evaluate_on_an_image_folder(tmp_path, capsys):
    root = write_folder(tmp_path / "imgs")
    out = tmp_path / "model"
    code, stdout, err = cli(
        capsys,
        "fit",
        str(root),
        "-o",
        str(out),
        "backbone=tiny-image",
        "image_size=16",
        "epochs=1",
        "progress=false",
        f"runs_dir={tmp_path / 'runs'}",
    )
    assert code == 0, err
    assert "test split" in stdout and (out / "tunesmith.json").is_file()
    assert [(r / "report.md").is_file() for r in (tmp_path / "runs").iterdir()] == [True]
    pred = tmp_path / "pred.csv"
    code, stdout, err = cli(capsys, "predict", str(out), str(root), "-o", str(pred), "--proba")
    assert code == 0, err
    frame = pd.read_csv(pred)
    assert len(frame) == 60 and {"path", "prediction", "proba_top"} <= set(frame.columns)
    table = root / "eval.csv"  # paths in a table are relative to the table's folder
    pd.DataFrame({"path": frame["path"], "label": [Path(p).parts[0] for p in frame["path"]]}).to_csv(table, index=False)
    code, stdout, err = cli(capsys, "evaluate", str(out), str(table))
    assert code == 0, err
    assert "accuracy" in stdout
    code, stdout, err = cli(
        capsys, "fit", str(root), "-o", str(tmp_path / "m2"), "backbone=tiny-image", "batchnorm=sometimes"
    )
    assert code != 0 and "batchnorm" in err and "Traceback" not in err
    code, _, err = cli(capsys, "fit", str(root), "-o", str(tmp_path / "m3"), "--group-column", "site")
    assert code != 0 and "--group-column" in err and "not supported for image models" in err


def test_image_artifact_refuses_wrong_kind(fitted, tmp_path):
    _, folder = fitted
    meta = json.loads((folder / "tunesmith.json").read_text())
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tunesmith.json").write_text(json.dumps({**meta, "format_version": 99}))
    (broken / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(ArtifactError, match="format_version"):
        ImageFineTuner.load(broken)
    (broken / "tunesmith.json").write_text(json.dumps({**meta, "kind": "text"}))
    with pytest.raises(ArtifactError, match="not an image model"):
        ImageFineTuner.load(broken)


def test_fit_takes_the_contract_keywords_and_the_old_ones_with_a_warning():
    x, y = stripes(90)
    xv, yv = stripes(20, seed=1)
    xt, yt = stripes(15, seed=2)
    opts = {**FAST, "epochs": 1, "baselines": False}
    new = ImageFineTuner(**opts).fit(x, y, eval_set=(xv, yv), test_set=(xt, yt))
    assert new.split_sizes_ == {"train": 90, "valid": 20, "test": 15}
    with pytest.warns(DeprecationWarning, match="eval_set"):
        old = ImageFineTuner(**opts).fit(x, y, valid=(xv, yv), test=(xt, yt))
    np.testing.assert_array_equal(old.predict_proba(xt), new.predict_proba(xt))
    with pytest.raises(ConfigError, match="same split"):
        ImageFineTuner(**opts).fit(x, y, valid=(xv, yv), eval_set=(xv, yv))
    assert new.score(xt, yt) == new.test_metrics_["accuracy"]


def test_table_target_keyword_for_fit_and_score(tmp_path):
    root = write_folder(tmp_path / "imgs")
    table = pd.DataFrame(
        [{"path": str(p.relative_to(root)), "kind": p.parent.name} for p in sorted(root.rglob("*.png"))]
    )
    ft = ImageFineTuner(**FAST, epochs=1, root=str(root)).fit(table, target="kind")
    assert list(ft.classes_) == ["bottom", "middle", "top"]
    assert 0.0 <= ft.score(table, target="kind") <= 1.0
    with pytest.raises(DataError, match="no label column 'label'"):
        ft.score(table)


def test_every_fit_writes_a_run_record(tmp_path):
    x, y = stripes(120)
    ft = ImageFineTuner(**{**FAST, "runs_dir": str(tmp_path / "runs")}, epochs=2, run_name="stripes").fit(x, y)
    run = Path(ft.run_dir_)
    assert run.parent == tmp_path / "runs" and run.name.endswith("-stripes")
    for name in ("config.yaml", "data.json", "environment.json", "metrics.json", "report.md", "learning_curves.png"):
        assert (run / name).is_file(), name
    data = json.loads((run / "data.json").read_text())
    assert len(data["sha256"]) == 64 and data["rows"]["train"] == 96
    assert data["dropped"]["train"]["dropped_total"] == 0
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == len(ft.history_) == 2
    assert "fine-tuned" in (run / "report.md").read_text()
    assert ImageFineTuner(**FAST, epochs=1).fit(x, y).run_dir_ is None  # runs_dir="" writes none


def test_run_record_counts_unreadable_images_by_reason(tmp_path):
    root = write_folder(tmp_path / "imgs")
    (root / "top" / "broken.png").write_bytes(b"not an image")
    ft = ImageFineTuner(**{**FAST, "runs_dir": str(tmp_path / "runs")}, epochs=1, on_error="skip").fit(root)
    dropped = json.loads((Path(ft.run_dir_) / "data.json").read_text())["dropped"]["train"]
    assert dropped["unreadable_image"] == 1 and dropped["total_rows_in"] == 61
    assert "1 unreadable image" in dropped["summary"]


def test_saved_folder_uses_the_common_metadata_and_version_1_still_loads(fitted, tmp_path):
    from tunesmith.estimators import registry

    ft, folder = fitted
    meta = json.loads((folder / "tunesmith.json").read_text())
    assert meta["format"] == "tunesmith-model" and meta["format_version"] == 2 and meta["kind"] == "image"
    assert meta["settings"] == meta["config"] and meta["label_values"] == [0, 1, 2]
    assert registry.get("image").estimator is ImageFineTuner and registry.of(ft).name == "image"
    old = tmp_path / "v1"
    old.mkdir()
    v1 = {k: v for k, v in meta.items() if k not in ("format", "settings")}
    (old / "tunesmith.json").write_text(json.dumps({**v1, "format_version": 1}))
    (old / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    loaded = registry.load(old)
    assert isinstance(loaded, ImageFineTuner)
    x = stripes(10, seed=6)[0]
    np.testing.assert_allclose(loaded.predict_proba(x), ft.predict_proba(x), atol=1e-6)


def test_clone_and_params():
    from sklearn.base import clone

    ft = ImageFineTuner(**FAST, epochs=2)
    twin = clone(ft)
    assert twin.get_params() == ft.get_params() and not twin.is_fitted
    with pytest.raises(ConfigError):
        ft.set_params(epochs=0)
    assert ft.get_params()["epochs"] == 2


def test_old_import_path_warns_and_gives_the_new_objects():
    import tunesmith.estimators.image as image

    with pytest.warns(DeprecationWarning, match="tunesmith.estimators.image"):
        from tunesmith.vision import ImageFineTuner as Old
    assert Old is ImageFineTuner
    with pytest.warns(DeprecationWarning):
        from tunesmith.vision import ImageConfig, image_model_info, recalibrate_batchnorm
    assert (ImageConfig, image_model_info, recalibrate_batchnorm) == (
        image.ImageConfig,
        image.image_model_info,
        image.recalibrate_batchnorm,
    )
