"""Artifacts: atomic writes, atomic folders, pickle refusal, safetensors round trips."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tunesmith.errors import ArtifactError
from tunesmith.runs.artifacts import (
    UNSAFE_SUFFIXES,
    AtomicDirectory,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_safe_model_dir,
    json_safe,
    load_tensors,
    save_tensors,
)


def _model_dir(root: Path) -> Path:
    folder = root / "model"
    folder.mkdir()
    (folder / "tunesmith.json").write_text("{}")
    save_tensors(folder / "model.safetensors", {"w": torch.ones(2, 2)})
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "tokenizer.json").write_text('{"version": "1.0"}')
    return folder


# --- JSON --------------------------------------------------------------------------------------


def test_json_safe_converts_nan_and_numpy():
    obj = {
        "nan": float("nan"),
        "inf": np.float64("inf"),
        "i": np.int64(3),
        "f": np.float32(0.5),
        "b": np.bool_(True),
        "arr": np.array([[1.0, np.nan]]),
        "t": torch.tensor([1, 2]),
        "tuple": (1, Path("a/b")),
        7: "int key",
    }
    out = json_safe(obj)
    assert out == {
        "nan": None,
        "inf": None,
        "i": 3,
        "f": 0.5,
        "b": True,
        "arr": [[1.0, None]],
        "t": [1, 2],
        "tuple": [1, "a/b"],
        "7": "int key",
    }
    assert type(out["i"]) is int and type(out["f"]) is float and type(out["b"]) is bool
    json.dumps(out, allow_nan=False)


def test_atomic_write_json_nan_becomes_null(tmp_path):
    path = atomic_write_json(tmp_path / "sub" / "m.json", {"b": float("nan"), "a": np.float64(1.5)})
    text = path.read_text()
    assert json.loads(text) == {"a": 1.5, "b": None}
    assert text.index('"a"') < text.index('"b"')  # sorted keys
    assert "NaN" not in text and text.endswith("\n")
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "bad.json", {"x": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]  # the failed write left nothing behind


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    assert target.stat().st_mode & 0o777 == 0o644


# --- AtomicDirectory ---------------------------------------------------------------------------


def test_atomic_directory_creates_on_success(tmp_path):
    final = tmp_path / "out" / "model"
    with AtomicDirectory(final) as tmp:
        assert tmp.parent == final.parent and tmp != final and not final.exists()
        (tmp / "tunesmith.json").write_text("{}")
    assert (final / "tunesmith.json").read_text() == "{}"
    assert [p.name for p in final.parent.iterdir()] == ["model"]


def test_atomic_directory_refuses_existing_without_overwrite(tmp_path):
    final = _model_dir(tmp_path)
    with pytest.raises(ArtifactError, match="already exists") as err, AtomicDirectory(final):
        pass
    assert "overwrite=True" in str(err.value)
    assert (final / "tunesmith.json").read_text() == "{}"


def test_atomic_directory_keeps_old_folder_when_body_raises(tmp_path):
    final = _model_dir(tmp_path)
    before = sorted(p.relative_to(final) for p in final.rglob("*"))
    with pytest.raises(RuntimeError, match="boom"), AtomicDirectory(final, overwrite=True) as tmp:
        (tmp / "tunesmith.json").write_text('{"new": true}')
        raise RuntimeError("boom")
    assert sorted(p.relative_to(final) for p in final.rglob("*")) == before
    assert (final / "tunesmith.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # the temporary folder is gone


def test_atomic_directory_overwrite_replaces(tmp_path):
    final = _model_dir(tmp_path)
    with AtomicDirectory(final, overwrite=True) as tmp:
        (tmp / "tunesmith.json").write_text('{"v": 2}')
    assert json.loads((final / "tunesmith.json").read_text()) == {"v": 2}
    assert not (final / "model.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert final.stat().st_mode & 0o777 == 0o755


def test_atomic_directory_overwrite_refuses_unrelated_folder(tmp_path):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(ArtifactError, match="does not look like"), AtomicDirectory(precious, overwrite=True):
        pass
    assert (precious / "thesis.tex").exists()
    with AtomicDirectory(precious, overwrite=True, marker=None) as tmp:
        (tmp / "x").write_text("x")
    assert [p.name for p in precious.iterdir()] == ["x"]


def test_atomic_directory_refuses_a_file(tmp_path):
    (tmp_path / "m").write_text("file")
    with pytest.raises(ArtifactError, match="not a folder"), AtomicDirectory(tmp_path / "m", overwrite=True):
        pass


# --- pickle refusal ----------------------------------------------------------------------------


def test_clean_model_dir_passes(tmp_path):
    folder = _model_dir(tmp_path)
    assert check_safe_model_dir(folder) == folder
    assert check_safe_model_dir(str(folder)) == folder


def test_missing_folder_and_missing_info(tmp_path):
    with pytest.raises(ArtifactError, match="no model folder here") as err:
        check_safe_model_dir(tmp_path / "nope")
    assert "save()" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match=r"tunesmith\.json"):
        check_safe_model_dir(tmp_path / "empty")


def test_pickle_refused_by_suffix(tmp_path):
    folder = _model_dir(tmp_path)
    (folder / "weights.bin").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ArtifactError, match=r"refusing to load.*unsafe file 'weights\.bin'") as err:
        check_safe_model_dir(folder)
    assert "re-save it with the estimator's save()" in str(err.value)


@pytest.mark.parametrize("suffix", sorted(UNSAFE_SUFFIXES))
def test_every_unsafe_suffix_refused_even_when_empty(tmp_path, suffix):
    folder = _model_dir(tmp_path)
    (folder / f"thing{suffix}").write_bytes(b"")
    with pytest.raises(ArtifactError, match="pickle"):
        check_safe_model_dir(folder)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickle_refused_by_content(tmp_path, protocol):
    folder = _model_dir(tmp_path)
    (folder / "x.safetensors").write_bytes(pickle.dumps({"a": np.arange(3)}, protocol=protocol))
    with pytest.raises(ArtifactError, match=r"unsafe file 'x.safetensors'.*protocol"):
        check_safe_model_dir(folder)


def test_torch_save_zip_refused_in_a_subfolder(tmp_path):
    folder = _model_dir(tmp_path)
    torch.save({"w": torch.ones(2)}, folder / "tokenizer" / "vocab.json")  # zip archive with data.pkl
    with pytest.raises(ArtifactError, match=r"tokenizer/vocab.json.*zip archive.*data.pkl"):
        check_safe_model_dir(folder)


def test_numpy_file_refused_by_content(tmp_path):
    folder = _model_dir(tmp_path)
    with (folder / "extra.dat").open("wb") as fh:
        np.save(fh, np.arange(3))
    with pytest.raises(ArtifactError, match="NumPy"):
        check_safe_model_dir(folder)


def test_safetensors_with_pickle_like_header_length_is_not_refused(tmp_path):
    """A safetensors header of 640 bytes starts with b'\\x80\\x02', like a protocol-2 pickle."""
    folder = _model_dir(tmp_path)
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    header += b" " * (640 - len(header))
    data = (640).to_bytes(8, "little") + header + np.float32(3.0).tobytes()
    assert data[:2] == b"\x80\x02"
    (folder / "model.safetensors").write_bytes(data)
    check_safe_model_dir(folder)
    assert float(load_tensors(folder / "model.safetensors")["w"]) == 3.0


# --- tensors -----------------------------------------------------------------------------------


def test_save_and_load_tensors_with_shared_and_strided_storage(tmp_path):
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {
        "emb": base,
        "tied": base,  # tied weights: same storage twice
        "row": base[1],  # a view into part of a buffer
        "t": base.t(),  # not contiguous
        "half": torch.ones(2, dtype=torch.float16, requires_grad=True),
    }
    path = save_tensors(tmp_path / "m.safetensors", tensors, {"format": "tunesmith", "n": 3})  # type: ignore[dict-item]
    loaded = load_tensors(path)
    assert set(loaded) == set(tensors)
    for name, value in tensors.items():
        assert torch.equal(loaded[name], value.detach()), name
        assert loaded[name].dtype == value.dtype
    with safe_open(str(path), framework="pt") as fh:
        assert fh.metadata() == {"format": "tunesmith", "n": "3"}
    assert set(load_file(str(path))) == set(tensors)  # a standard safetensors file
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_load_tensors_errors(tmp_path):
    with pytest.raises(ArtifactError, match="missing"):
        load_tensors(tmp_path / "none.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ArtifactError, match="safetensors"):
        load_tensors(tmp_path / "bad.safetensors")
