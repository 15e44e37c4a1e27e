"""A corpus of tampered model folders, and a runner that loads one of them as an attacker hopes.

:func:`build_corpus` fits one good folder of every kind tunesmith loads (text full fine-tune,
text head-only, its ONNX export, image, tabular with LightGBM, tabular with a text column,
recommender, per-user adapter store) with tiny models, then derives tampered copies of them.
Each copy is a :class:`Case`: a ``category`` (``code``, ``outside_read``, ``outside_write``,
``resources``, ``crash``, ``traceback``), the ``entries`` that load it (``python``,
``predict``, ``evaluate``, ``serve``, ``reload``, ``personalize``) and what it does.

Everything a case reaches for outside its folder lives in the corpus's one ``outside/``
folder: secret files, a Hugging Face model, a tokenizer, an adapter, a victim file. Code a
case smuggles in writes ``outside/CANARY`` when it runs.

:func:`run_case` loads one case through one entry point in a child process and measures it
(:class:`Outcome`): refused with one ``error:`` line, code executed, reads and writes under
``outside/`` (inotify, which sees native reads too), a traceback, an abort, peak memory and
wall time. ``python tests/tamper.py ROOT`` builds a corpus at ``ROOT`` and lists its cases.

Used by ``tests/runs/test_trust.py`` and ``bench/trust.py``; imports neither torch nor tunesmith
at module level so the benchmark's parent process stays light.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import os
import pickle
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = ("code", "outside_read", "outside_write", "resources", "crash", "traceback")
ENTRIES = ("python", "predict", "evaluate", "serve", "reload", "personalize")
TIMEOUT_S = 10.0
"""A load that takes longer is a hang."""
KILL_MARGIN_S = 20.0
"""Seconds past :data:`TIMEOUT_S` before the child is killed (imports and start-up of a loaded machine)."""
CHILD_AS_LIMIT = 6 * 2**30
"""Address-space cap of every child: a safety net so a load that reads /dev/zero cannot take the machine."""
SECRET = "TOP-SECRET-7f3a9c"
ADMIN_TOKEN = "tamper-admin-token"
STDIN_YES = b"y\n" * 2000
"""What a loader that asks on the terminal gets: yes, every time (the attack's accomplice)."""

CASE_NAMES = (
    "code_tokenizer_auto_map",
    "code_config_unknown_model_type",
    "code_stray_py",
    "code_pickle_protocol0",
    "code_pickle_protocol2",
    "code_torch_zip",
    "code_pickle_in_symlinked_subfolder",
    "code_safetensors_then_zip",
    "read_tokenizer_dir_symlink",
    "read_tokenizer_file_symlink",
    "read_tokenizer_file_absolute",
    "read_tokenizer_file_dotdot",
    "read_vocab_file_absolute",
    "read_vocab_file_dotdot",
    "read_tokenizer_vocab_key",
    "read_backbone_absolute",
    "read_backbone_dotdot",
    "read_tabular_preprocessor_backbone",
    "read_adapter_file_outside",
    "read_onnx_export_json_symlink",
    "write_adapter_unlink_outside",
    "res_fifo_tunesmith",
    "res_devzero_tunesmith",
    "res_fifo_backbone_config",
    "res_devzero_backbone_config",
    "res_fifo_tokenizer",
    "res_devzero_tokenizer",
    "res_huge_n_outputs",
    "res_huge_vocab_size",
    "res_huge_hidden_size",
    "res_huge_num_layers",
    "res_huge_item_count",
    "res_huge_recommender_layers",
    "res_huge_image_size",
    "res_onnx_constant_bomb",
    "crash_lightgbm_malformed",
    "crash_lightgbm_truncated",
    "tb_meta_not_an_object",
    "tb_meta_wrong_types",
    "tb_meta_missing_backbone",
    "tb_meta_image_architecture",
    "tb_meta_tabular_preprocessor",
    "tb_tokenizer_json_malformed",
    "tb_tokenizer_panic",
    "tb_recommender_id_maps",
    "tb_adapter_index_malformed",
    "tb_adapter_index_not_object",
)
"""Every case :func:`build_corpus` derives, in order (test ids are known before the corpus is built)."""

# The kind of good folder each case derives from, and the entries that load it.
KIND_ENTRIES: dict[str, tuple[str, ...]] = {
    "text": ("python", "predict", "evaluate", "serve", "reload"),
    "text_head": ("python", "predict", "evaluate", "serve", "reload"),
    "onnx": ("python", "predict", "serve", "reload"),
    "image": ("python", "predict", "evaluate", "serve", "reload"),
    "tabular": ("python", "predict", "evaluate", "serve", "reload"),
    "tabular_text": ("python", "predict", "evaluate", "serve", "reload"),
    "recommender": ("python", "predict", "serve", "reload"),
    "adapters": ("python", "serve", "personalize"),
}


@dataclass
class Case:
    """One tampered (or good) folder and how to load it."""

    name: str
    kind: str
    category: str
    folder: Path
    entries: tuple[str, ...]
    what: str
    cwd: Path | None = None
    """Working directory of the load (cases naming ``../`` paths resolve them from there)."""
    base: Path | None = None
    """The shared model of an adapter store."""
    good: bool = False

    @property
    def entry(self) -> tuple[str, ...]:
        return self.entries

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("folder", "cwd", "base"):
            d[k] = str(d[k]) if d[k] is not None else None
        return d


@dataclass
class Corpus:
    root: Path
    outside: Path
    canary: Path
    data: dict[str, Path]
    good: dict[str, Case]
    cases: list[Case]
    build_seconds: float = 0.0

    def case(self, name: str) -> Case:
        for c in self.cases:
            if c.name == name:
                return c
        raise KeyError(name)


# --- building the good folders -------------------------------------------------------------


def _reviews(n: int, seed: int = 0, *, users: bool = False) -> Any:
    from tests.conftest import make_reviews

    return make_reviews(n, seed, users=users)


def _text_params(tmp: Path, **extra: Any) -> dict[str, Any]:
    return {
        "backbone": "tiny-text",
        "epochs": 1,
        "batch_size": 16,
        "lr": 3e-3,
        "max_length": 32,
        "progress": False,
        "runs_dir": str(tmp / "runs"),
        "num_threads": 1,
        "baselines": False,
        **extra,
    }


def _table(n: int, seed: int = 0, *, text: bool = False) -> Any:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    color = rng.choice(["red", "green", "blue"], size=n)
    label = np.where(x + (color == "red") > 0.3, "yes", "no")
    df = pd.DataFrame({"x": x, "z": rng.normal(size=n), "color": color, "label": label})
    if text:
        df["note"] = np.where(label == "yes", "great fun movie", "awful boring movie")
    return df


def _write_images(root: Path, n: int = 48, size: int = 16) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    names = ["top", "middle", "bottom"]
    band = size // 3
    for i in range(n):
        c = i % 3
        img = np.zeros((size, size), dtype=np.float32)
        img[c * band : (c + 1) * band, :] = 1.0
        img = np.clip(img + rng.normal(0, 0.15, img.shape), 0, 1)
        folder = root / names[c]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def _cycle_log(n_users: int = 30, n_items: int = 20, length: int = 6) -> Any:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = []
    for u in range(n_users):
        start = int(rng.integers(n_items))
        for t in range(length):
            rows.append({"user_id": f"u{u}", "item_id": f"i{(start + t) % n_items}", "timestamp": 1000 * u + t})
    return pd.DataFrame(rows)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _build_good(root: Path) -> tuple[dict[str, Path], dict[str, Path], dict[str, Path]]:
    """Fit and save one good folder of every kind; returns (folders, data files, outside files)."""
    import torch

    from tunesmith import FineTuner, ImageFineTuner, TabularFineTuner
    from tunesmith.backbones.text import tiny_text

    torch.set_num_threads(1)
    good, data, out = root / "good", root / "data", root / "outside"
    for d in (good, data, out):
        d.mkdir(parents=True, exist_ok=True)
    work = root / "work"
    folders: dict[str, Path] = {}

    # text: one fit gives the full fine-tune; a head-only fit names its (registered) backbone
    reviews = data / "reviews.csv"
    _reviews(48).to_csv(reviews, index=False)
    folders["text"] = FineTuner(**_text_params(work)).fit(reviews, target="label").save(good / "text")
    folders["text_head"] = (
        FineTuner(**_text_params(work, strategy="head_only", epochs=2))
        .fit(reviews, target="label")
        .save(good / "text_head")
    )

    # its ONNX export
    from tunesmith.export import export_onnx

    shutil.copytree(folders["text"], good / "onnx")
    export_onnx(good / "onnx", sample_size=8)
    folders["onnx"] = good / "onnx"

    # image
    images = _write_images(data / "images")
    folders["image"] = (
        ImageFineTuner(
            backbone="tiny-image",
            image_size=16,
            epochs=1,
            batch_size=32,
            progress=False,
            baselines=False,
            test_size=0.25,
        )
        .fit(images)
        .save(good / "image")
    )

    # tabular: LightGBM, and LightGBM over a text column embedded by the tiny text encoder
    table = data / "table.csv"
    _table(80).to_csv(table, index=False)
    tab = {"model": "lightgbm", "progress": False, "target": "label"}
    folders["tabular"] = TabularFineTuner(**tab).fit(table).save(good / "tabular")
    table_text = data / "table_text.csv"
    _table(80, text=True).to_csv(table_text, index=False)
    folders["tabular_text"] = (
        TabularFineTuner(**tab, text_backbone="tiny-text", text_dims=2).fit(table_text).save(good / "tabular_text")
    )

    # recommender (SASRec: its item count sizes its embedding table)
    from tunesmith.recsys.recommender import Recommender

    log = data / "log.csv"
    _cycle_log().to_csv(log, index=False)
    fast = {"epochs": 1, "lr": 1e-2, "patience": 1, "batch_size": 64}
    rec = Recommender(
        "sasrec",
        seq={"dim": 16, "layers": 1, "heads": 2, "max_len": 8, "dropout": 0.0},
        pretrain=False,
        finetune_settings=fast,
        threads=1,
    ).fit(_cycle_log())
    folders["recommender"] = rec.save(good / "recommender")
    (data / "users.txt").write_text("u0")

    # adapter store over the full text model: every user gets a head adapter
    from tunesmith.personalize.personalizer import Personalizer

    personal = data / "personal.csv"
    _reviews(64, seed=3, users=True).to_csv(personal, index=False)
    p = Personalizer(folders["text"], good / "adapters", user_column="user", min_rows=4, steps=5, progress=False)
    p.fit(personal)
    folders["adapters"] = good / "adapters"
    few = data / "personal_few.csv"
    _reviews(64, seed=3, users=True).head(2).assign(user="u0").to_csv(few, index=False)

    data_files = {
        "reviews": reviews,
        "images": images,
        "table": table,
        "table_text": table_text,
        "log": log,
        "personal": personal,
        "personal_few": few,
    }

    # outside: what the tampered folders reach for
    (out / "secret.txt").write_text(SECRET + "\n")
    (out / "secret.json").write_text(json.dumps({"secret": SECRET, "files": {"fp32": "onnx/model.onnx"}}))
    (out / "victim.safetensors").write_bytes((folders["adapters"] / _first_adapter(folders["adapters"])).read_bytes())
    shutil.copy(folders["adapters"] / _first_adapter(folders["adapters"]), out / "adapter.safetensors")
    shutil.copytree(folders["text"] / "tokenizer", out / "tokenizer")
    shutil.copy(folders["text"] / "tokenizer" / "tokenizer.json", out / "tokenizer.json")
    vocab = json.loads((folders["text"] / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    (out / "vocab.txt").write_text("".join(t + "\n" for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])))
    hf = tiny_text()
    hf.model.save_pretrained(out / "hf_backbone", safe_serialization=True)
    hf.tokenizer.save_pretrained(str(out / "hf_backbone"))
    (out / "pickles").mkdir()
    (out / "pickles" / "state.pkl").write_bytes(_evil_pickle(out / "CANARY", protocol=2))
    outside_files = {"hf_backbone": out / "hf_backbone", "tokenizer": out / "tokenizer"}
    shutil.rmtree(work, ignore_errors=True)
    return folders, data_files, outside_files


def _first_adapter(store: Path) -> str:
    index = json.loads((store / "index.json").read_text())
    return str(sorted(index["adapters"].values(), key=lambda e: e["file"])[0]["file"])


# --- payloads ------------------------------------------------------------------------------


def _canary_code(canary: Path) -> str:
    return f"open({str(canary)!r}, 'w').write('code from a model folder ran')"


class _Evil:
    """Pickles to a program that writes the canary when unpickled."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (self.code,))


def _evil_pickle(canary: Path, protocol: int) -> bytes:
    return pickle.dumps({"state": _Evil(_canary_code(canary))}, protocol=protocol)


def _evil_torch_zip(canary: Path) -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save({"state": _Evil(_canary_code(canary))}, buf)
    return buf.getvalue()


def _evil_module(canary: Path, cls: str, base: str) -> str:
    return (
        "# Written by tests/tamper.py: importing this module is the attack.\n"
        f"{_canary_code(canary)}\n"
        f"from transformers import {base}\n\n\n"
        f"class {cls}({base}):\n"
        "    pass\n"
    )


# --- tampering helpers -----------------------------------------------------------------------


def _edit_json(path: Path, edit: Callable[[Any], Any]) -> None:
    value = json.loads(path.read_text())
    new = edit(value)
    path.write_text(json.dumps(value if new is None else new))


def _replace_with_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _replace_with_link(path: Path, target: Path | str) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    path.symlink_to(target)


def _rel(target: Path, start: Path) -> str:
    return os.path.relpath(target, start)


def _set(path: str, value: Any) -> Callable[[Any], None]:
    def edit(meta: Any) -> None:
        node = meta
        parts = path.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = value

    return edit


def _all(*edits: Callable[[Any], None]) -> Callable[[Any], None]:
    def edit(meta: Any) -> None:
        for e in edits:
            e(meta)

    return edit


def _drop(path: str) -> Callable[[Any], None]:
    def edit(meta: Any) -> None:
        node = meta
        parts = path.split(".")
        for p in parts[:-1]:
            node = node[p]
        del node[parts[-1]]

    return edit


def onnx_constant_bomb(nodes: int = 4, side: int = 16_000) -> bytes:
    """A few hundred bytes of ONNX graph: ``nodes`` ConstantOfShape([side, side + i]) each feeding a ReduceSum.

    ONNX Runtime's constant folding computes each (a gigabyte apiece at the default side)
    while it builds the session, long before any input arrives.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph_nodes, shapes, prev = [], [], "x"
    for i in range(nodes):
        shapes.append(numpy_helper.from_array(np.array([side, side + i], dtype=np.int64), name=f"shape{i}"))
        value = helper.make_tensor(f"v{i}", TensorProto.FLOAT, [1], [1.0 + i])
        graph_nodes.append(helper.make_node("ConstantOfShape", [f"shape{i}"], [f"big{i}"], value=value))
        graph_nodes.append(helper.make_node("ReduceSum", [f"big{i}"], [f"s{i}"], keepdims=0))
        graph_nodes.append(helper.make_node("Add", [prev, f"s{i}"], [f"y{i}"]))
        prev = f"y{i}"
    graph = helper.make_graph(
        graph_nodes,
        "bomb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1])],
        initializer=shapes,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return bytes(model.SerializeToString())


def _lightgbm_malformed(text: str) -> str:
    # Tree structure arrays that disagree with num_leaves: LightGBM reads past them in C++.
    lines = text.splitlines()
    out = []
    for line in lines:
        if line.startswith("split_feature="):
            line = "split_feature=" + " ".join(["99999"] * 3)
        elif line.startswith("left_child="):
            line = "left_child=5 -7 -9"
        out.append(line)
    return "\n".join(out) + "\n"


def _lightgbm_truncated(text: str) -> str:
    cut = text.index("Tree=0")
    return text[: cut + (len(text) - cut) // 3]


# --- the cases -------------------------------------------------------------------------------


def _derive(root: Path, folders: dict[str, Path], data: dict[str, Path], outside: Path) -> list[Case]:
    cases_dir = root / "cases"
    cases_dir.mkdir(parents=True, exist_ok=True)
    canary = outside / "CANARY"
    cases: list[Case] = []

    def make(
        name: str,
        kind: str,
        category: str,
        what: str,
        tamper: Callable[[Path], None],
        *,
        entries: Sequence[str] | None = None,
        cwd_in_folder: bool = False,
    ) -> Case:
        dest = cases_dir / name / ("store" if kind == "adapters" else "model")
        shutil.copytree(folders[kind], dest, symlinks=True)
        tamper(dest)
        case = Case(
            name=name,
            kind=kind,
            category=category,
            folder=dest,
            entries=tuple(entries or KIND_ENTRIES[kind]),
            what=what,
            cwd=dest if cwd_in_folder else None,
            base=folders["text"] if kind == "adapters" else None,
        )
        cases.append(case)
        return case

    tok = "tokenizer/tokenizer_config.json"

    # --- code: nothing from the folder may run -----------------------------------------------
    def auto_map_tokenizer(d: Path) -> None:
        (d / "tokenizer" / "tokenization_evil.py").write_text(
            _evil_module(canary, "EvilTokenizerFast", "PreTrainedTokenizerFast")
        )
        # Without tokenizer_class, transformers has no local class to fall back on: it asks.
        _edit_json(
            d / tok,
            _all(
                _set(
                    "auto_map",
                    {"AutoTokenizer": ["tokenization_evil.EvilTokenizerFast", "tokenization_evil.EvilTokenizerFast"]},
                ),
                _drop("tokenizer_class"),
            ),
        )

    make(
        "code_tokenizer_auto_map",
        "text",
        "code",
        "tokenizer_config.json auto_map names tokenization_evil.py beside it (transformers asks, stdin says yes)",
        auto_map_tokenizer,
    )

    def config_unknown_type(d: Path) -> None:
        (d / "tokenizer" / "configuration_evil.py").write_text(
            _evil_module(canary, "EvilConfig", "PretrainedConfig").replace(
                "    pass\n", '    model_type = "evil-bert"\n'
            )
        )
        (d / "tokenizer" / "config.json").write_text(
            json.dumps({"model_type": "evil-bert", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}})
        )
        _edit_json(d / tok, _drop("tokenizer_class"))

    make(
        "code_config_unknown_model_type",
        "text",
        "code",
        "tokenizer/config.json with an unknown model_type and auto_map -> configuration_evil.py",
        config_unknown_type,
    )
    make(
        "code_stray_py",
        "text",
        "code",
        "a stray sitecustomize.py in the model folder",
        lambda d: (d / "sitecustomize.py").write_text(_canary_code(canary) + "\n"),
    )
    make(
        "code_pickle_protocol0",
        "text",
        "code",
        "a protocol-0 pickle (no 0x80 header) that runs exec() when loaded, as training_state.dat",
        lambda d: (d / "training_state.dat").write_bytes(_evil_pickle(canary, protocol=0)),
    )
    make(
        "code_pickle_protocol2",
        "image",
        "code",
        "a protocol-2 pickle that runs exec() when loaded, as optimizer.state",
        lambda d: (d / "optimizer.state").write_bytes(_evil_pickle(canary, protocol=2)),
    )
    make(
        "code_torch_zip",
        "tabular",
        "code",
        "a torch.save zip whose data.pkl runs exec(), as checkpoint.data",
        lambda d: (d / "checkpoint.data").write_bytes(_evil_torch_zip(canary)),
    )
    make(
        "code_pickle_in_symlinked_subfolder",
        "text",
        "code",
        "extras/ is a symlink to a folder holding a pickle (a scan that does not follow links misses it)",
        lambda d: (d / "extras").symlink_to(outside / "pickles", target_is_directory=True),
    )

    def safetensors_then_zip(d: Path) -> None:
        head = (d / "model.safetensors").read_bytes()
        (d / "weights.safetensors").write_bytes(head + _evil_torch_zip(canary))

    make(
        "code_safetensors_then_zip",
        "text",
        "code",
        "weights.safetensors: a valid safetensors file that continues as a torch.save zip (torch.load opens it)",
        safetensors_then_zip,
    )

    # --- outside_read: nothing outside the folder may be read ---------------------------------
    make(
        "read_tokenizer_dir_symlink",
        "text",
        "outside_read",
        "tokenizer/ is a symlink to a tokenizer folder outside",
        lambda d: _replace_with_link(d / "tokenizer", outside / "tokenizer"),
    )
    make(
        "read_tokenizer_file_symlink",
        "text",
        "outside_read",
        "tokenizer/tokenizer.json is a symlink to a file outside",
        lambda d: _replace_with_link(d / "tokenizer" / "tokenizer.json", outside / "tokenizer.json"),
    )

    def tokenizer_file(rel: bool) -> Callable[[Path], None]:
        def edit(d: Path) -> None:
            (d / "tokenizer" / "tokenizer.json").unlink()
            target = _rel(outside / "tokenizer.json", d) if rel else str(outside / "tokenizer.json")
            _edit_json(d / tok, _set("tokenizer_file", target))

        return edit

    make(
        "read_tokenizer_file_absolute",
        "text",
        "outside_read",
        "tokenizer_config.json tokenizer_file names an absolute path outside (no tokenizer.json in the folder; "
        "transformers 5.25 itself ignores it, older versions open it)",
        tokenizer_file(False),
    )
    make(
        "read_tokenizer_file_dotdot",
        "text",
        "outside_read",
        "tokenizer_config.json tokenizer_file names ../../outside/tokenizer.json (run from inside the folder)",
        tokenizer_file(True),
        cwd_in_folder=True,
    )

    def vocab_file(rel: bool) -> Callable[[Path], None]:
        def edit(d: Path) -> None:
            (d / "tokenizer" / "tokenizer.json").unlink()
            target = _rel(outside / "vocab.txt", d) if rel else str(outside / "vocab.txt")

            def e(cfg: Any) -> None:
                cfg["tokenizer_class"] = "BertTokenizer"
                cfg["vocab_file"] = target
                cfg["do_lower_case"] = True

            _edit_json(d / tok, e)

        return edit

    make(
        "read_vocab_file_absolute",
        "text",
        "outside_read",
        "tokenizer_config.json (BertTokenizer) vocab_file names an absolute path outside (transformers 5.25 "
        "itself ignores it, older versions open it)",
        vocab_file(False),
    )
    make(
        "read_vocab_file_dotdot",
        "text",
        "outside_read",
        "tokenizer_config.json (BertTokenizer) vocab_file names ../../outside/vocab.txt (run from inside the folder)",
        vocab_file(True),
        cwd_in_folder=True,
    )

    def vocab_key(d: Path) -> None:
        def e(cfg: Any) -> None:
            # ConvBertTokenizer keeps the config's vocab and builds WordPiece(vocab=str): it opens the string.
            cfg["tokenizer_class"] = "ConvBertTokenizer"
            cfg["vocab"] = str(outside / "vocab.txt")

        _edit_json(d / tok, e)

    make(
        "read_tokenizer_vocab_key",
        "text",
        "outside_read",
        "tokenizer_config.json (ConvBertTokenizer) vocab, a key not ending in _file, names a vocabulary outside "
        "(transformers 5.25 opens it)",
        vocab_key,
    )
    hf_fp = _sha256_file(outside / "hf_backbone" / "model.safetensors")

    def backbone_path(rel: bool) -> Callable[[Path], None]:
        def edit(d: Path) -> None:
            target = _rel(outside / "hf_backbone", d) if rel else str(outside / "hf_backbone")

            def e(meta: Any) -> None:
                meta["backbone"]["name"] = target
                meta["backbone"]["fingerprint"] = hf_fp

            _edit_json(d / "tunesmith.json", e)

        return edit

    make(
        "read_backbone_absolute",
        "text_head",
        "outside_read",
        "head-only model whose tunesmith.json backbone name is an absolute path to a model outside "
        "(fingerprint matching it)",
        backbone_path(False),
    )
    make(
        "read_backbone_dotdot",
        "text_head",
        "outside_read",
        "head-only model whose backbone name is ../../outside/hf_backbone (run from inside the folder)",
        backbone_path(True),
        cwd_in_folder=True,
    )

    def tabular_backbone(d: Path) -> None:
        def e(meta: Any) -> None:
            meta["preprocessor"]["text_backbone"] = str(outside / "hf_backbone")
            meta["preprocessor"]["backbone_fingerprint"] = hf_fp

        _edit_json(d / "tunesmith.json", e)

    make(
        "read_tabular_preprocessor_backbone",
        "tabular_text",
        "outside_read",
        "tabular preprocessor text_backbone is an absolute path to a model outside (fingerprint matching it)",
        tabular_backbone,
    )

    def adapter_outside(target: Path) -> Callable[[Path], None]:
        def edit(d: Path) -> None:
            def e(index: Any) -> None:
                for entry in index["adapters"].values():
                    entry["file"] = _rel(target, d)

            _edit_json(d / "index.json", e)

        return edit

    make(
        "read_adapter_file_outside",
        "adapters",
        "outside_read",
        "adapter index.json entries name ../../../outside/adapter.safetensors as their file",
        adapter_outside(outside / "adapter.safetensors"),
        entries=("python", "serve"),
    )
    make(
        "read_onnx_export_json_symlink",
        "onnx",
        "outside_read",
        "onnx/export.json is a symlink to a secret JSON outside (GET /v1/metadata serves it)",
        lambda d: _replace_with_link(d / "onnx" / "export.json", outside / "secret.json"),
    )

    # --- outside_write: nothing outside may be written or deleted -------------------------------
    make(
        "write_adapter_unlink_outside",
        "adapters",
        "outside_write",
        "adapter index entry file ../../../outside/victim.safetensors; personalize --users retrains that user "
        "with too few rows (which deletes the adapter's file)",
        adapter_outside(outside / "victim.safetensors"),
        entries=("python", "personalize"),
    )

    # --- resources: no hang, no unbounded memory ---------------------------------------------------
    for target in ("tunesmith.json", "backbone_config.json", "tokenizer/tokenizer.json"):
        short = Path(target).stem
        make(
            f"res_fifo_{short}",
            "text",
            "resources",
            f"{target} is a FIFO (reading it blocks forever)",
            lambda d, t=target: _replace_with_fifo(d / t),
        )
        make(
            f"res_devzero_{short}",
            "text",
            "resources",
            f"{target} is a symlink to /dev/zero (reading it never ends)",
            lambda d, t=target: _replace_with_link(d / t, "/dev/zero"),
        )
    make(
        "res_huge_n_outputs",
        "text",
        "resources",
        "tunesmith.json n_outputs = 8,000,000 (a 32 x 8M head, 1 GB, built before the weights are read)",
        lambda d: _edit_json(d / "tunesmith.json", _set("n_outputs", 8_000_000)),
    )
    make(
        "res_huge_vocab_size",
        "text",
        "resources",
        "backbone_config.json vocab_size = 8,000,000 (a 1 GB embedding table)",
        lambda d: _edit_json(d / "backbone_config.json", _set("vocab_size", 8_000_000)),
    )

    def hidden(d: Path) -> None:
        def e(cfg: Any) -> None:
            cfg["hidden_size"] = 6144
            cfg["num_attention_heads"] = 2

        _edit_json(d / "backbone_config.json", e)

    make(
        "res_huge_hidden_size",
        "text",
        "resources",
        "backbone_config.json hidden_size = 6144 (1.2 GB of attention weights)",
        hidden,
    )
    make(
        "res_huge_num_layers",
        "text",
        "resources",
        "backbone_config.json num_hidden_layers = 3000 (3000 modules built before the weights are read)",
        lambda d: _edit_json(d / "backbone_config.json", _set("num_hidden_layers", 3000)),
    )
    make(
        "res_huge_item_count",
        "recommender",
        "resources",
        "recommender model_state n_items = 15,000,000 (a 1 GB item embedding built before the weights)",
        lambda d: _edit_json(d / "tunesmith.json", _set("model_state.n_items", 15_000_000)),
    )
    make(
        "res_huge_recommender_layers",
        "recommender",
        "resources",
        "SASRec model_state.config.layers = 3,000,000 (millions of encoder layers built before the weights)",
        lambda d: _edit_json(d / "tunesmith.json", _set("model_state.config.layers", 3_000_000)),
    )
    make(
        "res_huge_image_size",
        "image",
        "resources",
        "image preprocessing size = 3000 (every 16 px image becomes 3000 x 3000 before the CNN)",
        lambda d: _edit_json(d / "tunesmith.json", _set("preprocessing.size", 3000)),
    )

    make(
        "res_onnx_constant_bomb",
        "onnx",
        "resources",
        "onnx/model.onnx is a 656-byte graph of 4 ConstantOfShape([16000, 16000]) nodes (ONNX Runtime's "
        "constant folding allocates 4 GB while it builds the session)",
        lambda d: (d / "onnx" / "model.onnx").write_bytes(onnx_constant_bomb()),
    )

    # --- crash: a native library must not abort the process ----------------------------------------
    make(
        "crash_lightgbm_malformed",
        "tabular",
        "crash",
        "lightgbm.txt with tree arrays that disagree with num_leaves",
        lambda d: (d / "lightgbm.txt").write_text(_lightgbm_malformed((d / "lightgbm.txt").read_text())),
    )
    make(
        "crash_lightgbm_truncated",
        "tabular",
        "crash",
        "lightgbm.txt cut off inside its first tree",
        lambda d: (d / "lightgbm.txt").write_text(_lightgbm_truncated((d / "lightgbm.txt").read_text())),
    )

    # --- traceback: a malformed file is one error line ---------------------------------------------
    make(
        "tb_meta_not_an_object",
        "text",
        "traceback",
        "tunesmith.json holds a JSON array",
        lambda d: (d / "tunesmith.json").write_text("[1, 2, 3]"),
    )
    make(
        "tb_meta_wrong_types",
        "text",
        "traceback",
        "tunesmith.json n_outputs is a string and backbone.pooling a number",
        lambda d: _edit_json(d / "tunesmith.json", _all(_set("n_outputs", "two"), _set("backbone.pooling", 3))),
    )
    make(
        "tb_meta_missing_backbone",
        "text_head",
        "traceback",
        "tunesmith.json lacks its backbone field",
        lambda d: _edit_json(d / "tunesmith.json", _drop("backbone")),
    )
    make(
        "tb_meta_image_architecture",
        "image",
        "traceback",
        "image tunesmith.json backbone.architecture is a string",
        lambda d: _edit_json(d / "tunesmith.json", _set("backbone.architecture", "tiny")),
    )
    make(
        "tb_meta_tabular_preprocessor",
        "tabular",
        "traceback",
        "tabular tunesmith.json preprocessor.numeric_columns is a number",
        lambda d: _edit_json(d / "tunesmith.json", _set("preprocessor.numeric_columns", 7)),
    )
    make(
        "tb_tokenizer_json_malformed",
        "text",
        "traceback",
        "tokenizer/tokenizer.json is not JSON",
        lambda d: (d / "tokenizer" / "tokenizer.json").write_text('{"version": "1.0", "model": {'),
    )

    def panic_template(d: Path) -> None:
        single = [{"SpecialToken": {"id": "[X]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]
        pair = [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}]
        processor = {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": {}}
        _edit_json(d / "tokenizer" / "tokenizer.json", _set("post_processor", processor))

    make(
        "tb_tokenizer_panic",
        "text",
        "traceback",
        "tokenizer/tokenizer.json post-processor template names a special token [X] it does not define "
        "(parses; the first encode panics with a BaseException)",
        panic_template,
    )
    make(
        "tb_recommender_id_maps",
        "recommender",
        "traceback",
        "recommender tunesmith.json users is a number and items a list of objects",
        lambda d: _edit_json(d / "tunesmith.json", _all(_set("users", 5), _set("items", [{"a": 1}]))),
    )

    def index_malformed(d: Path) -> None:
        def e(index: Any) -> None:
            for key in list(index["adapters"]):
                index["adapters"][key] = ["not", "an", "entry"]

        _edit_json(d / "index.json", e)

    make(
        "tb_adapter_index_malformed",
        "adapters",
        "traceback",
        "adapter index.json entries are lists, not objects",
        index_malformed,
    )
    make(
        "tb_adapter_index_not_object",
        "adapters",
        "traceback",
        "adapter index.json holds a JSON string",
        lambda d: (d / "index.json").write_text('"adapters"'),
    )
    return cases


def build_corpus(root: str | os.PathLike[str]) -> Corpus:
    """Fit the good folders under ``root`` and derive every tampered case from them."""
    started = time.perf_counter()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    folders, data, _ = _build_good(root)
    outside = root / "outside"
    good = {
        kind: Case(
            name=f"good_{kind}",
            kind=kind,
            category="good",
            folder=folders[kind],
            entries=KIND_ENTRIES[kind],
            what=f"the good {kind} folder",
            base=folders["text"] if kind == "adapters" else None,
            good=True,
        )
        for kind in KIND_ENTRIES
    }
    cases = _derive(root, folders, data, outside)
    shutil.rmtree(root / "outside.orig", ignore_errors=True)
    shutil.copytree(outside, root / "outside.orig", symlinks=True)
    assert tuple(c.name for c in cases) == CASE_NAMES, "CASE_NAMES is out of date"
    corpus = Corpus(root, outside, outside / "CANARY", data, good, cases, time.perf_counter() - started)
    (root / "corpus.json").write_text(
        json.dumps(
            {
                "root": str(root),
                "outside": str(outside),
                "canary": str(corpus.canary),
                "data": {k: str(v) for k, v in data.items()},
                "good": {k: c.to_dict() for k, c in good.items()},
                "cases": [c.to_dict() for c in cases],
                "build_seconds": corpus.build_seconds,
            },
            indent=2,
        )
    )
    return corpus


def load_corpus(root: str | os.PathLike[str]) -> Corpus:
    """A corpus built earlier by :func:`build_corpus` (its ``corpus.json``)."""
    info = json.loads((Path(root) / "corpus.json").read_text())

    def case(d: dict[str, Any]) -> Case:
        return Case(
            name=d["name"],
            kind=d["kind"],
            category=d["category"],
            folder=Path(d["folder"]),
            entries=tuple(d["entries"]),
            what=d["what"],
            cwd=Path(d["cwd"]) if d["cwd"] else None,
            base=Path(d["base"]) if d["base"] else None,
            good=d["good"],
        )

    return Corpus(
        Path(info["root"]),
        Path(info["outside"]),
        Path(info["canary"]),
        {k: Path(v) for k, v in info["data"].items()},
        {k: case(v) for k, v in info["good"].items()},
        [case(c) for c in info["cases"]],
        info["build_seconds"],
    )


# --- watching outside/ -------------------------------------------------------------------------

IN_ACCESS, IN_MODIFY, IN_ATTRIB, IN_OPEN = 0x1, 0x2, 0x4, 0x20
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_ISDIR = 0x400, 0x800, 0x40000000
READ_MASK = IN_OPEN | IN_ACCESS
WRITE_MASK = IN_MODIFY | IN_ATTRIB | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF
_IN_NONBLOCK, _IN_CLOEXEC = 0o4000, 0o2000000
_EVENT = struct.Struct("iIII")
_libc: Any = None


def _lib() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    return _libc


class Watch:
    """inotify on every folder under ``folder``: who opened, read or changed what while it ran.

    Reads by native code (LightGBM, tokenizers, safetensors' mmap) show up as well as Python's.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.fd = _lib().inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.paths: dict[int, str] = {}
        for dirpath, dirnames, _files in os.walk(folder):
            wd = _lib().inotify_add_watch(self.fd, os.fsencode(dirpath), READ_MASK | WRITE_MASK)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {dirpath} failed")
            self.paths[wd] = os.path.relpath(dirpath, folder)
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        self.reads: list[str] = []
        self.writes: list[str] = []
        self.collect()  # the walk above opened the sub-folders: not the child's doing
        self.reads.clear()
        self.writes.clear()

    def collect(self) -> None:
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            if not buf:
                return
            pos = 0
            while pos + _EVENT.size <= len(buf):
                wd, mask, _cookie, length = _EVENT.unpack_from(buf, pos)
                name = buf[pos + _EVENT.size : pos + _EVENT.size + length].rstrip(b"\0").decode(errors="replace")
                pos += _EVENT.size + length
                where = os.path.normpath(os.path.join(self.paths.get(wd, "?"), name))
                if mask & READ_MASK:
                    self.reads.append(f"{where} ({'open' if mask & IN_OPEN else 'read'})")
                if mask & WRITE_MASK:
                    self.writes.append(f"{where} ({_mask_name(mask & WRITE_MASK)})")

    def close(self) -> None:
        self.collect()
        os.close(self.fd)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _mask_name(mask: int) -> str:
    names = {
        IN_MODIFY: "modify",
        IN_ATTRIB: "attrib",
        IN_CREATE: "create",
        IN_DELETE: "delete",
        IN_MOVED_FROM: "moved_from",
        IN_MOVED_TO: "moved_to",
        IN_DELETE_SELF: "delete_self",
        IN_MOVE_SELF: "move_self",
    }
    return "|".join(n for bit, n in names.items() if mask & bit) or hex(mask)


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (links not followed) with its kind and content hash."""
    out: dict[str, str] = {}
    for dirpath, dirnames, files in os.walk(folder):
        for name in dirnames + files:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, folder)
            st = os.lstat(full)
            if os.path.islink(full):
                out[rel] = "link:" + os.readlink(full)
            elif os.path.isdir(full):
                out[rel] = "dir"
            else:
                out[rel] = f"file:{st.st_mode & 0o7777:o}:" + hashlib.sha256(Path(full).read_bytes()).hexdigest()
    return out


def restore_outside(corpus: Corpus) -> None:
    """Put ``outside/`` back as it was built (a case may have written the canary or deleted a file)."""
    backup = corpus.root / "outside.orig"
    if snapshot(corpus.outside) == snapshot(backup):
        return
    shutil.rmtree(corpus.outside)
    shutil.copytree(backup, corpus.outside, symlinks=True)


# --- one load ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one load of one case through one entry did."""

    case: str
    entry: str
    category: str
    kind: str
    refused: bool = False
    loaded: bool = False
    code_executed: bool = False
    outside_reads: int = 0
    outside_writes: int = 0
    outside_changed: list[str] = field(default_factory=list)
    outside_served: bool = False
    traceback: bool = False
    process_abort: bool = False
    timed_out: bool = False
    returncode: int | None = None
    max_rss_mb: float | None = None
    seconds: float = 0.0
    load_seconds: float | None = None
    """Python entry: seconds inside the load itself (the child's imports excluded)."""
    excess_seconds: float | None = None
    """Wall seconds beyond the good folder's through the same entry (set by the benchmark);
    a CLI child's wall time is mostly imports, which a loaded machine stretches."""
    error: str = ""
    stderr_lines: int = 0
    detail: str = ""
    read_events: list[str] = field(default_factory=list)
    write_events: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        """Why this outcome breaks the trust boundary (empty for a clean refusal)."""
        out = []
        if not self.refused:
            out.append("not refused")
        if self.code_executed:
            out.append("code executed")
        if self.outside_reads:
            out.append(f"{self.outside_reads} outside reads")
        if self.outside_writes or self.outside_changed:
            out.append("outside written")
        if self.outside_served:
            out.append("outside content served")
        if self.traceback:
            out.append("traceback")
        if self.process_abort:
            out.append("process aborted")
        if self.timed_out:
            out.append("hang")
        elif self.load_seconds is not None and self.load_seconds > TIMEOUT_S:
            out.append(f"the load took {self.load_seconds:.1f}s")
        elif self.excess_seconds is not None and self.excess_seconds > TIMEOUT_S:
            out.append(f"took {self.excess_seconds:.1f}s longer than the good folder")
        return out

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["read_events"] = d["read_events"][:8]
        d["write_events"] = d["write_events"][:8]
        d["failures"] = self.failures
        d["ok"] = self.ok
        return d


def python_entry(kind: str, folder: str, base: str | None, data: dict[str, str], write: bool) -> Any:
    """Load ``folder`` the way Python code does for its kind (``tunesmith.load`` or the kind's loader)."""
    if kind == "onnx":
        from tunesmith.export import load_predictor

        predictor = load_predictor(folder, backend="onnx", threads=1)
        return predictor.metadata()
    if kind == "recommender":
        from tunesmith.recsys.recommender import Recommender

        return Recommender.load(folder)
    if kind == "adapters":
        import pandas as pd

        from tunesmith.personalize.personalizer import Personalizer

        p = Personalizer.from_store(folder, base=base, progress=False)
        if write:
            return p.fit(data["personal_few"], users=["u0"])
        rows = pd.DataFrame({"text": ["great fun movie", "awful boring movie"], "user": ["u0", "u1"]})
        return p.predict_proba(rows)
    import tunesmith

    return tunesmith.load(folder)


_CHILD = """
import sys, json, time
sys.path.insert(0, {root!r})
from tests.tamper import python_entry
from tunesmith.errors import ArtifactError
args = json.loads(sys.argv[1])
import importlib
for name in {preimport!r}:
    try:
        importlib.import_module(name)
    except ImportError:
        pass
started = time.perf_counter()
try:
    python_entry(**args)
except ArtifactError as exc:
    print(f"error: {{exc}}", file=sys.stderr)
    sys.exit(2)
finally:
    print(f"tamper-load-seconds {{time.perf_counter() - started:.3f}}", flush=True)
"""


def _tunesmith_bin() -> str:
    exe = Path(sys.executable).parent / "tunesmith"
    return str(exe) if exe.exists() else "tunesmith"


def child_env(corpus: Corpus | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TUNESMITH_API_KEY", "TUNESMITH_ADMIN_TOKEN")}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_WAIT_POLICY": "PASSIVE",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
            "COLUMNS": "400",
        }
    )
    # TAMPER_PYTHONPATH: run the children against another copy of the code (an older commit's src/)
    extra = os.environ.get("TAMPER_PYTHONPATH")
    if extra:
        env["PYTHONPATH"] = os.pathsep.join([extra, env["PYTHONPATH"]])
    if corpus is not None:
        env["HF_MODULES_CACHE"] = str(corpus.root / "hf_modules")
    return env


def _limit_child() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_AS_LIMIT, CHILD_AS_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _data_for(case: Case, corpus: Corpus) -> Path:
    return {
        "text": corpus.data["reviews"],
        "text_head": corpus.data["reviews"],
        "onnx": corpus.data["reviews"],
        "image": corpus.data["images"],
        "tabular": corpus.data["table"],
        "tabular_text": corpus.data["table_text"],
        "adapters": corpus.data["personal_few"],
    }[case.kind]


def command(case: Case, entry: str, corpus: Corpus, out_dir: Path, port: int | None = None) -> list[str]:
    """The command line that loads ``case`` through ``entry`` in a child process."""
    ts = _tunesmith_bin()
    folder = str(case.folder)
    if entry == "python":
        args = {
            "kind": case.kind,
            "folder": folder,
            "base": str(case.base) if case.base else None,
            "data": {k: str(v) for k, v in corpus.data.items()},
            "write": case.category == "outside_write",
        }
        return [sys.executable, "-c", _CHILD.format(root=str(ROOT), preimport=_PREIMPORT), json.dumps(args)]
    if entry == "predict":
        if case.kind == "recommender":
            return [ts, "recommend", "predict", folder, "-o", str(out_dir / "recs.csv"), "--users", "u0,u1"]
        cmd = [ts, "predict", folder, str(_data_for(case, corpus)), "-o", str(out_dir / "pred.csv"), "-q"]
        cmd += ["--threads", "1"]
        return cmd + (["--backend", "onnx"] if case.kind == "onnx" else [])
    if entry == "evaluate":
        return [ts, "evaluate", folder, str(_data_for(case, corpus))]
    if entry == "serve":
        assert port is not None
        backend = "onnx" if case.kind == "onnx" else "torch"
        if case.kind == "adapters":
            assert case.base is not None
            return [ts, "serve", str(case.base), "--adapters", folder, "--port", str(port), "--threads", "1"]
        return [ts, "serve", folder, "--port", str(port), "--backend", backend, "--threads", "1"]
    if entry == "personalize":
        assert case.base is not None
        return [
            ts,
            "personalize",
            str(case.base),
            str(corpus.data["personal_few"]),
            "--user-column",
            "user",
            "-o",
            folder,
            "--users",
            "u0",
            "--min-rows",
            "10",
        ]
    raise ValueError(f"no child command for entry {entry!r}")


def _http(
    method: str, url: str, body: Any = None, *, token: str | None = None, timeout: float = 5.0
) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        return 0, f"{type(exc).__name__}: {exc}"


def _probe_started_server(case: Case, port: int) -> tuple[bool, str]:
    """Ask a server that should never have started for what the tampering reaches: (outside served?, note)."""
    base = f"http://127.0.0.1:{port}"
    status, text = _http("GET", base + "/v1/metadata")
    served = SECRET in text
    note = f"GET /v1/metadata {status}"
    if case.kind == "adapters":
        status, text = _http("POST", base + "/v1/predict", {"inputs": [{"text": "great fun movie", "user": "u0"}]})
        note += f"; POST /v1/predict (user u0) {status}"
    return served, note


def _wait_rusage(pid: int, deadline: float) -> tuple[int | None, Any]:
    while True:
        got, status, usage = os.wait4(pid, os.WNOHANG)
        if got:
            return os.waitstatus_to_exitcode(status), usage
        if time.monotonic() >= deadline:
            return None, None
        time.sleep(0.02)


def _kill_group(proc: subprocess.Popen[bytes]) -> tuple[int | None, Any]:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), usage


def _summarise_stderr(text: str) -> tuple[str, int, bool]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.lstrip().startswith("error:")]
    has_tb = "Traceback (most recent call last)" in text
    if has_tb:
        last = lines[-1].strip() if lines else ""
    elif errors:
        last = errors[-1].strip()
    else:
        last = lines[-1].strip() if lines else ""
    return last[:300], len(errors), has_tb


def run_case(case: Case, entry: str, corpus: Corpus, *, timeout: float = TIMEOUT_S) -> Outcome:
    """Load ``case`` through ``entry`` (not ``reload``: see :class:`ReloadServer`) in a child process."""
    restore_outside(corpus)
    work = corpus.root / "runs" / f"{case.name}.{entry}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    port = free_port() if entry == "serve" else None
    cmd = command(case, entry, corpus, work, port)
    before = snapshot(corpus.outside)
    out = Outcome(case=case.name, entry=entry, category=case.category, kind=case.kind)
    stdout_f = (work / "stdout.txt").open("wb")
    stderr_f = (work / "stderr.txt").open("wb")
    watch = Watch(corpus.outside)
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=str(case.cwd or work),
        env=child_env(corpus),
        stdin=subprocess.PIPE,
        stdout=stdout_f,
        stderr=stderr_f,
        start_new_session=True,
        preexec_fn=_limit_child,
    )
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.write(STDIN_YES)
        proc.stdin.close()
    rc: int | None
    usage: Any
    if entry == "serve":
        rc, usage = None, None
        deadline = started + timeout + KILL_MARGIN_S
        while time.monotonic() < deadline:
            got, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if got:
                rc = os.waitstatus_to_exitcode(status)
                break
            code, _ = _http("GET", f"http://127.0.0.1:{port}/ready", timeout=1.0)
            if code == 200:
                out.loaded = True
                out.outside_served, out.detail = _probe_started_server(case, port or 0)
                out.detail = "the server started and answered: " + out.detail
                break
            time.sleep(0.1)
        out.seconds = time.monotonic() - started
        if rc is None:
            if not out.loaded:
                out.timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            rc, usage = _wait_rusage(proc.pid, time.monotonic() + 10)
            if rc is None:
                rc, usage = _kill_group(proc)
            rc = None if out.loaded or out.timed_out else rc
    else:
        rc, usage = _wait_rusage(proc.pid, started + timeout + KILL_MARGIN_S)
        out.seconds = time.monotonic() - started
        if rc is None:
            out.timed_out = True
            _rc, usage = _kill_group(proc)
    # anything the child left running in its session
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    watch.close()
    stdout_f.close()
    stderr_f.close()
    stderr = (work / "stderr.txt").read_text(errors="replace")
    for line in (work / "stdout.txt").read_text(errors="replace").splitlines():
        if line.startswith("tamper-load-seconds "):
            out.load_seconds = float(line.split()[1])
    out.returncode = rc
    out.max_rss_mb = round(usage.ru_maxrss / 1024, 1) if usage is not None else None
    out.error, n_errors, out.traceback = _summarise_stderr(stderr)
    out.stderr_lines = n_errors
    out.process_abort = rc is not None and ((rc < 0 and rc != -signal.SIGKILL) or rc == 134)
    out.code_executed = corpus.canary.exists()
    out.read_events, out.write_events = watch.reads, watch.writes
    out.outside_reads, out.outside_writes = len(watch.reads), len(watch.writes)
    after = snapshot(corpus.outside)
    out.outside_changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    out.refused = rc == 2 and n_errors == 1 and not out.traceback and not out.loaded
    if rc == 0 and entry != "serve":
        out.loaded = True
    if out.timed_out:
        out.error = out.error or f"no answer after {timeout + KILL_MARGIN_S:.0f}s"
    restore_outside(corpus)
    return out


