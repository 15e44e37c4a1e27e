"""Every adapter store is a trust boundary: tampered stores are refused with one ArtifactError line.

Each test builds a good store, tampers it the way an attacker would, and checks the refusal
names the file and the field, that nothing outside the store was read, written or deleted,
and that nothing hangs or allocates what the store's files do not hold.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from tunesmith.errors import ArtifactError, ConfigError
from tunesmith.personalize import AdapterStore, HeadAdapter, HeadAdapterSettings, adapter_key
from tunesmith.personalize import store as store_module
from tunesmith.personalize.lora import LoraAdapter, LoraAdapterSettings
from tunesmith.personalize.store import MAX_ADAPTER_RANK, AdapterDims, adapter_shapes

FP = "sha256:base"
SETTINGS = {"rank": 1, "l2": 0.01, "steps": 10, "lr": 0.05}
posix_only = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and dir_fd are POSIX")


def _put(store: AdapterStore, user: str, *, seed: int = 0, n_features: int = 4) -> None:
    adapter = HeadAdapter(n_features, 2, 1, seed=seed)
    meta = {"level": "user", "kind": "head", "used": True, "rows_train": 5, "settings": SETTINGS}
    store.put(adapter_key("user", user), adapter.tensors(), meta)


def _store(tmp_path: Path, users: tuple[str, ...] = ("1", "2")) -> Path:
    folder = tmp_path / "store"
    store = AdapterStore(folder, FP)
    for i, user in enumerate(users):
        _put(store, user, seed=i)
    return folder


def _edit_index(folder: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    index = json.loads((folder / "index.json").read_text())
    edit(index)
    (folder / "index.json").write_text(json.dumps(index))


def _edit_entry(folder: Path, key: str, **fields: Any) -> None:
    _edit_index(folder, lambda index: index["adapters"][key].update(fields))


def _file_of(folder: Path, key: str) -> str:
    return str(json.loads((folder / "index.json").read_text())["adapters"][key]["file"])


def _refused(folder: Path, *, file: str, field: str | None = None, dims: AdapterDims | None = None) -> str:
    """Open the store, expect an ArtifactError naming ``file`` (and ``field``); return its line."""
    with pytest.raises(ArtifactError) as err:
        AdapterStore(folder, FP, dims=dims)
    line = str(err.value)
    assert "\n" not in line
    assert file in line, line
    if field is not None:
        assert field in line, line
    return line


@contextmanager
def opened_paths() -> Iterator[list[str]]:
    """Every path opened through os.open or open() while the block runs."""
    seen: list[str] = []
    real_os_open, real_open = os.open, builtins.open

    def os_open(path: Any, *args: Any, **kwargs: Any) -> int:
        seen.append(os.fspath(path) if not isinstance(path, int) else f"fd:{path}")
        return real_os_open(path, *args, **kwargs)

    def open_(file: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(os.fspath(file) if not isinstance(file, int) else f"fd:{file}")
        return real_open(file, *args, **kwargs)

    os.open, builtins.open = os_open, open_
    try:
        yield seen
    finally:
        os.open, builtins.open = real_os_open, real_open


def _outside(seen: list[str], store: Path) -> list[str]:
    root = str(store.resolve())
    return [p for p in seen if not p.startswith("fd:") and not str(Path(p).resolve()).startswith(root)]


# --- paths named by the index --------------------------------------------------------------


def test_an_index_file_outside_the_store_is_refused_and_not_read(tmp_path: Path) -> None:
    folder = _store(tmp_path)
    outside = tmp_path / "outside.safetensors"
    # A valid adapter outside: the old store loaded it for user 1.
    save_file(HeadAdapter(4, 2, 1).tensors(), str(outside))
    _edit_entry(folder, "user:1", file="../outside.safetensors")
    with opened_paths() as seen:
        line = _refused(folder, file="index.json", field="adapters['user:1'].file")
    assert "leaves the folder through '..'" in line
    assert not _outside(seen, folder), seen


def test_an_absolute_index_file_is_refused_and_nothing_outside_is_read(tmp_path: Path) -> None:
    folder = _store(tmp_path)
    _edit_entry(folder, "user:1", file="/etc/hostname")
    with opened_paths() as seen:
        line = _refused(folder, file="index.json", field="adapters['user:1'].file")
    assert "absolute path '/etc/hostname'" in line
    assert not _outside(seen, folder), seen


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("adapters/../../x.safetensors", "leaves the folder"),
        ("C:/x.safetensors", "absolute path"),
        ("adapters\\x.safetensors", "backslash"),
        (5, "must be str"),
        (None, "must be str"),
    ],
)
def test_other_unsafe_index_files_are_refused(tmp_path: Path, value: Any, says: str) -> None:
    folder = _store(tmp_path)
    _edit_entry(folder, "user:1", file=value)
    assert says in _refused(folder, file="index.json", field="adapters['user:1'].file")


def test_an_index_file_must_be_the_stores_own_name_for_the_key(tmp_path: Path) -> None:
    folder = _store(tmp_path)
    other = json.loads((folder / "index.json").read_text())["adapters"]["user:2"]["file"]
    _edit_entry(folder, "user:1", file=other)  # user 1 answered by user 2's file
    assert "the store names this adapter's file" in _refused(folder, file="index.json", field="user:1")
    (folder / "notes.safetensors").write_bytes((folder / other).read_bytes())
    _edit_entry(folder, "user:1", file="notes.safetensors")
    assert "the store names this adapter's file" in _refused(folder, file="index.json", field="user:1")


def test_an_index_naming_a_missing_file_is_refused(tmp_path: Path) -> None:
    folder = _store(tmp_path)
    rel = json.loads((folder / "index.json").read_text())["adapters"]["user:1"]["file"]
    (folder / rel).unlink()
    assert "which is not in the store" in _refused(folder, file="index.json", field="adapters['user:1'].file")


# --- the unlink attack -----------------------------------------------------------------------


def test_delete_never_touches_a_file_the_index_names_outside(tmp_path: Path) -> None:
    folder = _store(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    _edit_entry(folder, "user:1", file="../victim.txt")
    with pytest.raises(ArtifactError, match="leaves the folder"):
        AdapterStore(folder, FP)  # a writer opens the store this way before it deletes
    assert victim.read_text() == "precious"


@posix_only
def test_delete_through_an_adapters_folder_swapped_for_a_link_deletes_nothing_outside(tmp_path: Path) -> None:
    folder = _store(tmp_path)
    writer = AdapterStore(folder, FP)
    rel = writer.info("user:1")["file"]
    # After the writer opened the store, adapters/ becomes a link to a folder outside holding
    # a file of the same name.
    outside = tmp_path / "elsewhere"
    shutil.move(str(folder / "adapters"), str(outside))
    (folder / "adapters").symlink_to(outside, target_is_directory=True)
    victim = outside / Path(rel).name
    before = {p.name: p.read_bytes() for p in outside.iterdir()}
    with pytest.raises(ArtifactError, match="cannot delete"):
        writer.delete("user:1")
    assert victim.is_file()
    with pytest.raises(ArtifactError, match="not a plain folder"):
        _put(writer, "3")
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == before


def test_a_deferred_delete_removes_only_the_stores_own_file(tmp_path: Path) -> None:
    folder = _store(tmp_path)
    writer = AdapterStore(folder, FP)
    own = folder / writer.info("user:1")["file"]
    keep = folder / writer.info("user:2")["file"]
    with writer.deferred():
        writer.delete("user:1")
    assert not own.exists() and keep.exists()
    with pytest.raises(ArtifactError, match="not an adapter file of this store"):
        writer._remove("../victim.txt")


# --- what the folder holds -------------------------------------------------------------------


@posix_only
@pytest.mark.parametrize("target", ["index.json", "adapter"])
def test_links_in_the_store_are_refused(tmp_path: Path, target: str) -> None:
    folder = _store(tmp_path)
    rel = "index.json" if target == "index.json" else _file_of(folder, "user:1")
    secret = tmp_path / "secret"
    shutil.move(str(folder / rel), str(secret))
    (folder / rel).symlink_to(secret)
    with opened_paths() as seen:
        line = _refused(folder, file=str(folder), field=None)
    assert f"{rel} is a symbolic link" in line
    assert "adapter store holds only" in line  # the store's hint, not a model folder's
    assert not [p for p in seen if "secret" in p]


@posix_only
def test_a_linked_adapters_folder_is_refused(tmp_path: Path) -> None:
    folder = _store(tmp_path)
    shutil.move(str(folder / "adapters"), str(tmp_path / "elsewhere"))
    (folder / "adapters").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert "adapters is a symbolic link" in _refused(folder, file=str(folder))


def _never_hangs(fn: Callable[[], Any], seconds: float = 10.0) -> BaseException | None:
    """Run ``fn`` on a thread; fail the test if it is still running after ``seconds``; return what it raised."""
    raised: list[BaseException | None] = [None]

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            raised[0] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "reading the store hangs"
    return raised[0]


@posix_only
@pytest.mark.parametrize("target", ["index.json", "adapter", "personalize.json"])
def test_fifos_in_the_store_are_refused_without_hanging(tmp_path: Path, target: str) -> None:
    from tunesmith.personalize.personalizer import load_settings

    folder = _store(tmp_path)
    if target == "adapter":
        target = _file_of(folder, "user:1")
    (folder / target).unlink(missing_ok=True)
    os.mkfifo(folder / target)
    if target == "personalize.json":
        exc = _never_hangs(lambda: load_settings(folder))
    else:
        exc = _never_hangs(lambda: AdapterStore(folder, FP))
    assert isinstance(exc, ArtifactError), exc
    assert "FIFO" in str(exc) and target in str(exc)


def test_code_and_pickles_in_the_store_are_refused(tmp_path: Path) -> None:
    folder = _store(tmp_path)
    (folder / "adapters" / "hook.py").write_text("print('hi')\n")
    assert "is code (.py)" in _refused(folder, file=str(folder))
    (folder / "adapters" / "hook.py").unlink()
    torch.save({"x": torch.zeros(1)}, folder / "adapters" / "evil.safetensors")
    assert "unsafe file" in _refused(folder, file=str(folder))


# --- malformed index.json -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "field", "says"),
    [
        (lambda i: i.__setitem__("adapters", ["a"]), "'adapters'", "must be object"),
        (lambda i: i.__setitem__("format", 99), "'format'", "not an adapter store"),
        (lambda i: i.__setitem__("format", "1"), "'format'", "must be integer"),
        (lambda i: i.pop("base_fingerprint"), "'base_fingerprint'", "is missing"),
        (lambda i: i["adapters"].__setitem__("user:1", ["not", "an", "entry"]), "adapters['user:1']", "JSON object"),
        (lambda i: i["adapters"]["user:1"].pop("file"), "adapters['user:1'].file", "is missing"),
        (lambda i: i["adapters"]["user:1"].update(kind="evil"), "adapters['user:1'].kind", "must be one of"),
        (lambda i: i["adapters"]["user:1"].update(level=3), "adapters['user:1'].level", "must be string"),
        (lambda i: i["adapters"]["user:1"].update(used="yes"), "adapters['user:1'].used", "must be boolean"),
        (lambda i: i["adapters"]["user:1"].update(rows_train=-1), "adapters['user:1'].rows_train", "within"),
        (lambda i: i["adapters"]["user:1"].update(bytes=1.5), "adapters['user:1'].bytes", "must be integer"),
        (lambda i: i["adapters"]["user:1"].update(validation=[]), "adapters['user:1'].validation", "object"),
        (lambda i: i["adapters"]["user:1"].update(settings=7), "adapters['user:1'].settings", "object"),
        (
            lambda i: i["adapters"]["user:1"]["settings"].update(rank=10**6),
            "adapters['user:1'].settings.rank",
            "within",
        ),
        (lambda i: i["adapters"]["user:1"]["settings"].update(rank=-1), "adapters['user:1'].settings.rank", "within"),
        (lambda i: i["adapters"]["user:1"]["settings"].update(alpha=0), "settings.alpha", "above 0"),
        (lambda i: i["adapters"]["user:1"]["settings"].update(alpha=float("nan")), "non-finite number NaN", "finite"),
        (lambda i: i["adapters"]["user:1"]["settings"].update(lr="fast"), "settings.lr", "must be number"),
        (lambda i: i["adapters"]["user:1"]["settings"].update(l2=-1.0), "settings.l2", "at least 0"),
    ],
)
def test_a_mistyped_index_is_refused_naming_the_field(
    tmp_path: Path, edit: Callable[[dict[str, Any]], Any], field: str, says: str
) -> None:
    folder = _store(tmp_path)
    _edit_index(folder, edit)
    line = _refused(folder, file="index.json", field=field)
    assert says in line, line


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "not valid JSON"),
        ('"adapters"', "must hold a JSON object"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"format": 1' + "0" * 5000 + "}", "not valid JSON"),
        ("[" * 100_000, "nests too deeply"),
        ("\xff\xfe", "not UTF-8"),
    ],
)
def test_an_index_that_is_not_a_json_object_is_refused(tmp_path: Path, text: str, says: str) -> None:
    folder = _store(tmp_path)
    (folder / "index.json").write_bytes(text.encode("latin-1"))
    assert says in _refused(folder, file="index.json")


def test_an_index_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    folder = _store(tmp_path)
    (folder / "index.json").unlink()
    (folder / "index.json").mkdir()
    assert "index.json is a folder" in _refused(folder, file=str(folder))


# --- adapter tensors -------------------------------------------------------------------------------


def _replace_adapter(folder: Path, key: str, tensors: dict[str, torch.Tensor]) -> Path:
    path = folder / _file_of(folder, key)
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize(
    ("tensors", "says"),
    [
        ({"A": torch.zeros(4, 1), "B": torch.zeros(1, 2)}, "holds the tensors ['A', 'B']"),
        ({"A": torch.zeros(4, 1), "B": torch.zeros(1, 2), "c": torch.zeros(2), "x": torch.zeros(1)}, "holds the"),
        ({"A": torch.zeros(4, 1, dtype=torch.int64), "B": torch.zeros(1, 2), "c": torch.zeros(2)}, "floating point"),
        ({"A": torch.zeros(4), "B": torch.zeros(1, 2), "c": torch.zeros(2)}, "is a matrix"),
        ({"A": torch.zeros(4, 1), "B": torch.zeros(2, 2), "c": torch.zeros(2)}, "tensor 'B' has shape [2, 2]"),
        ({"A": torch.zeros(4, 1), "B": torch.zeros(1, 2), "c": torch.zeros(3)}, "tensor 'c' has shape [3]"),
        ({"A": torch.zeros(4, 0), "B": torch.zeros(0, 2), "scale": torch.tensor(1.0)}, "rank is 1 to"),
    ],
)
def test_adapter_tensors_that_do_not_fit_together_are_refused(
    tmp_path: Path, tensors: dict[str, torch.Tensor], says: str
) -> None:
    folder = _store(tmp_path)
    _replace_adapter(folder, "user:1", tensors)
    line = _refused(folder, file=_file_of(folder, "user:1"))
    assert says in line, line


def test_adapter_shapes_must_be_the_shared_models(tmp_path: Path) -> None:
    folder = _store(tmp_path)
    dims = AdapterDims(features=4, outputs=2, inner=16, hidden=4)
    AdapterStore(folder, FP, dims=dims)  # the good store fits
    _replace_adapter(folder, "user:1", HeadAdapter(8, 2, 1).tensors())
    path = _file_of(folder, "user:1")
    line = _refused(folder, file=path, dims=dims)
    assert "tensor 'A' has shape [8, 1], but a head adapter of rank 1 for this shared model has [4, 1]" in line
    _replace_adapter(folder, "user:1", LoraAdapter(16, 4, 2).tensors())
    AdapterStore(folder, FP, dims=dims)  # a LoRA adapter of the right widths
    _replace_adapter(folder, "user:1", LoraAdapter(32, 4, 2).tensors())
    assert "tensor 'A' has shape [32, 2]" in _refused(folder, file=path, dims=dims)
    _replace_adapter(folder, "user:1", LoraAdapter(16, 4, 2).tensors())
    assert "no BERT-like feed-forward block" in _refused(folder, file=path, dims=AdapterDims(4, 2))


def test_a_huge_declared_rank_is_refused_before_anything_is_allocated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _store(tmp_path)
    rel = _file_of(folder, "user:1")
    path = folder / rel
    # A header declaring rank 10**6 (16 MB of A) over a file of a few bytes.
    header = json.dumps(
        {
            "A": {"dtype": "F32", "shape": [4, 10**6], "data_offsets": [0, 16 * 10**6]},
            "B": {"dtype": "F32", "shape": [10**6, 2], "data_offsets": [16 * 10**6, 24 * 10**6]},
            "c": {"dtype": "F32", "shape": [2], "data_offsets": [24 * 10**6, 24 * 10**6 + 8]},
        }
    ).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    started = time.perf_counter()
    assert "do not match" in _refused(folder, file=rel)
    # A rank just over the limit, with every byte it declares: refused from the header alone.
    _replace_adapter(folder, "user:1", HeadAdapter(4, 2, MAX_ADAPTER_RANK + 1).tensors())

    def no_load(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("tensors were read before the header was checked")

    monkeypatch.setattr("safetensors.torch.load_file", no_load)
    monkeypatch.setattr("safetensors.torch.load", no_load)
    assert f"declares rank {MAX_ADAPTER_RANK + 1:,}" in _refused(folder, file=rel)
    assert time.perf_counter() - started < 5


def test_load_checks_the_header_again_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _store(tmp_path)
    store = AdapterStore(folder, FP, dims=AdapterDims(4, 2))
    assert set(store.load("user:1")) == {"A", "B", "c"}
    # Replaced after the store was read (the index unchanged): load refuses it before reading it.
    path = _replace_adapter(folder, "user:1", HeadAdapter(9, 2, 1).tensors())
    monkeypatch.setattr("safetensors.torch.load", lambda *a, **k: pytest.fail("read before the check"))
    with pytest.raises(ArtifactError, match=r"tensor 'A' has shape \[9, 1\]") as err:
        store.load("user:1")
    assert err.value.path == str(path.resolve())


@posix_only
@pytest.mark.parametrize("swap", ["fifo", "link"])
def test_an_adapter_swapped_after_the_store_was_read_is_refused_without_hanging(tmp_path: Path, swap: str) -> None:
    folder = _store(tmp_path)
    store = AdapterStore(folder, FP, dims=AdapterDims(4, 2))
    path = folder / _file_of(folder, "user:1")
    secret = tmp_path / "secret.safetensors"
    shutil.move(str(path), str(secret))
    if swap == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(secret)
    with opened_paths() as seen:
        exc = _never_hangs(lambda: store.load("user:1"))
    assert isinstance(exc, ArtifactError), exc
    assert ("FIFO" if swap == "fifo" else "is a symbolic link") in str(exc)
    assert str(secret) not in seen


def test_a_lora_scale_that_is_not_a_positive_number_is_refused(tmp_path: Path) -> None:
    folder = _store(tmp_path)
    tensors = LoraAdapter(16, 4, 2).tensors()
    tensors["scale"] = torch.tensor(float("nan"))
    _replace_adapter(folder, "user:1", tensors)
    store = AdapterStore(folder, FP)
    with pytest.raises(ArtifactError, match="tensor 'scale' is nan"):
        store.load("user:1")


def test_training_refuses_a_rank_a_store_could_not_load() -> None:
    with pytest.raises(ConfigError, match="must be 0 to 1024"):
        HeadAdapterSettings(rank=MAX_ADAPTER_RANK + 1)
    with pytest.raises(ConfigError, match="must be 1 to 1024"):
        LoraAdapterSettings(rank=MAX_ADAPTER_RANK + 1)


def test_adapter_shapes_without_dims_only_check_agreement() -> None:
    from tunesmith.runs.trust import TensorInfo

    header = {"A": TensorInfo("F32", (7, 3)), "B": TensorInfo("F32", (3, 5)), "c": TensorInfo("F32", (5,))}
    assert adapter_shapes(header, None, file="x") == ("head", {"A": (7, 3), "B": (3, 5), "c": (5,)})


# --- re-reading while serving ------------------------------------------------------------------------


def test_a_refused_refresh_keeps_the_old_index_and_retries_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _store(tmp_path)
    reader = AdapterStore(folder, FP)
    _edit_entry(folder, "user:1", file="/etc/hostname")
    with opened_paths() as seen, pytest.raises(ArtifactError, match="absolute path"):
        reader.refresh()
    assert "/etc/hostname" not in seen
    # The old index stays in force and its adapters still load.
    assert reader.route(1).key == "user:1" and set(reader.load("user:1")) == {"A", "B", "c"}
    assert not reader.refresh()  # the same bad index is not read again at once
    monkeypatch.setattr(store_module, "RETRY_SECONDS", 0.0)
    with pytest.raises(ArtifactError):
        reader.refresh()
    writer = AdapterStore(tmp_path / "fresh", FP)
    _put(writer, "9")
    (folder / "index.json").unlink()
    shutil.rmtree(folder / "adapters")
    shutil.copytree(tmp_path / "fresh" / "adapters", folder / "adapters")
    shutil.copy(tmp_path / "fresh" / "index.json", folder / "index.json")
    assert reader.refresh() and list(reader) == ["user:9"]


@posix_only
def test_a_refresh_that_meets_a_fifo_does_not_hang(tmp_path: Path) -> None:
    folder = _store(tmp_path)
    reader = AdapterStore(folder, FP)
    (folder / "index.json").unlink()
    os.mkfifo(folder / "index.json")
    exc = _never_hangs(reader.refresh)
    assert isinstance(exc, ArtifactError) and "index.json is a FIFO" in str(exc)
    assert reader.route(2).key == "user:2"


def test_a_store_being_written_is_read_again_not_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _store(tmp_path)
    calls = {"n": 0}
    real = store_module.open_store

    def racing(path: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            # A writer's temporary file vanished between listing and opening: the folder changed.
            time.sleep(0.02)  # past the file system's clock tick, so the folder's time changes
            (folder / "adapters" / "tmp-marker").write_text("x")
            raise ArtifactError("adapters/.x.safetensors.tmp is missing", path=folder)
        return real(path, **kw)

    monkeypatch.setattr(store_module, "open_store", racing)
    assert len(AdapterStore(folder, FP)) == 2 and calls["n"] == 2


# --- personalize.json --------------------------------------------------------------------------------


def _settings_store(tmp_path: Path, **changes: Any) -> Path:
    folder = _store(tmp_path)
    settings: dict[str, Any] = {
        "base": str(tmp_path / "model"),
        "base_fingerprint": FP,
        "user_column": "user",
        "segment_column": None,
        "time_column": None,
        "min_rows": 10,
        "valid_fraction": 0.2,
        "adapter_kind": "head",
        "head": {"rank": 4, "l2": 0.01, "steps": 100, "lr": 0.05},
        "lora": {"rank": 4, "alpha": 8.0, "l2": 0.01, "steps": 40, "lr": 0.02},
        "seed": 0,
    }
    for name, value in changes.items():
        node: Any = settings
        *parents, last = name.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    (folder / "personalize.json").write_text(json.dumps(settings))
    return folder


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        ({"base": 5}, "'base'", "must be string"),
        ({"user_column": None}, "'user_column'", "must be string"),
        ({"user_column": ""}, "'user_column'", "is empty"),
        ({"segment_column": ["a"]}, "'segment_column'", "must be string"),
        ({"min_rows": 1}, "'min_rows'", "within"),
        ({"min_rows": "10"}, "'min_rows'", "must be integer"),
        ({"valid_fraction": 1.5}, "'valid_fraction'", "between 0 and 1"),
        ({"adapter_kind": "evil"}, "'adapter_kind'", "must be one of"),
        ({"head": [1]}, "'head'", "must be object"),
        ({"head__rank": 10**6}, "'head.rank'", "within"),
        ({"head__steps": 10**12}, "'head.steps'", "within"),
        ({"lora__rank": 0}, "'lora.rank'", "within"),
        ({"lora__alpha": -1}, "'lora.alpha'", "above 0"),
        ({"lora__lr": float("inf")}, "non-finite number Infinity", "finite"),
        ({"seed": -1}, "'seed'", "within"),
    ],
)
def test_mistyped_settings_are_refused_naming_the_field(
    tmp_path: Path, change: dict[str, Any], field: str, says: str
) -> None:
    from tunesmith.personalize.personalizer import load_settings

    folder = _settings_store(tmp_path, **change)
    with pytest.raises(ArtifactError) as err:
        load_settings(folder)
    line = str(err.value)
    assert "personalize.json" in line and field in line and says in line, line


def test_good_settings_come_back_with_their_defaults(tmp_path: Path) -> None:
    from tunesmith.personalize.personalizer import load_settings

    folder = _settings_store(tmp_path, head=None, time_column=None)
    s = load_settings(folder)
    assert s["head"] == {} and s["time_column"] is None and s["lora"]["rank"] == 4


@posix_only
def test_linked_settings_are_refused(tmp_path: Path) -> None:
    from tunesmith.personalize.personalizer import load_settings

    folder = _settings_store(tmp_path)
    shutil.move(str(folder / "personalize.json"), str(tmp_path / "secret.json"))
    (folder / "personalize.json").symlink_to(tmp_path / "secret.json")
    with pytest.raises(ArtifactError, match="personalize.json is a symbolic link"):
        load_settings(folder)


def test_from_store_never_opens_the_model_path_written_in_the_store(tmp_path: Path) -> None:
    from tunesmith.personalize.personalizer import Personalizer

    folder = _settings_store(tmp_path, base=str(tmp_path / "somewhere" / "model"))
    with opened_paths() as seen, pytest.raises(ArtifactError) as err:
        Personalizer.from_store(folder)
    assert "field 'base' names the shared model" in str(err.value) and "personalize.json" in str(err.value)
    assert "base=MODEL" in str(err.value)
    assert not [p for p in seen if "somewhere" in p]


# --- through the shared model: Personalizer, the CLI and the server -----------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.serve.test_serve import _fit

    return _fit(tmp_path_factory.mktemp("trust_personal") / "model", seed=0)


@pytest.fixture(scope="module")
def good_store(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import make_reviews
    from tunesmith.personalize.personalizer import Personalizer

    folder = tmp_path_factory.mktemp("trust_store") / "store"
    data = make_reviews(64, seed=3, users=True)
    p = Personalizer(shared, folder, user_column="user", min_rows=4, steps=5, progress=False).fit(data)
    assert p.store.dims is not None
    # One adapter known to answer: trained ones may lose their validation and not be used.
    adapter = HeadAdapter(p.store.dims.features, p.store.dims.outputs, 2, seed=1)
    with torch.no_grad():
        adapter.c.copy_(torch.tensor([2.0, -2.0]))
    p.store.put("user:alice", adapter.tensors(), {"level": "user", "kind": "head", "used": True})
    return folder


def _copy(store: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "store"
    shutil.copytree(store, dest)
    return dest


def test_the_unlink_attack_through_personalize_users_deletes_nothing_outside(
    shared: Path, good_store: Path, tmp_path: Path, capsys: Any
) -> None:
    from tests.cli.test_cli import cli
    from tests.conftest import make_reviews
    from tunesmith.personalize.personalizer import Personalizer

    folder = _copy(good_store, tmp_path)
    victim = tmp_path / "victim.safetensors"
    victim.write_bytes(b"precious bytes")
    assert "user:u1" in json.loads((folder / "index.json").read_text())["adapters"]
    _edit_entry(folder, "user:u1", file="../victim.safetensors")
    few = tmp_path / "few.csv"
    make_reviews(16, seed=5, users=True).to_csv(few, index=False)  # two rows per user: under min_rows
    code, _, err = cli(
        capsys, "personalize", str(shared), str(few), "--user-column", "user", "--users", "u1", "--min-rows", "10",
        "-o", str(folder),
    )  # fmt: skip
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "index.json" in err and "adapters['user:u1'].file" in err
    assert victim.read_bytes() == b"precious bytes"
    with pytest.raises(ArtifactError, match="leaves the folder"):
        _ = Personalizer(shared, folder, user_column="user", min_rows=10, progress=False).store  # opened on use
    assert victim.read_bytes() == b"precious bytes"


def test_the_personalizer_checks_adapters_against_the_shared_model(
    shared: Path, good_store: Path, tmp_path: Path
) -> None:
    from tunesmith.personalize.personalizer import Personalizer

    folder = _copy(good_store, tmp_path)
    p = Personalizer.from_store(folder, shared)
    assert p.store.dims is not None and p.store.dims.features > 8
    assert p.store.dims.inner is not None  # the tiny backbone is BERT-like: LoRA adapters fit it
    path = _replace_adapter(folder, "user:u2", HeadAdapter(p.store.dims.features + 1, 2, 4).tensors())
    with pytest.raises(ArtifactError, match="for this shared model") as err:
        Personalizer.from_store(folder, shared)
    assert err.value.path == str(path.resolve())


def test_a_server_refuses_to_start_with_a_bad_store(
    shared: Path, good_store: Path, tmp_path: Path, capsys: Any
) -> None:
    from tests.cli.test_cli import cli
    from tests.serve.test_serve import _settings
    from tunesmith.serve import run_server

    folder = _copy(good_store, tmp_path)
    _edit_entry(folder, "user:u1", file="/etc/hostname")
    with pytest.raises(ArtifactError, match="absolute path"):
        run_server(shared, _settings(adapters=folder, port=0))
    code, _, err = cli(capsys, "serve", str(shared), "--adapters", str(folder), "--port", "0")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "index.json" in err and "adapters['user:u1'].file" in err


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_serving_store_rewritten_badly_keeps_serving_the_old_one(
    shared: Path, good_store: Path, tmp_path: Path
) -> None:
    from tests.serve.test_serve import serving

    folder = _copy(good_store, tmp_path)
    user = "alice"
    row = {"text": "great fun movie", "user": user}
    records = _Records()
    log = logging.getLogger("tunesmith.personalize")
    log.addHandler(records)
    auth = {"Authorization": "Bearer admin-token"}
    try:
        with serving(shared, adapters=folder, admin_token="admin-token") as c:
            first = c.post("/v1/predict", json={"inputs": row}).json()["predictions"][0]
            assert first["served_by"]["level"] == "user"
            _edit_entry(folder, f"user:{user}", file="../../outside.safetensors")
            for _ in range(3):
                again = c.post("/v1/predict", json={"inputs": row})
                assert again.status_code == 200, again.text
                assert again.json()["predictions"][0] == first
            assert len(records.lines) == 1, records.lines  # logged once, not per batch
            assert "keep serving" in records.lines[0] and "leaves the folder" in records.lines[0]
            r = c.post("/admin/reload", headers=auth)
            assert r.status_code == 422 and r.json()["reloaded"] is False
            assert "index.json" in r.json()["detail"] and "leaves the folder" in r.json()["detail"]
            assert c.post("/v1/predict", json={"inputs": row}).json()["predictions"][0] == first
    finally:
        log.removeHandler(records)
