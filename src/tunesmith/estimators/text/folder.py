"""A text model's folder: writing it (:func:`save`) and opening it as untrusted input (:func:`open_text`).

The folder holds ``model.safetensors``, ``tunesmith.json`` (the common metadata of
:func:`tunesmith.runs.meta.model_meta` plus the text fields of
:mod:`tunesmith.estimators.text_meta`), the tokenizer files, ``config.yaml`` and ``card.md``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from tunesmith.adapt import add_lora, load_lora_state_dict, lora_state_dict
from tunesmith.backbones import create_backbone, is_text_backbone
from tunesmith.backbones.text import TextBackbone, build_from_files, encoder_shapes, saved_encoder_config
from tunesmith.config import FitConfig, config_to_yaml, make_config
from tunesmith.data.schema import restore_label_values
from tunesmith.errors import ArtifactError, ConfigError
from tunesmith.estimators.text.fitting import best_score
from tunesmith.estimators.text.record import model_card
from tunesmith.estimators.text_meta import check_text_meta, field_errors, saved_preprocessing, saved_schema
from tunesmith.evaluate.metrics import metric_direction
from tunesmith.model import TextModel
from tunesmith.runs.artifacts import AtomicDirectory, atomic_write_json, json_safe, save_tensors
from tunesmith.runs.meta import MODEL_FILE, model_meta, read_model_meta
from tunesmith.runs.record import environment_info
from tunesmith.runs.trust import SafeFolder, check_state_shapes, field, malformed
from tunesmith.train.threads import is_secondary_process, set_trainable_all

# The FineTuner being fitted, saved or loaded; typed loosely because its module imports this one.
TextEstimator = Any


def text_meta(est: TextEstimator, weights: str) -> dict[str, Any]:
    """``tunesmith.json`` of a fitted text model: the common fields, then the text fields.

    The text layout's ``task``, ``labels``, ``metrics``, ``baselines`` and ``data`` are the
    common fields of the same names; ``settings`` (common) and ``config`` (text) both hold
    the resolved settings, so readers of either find them.
    """
    assert est.schema_ is not None
    cfg = est.config_
    settings = cfg.model_dump(mode="json")
    return model_meta(
        "text",
        est.schema_.task,
        labels=list(est.schema_.labels or []),
        settings=settings,
        metrics=est.test_metrics_,
        baselines=est.baseline_metrics_,
        data=est.data_info_,
        schema=est.schema_.to_dict(),
        label_values=est.label_values_,
        target_scaling=est.target_scaling_,
        preprocessing=est.preprocessing_.to_dict(),
        n_outputs=est.n_outputs_,
        backbone={
            "name": est._backbone_origin,
            "fingerprint": est.backbone_.fingerprint,
            "weights": weights,
            "pooling": est.backbone_.pooling,
            "hidden_size": est.backbone_.hidden_size,
        },
        config=settings,
        training=est.training_info_,
        history=est.history_,
        environment=environment_info(seed=cfg.seed),
        **({"refit": est.refit_info_} if getattr(est, "refit_info_", None) else {}),
    )


def save(est: TextEstimator, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write the folder of a fitted text model; see :meth:`FineTuner.save`."""
    est._check_fitted()
    assert est.model_ is not None and est.schema_ is not None
    final = Path(path)
    if is_secondary_process():
        return final  # in a distributed run the main process writes the one copy
    cfg = est.config_
    tensors: dict[str, torch.Tensor] = {}
    if cfg.strategy in ("full", "fewshot"):
        tensors.update(est.model_.state_dict())
        weights = "full"
    else:
        tensors.update({f"head.{k}": v for k, v in est.model_.head.state_dict().items()})
        if cfg.strategy == "lora":
            tensors.update({f"lora.{k}": v for k, v in lora_state_dict(est.backbone_).items()})
        weights = "base"
    meta = text_meta(est, weights)
    with AtomicDirectory(final, overwrite=overwrite) as tmp:
        tmp = Path(tmp)
        save_tensors(tmp / "model.safetensors", tensors, {"format": "tunesmith", "weights": weights})
        est.backbone_.save_files(tmp)
        atomic_write_json(tmp / MODEL_FILE, json_safe(meta))
        (tmp / "config.yaml").write_text(config_to_yaml(cfg))
        (tmp / "card.md").write_text(model_card(est))
    return final


