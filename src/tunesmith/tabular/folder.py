"""A tabular model's folder: writing it (``save``) and reading it back (``load``), and its run record.

The folder holds ``model.safetensors`` (the network's weights, the text PCA and a marker
tensor), ``lightgbm.txt`` (LightGBM's own text format), ``tunesmith.json`` (the one metadata
format of :mod:`tunesmith.runs.meta`, with the tabular fields the loaders and trust checks
read) and ``card.md``. Loading checks every field before it is used.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from tunesmith.backbones import is_registered
from tunesmith.data.schema import TASKS, Schema, Task, restore_label_values
from tunesmith.errors import ArtifactError, ConfigError
from tunesmith.estimators.record import record_intervals, write_fit_record
from tunesmith.evaluate.baselines import majority_baseline
from tunesmith.evaluate.intervals import TestPredictions
from tunesmith.runs.artifacts import AtomicDirectory, atomic_write_json, atomic_write_text, json_safe, save_tensors
from tunesmith.runs.meta import READABLE_VERSIONS, model_meta, read_model_meta
from tunesmith.runs.record import RunRecord
from tunesmith.runs.report import render_report
from tunesmith.runs.trust import SafeFolder, check_state_shapes, field, malformed, meta_shapes
from tunesmith.tabular.lightgbm_check import load_lightgbm
from tunesmith.tabular.neural import TabularNet, net_spec
from tunesmith.tabular.preprocess import TabularPreprocessor
from tunesmith.tabular.settings import TabularConfig

__all__ = [
    "KIND",
    "LIGHTGBM_FILE",
    "MAX_OUTPUTS",
    "finish_record",
    "model_card",
    "open_folder",
    "save_folder",
]

KIND = "tabular"
LIGHTGBM_FILE = "lightgbm.txt"
MARKER = "tunesmith.tabular.marker"
_MARKER = MARKER


def save_folder(est: Any, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``est``'s folder atomically (see the module docstring); the folder appears whole or not at all."""
    assert est.schema_ is not None and est.preprocessor_ is not None
    pre = est.preprocessor_
    tensors: dict[str, torch.Tensor] = {MARKER: torch.zeros(1)}
    tensors.update(pre.tensors())
    net_info: dict[str, Any] | None = None
    if est.net_ is not None:
        tensors.update({f"net.{k}": v for k, v in est.net_.state_dict().items()})
        net_info = {
            "n_numeric": est.net_.n_numeric,
            "cardinalities": est.net_.cardinalities,
            "n_outputs": est.n_outputs_,
            "hidden": [m.out_features for m in est.net_.mlp if isinstance(m, torch.nn.Linear)][:-1],
            "dropout": next((m.p for m in est.net_.mlp if isinstance(m, torch.nn.Dropout)), 0.0),
            "norm": _net_norm(est.net_),
        }
    schema = est.schema_
    config = est.get_params()
    meta = model_meta(
        KIND,
        schema.task,
        labels=list(schema.labels) if schema.labels is not None else None,
        settings=config,
        metrics=est.test_metrics_ or {},
        baselines={
            **{name: c.get("test") or c.get("valid") or {} for name, c in est.candidates_.items()},
            **_baselines(est),
        },
        data=est.data_info_,
        # the tabular fields, as version 1 wrote them (the loaders and trust checks read these)
        target=schema.target,
        label_values=est.label_values_,
        schema=schema.to_dict(),
        columns={
            "text": list(schema.text_columns),
            "numeric": list(schema.numeric_columns),
            "categorical": list(schema.categorical_columns),
            "ignored": list(schema.ignored_columns),
        },
        preprocessor=pre.to_dict(),
        text_backbone=(
            {"name": pre.text_backbone, "fingerprint": pre.backbone_fingerprint} if pre.text_columns else None
        ),
        chosen=est.chosen_,
        candidates=est.candidates_,
        lightgbm=LIGHTGBM_FILE if est.booster_ is not None else None,
        net=net_info,
        target_scaling=est.target_scaling_,
        n_outputs=est.n_outputs_,
        training=est.training_info_,
        uncertainty=getattr(est, "uncertainty_", None) or {},
        config=config,
        # what the refit that made this model did (tunesmith.tabular.refitting); absent after a fit
        **({"refit": est.refit_info_} if getattr(est, "refit_info_", None) else {}),
    )
    final = Path(path)
    with AtomicDirectory(final, overwrite=overwrite) as tmp:
        header = {"format": "tunesmith", "kind": KIND}
        trees = est.booster_.model_to_string() if est.booster_ is not None else None
        if trees is not None:
            # model_version hashes model.safetensors: naming the trees here makes two models
            # that differ only in their trees (a LightGBM refit) two versions
            header["lightgbm_sha256"] = hashlib.sha256(trees.split("end of trees", 1)[0].encode()).hexdigest()
        save_tensors(Path(tmp) / "model.safetensors", tensors, header)
        if trees is not None:
            atomic_write_text(Path(tmp) / LIGHTGBM_FILE, trees)
        atomic_write_json(Path(tmp) / "tunesmith.json", json_safe(meta))
        (Path(tmp) / "card.md").write_text(model_card(est))
    return final


