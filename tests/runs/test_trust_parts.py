"""The trust module itself: the folder scan, bounded reads, typed fields and safetensors headers."""

from __future__ import annotations

import io
import json
import os
import pickle
import time
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tunesmith.errors import ArtifactError
from tunesmith.runs.trust import (
    SafeFolder,
    check_state_shapes,
    field,
    load_safetensors,
    malformed,
    meta_shapes,
    open_model,
    read_safetensors_header,
    refuse_custom_code,
    safe_relative,
)


class _Canary:
    """Pickling this makes a pickle whose loading calls os.system."""

    def __reduce__(self):
        return (os.system, ("touch CANARY",))


def _folder(tmp_path):
    folder = tmp_path / "model"
    (folder / "tokenizer").mkdir(parents=True)
    (folder / "tunesmith.json").write_text(json.dumps({"kind": "text", "n": 3}))
    save_file({"w": torch.ones(2, 3)}, str(folder / "model.safetensors"))
    return folder


def test_good_folder_opens_and_lists_its_files(tmp_path):
    folder = _folder(tmp_path)
    safe, meta = open_model(folder)
    assert meta == {"kind": "text", "n": 3}
    assert set(safe.files) == {"tunesmith.json", "model.safetensors"}
    assert torch.equal(safe.tensors("model.safetensors")["w"], torch.ones(2, 3))


@pytest.mark.parametrize("protocol", [0, 1])
def test_pickles_without_a_header_byte_are_refused(tmp_path, protocol):
    folder = _folder(tmp_path)
    data = pickle.dumps(_Canary(), protocol=protocol)
    assert data[0] != 0x80
    (folder / "notes.txt").write_bytes(data)
    with pytest.raises(ArtifactError, match=r"unsafe file 'notes.txt'.*pickle program"):
        SafeFolder.open(folder)


def test_text_files_are_not_taken_for_pickles(tmp_path):
    folder = _folder(tmp_path)
    (folder / "card.md").write_text("# card\n\ncos\nsystem\nnothing to see here\n")
    (folder / "tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\ntree\nc\n")
    (folder / "lightgbm.txt").write_text("tree\nversion=v4\nnum_class=1\n")
    SafeFolder.open(folder)


def test_symlinks_anywhere_are_refused(tmp_path):
    folder = _folder(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.bin").write_bytes(pickle.dumps({"a": 1}))
    (folder / "tokenizer" / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ArtifactError, match=r"tokenizer/sub is a symbolic link"):
        SafeFolder.open(folder)


def test_a_linked_root_is_the_callers_choice(tmp_path):
    folder = _folder(tmp_path)
    (tmp_path / "link").symlink_to(folder, target_is_directory=True)
    assert SafeFolder.open(tmp_path / "link").root == folder.resolve()


def test_fifo_and_device_links_refused_without_blocking(tmp_path):
    folder = _folder(tmp_path)
    os.mkfifo(folder / "tokenizer" / "tokenizer.json")
    started = time.perf_counter()
    with pytest.raises(ArtifactError, match=r"tokenizer/tokenizer.json is a FIFO"):
        SafeFolder.open(folder)
    assert time.perf_counter() - started < 2
    (folder / "tokenizer" / "tokenizer.json").unlink()
    (folder / "tokenizer" / "tokenizer.json").symlink_to("/dev/zero")
    with pytest.raises(ArtifactError, match="symbolic link"):
        SafeFolder.open(folder)


def test_marker_that_is_a_fifo_is_refused(tmp_path):
    folder = _folder(tmp_path)
    (folder / "tunesmith.json").unlink()
    os.mkfifo(folder / "tunesmith.json")
    with pytest.raises(ArtifactError, match=r"tunesmith.json is a FIFO"):
        open_model(folder)


def test_code_files_are_refused(tmp_path):
    folder = _folder(tmp_path)
    (folder / "tokenizer" / "tokenization_evil.py").write_text("open('CANARY', 'w')\n")
    with pytest.raises(ArtifactError, match=r"tokenizer/tokenization_evil.py is code"):
        SafeFolder.open(folder)


def test_safetensors_followed_by_a_zip_is_refused(tmp_path):
    folder = _folder(tmp_path)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"a": 1}))
    with (folder / "model.safetensors").open("ab") as fh:
        fh.write(buffer.getvalue())
    with pytest.raises(ArtifactError, match=r"model.safetensors.*(zip archive|after its last tensor)"):
        SafeFolder.open(folder)


def test_safetensors_header_must_tile_the_data(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(4), "b": torch.ones(2)}, str(path))
    info = read_safetensors_header(path)
    assert info["a"].shape == (4,) and info["b"].dtype == "F32"
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header["a"]["shape"] = [10**9]
    text = json.dumps(header).encode()
    (tmp_path / "big.safetensors").write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])
    with pytest.raises(ArtifactError, match=r"tensor 'a' declares shape \[1000000000\]"):
        read_safetensors_header(tmp_path / "big.safetensors")


def test_declared_shapes_are_checked_before_reading(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"weight": torch.zeros(3, 4), "bias": torch.zeros(3)}, str(path))
    expected = meta_shapes(lambda: torch.nn.Linear(4, 3))
    assert load_safetensors(path, expected=expected)["weight"].shape == (3, 4)
    with pytest.raises(ArtifactError, match=r"describes tensor 'weight' as \[300000, 4\]"):
        load_safetensors(path, expected=meta_shapes(lambda: torch.nn.Linear(4, 300_000)))
    with pytest.raises(ArtifactError, match=r"weights hold tensor 'bias'"):
        check_state_shapes({"weight": (3, 4)}, read_safetensors_header(path), file=path)


