"""A recommender's model folder: what :meth:`Recommender.save` writes and how a load reads it.

A folder holds ``model.safetensors`` (the model's arrays and every user's history),
``tunesmith.json`` (the one metadata format, :func:`tunesmith.runs.meta.model_meta`, kind
``recommender``, task ``recommendation``), ``card.md`` and two plots. Loading checks every
field, that the id lists agree with the weights, and the tensor shapes against the
safetensors header before anything is built; version-1 folders (saved before the common
metadata fields) still load.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunesmith.backbones import is_registered
from tunesmith.errors import ArtifactError, ConfigError
from tunesmith.recsys.models import model_from_state
from tunesmith.recsys.report import dict_or
from tunesmith.recsys.sequential import SASRecNet, SeqConfig, SequentialRecommender
from tunesmith.recsys.settings import MODEL_KINDS, SETTING_NAMES
from tunesmith.runs.artifacts import AtomicDirectory, atomic_write_json, json_safe, save_tensors
from tunesmith.runs.fingerprint import model_version
from tunesmith.runs.meta import MODEL_FILE, model_meta, read_model_meta
from tunesmith.runs.trust import SafeFolder, check_state_shapes, field, malformed, meta_shapes

TASK = "recommendation"
KIND = "recommender"
READABLE = (1, 2)


def write_folder(
    path: str | os.PathLike[str],
    *,
    overwrite: bool,
    model_state: tuple[dict[str, np.ndarray], dict[str, Any]],
    history: tuple[np.ndarray, np.ndarray],
    meta: dict[str, Any],
    write_extras: Callable[[Path], None],
) -> Path:
    """Write the folder atomically: safetensors of the model and histories, ``tunesmith.json``, extras."""
    model_arrays, _ = model_state
    arrays = {f"model.{k}": v for k, v in model_arrays.items() if v.size}
    arrays["history.indptr"], arrays["history.indices"] = history
    final = Path(path)
    with AtomicDirectory(final, overwrite=overwrite) as tmp:
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        save_tensors(Path(tmp) / "model.safetensors", tensors, {"format": "tunesmith", "task": TASK})
        atomic_write_json(Path(tmp) / MODEL_FILE, json_safe(meta))
        write_extras(Path(tmp))
    return final


def folder_meta(
    *,
    model: str,
    settings: Mapping[str, Any],
    model_settings: Mapping[str, Any],
    columns: Mapping[str, Any],
    users: Any,
    items: Any,
    metrics: Mapping[str, Any],
    baselines: Mapping[str, Any],
    split: Mapping[str, Any],
    training: Mapping[str, Any],
    data: Mapping[str, Any],
    refit: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``tunesmith.json`` of a recommender: the common fields plus the recommender's own.

    The recommender's own field names (``model``, ``model_state``, ``columns``, ``users``,
    ``items``, ``split``, ``training``) are read by serving and the trust tests: keep them.
    A refitted model also records what its refit did under ``refit``.
    """
    extra: dict[str, Any] = {"refit": dict(refit)} if refit is not None else {}
    return model_meta(
        KIND,
        TASK,
        settings=settings,
        metrics=metrics,
        baselines=baselines,
        data=data,
        model=model,
        model_state=dict(model_settings),
        columns=dict(columns),
        users=[str(u) for u in users],
        items=[str(i) for i in items],
        split=dict(split),
        training=dict(training),
        **extra,
    )


def check_meta(folder: SafeFolder, meta: dict[str, Any]) -> dict[str, Any]:
    """The folder's metadata, refused unless it is a recommender's of a version this release reads."""
    file = folder.root / MODEL_FILE
    task = meta.get("task")
    if task != TASK or meta.get("kind", KIND) != KIND:
        raise ArtifactError(
            f"this folder holds a {task!r:.40} model, not a recommendation model",
            path=folder.root,
            hint="Load it with tunesmith.load(), or pass a folder written by Recommender.save",
        )
    version = meta.get("format_version")
    if version not in READABLE or isinstance(version, bool):
        raise ArtifactError(
            f"recommender format version {version!r:.40} is not supported (expected one of {READABLE})",
            path=file,
            hint="Re-save the model with this tunesmith version",
        )
    return read_model_meta(folder, meta)


def read_folder(
    folder: SafeFolder, meta: dict[str, Any], content_backbone: str | None, build: Callable[..., Any]
) -> Any:
    """The recommender of an opened folder; ``build(**settings)`` makes the unfitted estimator."""
    with malformed(folder.root / MODEL_FILE):
        return _read(folder, check_meta(folder, meta), content_backbone, build)