def _report_info(est: Any) -> dict[str, Any]:
    """What the model card and the run report show: the chosen model beside every other candidate."""
    assert est.schema_ is not None
    split = "test" if any(c.get("test") for c in est.candidates_.values()) else "valid"
    others = {
        name: {**(c.get(split) or {}), "model": f"{name} (candidate, {split} split)"}
        for name, c in est.candidates_.items()
        if name != est.chosen_
    }
    if split == "test":
        others.update({name: {**m, "model": _BASELINE_NAMES.get(name, name)} for name, m in _baselines(est).items()})
    mine = est.test_metrics_ or (est.candidates_.get(est.chosen_) or {}).get("valid")
    pre = est.preprocessor_
    uncertainty = getattr(est, "uncertainty_", None) or {}
    return {
        "title": f"Tabular model ({est.chosen_}, chosen on validation)",
        "task": est.schema_.task,
        "backbone": pre.text_backbone if pre is not None and pre.text_columns else None,
        "strategy": est.chosen_,
        "labels": list(est.schema_.labels or []),
        "metrics": mine,
        "baselines": others,
        "config": est.get_params(),
        "data": {"rows": (est.data_info_ or {}).get("rows")},
        "gains": uncertainty.get("gains") or {},
        "warnings": uncertainty.get("warnings") or [],
    }


_BASELINE_NAMES = {"majority": "majority class (training frequencies)"}


def _baselines(est: Any) -> dict[str, Any]:
    found = getattr(est, "baseline_metrics_", None)
    return found if isinstance(found, dict) else {}


def model_card(est: Any) -> str:
    """The model card: the chosen model's test metrics beside every other candidate's."""
    return render_report(_report_info(est))