def _vm_size() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


_PREIMPORT = (
    "tunesmith.kinds",
    "tunesmith.estimators.text",
    "tunesmith.estimators.image",
    "tunesmith.tabular",
    "tunesmith.recsys.recommender",
    "tunesmith.personalize.personalizer",
    "tunesmith.export",
    "tunesmith.export.runtime",
    "transformers",
    "lightgbm",
    "onnxruntime",
    "pandas",
)


def _zygote_child(req: dict[str, Any], write_fd: int) -> None:
    """In a fork of the zygote: load one folder, write the result to ``write_fd``."""
    import io
    import traceback

    os.setpgid(0, 0)
    limit = _vm_size() + 3 * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    fd = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if req.get("cwd"):
        os.chdir(req["cwd"])
    sys.stdin = io.StringIO(STDIN_YES.decode())
    from tunesmith.errors import ArtifactError

    result: dict[str, Any] = {"status": "loaded"}
    t0 = time.perf_counter()
    try:
        python_entry(**req["args"])
    except ArtifactError as exc:
        result = {"status": "refused", "error": f"error: {exc}"}
    except BaseException as exc:
        tb = traceback.format_exc()
        result = {"status": "raised", "error": f"{type(exc).__name__}: {exc}"[:300], "traceback": tb[-4000:]}
    result["load_seconds"] = time.perf_counter() - t0
    os.write(write_fd, json.dumps(result).encode()[:60000])


