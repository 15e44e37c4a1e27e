"""Local Hugging Face folders as backbones: safetensors only, no code from the folder."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from tests.conftest import make_reviews
from tunesmith import ArtifactError, ConfigError, FineTuner
from tunesmith.backbones import create_backbone, list_backbones


def _save_tiny_folder(path):
    bb = create_backbone("tiny-text")
    bb.model.save_pretrained(str(path), safe_serialization=True)
    bb.tokenizer.save_pretrained(str(path))
    return bb


def test_registry_lists_names():
    assert {"minilm-l6", "tiny-text"} <= set(list_backbones())


def test_local_folder_backbone_loads_same_weights(tmp_path):
    original = _save_tiny_folder(tmp_path / "enc")
    loaded = create_backbone(str(tmp_path / "enc"))
    assert loaded.hidden_size == original.hidden_size
    assert torch.equal(loaded.model.embeddings.word_embeddings.weight, original.model.embeddings.word_embeddings.weight)
    assert loaded.fingerprint.startswith("sha256:")


def test_local_folder_fits_and_reloads_head_only(tmp_path, monkeypatch):
    _save_tiny_folder(tmp_path / "enc")
    monkeypatch.chdir(tmp_path)
    ft = FineTuner(
        backbone="enc",
        strategy="head_only",
        epochs=2,
        lr=1e-2,
        batch_size=8,
        progress=False,
        runs_dir="",
        baselines=False,
        num_threads=1,
    ).fit(make_reviews(32), target="label")
    ft.save(tmp_path / "model")
    import tunesmith

    monkeypatch.chdir(tmp_path / "model")  # the backbone path was stored resolved
    # A path in a model folder's metadata is never opened on the folder's word: the caller names it.
    with pytest.raises(ArtifactError, match=r"field 'backbone.name'.*is a path.*backbone="):
        tunesmith.load(tmp_path / "model")
    loaded = tunesmith.load(tmp_path / "model", backbone=str(tmp_path / "enc"))
    assert loaded.predict(["great fun"]).shape == (1,)


def test_cli_names_the_backbone_of_a_head_only_model(tmp_path, monkeypatch, capsys):
    from tunesmith.cli import main

    _save_tiny_folder(tmp_path / "enc")
    ft = FineTuner(
        backbone=str(tmp_path / "enc"),
        strategy="head_only",
        epochs=1,
        batch_size=8,
        progress=False,
        runs_dir="",
        baselines=False,
        num_threads=1,
    ).fit(make_reviews(32), target="label")
    ft.save(tmp_path / "model")
    make_reviews(12).to_csv(tmp_path / "rows.csv", index=False)

    def run(*args: str) -> tuple[int, str]:
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        return code, capsys.readouterr().err

    common = ["predict", str(tmp_path / "model"), str(tmp_path / "rows.csv"), "-o", str(tmp_path / "out.csv"), "-q"]
    code, err = run(*common)
    assert code == 2 and "Traceback" not in err
    assert "field 'backbone.name'" in err and "backbone=" in err
    assert not (tmp_path / "out.csv").exists()
    code, err = run(*common, "--backbone", str(tmp_path / "enc"))
    assert code == 0, err
    assert len(pd.read_csv(tmp_path / "out.csv")) == 12
    model, rows, enc = str(tmp_path / "model"), str(tmp_path / "rows.csv"), str(tmp_path / "enc")
    code, err = run("evaluate", model, rows, "--backbone", enc)
    assert code == 0, err
    from tunesmith.serve.app import load_checked

    with pytest.raises(ArtifactError, match=r"field 'backbone.name'"):
        load_checked(tmp_path / "model", backend="torch", precision="auto", threads=1, version=None)
    served = load_checked(tmp_path / "model", backend="torch", precision="auto", threads=1, version=None, backbone=enc)
    assert served.metadata()["backbone"] == enc


def test_folder_with_pickle_weights_only_is_refused(tmp_path):
    _save_tiny_folder(tmp_path / "enc")
    (tmp_path / "enc" / "model.safetensors").rename(tmp_path / "enc" / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="no model.safetensors.*only safetensors"):
        create_backbone(str(tmp_path / "enc"))


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no config.json"):
        create_backbone(str(tmp_path / "empty"))
