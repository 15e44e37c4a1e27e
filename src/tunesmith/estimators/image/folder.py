"""An image model's folder: ``model.safetensors``, ``tunesmith.json`` and ``card.md``.

:func:`write_image_folder` saves a fitted estimator through the one metadata format
(:func:`tunesmith.runs.meta.model_meta`, kind ``image``) keeping the image fields serving
reads (``label_values``, ``preprocessing``, ``n_outputs``, ``backbone``, ``config``...);
:func:`open_image_folder` reads one back, checking every field (:func:`image_model_info`) and
the weights' shapes before any memory is allocated. Folders of format version 1 still load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunesmith.backbones.image import ImagePreprocessing, architecture_from_meta, build_architecture, rebuild
from tunesmith.errors import ArtifactError, ConfigError
from tunesmith.estimators.image.model import ImageModel
from tunesmith.estimators.image.settings import ImageConfig, make_image_config
from tunesmith.runs.artifacts import AtomicDirectory, atomic_write_json, json_safe, save_tensors
from tunesmith.runs.meta import MODEL_FILE, READABLE_VERSIONS, model_meta, read_model_meta
from tunesmith.runs.record import environment_info
from tunesmith.runs.report import render_report
from tunesmith.runs.trust import SafeFolder, check_state_shapes, field, malformed, meta_shapes
from tunesmith.train.threads import set_trainable_all

WEIGHTS_FILE = "model.safetensors"

MAX_CLASSES = 100_000
"""Most classes a loaded image model may declare (its head is checked against the weights too)."""

BASELINE_NAMES = {"majority": "majority class", "frozen": "frozen pre-trained features + logistic regression"}


def dict_or(value: Any, default: Any) -> Any:
    """``value`` if it is a dict, else ``default``: a report field of the wrong shape in a loaded folder is dropped."""
    return value if isinstance(value, dict) else default


def report_info(est: Any) -> dict[str, Any]:
    """What the model card and the run report show about a fitted image estimator."""
    cfg: ImageConfig = est.config_
    return {
        "title": f"Image classifier fine-tuned from {cfg.backbone}",
        "kind": "image",
        "task": est.task_,
        "backbone": cfg.backbone,
        "strategy": cfg.strategy,
        "labels": list(est.labels_),
        "metrics": est.test_metrics_,
        "baselines": {k: {**v, "model": BASELINE_NAMES.get(k, k)} for k, v in est.baseline_metrics_.items()},
        "config": cfg.model_dump(mode="json"),
        "data": {"rows": est.data_info_.get("rows")},
        "training": est.training_info_,
        "history": est.history_,
        "gains": (getattr(est, "uncertainty_", None) or {}).get("gains") or {},
        "warnings": (getattr(est, "uncertainty_", None) or {}).get("warnings") or [],
    }


def write_image_folder(est: Any, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write a fitted image estimator's folder at ``path`` atomically; return the path."""
    cfg: ImageConfig = est.config_
    backbone = est.model_.backbone
    settings = cfg.model_dump(mode="json")
    meta = model_meta(
        "image",
        est.task_,
        labels=list(est.labels_),
        settings=settings,
        metrics=est.test_metrics_,
        baselines=est.baseline_metrics_,
        data=est.data_info_,
        label_values=list(est.label_values_),
        preprocessing=backbone.preprocessing.to_dict(),
        n_outputs=len(est.labels_),
        backbone={
            "name": backbone.name,
            "architecture": backbone.architecture,
            "fingerprint": backbone.fingerprint,
            "hidden_size": backbone.hidden_size,
            "weights": "full",
        },
        # Version-1 readers (serving, export, older releases) read the settings here.
        config=settings,
        training=est.training_info_,
        history=est.history_,
        environment=environment_info(seed=cfg.seed),
    )
    refit = getattr(est, "refit_info_", None)
    if refit is not None:
        # What a refit did (plan, rows, WiSE-FT trials, data hashes, parent): loaded back as refit_info_.
        meta["refit"] = refit
    final = Path(path)
    with AtomicDirectory(final, overwrite=overwrite) as tmp:
        tmp = Path(tmp)
        save_tensors(tmp / WEIGHTS_FILE, est.model_.state_dict(), {"format": "tunesmith", "kind": "image"})
        atomic_write_json(tmp / MODEL_FILE, json_safe(meta))
        (tmp / "card.md").write_text(render_report(report_info(est)))
    return final


@dataclass
class OpenedImageModel:
    """What :func:`open_image_folder` read: the network, its settings and the reports stored beside it."""

    model: ImageModel
    config: ImageConfig
    info: dict[str, Any]
    meta: dict[str, Any]