def finish_record(
    est: Any,
    record: RunRecord | None,
    *,
    test_outputs: Mapping[str, np.ndarray] | None = None,
    y_train: Any = None,
    y_test: Any = None,
) -> None:
    """The end of a fit: 95% intervals on the test metrics, and the run record when ``record`` is set.

    With test rows, the chosen model's test metrics (``test_metrics_``) and every other
    candidate's and the majority baseline's (``baseline_metrics_``) get ``<metric>_ci``
    bootstrap intervals, and each gain over them a paired interval and a verdict; the record
    (:func:`tunesmith.estimators.record.write_fit_record`: data SHA-256, rows and drops,
    environment, per-step metrics, plots, ``report.md``) and the saved card show them.
    ``config.yaml`` and ``metrics.jsonl`` are written while the fit runs.
    """
    assert est.schema_ is not None
    schema = est.schema_
    labels = list(schema.labels or [])
    est.baseline_metrics_ = {}
    predictions: TestPredictions | None = None
    if test_outputs and y_test is not None and len(y_test):
        k = len(labels) if labels else None
        majority = majority_baseline(y_train, y_test, schema.task, k, labels=labels or None)
        est.baseline_metrics_ = {"majority": dict(majority)}
        # Gains are judged against baselines; the other candidates lost on validation and are
        # compared side by side in the card, where a close race is not a warning.
        outputs = {"majority": majority.outputs}
        predictions = TestPredictions(
            task=schema.task, y_true=y_test, outputs=test_outputs[est.chosen_], labels=labels, baselines=outputs
        )
    info = {**_report_info(est), "kind": KIND, "data": est.data_info_}
    info["training"] = {k: v for k, v in est.training_info_.items() if k != "neural"}
    history = (est.training_info_.get("neural") or {}).get("history") or []
    if record is not None:
        written = write_fit_record(record, info, history=history, predictions=predictions)
        metrics, baselines = written["test"], written["baselines"]
        summary = {"gains": written["gains"], "warnings": written["warnings"]}
        # what metrics.json held before the shared writer: every candidate and the choice
        record.write_json(
            "metrics.json",
            {**written, "candidates": est.candidates_, "chosen": est.chosen_, "training": est.training_info_},
        )
    else:
        metrics, baselines, found = record_intervals(info, predictions, seed=0)
        summary = {"gains": found["gains"], "warnings": found["warnings"]} if found else {}
    if predictions is None:
        est.uncertainty_ = {}
        return
    est.uncertainty_ = summary
    est.test_metrics_ = metrics
    est.candidates_[est.chosen_]["test"] = metrics
    for name, m in baselines.items():
        plain = {key: v for key, v in m.items() if key != "model"}
        if name in est.candidates_:
            est.candidates_[name]["test"] = plain
        else:
            est.baseline_metrics_[name] = plain


def _net_norm(net: TabularNet) -> str | None:
    for m in net.mlp:
        if isinstance(m, torch.nn.BatchNorm1d):
            return "batch"
        if isinstance(m, torch.nn.LayerNorm):
            return "layer"
    return None


def open_folder(
    cls: type, folder: SafeFolder, meta: dict[str, Any] | None = None, *, backbone: str | None = None
) -> Any:
    """An estimator of class ``cls`` from a folder opened through the trust checks.

    ``tunesmith.json`` is read with :func:`~tunesmith.runs.meta.read_model_meta` (format
    versions 1 and 2), then every tabular field is checked; the network's shapes are compared
    with the safetensors header before anything is built, and ``lightgbm.txt`` is loaded only
    after a child process loaded it without crashing
    (:func:`~tunesmith.tabular.lightgbm_check.load_lightgbm`). A text backbone is opened only
    by registered name unless the caller names one (``backbone``).

    Raises:
        ArtifactError: the folder is of another kind or version, malformed, or its text
            backbone's weights differ from the training ones; the message names the file and field.
    """
    file = folder.root / "tunesmith.json"
    raw = meta if meta is not None else folder.read_json("tunesmith.json")
    kind = raw.get("kind", "text") if isinstance(raw, dict) else None
    if kind != KIND:
        raise ArtifactError(
            f"this is not a tabular model (kind {kind!r:.40})",
            path=folder.root,
            hint="Load any kind of model with tunesmith.load(folder)",
        )
    version = raw.get("format_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise ArtifactError(
            f"model format version {version!r:.40} is not supported "
            f"(expected {' or '.join(map(str, READABLE_VERSIONS))})",
            path=file,
            hint="Re-save the model with this tunesmith version",
        )
    meta = read_model_meta(folder, raw)
    with malformed(file):
        est = _from_folder(cls, folder, meta, backbone)
    # Outside the net above: a backbone the caller named and cannot be found is the caller's
    # ConfigError, not a malformed file.
    assert est.preprocessor_ is not None
    est.preprocessor_.check_backbone(folder.root)
    est.model_path_ = Path(folder.root)
    return est


