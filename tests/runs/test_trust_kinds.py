"""Image, tabular and recommender folders as trust boundaries: every tampered folder is one ArtifactError.

Each test builds a good folder, tampers with one thing, and checks that loading refuses it with
an :class:`~tunesmith.errors.ArtifactError` naming the file and the field, before anything is
allocated or opened elsewhere, and without a crash: LightGBM's parser aborts the process on some
malformed files, so those tests load in this very process (were the check missing, pytest
itself would die).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

import tunesmith.tabular.lightgbm_check as lightgbm_check
from tests.cli.test_cli import cli
from tunesmith.errors import ArtifactError, ConfigError
from tunesmith.estimators.image import ImageFineTuner
from tunesmith.export.modal import ImagePredictor, TabularPredictor
from tunesmith.recsys.recommender import Recommender
from tunesmith.serve.recommend import RecommenderPredictor, folder_task
from tunesmith.tabular import TabularFineTuner

# --- building good folders --------------------------------------------------------------------


def _table(n: int = 160, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    color = rng.choice(["red", "green", "blue"], size=n)
    label = np.where(x1 - x2 + np.where(color == "red", 1.5, -0.5) > 0, "yes", "no")
    return pd.DataFrame({"x1": x1, "x2": x2, "color": color, "label": label})


TAB_FAST: dict[str, Any] = {
    "n_estimators": 20,
    "early_stopping_rounds": 5,
    "epochs": 3,
    "hidden": (8,),
    "progress": False,
}


@pytest.fixture(scope="module")
def tabular(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = TabularFineTuner(target="label", model="ensemble", **TAB_FAST).fit(_table())
    return model.save(tmp_path_factory.mktemp("trust") / "tabular")


@pytest.fixture(scope="module")
def tabular_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    df = _table()
    df["note"] = np.where(df["label"] == "yes", "a fine thing", "a poor thing")
    model = TabularFineTuner(target="label", model="lightgbm", text_backbone="tiny-text", text_dims=2, **TAB_FAST).fit(
        df
    )
    return model.save(tmp_path_factory.mktemp("trust") / "tabular_text")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    x = rng.random((30, 16, 16)).astype(np.float32)
    y = np.arange(30) % 3
    ft = ImageFineTuner(backbone="tiny-image", image_size=16, epochs=1, progress=False, baselines=False).fit(x, y)
    return ft.save(tmp_path_factory.mktemp("trust") / "image")


def _log(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(12):
        for t, i in enumerate(rng.choice(12, size=5, replace=False)):
            rows.append({"user_id": f"u{u}", "item_id": f"i{i}", "timestamp": t})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def sasrec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    fast = {"epochs": 1, "batch_size": 64}
    rec = Recommender(
        "sasrec",
        seq={"dim": 8, "layers": 1, "heads": 2, "max_len": 5, "dropout": 0.0},
        pretrain=False,
        finetune_settings=fast,
        threads=1,
    ).fit(_log())
    return rec.save(tmp_path_factory.mktemp("trust") / "sasrec")


@pytest.fixture(scope="module")
def popularity(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Recommender("popularity").fit(_log()).save(tmp_path_factory.mktemp("trust") / "popularity")


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def _tamper(folder: Path, tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of ``folder`` whose tunesmith.json went through ``change``."""
    out = _copy(folder, tmp_path)
    meta = json.loads((out / "tunesmith.json").read_text())
    change(meta)
    (out / "tunesmith.json").write_text(json.dumps(meta))
    return out


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(meta: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = meta
        for p in parents:
            node = node[p]
        node[last] = value

    return change


def _one_line(exc: pytest.ExceptionInfo[ArtifactError]) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


# --- LightGBM: validated before it is loaded in this process -----------------------------------


def _lgb_text(folder: Path) -> str:
    return (folder / "lightgbm.txt").read_text()


def _write_lgb(folder: Path, tmp_path: Path, text: str) -> Path:
    out = _copy(folder, tmp_path)
    (out / "lightgbm.txt").write_text(text)
    return out


def _crashing_text(text: str) -> str:
    """Valid for LightGBM's loader, but the first tree's root points far out of its arrays."""
    lines = [ln for ln in text.split("\n") if not ln.startswith("tree_sizes=")]
    for key in ("left_child=", "right_child="):
        at = next(i for i, ln in enumerate(lines) if ln.startswith(key))
        values = lines[at][len(key) :].split()
        values[0] = "2000000000"
        lines[at] = key + " ".join(values)
    return "\n".join(lines)


def test_a_lightgbm_file_that_crashes_lightgbm_is_refused_and_the_process_survives(tabular, tmp_path, monkeypatch):
    # The Python-side checks would refuse this text already; turned off here, the child process
    # must be what stands between LightGBM and this process.
    monkeypatch.setattr(lightgbm_check, "check_lightgbm_text", lambda text, **kw: None)
    folder = _write_lgb(tabular, tmp_path, _crashing_text(_lgb_text(tabular)))
    with pytest.raises(ArtifactError, match=r"lightgbm\.txt: not a usable LightGBM model: LightGBM crashed") as exc:
        TabularFineTuner.load(folder)
    _one_line(exc)


def test_truncated_lightgbm_file_is_refused(tabular, tmp_path):
    text = _lgb_text(tabular)
    folder = _write_lgb(tabular, tmp_path, text[: len(text) // 2])
    with pytest.raises(ArtifactError, match=r"lightgbm\.txt: not a usable LightGBM model") as exc:
        TabularFineTuner.load(folder)
    assert "re-save" in _one_line(exc)


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (lambda t: t.replace("tree_sizes=", "tree_sizes=9", 1), "tree_sizes"),
        (lambda t: t.replace("num_class=1", "num_class=1000000000", 1), "num_class"),
        (lambda t: t.replace("max_feature_idx=", "max_feature_idx=9", 1), "max_feature_idx"),
        (lambda t: t.replace("num_leaves=", "num_leaves=9", 1), "tree 0"),
        (lambda t: t.replace("left_child=", "left_child=1 ", 1), "tree 0 left_child"),
        (lambda t: t.replace("split_feature=", "split_feature=77 ", 1), "tree 0 split_feature"),
        (lambda t: t.replace("objective=binary", "objective=regression", 1), "objective"),
        (lambda t: t.replace("Tree=0", "Tree=5", 1), "Tree=0"),
        (lambda t: t.replace("tree\n", "\x00tree\n", 1), "NUL"),
        (lambda t: t.replace("end of trees", "end of tress", 1), "should be 'Tree="),
        (lambda t: "garbage\n", "'tree' line"),
    ],
)
def test_malformed_lightgbm_files_are_named(tabular, tmp_path, edit, says):
    folder = _write_lgb(tabular, tmp_path, edit(_lgb_text(tabular)))
    with pytest.raises(ArtifactError, match=r"lightgbm\.txt") as exc:
        TabularFineTuner.load(folder)
    assert says in _one_line(exc)


def test_lightgbm_file_size_is_bounded(tabular, tmp_path, monkeypatch):
    monkeypatch.setattr(lightgbm_check, "MAX_LIGHTGBM_BYTES", 1000)
    with pytest.raises(ArtifactError, match=r"lightgbm\.txt is [\d,]+ bytes, over the 1,000-byte limit"):
        TabularFineTuner.load(_copy(tabular, tmp_path))


def test_lightgbm_verdict_is_cached_and_its_cost_is_small(tabular, tmp_path, monkeypatch, capsys):
    text = _lgb_text(tabular)
    lightgbm_check._verdicts.clear()
    started = time.perf_counter()
    assert lightgbm_check._child_verdict(text, "fresh-digest") is None
    child = time.perf_counter() - started
    TabularFineTuner.load(tabular)  # caches the verdict of this file

    def no_child(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the child process ran again for a file already checked")

    monkeypatch.setattr(subprocess, "run", no_child)
    started = time.perf_counter()
    loaded = TabularFineTuner.load(tabular)
    cached = time.perf_counter() - started
    assert loaded.predict(_table(5, seed=1)).shape == (5,)
    with capsys.disabled():
        print(f"\n[lightgbm child check: {child:.3f} s; a cached tabular load: {cached:.3f} s]")
    assert child < 10


def test_lightgbm_file_named_outside_the_folder_is_refused(tabular, tmp_path):
    for value in ("/etc/passwd", "../lightgbm.txt"):
        folder = _tamper(tabular, tmp_path / value.replace("/", "_"), _set("lightgbm", value))
        with pytest.raises(ArtifactError, match=r"tunesmith\.json: field 'lightgbm'"):
            TabularFineTuner.load(folder)


def test_lightgbm_link_out_of_the_folder_is_refused(tabular, tmp_path):
    folder = _copy(tabular, tmp_path)
    (folder / "lightgbm.txt").unlink()
    (folder / "lightgbm.txt").symlink_to(tabular / "lightgbm.txt")
    with pytest.raises(ArtifactError, match="symbolic link"):
        TabularFineTuner.load(folder)


# --- tabular metadata --------------------------------------------------------------------------


def test_text_backbone_paths_are_never_opened(tabular_text, tmp_path):
    for i, value in enumerate(("/abs", "../x", "some/relative/folder")):
        folder = _tamper(tabular_text, tmp_path / str(i), _set("preprocessor.text_backbone", value))
        with pytest.raises(ArtifactError, match=r"tunesmith\.json: field 'preprocessor\.text_backbone'") as exc:
            TabularFineTuner.load(folder)
        assert "TabularFineTuner.load(folder, backbone=...)" in _one_line(exc)
    # Given explicitly, the backbone is the caller's choice (and its weights are still checked).
    loaded = TabularFineTuner.load(folder, backbone="tiny-text")
    assert loaded.preprocessor_ is not None and loaded.preprocessor_.text_backbone == "tiny-text"
    assert loaded.text_backbone == "tiny-text"
    with pytest.raises(ArtifactError, match="different weights|wide vectors"):
        TabularFineTuner.load(folder, backbone="minilm-l6")
    # A backbone the caller names and that does not exist is the caller's setting, not the folder's fault.
    with pytest.raises(ConfigError, match="unknown backbone"):
        TabularFineTuner.load(folder, backbone="no-such-backbone")


def test_text_backbone_path_of_a_model_without_text_columns_is_inert(tabular, tmp_path):
    folder = _tamper(tabular, tmp_path, _set("preprocessor.text_backbone", "/abs"))
    assert TabularFineTuner.load(folder).predict(_table(3)).shape == (3,)


@pytest.mark.parametrize(
    ("path", "value", "says"),
    [
        ("n_outputs", "2", "field 'n_outputs' must be integer, got string"),
        ("n_outputs", 3, "field 'n_outputs' is 3"),
        ("chosen", 5, "field 'chosen' must be string"),
        ("chosen", "forest", "field 'chosen' must be one of"),
        ("schema", "x", "field 'schema' must be a JSON object"),
        ("schema.labels", ["no", "no"], "field 'schema.labels' must be a list of distinct strings"),
        ("label_values", [{"a": 1}, 2], "field 'label_values'"),
        ("preprocessor", [], "field 'preprocessor' must be object"),
        ("preprocessor.vocabularies", [], "field 'preprocessor.vocabularies' must be object"),
        ("preprocessor.vocabularies.color", "red", "field 'preprocessor.vocabularies.color' must be a list"),
        ("preprocessor.vocabularies.color", ["red", "red"], "field 'preprocessor.vocabularies.color' repeats"),
        ("preprocessor.means", ["x"], "field 'preprocessor.means' must hold finite numbers"),
        ("preprocessor.stds", [1.0], "'preprocessor.stds' must hold"),
        ("preprocessor.medians", {"x1": 0.0}, "field 'preprocessor.medians'"),
        ("preprocessor.numeric_columns", ["x1", "x1"], "field 'preprocessor.numeric_columns' repeats"),
        ("preprocessor.version", 7, "preprocessor version 7 is not supported"),
        ("net", [1], "field 'net' must be object"),
        ("net.hidden", [10**9], "field 'net.hidden' must be a list of at most"),
        ("net.hidden", [64], "the metadata describes tensor 'net.mlp.0.weight' as [64,"),
        ("net.n_numeric", 10**6, "field 'net' describes inputs"),
        ("net.dropout", "x", "field 'net.dropout' must be number"),
        ("net.norm", "group", "field 'net.norm' must be one of"),
        ("target_scaling", {"mean": "x", "std": 1}, "field 'target_scaling.mean'"),
        ("format_version", True, "model format version True is not supported"),
        ("config", "x", "field 'config' must be object"),
    ],
)
def test_tabular_fields_of_the_wrong_type_or_size_are_named(tabular, tmp_path, path, value, says):
    folder = _tamper(tabular, tmp_path, _set(path, value))
    with pytest.raises(ArtifactError) as exc:
        TabularFineTuner.load(folder)
    text = _one_line(exc)
    assert says in text, text
    assert "tunesmith.json" in text or "model.safetensors" in text


def test_tabular_predictor_uses_only_checked_values(tabular, tmp_path):
    # a report-only tabular field of the wrong shape is dropped; the common 'metrics' field is checked
    folder = _tamper(tabular, tmp_path, _set("candidates", ["not", "a", "dict"]))
    meta = json.loads((folder / "tunesmith.json").read_text())
    predictor = TabularPredictor(folder, meta, backend="torch", batch_size=8, threads=None, version="v")
    assert TabularFineTuner.load(folder).candidates_ == {}
    with pytest.raises(ArtifactError, match="field 'metrics' must be object"):
        TabularFineTuner.load(_tamper(tabular, tmp_path / "metrics", _set("metrics", ["not", "a", "dict"])))
    assert predictor.predict_rows([{"x1": 0.5, "x2": -1.0, "color": "red"}])[0].label in ("yes", "no")
    bad = _tamper(tabular, tmp_path / "bad", _set("preprocessor.means", "x"))
    with pytest.raises(ArtifactError, match="preprocessor.means"):
        TabularPredictor(bad, meta, backend="torch", batch_size=8, threads=None, version="v")


# --- image metadata ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "says"),
    [
        ("preprocessing.size", 10**6, "field 'preprocessing.size' must be within [8, 1024]"),
        ("preprocessing.size", 3000, "field 'preprocessing.size' must be within [8, 1024]"),
        ("preprocessing.size", "16", "field 'preprocessing.size' must be integer"),
        ("preprocessing.mean", [0.5, 0.5], "field 'preprocessing.mean' must hold three finite numbers"),
        ("preprocessing.std", [0.5, 0.0, 0.5], "field 'preprocessing.std' must hold three finite numbers above 0"),
        ("preprocessing.resize", "stretch", "field 'preprocessing.resize' must be one of"),
        ("n_outputs", 10**9, "field 'n_outputs' must be within"),
        ("n_outputs", 5, "field 'n_outputs' is 5 but field 'labels' holds 3"),
        ("labels", ["0", "0", "1"], "field 'labels' must be a list of distinct strings"),
        ("labels", "012", "field 'labels' must be array"),
        ("label_values", [[0], 1, 2], "field 'label_values'"),
        ("task", "regression", "field 'task' must be one of"),
        ("backbone", "tiny-image", "field 'backbone' must be a JSON object"),
        ("backbone.hidden_size", 64, "field 'backbone.hidden_size' is 64"),
        ("backbone.architecture.family", "resnet", "field 'backbone.architecture.family' must be one of"),
        (
            "backbone.architecture",
            {"family": "efficientnet", "variant": "efficientnet-b0", "image_size": 10**6},
            "field 'backbone.architecture.image_size' must be within",
        ),
        (
            "backbone.architecture",
            {"family": "efficientnet", "variant": "../x", "image_size": 16},
            "field 'backbone.architecture.variant' must be one of",
        ),
        (
            "backbone.architecture",
            {"family": "timm", "model": "hf-hub:evil/model"},
            "field 'backbone.architecture.model' must be a timm architecture name",
        ),
        ("backbone.architecture", {"family": "timm", "model": 7}, "field 'backbone.architecture.model' must be string"),
        ("backbone.architecture.seed", "0", "field 'backbone.architecture.seed' must be integer"),
        ("config.epochs", -1, "field 'config.epochs'"),
        ("config.nonsense", 1, "field 'config.nonsense'"),
        ("format_version", 3, "format_version"),
    ],
)
def test_image_fields_of_the_wrong_type_or_size_are_named(image, tmp_path, path, value, says):
    folder = _tamper(image, tmp_path, _set(path, value))
    with pytest.raises(ArtifactError) as exc:
        ImageFineTuner.load(folder)
    text = _one_line(exc)
    assert says in text and "tunesmith.json" in text, text


def test_image_timm_family_without_timm_is_an_artifact_error(image, tmp_path):
    pytest.importorskip("tunesmith")  # always present; the check below depends on timm's absence
    if __import__("importlib.util").util.find_spec("timm") is not None:
        pytest.skip("timm is installed")
    folder = _tamper(image, tmp_path, _set("backbone.architecture", {"family": "timm", "model": "resnet18"}))
    with pytest.raises(ArtifactError, match="timm is not installed"):
        ImageFineTuner.load(folder)


def test_image_weights_must_match_the_declared_architecture(image, tmp_path):
    folder = _copy(image, tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["head.linear.weight"] = torch.zeros(7, tensors["head.linear.weight"].shape[1])
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(
        ArtifactError, match=r"model\.safetensors: the metadata describes tensor 'head\.linear\.weight'"
    ):
        ImageFineTuner.load(folder)
    extra = _copy(image, tmp_path / "extra")
    tensors = load_file(str(extra / "model.safetensors"))
    tensors["spare"] = torch.zeros(3)
    save_file(tensors, str(extra / "model.safetensors"))
    with pytest.raises(ArtifactError, match="'spare' that the architecture in the metadata does not have"):
        ImageFineTuner.load(extra)


def test_image_predictor_checks_the_folder_itself(image, tmp_path):
    meta = json.loads((image / "tunesmith.json").read_text())
    good = ImagePredictor(image, {"metrics": 1}, backend="torch", batch_size=4, threads=None, version="v")
    assert good.metadata()["metrics"] == {} and good.pre.size == 16
    # The meta handed in is not trusted: the predictor reads the folder through the trust checks.
    bad = _tamper(image, tmp_path, _set("preprocessing.size", 10**6))
    with pytest.raises(ArtifactError, match="preprocessing.size"):
        ImagePredictor(bad, meta, backend="torch", batch_size=4, threads=None, version="v")


# --- recommenders ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "says"),
    [
        ("model_state.n_items", 10**9, "field 'model_state.n_items' is 1000000000 but field 'items' lists"),
        ("model_state.n_items", "12", "field 'model_state.n_items' must be integer"),
        ("items", {"i0": 0}, "field 'items' must be array"),
        ("items", None, "field 'items' must be array, got null"),
        ("users", [1, 2, 3], "field 'users' must list string ids"),
        ("model_state.config", "x", "field 'model_state.config' must be object"),
        ("model_state.config.heads", 3, "field 'model_state.config.heads'"),
        ("model_state.config.dim", 10**6, r"field 'model_state.config.dim': must be at most 8,192"),
        ("model_state.config.dim", 4096, "the metadata describes tensor 'model.net.item_emb.weight'"),
        ("model_state.config.max_len", 10**9, r"field 'model_state.config.max_len': must be at most 100,000"),
        ("model_state.config.max_len", 1000, "the metadata describes tensor 'model.net.pos_emb.weight'"),
        ("model_state.config.layers", 40, "field 'model_state.config.layers' is 40 but the weights hold 1 layers"),
        ("model_state.config.bogus", 1, "field 'model_state.config' holds the unknown setting 'bogus'"),
        ("settings", "x", "field 'settings' must be object"),
        ("settings.seq", "x", "field 'settings.seq'"),
        ("settings.wizard", True, "unknown setting 'wizard'"),
        ("model", "lstm", "field 'model' must be one of"),
        ("format_version", "1", "recommender format version '1' is not supported"),
    ],
)
def test_sasrec_fields_of_the_wrong_type_or_size_are_named(sasrec, tmp_path, path, value, says):
    folder = _tamper(sasrec, tmp_path, _set(path, value))
    with pytest.raises(ArtifactError) as exc:
        Recommender.load(folder)
    text = _one_line(exc)
    assert says in text and ("tunesmith.json" in text or "model.safetensors" in text), text


def test_recommender_id_maps_must_agree_with_the_embeddings(sasrec, popularity, tmp_path):
    def grow(meta: dict[str, Any]) -> None:
        meta["items"] = meta["items"] + [f"extra{i}" for i in range(10**5)]
        meta["model_state"]["n_items"] = len(meta["items"])

    with pytest.raises(ArtifactError, match="the metadata describes tensor 'model.net.item_emb.weight'"):
        Recommender.load(_tamper(sasrec, tmp_path / "s", grow))
    with pytest.raises(ArtifactError, match="the metadata describes tensor 'model.counts'"):
        Recommender.load(_tamper(popularity, tmp_path / "p", grow))

    def twice(meta: dict[str, Any]) -> None:
        meta["items"][1] = meta["items"][0]

    with pytest.raises(ArtifactError, match=r"field 'items' lists the id 'i\d+' twice"):
        Recommender.load(_tamper(popularity, tmp_path / "t", twice))
    more_users = _tamper(popularity, tmp_path / "u", lambda m: m["users"].append("stranger"))
    with pytest.raises(ArtifactError, match="the metadata describes tensor 'history.indptr'"):
        Recommender.load(more_users)


def test_recommender_histories_must_index_the_catalogue(popularity, tmp_path):
    folder = _copy(popularity, tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["history.indices"] = tensors["history.indices"].clone()
    tensors["history.indices"][0] = 10**6
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ArtifactError, match="do not describe histories of the catalogue's items"):
        Recommender.load(folder)
    floats = _copy(popularity, tmp_path / "f")
    tensors = load_file(str(floats / "model.safetensors"))
    tensors["history.indptr"] = tensors["history.indptr"].double()
    save_file(tensors, str(floats / "model.safetensors"))
    with pytest.raises(ArtifactError, match="tensor 'history.indptr' has dtype F64"):
        Recommender.load(floats)


def test_popularity_state_of_the_wrong_model_is_named(popularity, tmp_path):
    folder = _tamper(popularity, tmp_path, _set("model_state.model", "EASE"))
    with pytest.raises(ArtifactError, match="field 'model_state.model' must be one of 'Popularity'"):
        Recommender.load(folder)


def test_content_backbone_path_from_a_folder_is_never_opened(sasrec, tmp_path):
    folder = _tamper(sasrec, tmp_path, _set("settings.content_backbone", "/abs/backbone"))
    rec = Recommender.load(folder)  # loads: nothing is opened yet
    assert rec.recommend("u1", k=3)
    with pytest.raises(ArtifactError, match="content_backbone=") as exc:
        rec._embed(["a text"])
    assert "/abs/backbone" in _one_line(exc)


def test_recommender_serving_reads_through_the_trust_checks(popularity, tmp_path):
    predictor = RecommenderPredictor.load(popularity, version="v")
    info = predictor.metadata()
    assert info["created"] and info["tunesmith_version"]
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "tunesmith.json")
    assert stat.S_ISFIFO(os.lstat(fifo / "tunesmith.json").st_mode)
    assert folder_task(fifo) is None  # refused, not blocked on
    bad = _tamper(popularity, tmp_path, _set("users", "u1"))
    with pytest.raises(ArtifactError, match="field 'users' must be array"):
        RecommenderPredictor.load(bad)