def zygote_main() -> None:
    """A clean process that imports the loaders once, then forks one child per load request (stdin, JSON lines).

    It never trains or predicts itself, so no thread pool (OpenMP, LightGBM) exists when it forks.
    """
    import importlib

    for name in _PREIMPORT:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    proto = sys.stdout
    print("ready", file=proto, flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        read_fd, write_fd = os.pipe()
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(read_fd)
                _zygote_child(req, write_fd)
            finally:
                os._exit(0)
        os.close(write_fd)
        rc, _usage = _wait_rusage(pid, started + float(req["timeout"]))
        timed_out = rc is None
        if timed_out:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            _pid, status, _usage = os.wait4(pid, 0)
            rc = os.waitstatus_to_exitcode(status)
        with os.fdopen(read_fd, "rb") as fh:
            raw = fh.read()
        result = json.loads(raw) if raw else {"status": "died"}
        result.update({"rc": rc, "timed_out": timed_out, "seconds": time.monotonic() - started})
        print(json.dumps(result), file=proto, flush=True)


class Zygote:
    """Python-entry loads in forks of one clean, pre-imported process: no imports to pay per load,
    yet a hang, an abort or code run by the load cannot touch the caller. Peak memory is not
    measured (a fork starts with its parent's); :func:`run_case` measures it in a fresh process.
    """

    def __init__(self, corpus: Corpus) -> None:
        self.corpus = corpus
        code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.tamper import zygote_main; zygote_main()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=str(corpus.root),
            env=child_env(corpus),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the zygote process did not start: {line!r}")

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, case: Case, *, timeout: float = TIMEOUT_S) -> Outcome:
        """The Python entry of ``case``, measured like :func:`run_case` (memory aside)."""
        corpus = self.corpus
        restore_outside(corpus)
        out = Outcome(case=case.name, entry="python", category=case.category, kind=case.kind)
        err_file = corpus.root / "runs" / f"{case.name}.zygote.stderr"
        err_file.parent.mkdir(parents=True, exist_ok=True)
        req = {
            "args": {
                "kind": case.kind,
                "folder": str(case.folder),
                "base": str(case.base) if case.base else None,
                "data": {k: str(v) for k, v in corpus.data.items()},
                "write": case.category == "outside_write",
            },
            "cwd": str(case.cwd) if case.cwd else None,
            "stderr": str(err_file),
            "timeout": timeout + 5,
        }
        before = snapshot(corpus.outside)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with Watch(corpus.outside) as watch:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the zygote process died")
        result = json.loads(line)
        out.seconds = float(result["seconds"])
        out.timed_out = bool(result["timed_out"])
        out.returncode = result["rc"]
        out.load_seconds = result.get("load_seconds")
        out.refused = result["status"] == "refused"
        out.loaded = result["status"] == "loaded"
        out.traceback = result["status"] == "raised"
        out.error = str(result.get("error", ""))
        if out.traceback:
            out.detail = str(result.get("traceback", ""))[-1500:]
        out.process_abort = not out.timed_out and (result["status"] == "died" or out.returncode != 0)
        if out.process_abort:
            tail = err_file.read_text(errors="replace").strip().splitlines()
            out.error = out.error or (tail[-1][:300] if tail else f"the process died (exit {out.returncode})")
        if out.timed_out:
            out.error = out.error or f"no answer after {timeout + 5:.0f}s"
        out.code_executed = corpus.canary.exists()
        out.read_events, out.write_events = watch.reads, watch.writes
        out.outside_reads, out.outside_writes = len(watch.reads), len(watch.writes)
        after = snapshot(corpus.outside)
        out.outside_changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        restore_outside(corpus)
        return out