def _from_folder(cls: type, folder: SafeFolder, meta: dict[str, Any], backbone: str | None) -> Any:
    """The estimator of an opened folder; every field is checked before it is used."""
    file = folder.root / "tunesmith.json"
    weights = folder.root / "model.safetensors"
    schema = _schema_from_meta(meta, file)
    chosen = field(meta, "chosen", str, file=file, choices=("lightgbm", "neural", "ensemble"))
    n_outputs = field(meta, "n_outputs", int, file=file, low=1, high=MAX_OUTPUTS)
    labels = schema.labels
    if n_outputs != (len(labels) if labels is not None else 1):
        raise ArtifactError(
            f"field 'n_outputs' is {n_outputs} but the schema has {len(labels) if labels else 1} output(s)",
            path=file,
        )
    # Regression has no labels, so no label values either.
    values = field(meta, "label_values", list, file=file, default=[]) if labels is not None else []
    if (
        labels is not None
        and values
        and (len(values) != len(labels) or not all(isinstance(v, (str, int, float, bool)) for v in values))
    ):
        raise ArtifactError(
            f"field 'label_values' must hold one string, number or boolean per label ({len(labels)})", path=file
        )
    scaling = field(meta, "target_scaling", dict, file=file, default=None)
    if scaling is not None:
        scaling = {
            "mean": float(field(meta, "target_scaling.mean", float, file=file)),
            "std": float(field(meta, "target_scaling.std", float, file=file, low=1e-300)),
        }
        if not all(math.isfinite(v) for v in scaling.values()):
            raise ArtifactError("field 'target_scaling' must hold finite numbers", path=file)

    pre = TabularPreprocessor._from_json(field(meta, "preprocessor", dict, file=file), file=file, name="preprocessor")
    if (pre.numeric_columns, pre.categorical_columns, pre.text_columns) != (
        schema.numeric_columns,
        schema.categorical_columns,
        schema.text_columns,
    ):
        raise ArtifactError("fields 'schema' and 'preprocessor' name different columns", path=file)
    if pre.text_columns:
        if backbone is not None:
            pre.text_backbone = backbone
        elif not is_registered(pre.text_backbone):
            # A path in a loaded folder's metadata would make tunesmith open whatever it names.
            raise ArtifactError(
                f"field 'preprocessor.text_backbone' names {pre.text_backbone!r:.80}, which is not a "
                "registered backbone; tunesmith never opens a path named by a loaded folder",
                path=file,
                hint="Pass the text backbone yourself: TabularFineTuner.load(folder, backbone=...)",
            )

    header = folder.header("model.safetensors")
    expected: dict[str, tuple[int, ...]] = {_MARKER: tuple(header[_MARKER].shape) if _MARKER in header else (1,)}
    expected.update(pre.pca_shapes(header, file=weights))
    net_info = field(meta, "net", dict, file=file, default=None)
    spec: dict[str, Any] | None = None
    if net_info is not None:
        spec = net_spec(net_info, file=file)
        width = len(pre.numeric_columns) + len(pre.indicator_columns)
        width += sum(expected[f"preprocess.pca.{i}.components"][0] for i in range(len(pre.text_columns)))
        if spec["n_numeric"] != width or spec["cardinalities"] != pre.cardinalities:
            raise ArtifactError("field 'net' describes inputs that differ from the preprocessor's features", path=file)
        if spec["n_outputs"] != n_outputs:
            raise ArtifactError(f"field 'net.n_outputs' is {spec['n_outputs']}, expected {n_outputs}", path=file)
        built = spec
        # Built on the meta device first: shapes only, compared with the header below.
        expected.update({f"net.{k}": v for k, v in meta_shapes(lambda: _build_net(built)).items()})
    check_state_shapes(expected, header, file=weights)
    tensors = folder.tensors("model.safetensors", expected=expected)
    pre.attach_pca(tensors, file=weights)
    pre.check_widths(file=file)

    config = field(meta, "config", dict, file=file, default={})
    names = set(TabularConfig.model_fields) - {"target"}
    params = {k: v for k, v in config.items() if k in names}
    if config:
        # settings newer than the folder: a model saved before them was fitted the old way
        params = {**_BEFORE_SETTING, **params}
    for key in ("hidden", "ignore_columns"):
        if isinstance(params.get(key), list):
            params[key] = tuple(params[key])
    if pre.text_columns:
        params["text_backbone"] = pre.text_backbone
    try:
        est = cls(**params)
    except ConfigError as exc:
        where = f"config.{exc.key}" if exc.key else "config"
        raise ArtifactError(f"field {where!r}: {exc.message}", path=file) from None
    est.schema_ = schema
    est.preprocessor_ = pre
    est.label_values_ = list(values)
    est.classes_ = restore_label_values(labels, est.label_values_) if labels is not None else None
    est.n_outputs_ = n_outputs
    est.target_scaling_ = scaling
    est.chosen_ = chosen
    # Reports only: shown, never computed on; a value of the wrong shape is dropped.
    est.candidates_ = _dict_or(meta.get("candidates"), {})
    est.test_metrics_ = _dict_or(meta.get("metrics"), None) or None
    est.training_info_ = _dict_or(meta.get("training"), {})
    est.data_info_ = _dict_or(meta.get("data"), {})
    est.uncertainty_ = _dict_or(meta.get("uncertainty"), {})
    est.refit_info_ = field(meta, "refit", dict, file=file, default=None)
    baselines = _dict_or(meta.get("baselines"), {})
    est.baseline_metrics_ = {k: v for k, v in baselines.items() if k == "majority" and isinstance(v, dict)}
    est.booster_ = None
    est.net_ = None
    lgb_file = field(meta, "lightgbm", (str, type(None)), file=file, default=None)
    if lgb_file:
        est.booster_ = load_lightgbm(
            folder,
            lgb_file,
            n_features=len(pre.raw_feature_names),
            n_classes=n_outputs,
            task=schema.task,
        )
    if spec is not None:
        net = _build_net(spec)
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")}, strict=True)
        net.eval()
        est.net_ = net
    needed = {"lightgbm": est.booster_, "neural": est.net_}
    for part in ("lightgbm", "neural") if chosen == "ensemble" else (chosen,):
        if needed.get(part) is None:
            raise ArtifactError(f"the chosen model {chosen!r} is missing from the folder", path=folder.root)
    return est