def open_image_folder(folder: SafeFolder, meta: dict[str, Any] | None = None) -> OpenedImageModel:
    """Build the network of an image model folder opened through the trust checks.

    The network is first built on PyTorch's ``meta`` device and its tensor shapes compared
    with the safetensors header, so a folder cannot make tunesmith allocate more than its
    weights hold; any refusal is an :class:`ArtifactError` naming the file and field.
    """
    meta_file = folder.root / MODEL_FILE
    meta = read_model_meta(folder, meta)
    info = image_model_info(meta, file=meta_file)
    weights = folder.root / WEIGHTS_FILE
    cfg: ImageConfig = info["config"]
    arch, pre = info["architecture"], info["preprocessing"]

    def build() -> ImageModel:
        backbone = rebuild(
            arch, pre.to_dict(), name=info["name"], fingerprint=info["fingerprint"], hidden_size=info["hidden_size"]
        )
        return ImageModel(backbone, info["n_outputs"], cfg.dropout)

    with malformed(meta_file, "the backbone architecture"):
        # On the meta device: shapes only, no memory, whatever sizes the metadata declares.
        with torch.device("meta"):
            width = build_architecture(arch).hidden_size
        expected = meta_shapes(build)
    if width != info["hidden_size"]:
        raise ArtifactError(
            f"field 'backbone.hidden_size' is {info['hidden_size']}, but the architecture in "
            f"'backbone.architecture' gives {width}-wide features",
            path=meta_file,
            hint="Only load folders written by tunesmith; ask whoever sent it to re-save it",
        )
    check_state_shapes(expected, folder.header(WEIGHTS_FILE), file=weights)
    model = build()
    state = folder.tensors(WEIGHTS_FILE, expected=expected)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(
            f"weights do not match the architecture: {str(exc).splitlines()[0]}", path=weights
        ) from None
    set_trainable_all(model, False)
    model.eval()
    return OpenedImageModel(model, cfg, info, meta)


def image_model_info(meta: Any, *, file: str | os.PathLike[str]) -> dict[str, Any]:
    """The fields of an image model's ``tunesmith.json`` that loading and serving use, each checked.

    Format versions 1 and 2 are read. Returns ``task``, ``labels``, ``label_values``,
    ``n_outputs``, ``preprocessing`` (:class:`ImagePreprocessing`), ``architecture`` (a checked
    description), ``name``, ``fingerprint``, ``hidden_size`` and ``config``
    (:class:`ImageConfig`). A missing, mistyped or out-of-range field is an
    :class:`ArtifactError` naming ``file`` and the field.
    """
    kind = field(meta, "kind", (str, type(None)), file=file, default=None)
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if kind != "image" or isinstance(version, bool) or version not in READABLE_VERSIONS:
        formats = " or ".join(map(str, READABLE_VERSIONS))
        raise ArtifactError(
            f"not an image model of format {formats} (kind {kind!r}, format {version!r:.40})",
            path=file,
            hint="Load it with tunesmith.load(), or pass a folder written by ImageFineTuner.save",
        )
    labels = field(meta, "labels", list, file=file)
    n_outputs = field(meta, "n_outputs", int, file=file, low=1, high=MAX_CLASSES)
    if not all(isinstance(x, str) for x in labels) or len(set(labels)) != len(labels):
        raise ArtifactError("field 'labels' must be a list of distinct strings", path=file)
    if len(labels) != n_outputs:
        raise ArtifactError(f"field 'n_outputs' is {n_outputs} but field 'labels' holds {len(labels)}", path=file)
    task = field(meta, "task", str, file=file, choices=("binary", "multiclass"))
    if task != ("binary" if n_outputs == 2 else "multiclass"):
        raise ArtifactError(f"field 'task' is {task!r}, which does not fit {n_outputs} labels", path=file)
    values = field(meta, "label_values", list, file=file, default=None) or list(labels)
    if len(values) != len(labels) or not all(
        isinstance(v, (str, int, float, bool)) and v == v
        for v in values  # v == v: not NaN
    ):
        raise ArtifactError(
            f"field 'label_values' must hold one string, number or boolean per label ({len(labels)})", path=file
        )
    backbone_fields = {
        "name": field(meta, "backbone.name", str, file=file),
        "fingerprint": field(meta, "backbone.fingerprint", str, file=file),
        "hidden_size": field(meta, "backbone.hidden_size", int, file=file, low=1, high=1 << 20),
    }
    architecture = architecture_from_meta(meta, file=file, name="backbone.architecture")
    preprocessing = ImagePreprocessing.from_meta(meta, file=file)
    settings = field(meta, "config", dict, file=file)
    try:
        config = make_image_config(settings)
    except ConfigError as exc:
        where = f"config.{exc.key}" if exc.key else "config"
        raise ArtifactError(f"field {where!r}: {exc.message}", path=file) from None
    return {
        "task": task,
        "labels": labels,
        "label_values": values,
        "n_outputs": n_outputs,
        "preprocessing": preprocessing,
        "architecture": architecture,
        "config": config,
        **backbone_fields,
    }