def _read(folder: SafeFolder, meta: dict[str, Any], content_backbone: str | None, build: Callable[..., Any]) -> Any:
    file = folder.root / MODEL_FILE
    weights = folder.root / "model.safetensors"
    kind = field(meta, "model", str, file=file, choices=MODEL_KINDS)
    settings = dict(field(meta, "settings", dict, file=file))
    unknown = sorted(set(settings) - set(SETTING_NAMES))
    if unknown:
        raise ArtifactError(f"field 'settings' holds the unknown setting {unknown[0]!r:.60}", path=file)
    if settings.setdefault("model", kind) != kind:
        raise ArtifactError("fields 'model' and 'settings.model' disagree", path=file)
    # A loaded model records no runs of its own unless asked again.
    settings.pop("runs_dir", None)
    stored_backbone = field(meta, "settings.content_backbone", (str, type(None)), file=file, default=None)
    untrusted = None
    if content_backbone is not None:
        settings["content_backbone"] = content_backbone
    elif stored_backbone is not None and not is_registered(stored_backbone):
        # Kept for the record, but never opened: add_items asks for it explicitly.
        untrusted = stored_backbone
    try:
        rec = build(**settings)
    except ConfigError as exc:
        where = f"settings.{exc.key}" if exc.key else "settings"
        raise ArtifactError(f"field {where!r}: {exc.message}", path=file) from None
    users = _id_list(meta, "users", file)
    items = _id_list(meta, "items", file)
    if not items:
        raise ArtifactError("field 'items' is empty: a recommender needs a catalogue", path=file)
    state = field(meta, "model_state", dict, file=file)
    n_items = field(meta, "model_state.n_items", int, file=file)
    if n_items != len(items):
        raise ArtifactError(
            f"field 'model_state.n_items' is {n_items} but field 'items' lists {len(items)} ids", path=file
        )

    header = folder.header("model.safetensors")
    expected = _state_shapes(kind, state, header, n_items, file)
    n_indices = header["history.indices"].shape if "history.indices" in header else (0,)
    expected["history.indptr"] = (len(users) + 1,)
    expected["history.indices"] = tuple(n_indices) if len(n_indices) == 1 else (-1,)
    check_state_shapes(expected, header, file=weights)
    for key, info in header.items():
        integer = key.startswith("history.") or key.split(".")[-1] in ("indptr", "indices", "known_items")
        if integer != info.dtype.startswith(("I", "U")) or info.dtype == "BOOL":
            raise ArtifactError(f"tensor {key!r} has dtype {info.dtype}, which does not fit it", path=weights)
    arrays = {k: v.numpy() for k, v in folder.tensors("model.safetensors", expected=expected).items()}
    indptr, indices = arrays["history.indptr"], arrays.get("history.indices", np.zeros(0, dtype=np.int32))
    if (
        indptr[0] != 0
        or (np.diff(indptr) < 0).any()
        or indptr[-1] != len(indices)
        or (len(indices) and (indices.min() < 0 or indices.max() >= n_items))
    ):
        raise ArtifactError(
            "tensors 'history.indptr' and 'history.indices' do not describe histories of the catalogue's items",
            path=weights,
        )
    model_arrays = {k[len("model.") :]: v for k, v in arrays.items() if k.startswith("model.")}
    model: Any
    try:
        if kind == "sasrec":
            model = SequentialRecommender.from_state(model_arrays, state)
        else:
            model = model_from_state(model_arrays, state)
    except ArtifactError as exc:
        raise ArtifactError(exc.message, path=exc.path or weights, hint=exc.hint) from None
    rec.model_ = model
    rec.history_indptr_ = indptr.astype(np.int64)
    rec.history_indices_ = indices.astype(np.int32)
    rec.users_ = np.asarray(users, dtype=object)
    rec.items_ = np.asarray(items, dtype=object)
    rec.content_ = model_arrays.get("content")
    rec._untrusted_backbone = untrusted
    # Reports only: shown, never computed on; a value of the wrong shape is dropped.
    rec.test_metrics_ = dict_or(meta.get("metrics"), {})
    rec.baseline_metrics_ = {k: v for k, v in dict_or(meta.get("baselines"), {}).items() if isinstance(v, dict)}
    rec.split_ = dict_or(meta.get("split"), {})
    rec.training_ = dict_or(meta.get("training"), {})
    rec.data_report_ = dict_or(meta.get("data"), {})
    rec._columns = dict_or(meta.get("columns"), {})
    rec.saved_info_ = {k: meta[k] for k in ("tunesmith_version", "created") if isinstance(meta.get(k), str)}
    # The id a refit of this model names as its parent (the version the registry and server report).
    rec.saved_info_["model_version"] = model_version(folder.root)
    if isinstance(meta.get("refit"), dict):
        rec.refit_info_ = meta["refit"]
    rec._index()
    return rec