# --- the command line: one line, never a traceback ----------------------------------------------


def test_cli_prints_one_line_for_tampered_folders(tabular, image, tmp_path, capsys):
    rows = tmp_path / "rows.csv"
    _table(5, seed=2).to_csv(rows, index=False)
    cases = [
        (_write_lgb(tabular, tmp_path / "a", _lgb_text(tabular)[:500]), "lightgbm.txt"),
        (_tamper(tabular, tmp_path / "b", _set("net.hidden", "x")), "field 'net.hidden'"),
        (_tamper(image, tmp_path / "c", _set("preprocessing.size", 10**6)), "field 'preprocessing.size'"),
    ]
    for folder, says in cases:
        code, _, err = cli(capsys, "predict", str(folder), str(rows), "-o", str(tmp_path / "out.csv"))
        assert code != 0 and says in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err


def test_recommender_layer_count_must_match_the_weights_before_anything_is_built(sasrec, tmp_path):
    from tunesmith.recsys.sequential import SEQ_LIMITS

    folder = _tamper(sasrec, tmp_path, _set("model_state.config.layers", 3_000_000))
    started = time.perf_counter()
    with pytest.raises(ArtifactError, match=rf"model_state.config.layers.*at most {SEQ_LIMITS['layers']}"):
        Recommender.load(folder)
    assert time.perf_counter() - started < 5
    folder = _tamper(sasrec, tmp_path / "b", _set("model_state.config.layers", SEQ_LIMITS["layers"]))
    with pytest.raises(ArtifactError, match=r"field 'model_state.config.layers' is 48 but the weights hold"):
        Recommender.load(folder)


@pytest.mark.parametrize("kind", ["tabular", "image", "popularity"])
def test_a_load_scans_the_folder_once(kind, request, monkeypatch):
    import tunesmith
    import tunesmith.runs.trust as trust

    folder = request.getfixturevalue(kind)
    scans = []
    real = trust._scan
    monkeypatch.setattr(trust, "_scan", lambda *a, **k: scans.append(a[0]) or real(*a, **k))
    tunesmith.load(folder)
    assert len(scans) == 1
    if kind != "popularity":
        scans.clear()
        from tunesmith.export.runtime import load_predictor

        load_predictor(folder, backend="torch")
        assert len(scans) == 1


def test_a_server_load_scans_the_folder_once(tabular, monkeypatch):
    import tunesmith.runs.trust as trust
    from tunesmith.serve.app import load_checked

    scans = []
    real = trust._scan
    monkeypatch.setattr(trust, "_scan", lambda *a, **k: scans.append(a[0]) or real(*a, **k))
    served = load_checked(tabular, backend="torch", precision="auto", threads=1, version=None)
    assert len(scans) == 1
    served.close()