# --- hot reload ---------------------------------------------------------------------------------


def _png_b64() -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (16, 16), color=200).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def probe_request(kind: str) -> tuple[str, dict[str, Any]]:
    """A request the good server of ``kind`` answers with 200: (path, body)."""
    if kind == "recommender":
        return "/v1/recommend", {"user": "u0", "k": 3}
    if kind == "image":
        return "/v1/predict", {"inputs": [{"image": _png_b64()}]}
    if kind == "tabular":
        return "/v1/predict", {"inputs": [{"x": 0.5, "z": 0.1, "color": "red"}]}
    if kind == "tabular_text":
        return "/v1/predict", {"inputs": [{"x": 0.5, "z": 0.1, "color": "red", "note": "great fun movie"}]}
    return "/v1/predict", {"inputs": ["great fun movie"]}


def _vm_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class ReloadServer:
    """``tunesmith serve GOOD`` with an admin token: reload tampered folders into it, one at a time.

    After each refused reload the server must still be up, answer the probe request with
    the version it had, and have answered the reload within :data:`TIMEOUT_S`.
    """

    def __init__(self, good: Case, corpus: Corpus) -> None:
        self.good, self.corpus = good, corpus
        self.proc: subprocess.Popen[bytes] | None = None
        self.version = ""
        self.start_error = ""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> bool:
        self.port = free_port()
        self.log = self.corpus.root / "runs" / f"reload-{self.good.kind}-{self.port}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        backend = "onnx" if self.good.kind == "onnx" else "torch"
        cmd = [_tunesmith_bin(), "serve", str(self.good.folder), "--port", str(self.port), "--backend", backend]
        cmd += ["--threads", "1"]
        env = {**child_env(self.corpus), "TUNESMITH_ADMIN_TOKEN": ADMIN_TOKEN}
        self._log_f = self.log.open("wb")
        self.proc = subprocess.Popen(
            cmd,
            cwd=str(self.corpus.root),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_limit_child,
        )
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if self.proc.poll() is not None:
                self.start_error = self.log.read_text(errors="replace")[-2000:]
                return False
            if _http("GET", self.base + "/ready", timeout=1.0)[0] == 200:
                status, text = _http("GET", self.base + "/v1/metadata")
                self.version = json.loads(text).get("model_version", "") if status == 200 else ""
                return True
            time.sleep(0.2)
        self.start_error = "not ready after {timeout:.0f}s"
        return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log_f.close()
        self.proc = None

    def reload(self, case: Case, *, timeout: float = TIMEOUT_S) -> Outcome:
        """POST /admin/reload with ``case``'s folder and check the server kept its model."""
        assert self.proc is not None
        corpus = self.corpus
        restore_outside(corpus)
        out = Outcome(case=case.name, entry="reload", category=case.category, kind=case.kind)
        log_offset = self.log.stat().st_size
        rss_before = _vm_rss_mb(self.proc.pid) or 0.0
        peak = [rss_before]
        stop = threading.Event()

        def sample() -> None:
            assert self.proc is not None
            while not stop.is_set():
                rss = _vm_rss_mb(self.proc.pid)
                if rss is not None:
                    peak[0] = max(peak[0], rss)
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        before = snapshot(corpus.outside)
        watch = Watch(corpus.outside)
        sampler.start()
        started = time.monotonic()
        status, text = _http(
            "POST",
            self.base + "/admin/reload",
            {"path": str(case.folder)},
            token=ADMIN_TOKEN,
            timeout=timeout + KILL_MARGIN_S,
        )
        out.seconds = time.monotonic() - started
        stop.set()
        sampler.join()
        watch.close()
        out.read_events, out.write_events = watch.reads, watch.writes
        out.outside_reads, out.outside_writes = len(watch.reads), len(watch.writes)
        after = snapshot(corpus.outside)
        out.outside_changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        out.code_executed = corpus.canary.exists()
        out.max_rss_mb = round(peak[0], 1)
        out.returncode = status
        body: Any = None
        with contextlib.suppress(ValueError):
            body = json.loads(text)
        if status == 0:
            out.timed_out = "timed out" in text or out.seconds >= timeout + KILL_MARGIN_S - 1
            out.error = text[:300]
        elif isinstance(body, dict):
            out.error = str(body.get("detail") or body.get("error") or text)[:300]
        else:
            out.error = text[:300]
        time.sleep(0.2)
        log = self.log.read_text(errors="replace")[log_offset:]
        out.traceback = "Traceback (most recent call last)" in log
        if not self.alive():
            assert self.proc is not None
            rc = self.proc.returncode
            out.process_abort = True
            out.detail = f"the server died during the reload (exit {rc})"
            out.error = out.error or (log.strip().splitlines() or [""])[-1][:300]
        else:
            path, req = probe_request(case.kind)
            p_status, _ = _http("POST", self.base + path, req, timeout=timeout)
            _, m_text = _http("GET", self.base + "/v1/metadata", timeout=timeout)
            version = ""
            with contextlib.suppress(ValueError, AttributeError):
                version = json.loads(m_text).get("model_version", "")
            kept = p_status == 200 and version == self.version
            out.detail = f"after the reload: {path} {p_status}, model_version {version or '?'} (was {self.version})"
            out.outside_served = SECRET in m_text
            out.loaded = isinstance(body, dict) and body.get("reloaded") is True
            refused_body = isinstance(body, dict) and body.get("reloaded") is False
            out.refused = status == 422 and refused_body and kept and not out.traceback
            if out.loaded:
                out.detail = "the reload was accepted; " + out.detail
        restore_outside(corpus)
        return out