def from_opened(
    cls: type[TextEstimator], folder: SafeFolder, meta: dict[str, Any] | None, *, backbone: str | None = None
) -> TextEstimator:
    """Build a fitted ``cls`` from an opened text model folder; see :meth:`FineTuner.load`."""
    meta = read_model_meta(folder, meta)
    meta_file = folder.root / MODEL_FILE
    kind = field(meta, "kind", str, file=meta_file, default="text")
    if kind != "text":
        raise ArtifactError(
            f"field 'kind' is {kind!r}: this folder holds a {kind} model, not a text model",
            path=meta_file,
            hint="Load it with tunesmith.load(), which picks the loader of each kind",
        )
    check_text_meta(meta, file=meta_file)
    with field_errors(meta_file, "config"):
        cfg = make_config(meta["config"])
    model, text_backbone, origin = _model(folder, meta, cfg, backbone)
    with malformed(meta_file):
        est = cls(**{k: v for k, v in meta["config"].items() if v != FitConfig.model_fields[k].default})
    est.model_ = model
    est.backbone_ = text_backbone
    est.config_ = cfg
    est._backbone_origin = origin
    est.schema_ = saved_schema(meta, file=meta_file)
    labels = list(meta.get("labels") or [])
    est.label_values_ = list(meta.get("label_values") or [])
    with malformed(meta_file, "field 'label_values'"):
        est.classes_ = restore_label_values(labels, est.label_values_) if meta["task"] != "regression" else None
    est.target_scaling_ = meta.get("target_scaling")
    est.preprocessing_ = saved_preprocessing(meta, file=meta_file)
    est.n_outputs_ = int(meta["n_outputs"])
    # Version 2 writes {} where version 1 wrote null for a fit without a test split.
    est.test_metrics_ = field(meta, "metrics", dict, file=meta_file, default=None) or None
    est.baseline_metrics_ = field(meta, "baselines", dict, file=meta_file, default=None) or {}
    est.training_info_ = field(meta, "training", dict, file=meta_file, default=None) or {}
    est.data_info_ = field(meta, "data", dict, file=meta_file, default=None) or {}
    history = field(meta, "history", list, file=meta_file, default=None) or []
    if not all(isinstance(h, dict) for h in history):
        raise ArtifactError("field 'history' must be a list of JSON objects", path=meta_file)
    est.history_ = history
    best = est.training_info_.get("best_epoch")
    est.best_epoch_ = int(best) if isinstance(best, int) and not isinstance(best, bool) else None
    monitor = est.training_info_.get("monitor")
    est.monitor_ = str(monitor) if isinstance(monitor, str) and monitor else None
    with malformed(meta_file, "field 'training.monitor'"):
        est.monitor_mode_ = metric_direction(est.monitor_, meta["task"]) if est.monitor_ else None
    with malformed(meta_file, "field 'history'"):
        est.best_score_ = best_score(est.history_, est.monitor_, est.best_epoch_) if est.monitor_ else None
    est.refit_info_ = field(meta, "refit", dict, file=meta_file, default=None)
    est.model_path_ = folder.root
    return est