_BEFORE_SETTING = {"bagging_folds": 0, "selection_metric": "accuracy"}
"""What a tabular model saved before each of these settings existed was fitted with."""

MAX_OUTPUTS = 100_000
"""Most classes a loaded tabular model may declare."""


def _build_net(spec: dict[str, Any]) -> TabularNet:
    return TabularNet(
        spec["n_numeric"],
        spec["cardinalities"],
        spec["n_outputs"],
        hidden=spec["hidden"],
        dropout=spec["dropout"],
        norm=spec["norm"],
    )


def _dict_or(value: Any, default: Any) -> Any:
    return value if isinstance(value, dict) else default


def _schema_from_meta(meta: dict[str, Any], file: Path) -> Schema:
    """The saved schema, every field checked (names are distinct strings, labels fit the task)."""
    task = field(meta, "schema.task", str, file=file, choices=TASKS)
    if field(meta, "task", str, file=file, default=task) != task:
        raise ArtifactError("fields 'task' and 'schema.task' disagree", path=file)

    def names(key: str, default: Any = None) -> tuple[str, ...]:
        value = field(meta, f"schema.{key}", list, file=file, **({} if default is None else {"default": default}))
        if not all(isinstance(v, str) for v in value) or len(set(value)) != len(value):
            raise ArtifactError(f"field 'schema.{key}' must be a list of distinct strings", path=file)
        return tuple(value)

    labels = field(meta, "schema.labels", (list, type(None)), file=file, default=None)
    if labels is not None:
        if not all(isinstance(v, str) for v in labels) or len(set(labels)) != len(labels):
            raise ArtifactError("field 'schema.labels' must be a list of distinct strings", path=file)
        if len(labels) < 2 or (task == "binary" and len(labels) != 2) or task == "regression":
            raise ArtifactError(f"field 'schema.labels' holds {len(labels)} labels for a {task} model", path=file)
    elif task != "regression":
        raise ArtifactError(f"field 'schema.labels' is missing for a {task} model", path=file)
    return Schema(
        target=field(meta, "schema.target", str, file=file),
        task=cast(Task, task),
        text_columns=names("text_columns"),
        numeric_columns=names("numeric_columns", []),
        categorical_columns=names("categorical_columns", []),
        labels=tuple(labels) if labels is not None else None,
        ignored_columns=names("ignored_columns", []),
    )
