"""The local model registry: versions, champion, rollback, atomic and concurrent writes."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from tunesmith.errors import ArtifactError
from tunesmith.runs.versions import ModelRegistry


def fake_model(folder: Path, weights: bytes, *, kind: str = "text", labels: list[str] | None = None) -> Path:
    """A folder with what the registry reads: tunesmith.json and model.safetensors."""
    folder.mkdir(parents=True)
    meta = {"format_version": 2, "kind": kind, "task": "binary", "labels": labels or ["neg", "pos"]}
    (folder / "tunesmith.json").write_text(json.dumps(meta))
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def test_versions_are_numbered_copies_and_promotion_keeps_a_way_back(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    one = reg.register(fake_model(tmp_path / "m1", b"one"), notes={"data": "2015"})
    two = reg.register(fake_model(tmp_path / "m2", b"two"))
    assert (one.number, two.number) == (1, 2)
    assert (one.path / "model.safetensors").read_bytes() == b"one"  # a copy, byte for byte
    assert one.notes == {"data": "2015"} and one.status == "candidate"
    assert one.model_version != two.model_version
    assert reg.champion() is None

    reg.promote(1)
    reg.promote(2)
    assert reg.champion().number == 2
    assert [v.status for v in reg.versions()] == ["retired", "champion"]
    back = reg.rollback()
    assert back.number == 1 and reg.champion().number == 1
    assert [v.status for v in reg.versions()] == ["champion", "retired"]
    with pytest.raises(ArtifactError, match="no earlier champion"):
        reg.rollback()


def test_a_rejected_version_is_kept_but_never_promoted(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    reg.register(fake_model(tmp_path / "m1", b"one"))
    reg.reject(1, "lost 2.3 points on the old test split")
    assert reg.get(1).status == "rejected" and reg.get(1).path.is_dir()
    with pytest.raises(ArtifactError, match="rejected \\(lost 2.3 points"):
        reg.promote(1)


def test_a_registry_holds_one_model_kind_labels_and_task(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    reg.register(fake_model(tmp_path / "m1", b"one"))
    with pytest.raises(
        ArtifactError, match="registry of text models \\(kind: 'text'\\); this model's kind is 'tabular'"
    ):
        reg.register(fake_model(tmp_path / "m2", b"two", kind="tabular"))
    with pytest.raises(ArtifactError, match="labels"):
        reg.register(fake_model(tmp_path / "m3", b"three", labels=["a", "b", "c"]))
    with pytest.raises(ArtifactError, match="not a tunesmith model folder"):
        reg.register(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="is not a model registry"):
        ModelRegistry(tmp_path / "other")


def test_a_copy_killed_half_way_is_no_version(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    reg.register(fake_model(tmp_path / "m1", b"one"))
    # A writer killed mid-copy leaves a folder without its record (and temporary siblings).
    (reg.versions_dir / "v0002").mkdir()
    (reg.versions_dir / "v0002" / "model.safetensors").write_bytes(b"half")
    (reg.versions_dir / ".v0003.tmp-abc").mkdir()
    assert [v.number for v in reg.versions()] == [1]
    again = reg.register(fake_model(tmp_path / "m2", b"two"))
    assert again.number == 2 and (again.path / "model.safetensors").read_bytes() == b"two"


def _register_many(args: tuple[str, str, int]) -> list[int]:
    reg_path, src, n = args
    reg = ModelRegistry(reg_path)
    return [reg.register(src).number for _ in range(n)]


def test_concurrent_writers_get_distinct_numbers(tmp_path: Path) -> None:
    src = fake_model(tmp_path / "m", b"w")
    ModelRegistry(tmp_path / "reg").register(src)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        numbers = sorted(
            n for part in pool.map(_register_many, [(str(tmp_path / "reg"), str(src), 3)] * 4) for n in part
        )
    assert numbers == list(range(2, 14))
    assert [v.number for v in ModelRegistry(tmp_path / "reg").versions()] == list(range(1, 14))


def test_the_command_line_registers_lists_promotes_and_rolls_back(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tunesmith.cli import app

    run = CliRunner().invoke
    reg = str(tmp_path / "reg")
    out = run(app, ["register", reg, str(fake_model(tmp_path / "m1", b"one")), "--note", "data=2015"])
    assert out.exit_code == 0 and "registered version 1" in out.output, out.output
    run(app, ["register", reg, str(fake_model(tmp_path / "m2", b"two"))])
    assert "version 2" in run(app, ["promote", reg]).output  # the newest candidate
    out = run(app, ["versions", reg])
    assert "champion" in out.output and "candidate" in out.output
    assert run(app, ["promote", reg, "1"]).exit_code == 0
    out = run(app, ["rollback", reg])
    assert out.exit_code == 0 and "version 2" in out.output
    assert ModelRegistry(reg).get(1).notes["data"] == "2015"


def test_rollback_never_returns_to_a_version_rejected_since_it_served(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    for i in range(3):
        reg.register(fake_model(tmp_path / f"m{i}", bytes([i])))
    reg.promote(1)
    reg.promote(2)
    reg.promote(3)
    reg.reject(2, "a bias found after it served")
    assert reg.rollback().number == 1  # 2 is skipped
    assert [v.status for v in reg.versions()] == ["champion", "rejected", "retired"]


def test_what_serves_is_one_file_so_a_crash_cannot_make_two_champions(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    reg.register(fake_model(tmp_path / "m1", b"one"))
    reg.register(fake_model(tmp_path / "m2", b"two"))
    reg.promote(1)

    def server_refuses(version: object) -> None:
        raise RuntimeError("cannot load")

    with pytest.raises(RuntimeError):
        reg.promote(2, before_commit=server_refuses)
    assert reg.champion().number == 1
    assert [v.status for v in reg.versions()] == ["champion", "candidate"]
    assert sum(v.status == "champion" for v in reg.versions()) == 1


def test_a_note_without_a_value_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tunesmith.cli import main

    with pytest.raises(SystemExit) as code:
        main(["register", str(tmp_path / "reg"), str(fake_model(tmp_path / "m", b"w")), "--note", "oops"])
    assert code.value.code == 2
    assert "a note is key=value, got 'oops'" in capsys.readouterr().err


def test_an_adapter_store_is_refused_saying_it_needs_its_shared_model(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "personalize.json").write_text(json.dumps({"base": "/elsewhere/model", "user_column": "user"}))
    with pytest.raises(ArtifactError, match="adapter store of tunesmith personalize, which loads only over its"):
        ModelRegistry(tmp_path / "reg").register(store)
    assert not (tmp_path / "reg" / "versions").exists()