def test_json_reads_are_bounded_and_typed(tmp_path):
    folder = _folder(tmp_path)
    (folder / "big.json").write_text(json.dumps({"x": "a" * 2000}))
    safe = SafeFolder.open(folder)
    with pytest.raises(ArtifactError, match=r"big.json is 2,009 bytes, over the 1,000-byte limit"):
        safe.read_json("big.json", limit=1000)
    (folder / "list.json").write_text("[1, 2]")
    safe = SafeFolder.open(folder)
    with pytest.raises(ArtifactError, match=r"list.json must hold a JSON object, got array"):
        safe.read_json("list.json")
    (folder / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    safe = SafeFolder.open(folder)
    with pytest.raises(ArtifactError, match="deep.json"):
        safe.read_json("deep.json", expect=None)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("/etc/passwd", "absolute path"),
        ("../secret", "leaves the folder"),
        ("a/../../b", "leaves the folder"),
        ("C:/x", "absolute path"),
        ("a\\b", "backslash"),
        ("", "1 to 1024"),
        ("x" * 2000, "1 to 1024"),
        (5, "must be a relative path string, got integer"),
    ],
)
def test_paths_named_in_files_stay_inside(tmp_path, value, message):
    with pytest.raises(ArtifactError, match=message):
        safe_relative(value, file=tmp_path / "index.json", field="file")


def test_file_lookups_only_find_scanned_files(tmp_path):
    folder = _folder(tmp_path)
    safe = SafeFolder.open(folder)
    assert safe.file("model.safetensors") == folder.resolve() / "model.safetensors"
    assert safe.file("missing.json", required=False) is None
    with pytest.raises(ArtifactError, match=r"missing.json is missing \(named by field 'vocab' of tunesmith.json\)"):
        safe.file("missing.json", source="tunesmith.json", field_name="vocab")
    with pytest.raises(ArtifactError, match="leaves the folder"):
        safe.file("../model/tunesmith.json")


def test_typed_fields_name_the_file_and_field(tmp_path):
    file = tmp_path / "tunesmith.json"
    meta = {"n": 3, "flag": True, "backbone": {"name": "x", "size": 7}, "rate": 0.5}
    assert field(meta, "backbone.size", int, file=file, low=1, high=10) == 7
    assert field(meta, "rate", float, file=file) == 0.5
    assert field(meta, "absent", int, file=file, default=4) == 4
    with pytest.raises(ArtifactError, match=r"tunesmith.json: field 'flag' must be integer, got boolean"):
        field(meta, "flag", int, file=file)
    with pytest.raises(ArtifactError, match=r"field 'n' must be within \[5, 9\], got 3"):
        field(meta, "n", int, file=file, low=5, high=9)
    with pytest.raises(ArtifactError, match=r"field 'backbone.name' must be one of 'a', 'b', got 'x'"):
        field(meta, "backbone.name", str, file=file, choices=("a", "b"))
    with pytest.raises(ArtifactError, match=r"field 'n' must be a JSON object, got integer"):
        field(meta, "n.inner", int, file=file)
    with pytest.raises(ArtifactError, match=r"field 'labels' is missing"):
        field(meta, "labels", list, file=file)


def test_malformed_turns_stray_errors_into_one_line(tmp_path):
    file = tmp_path / "tunesmith.json"
    with pytest.raises(ArtifactError, match=r"tunesmith.json: this file lacks the field 'labels'"), malformed(file):
        _ = {}["labels"]
    with pytest.raises(ArtifactError, match=r"this file is malformed: invalid literal"), malformed(file):
        int("x")


def test_custom_code_and_file_keys_refused_but_provenance_allowed(tmp_path):
    file = tmp_path / "tokenizer_config.json"
    refuse_custom_code({"_name_or_path": "/somewhere/model", "model_type": "bert"}, file=file)
    with pytest.raises(ArtifactError, match=r"field 'auto_map' names custom code"):
        refuse_custom_code({"auto_map": {"AutoTokenizer": ["evil.Tok", None]}}, file=file)
    with pytest.raises(ArtifactError, match=r"field 'tokenizer_file' names a file"):
        refuse_custom_code({"tokenizer_file": "/etc/elsewhere.json"}, file=file)


def test_too_many_entries_refused(tmp_path):
    folder = _folder(tmp_path)
    for i in range(12):
        (folder / f"f{i}.json").write_text("{}")
    with pytest.raises(ArtifactError, match="over 10 entries"):
        SafeFolder.open(folder, max_files=10)


def test_numpy_and_torch_files_still_refused(tmp_path):
    folder = _folder(tmp_path)
    with (folder / "data.dat").open("wb") as fh:
        np.save(fh, np.arange(3))
    with pytest.raises(ArtifactError, match="NumPy"):
        SafeFolder.open(folder)


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999999"])
def test_non_finite_json_numbers_are_refused(tmp_path, number):
    folder = _folder(tmp_path)
    (folder / "tunesmith.json").write_text('{"kind": "text", "n_outputs": ' + number + "}")
    with pytest.raises(ArtifactError, match=r"tunesmith.json holds the non-finite number"):
        open_model(folder)