def _model(
    folder: SafeFolder, meta: dict[str, Any], cfg: FitConfig, backbone: str | None
) -> tuple[TextModel, TextBackbone, str]:
    """The network of a checked folder, its shapes checked before anything is allocated."""
    meta_file = folder.root / MODEL_FILE
    info = meta["backbone"]
    n_outputs = int(meta["n_outputs"])
    weights_file = folder.root / "model.safetensors"
    header = folder.header("model.safetensors")
    origin = str(info["name"])
    if info["weights"] == "full":
        config = saved_encoder_config(folder)
        hidden = int(config.hidden_size)
        shapes = encoder_shapes(config, file=folder.root / "backbone_config.json")
        expected = {f"backbone.model.{k}": v for k, v in shapes.items()}
        expected.update(_head_shapes(n_outputs, hidden))
        # Shapes first, on the meta device: the real model is built only once the weights
        # file is known to hold exactly that architecture.
        check_state_shapes(expected, header, file=weights_file)
        text_backbone = build_from_files(
            folder, name=origin, pooling=info["pooling"], fingerprint=info["fingerprint"], config=config
        )
    else:
        text_backbone, origin = _base_backbone(info, backbone, meta_file=meta_file)
        expected = _head_shapes(n_outputs, text_backbone.hidden_size)
        if cfg.strategy == "lora":
            _check_lora_rank(header, cfg.lora_r, file=weights_file, meta_file=meta_file)
            with field_errors(meta_file, "config.lora_targets"):
                add_lora(
                    text_backbone,
                    r=cfg.lora_r,
                    alpha=cfg.lora_alpha,
                    dropout=cfg.lora_dropout,
                    targets=cfg.lora_targets,
                )
            expected.update({f"lora.{k}": tuple(v.shape) for k, v in lora_state_dict(text_backbone).items()})
        check_state_shapes(expected, header, file=weights_file)
    tensors = folder.tensors("model.safetensors", expected=expected)
    model = TextModel(text_backbone, n_outputs, cfg.dropout)
    try:
        if info["weights"] == "full":
            model.load_state_dict(tensors, strict=True)
        else:
            if cfg.strategy == "lora":
                load_lora_state_dict(text_backbone, {k[5:]: v for k, v in tensors.items() if k.startswith("lora.")})
            model.head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
    except (RuntimeError, ConfigError) as exc:  # load_lora_state_dict reports misfits as ConfigError
        raise ArtifactError(
            f"weights do not match the architecture: {(str(exc).splitlines() or [''])[0]}", path=weights_file
        ) from None
    model.eval()
    set_trainable_all(model, False)
    return model, text_backbone, origin


def _head_shapes(n_outputs: int, hidden: int) -> dict[str, tuple[int, ...]]:
    """State dict shapes of the head of a :class:`~tunesmith.model.TextModel` (as saved, ``head.`` prefix)."""
    return {"head.linear.weight": (n_outputs, hidden), "head.linear.bias": (n_outputs,)}


def _base_backbone(info: dict[str, Any], given: str | None, *, meta_file: Path) -> tuple[TextBackbone, str]:
    """The pre-trained backbone a head-only or LoRA model needs, and the name it is recorded under.

    ``given`` (the caller's own choice) may be a registered name or a local folder. Without
    it, only a registered name from the metadata is used: a path there is refused, because
    a model folder may not make tunesmith open other folders.
    """
    name = str(info["name"])
    pooling = str(info["pooling"])
    shown = name if len(name) <= 120 else name[:117] + "..."
    if given is not None:
        backbone = create_backbone(given, pooling=pooling)
        origin = str(Path(given).resolve()) if not is_text_backbone(given) and Path(given).exists() else given
    elif is_text_backbone(name):
        backbone = create_backbone(name, pooling=pooling)
        origin = name
    else:
        looks_like_path = "/" in name or "\\" in name or name.startswith(".") or Path(name).is_absolute()
        why = (
            "is a path; a model folder's metadata may not make tunesmith open another folder"
            if looks_like_path
            else "is not a registered backbone here"
        )
        raise ArtifactError(
            f"field 'backbone.name' ({shown!r}) {why}. This model stores only its head/adapters and needs that "
            "pre-trained backbone",
            path=meta_file,
            hint="Pass the backbone explicitly: tunesmith.load(folder, backbone='/path/to/backbone') or "
            "FineTuner.load(folder, backbone=...); its fingerprint is checked",
        )
    if backbone.fingerprint != info["fingerprint"]:
        raise ArtifactError(
            f"backbone {given or name!r} has different weights from the ones this model was trained on "
            "(field 'backbone.fingerprint')",
            path=meta_file,
            hint="Use the same version of the pre-trained model",
        )
    return backbone, origin


def _check_lora_rank(header: dict[str, Any], rank: int, *, file: Path, meta_file: Path) -> None:
    """The saved adapters' rank must be the configured one before adapters of that rank are allocated."""
    ranks = {
        int(t.shape[0])
        for k, t in header.items()
        if k.startswith("lora.") and ("lora_A" in k or "lora_embedding_A" in k) and t.shape
    }
    if not ranks:
        raise ArtifactError(
            "weights hold no LoRA adapter tensors, but tunesmith.json field 'config.strategy' is 'lora'",
            path=file,
            hint="The folder is damaged or was not written by tunesmith; re-save the model",
        )
    if ranks != {rank}:
        raise ArtifactError(
            f"field 'config.lora_r' is {rank} but the saved adapters have rank {sorted(ranks)[0]}",
            path=meta_file,
            hint="The folder is damaged or was not written by tunesmith; re-save the model",
        )