MAX_ITEMS = 50_000_000
"""Most users or items a loaded recommender may list (its id lists and weights must agree too)."""


def _id_list(meta: dict[str, Any], name: str, file: Path) -> list[str]:
    """``meta[name]`` as a list of distinct string ids, or an ArtifactError naming the field."""
    ids = field(meta, name, list, file=file)
    if len(ids) > MAX_ITEMS:
        raise ArtifactError(f"field {name!r} lists {len(ids):,} ids, over the {MAX_ITEMS:,} limit", path=file)
    if not all(isinstance(x, str) for x in ids):
        bad = next(x for x in ids if not isinstance(x, str))
        raise ArtifactError(f"field {name!r} must list string ids, got {bad!r:.40}", path=file)
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        for x in ids:
            if x in seen:
                raise ArtifactError(f"field {name!r} lists the id {x!r:.40} twice", path=file)
            seen.add(x)
    return ids


def _state_shapes(
    kind: str, state: dict[str, Any], header: Mapping[str, Any], n_items: int, file: Path
) -> dict[str, tuple[int, ...]]:
    """The safetensors shapes (keys ``model.*``) that the model state in the metadata implies.

    A SASRec network is built on PyTorch's meta device to read its shapes (no memory); the
    classic models' shapes follow from ``n_items`` and their parameters. Lengths the metadata
    cannot know (a sparse matrix's stored values, the training users of BPR) are taken from
    the header and checked for consistency instead.
    """
    root = {"model_state": state}  # so that refusals name the field as it sits in the file

    def shape(key: str) -> tuple[int, ...] | None:
        info = header.get(f"model.{key}")
        return tuple(info.shape) if info is not None else None

    if kind == "sasrec":
        settings = field(root, "model_state.config", dict, file=file)
        unknown = sorted(set(settings) - {f.name for f in fields(SeqConfig)})
        if unknown:
            raise ArtifactError(f"field 'model_state.config' holds the unknown setting {unknown[0]!r:.60}", path=file)
        # torch.manual_seed takes 64 bits: a larger seed would fail deep inside the build.
        field(root, "model_state.config.seed", int, file=file, default=0, low=-(2**63), high=2**64 - 1)
        try:
            cfg = SeqConfig(**settings)
            cfg.check()
        except ConfigError as exc:
            raise ArtifactError(f"field 'model_state.config.{exc.key}': {exc.message}", path=file) from None
        content = shape("content")
        content_dim = content[1] if content is not None and len(content) == 2 else 0
        # The layer count must agree with the weights before the network is built, even on meta.
        stored = {k.split(".")[4] for k in header if k.startswith("model.net.encoder.layers.")}
        if cfg.layers != len(stored):
            raise ArtifactError(
                f"field 'model_state.config.layers' is {cfg.layers} but the weights hold {len(stored)} layers",
                path=file,
            )
        net = meta_shapes(lambda: SASRecNet(n_items, cfg, content_dim))
        out = {f"model.net.{k}": v for k, v in net.items()}
        out["model.known_items"] = (n_items,)
        if content_dim:
            out["model.content"] = (n_items, content_dim)
        return out
    expected_name = {"ease": "EASE", "bpr": "BPRMF", "itemknn": "ItemKNN", "popularity": "Popularity"}[kind]
    field(root, "model_state.model", str, file=file, choices=(expected_name,))
    if kind == "popularity":
        return {"model.counts": (n_items,)}
    if kind == "ease":
        return {"model.weights": (n_items, n_items)}
    if kind == "itemknn":
        out = {"model.indptr": (n_items + 1,)}
        nnz = shape("indices")
        if nnz is not None or shape("data") is not None:
            out["model.indices"] = nnz if nnz is not None and len(nnz) == 1 else (-1,)
            out["model.data"] = out["model.indices"]
        return out
    factors = field(root, "model_state.params.factors", int, file=file, low=1, high=1 << 16)
    out = {"model.item_factors": (n_items, factors), "model.item_bias": (n_items,)}
    users = shape("user_factors")
    out["model.user_factors"] = (users[0], factors) if users is not None and len(users) == 2 else (-1, factors)
    return out


__all__ = ["KIND", "MAX_ITEMS", "TASK", "check_meta", "folder_meta", "read_folder", "write_folder"]