def run_reloads(cases: Sequence[Case], corpus: Corpus, *, timeout: float = TIMEOUT_S) -> list[Outcome]:
    """Every case whose entries include ``reload``, reloaded into a server of its kind (the good reload first)."""
    results: list[Outcome] = []
    by_kind: dict[str, list[Case]] = {}
    for case in cases:
        if "reload" in case.entries:
            by_kind.setdefault(case.kind, []).append(case)
    for kind, group in by_kind.items():
        server = ReloadServer(corpus.good[kind], corpus)
        try:
            if not server.start():
                for case in group:
                    out = Outcome(case=case.name, entry="reload", category=case.category, kind=kind)
                    out.error = "the good server did not start: " + server.start_error.strip()[-200:]
                    results.append(out)
                continue
            for case in group:
                if not server.alive() or not server.version:
                    server.stop()
                    server.start()
                out = server.reload(case, timeout=timeout)
                results.append(out)
                if out.timed_out or out.process_abort or (not out.refused and not out.loaded):
                    server.stop()  # a hung reload holds the lock: start afresh for the next case
                elif out.loaded:
                    server.stop()  # it serves the tampered model now
        finally:
            server.stop()
    return results


def main(argv: Sequence[str] | None = None) -> None:
    """``python tests/tamper.py ROOT``: build a corpus at ROOT and list its cases."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python tests/tamper.py ROOT", file=sys.stderr)
        sys.exit(2)
    corpus = build_corpus(args[0])
    for case in corpus.cases:
        print(f"{case.name:40s} {case.category:14s} {case.kind:13s} {','.join(case.entries)}")
    print(f"{len(corpus.cases)} cases, built in {corpus.build_seconds:.1f}s")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
