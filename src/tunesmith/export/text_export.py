"""ONNX export of a text model, with a parity check and int8 dynamic quantisation with its accuracy cost.

The graph holds everything after the tokenizer: the encoder (LoRA adapters merged in), the
pooling and the head; inputs ``input_ids`` and ``attention_mask`` (int64, any batch size and
length), output ``logits``. Every export is checked against the PyTorch model on a held-out
sample (the run's test rows when the training file is given, else the rows given, else
generated sentences): the largest absolute logit difference must stay under ``tolerance``
or the export fails and leaves nothing behind. The int8 graph is scored against the fp32
model on labeled rows, and the accuracy change goes into ``export.json`` and the model card.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.data.io import file_sha256, read_table
from tunesmith.data.schema import label_string
from tunesmith.errors import ArtifactError, DataError
from tunesmith.export.graph import (
    DEFAULT_TOLERANCE,
    OPSET,
    ExportResult,
    need_onnx,
    quantize_int8,
    trace_to_onnx,
    update_card,
    versions,
    write_export_info,
)
from tunesmith.export.predictor import ONNX_DIR, ONNX_FILES, Predictor, read_model
from tunesmith.export.text import OnnxPredictor
from tunesmith.runs.fingerprint import model_version
from tunesmith.runs.trust import SafeFolder


def _resolve_model(
    model: Any, opened: tuple[SafeFolder, dict[str, Any]] | None = None
) -> tuple[Any, Path, SafeFolder, dict[str, Any]]:
    """``(FineTuner, folder, opened folder, metadata)`` from a folder path or a saved estimator.

    The folder is opened once through :func:`~tunesmith.export.runtime.read_model` (or
    ``opened``, when the caller did that already); the estimator (when a path is given) and
    every predictor of the export read through it.
    """
    from tunesmith.estimators.text import FineTuner, open_text  # here, not at the top: ONNX serving must not load torch

    if isinstance(model, FineTuner):
        folder = getattr(model, "model_path_", None)
        if folder is None:
            raise ArtifactError(
                "this estimator was never saved, so there is no model folder to export into",
                hint="Call save(path) first, then export that folder",
            )
        safe, meta = opened or read_model(folder)
        return model, Path(folder), safe, meta
    folder = Path(model)
    if not folder.is_dir():
        raise ArtifactError("no model folder here", path=folder, hint="Give a folder written by tunesmith fit")
    safe, meta = opened or read_model(folder)
    return open_text(safe, meta), folder, safe, meta


def _export_module(ft: Any) -> Any:
    """The network to trace: a copy with LoRA adapters merged into the encoder's weights."""
    model = ft.model_
    if ft.config_.strategy == "lora":
        model = copy.deepcopy(model)
        inner = model.backbone.model
        merge = getattr(inner, "merge_and_unload", None)
        if callable(merge):
            model.backbone.model = merge()
    model.eval()
    return model


def write_graph(ft: Any, path: Path, *, opset: int = OPSET) -> None:
    """Trace the model (tokenizer excluded) into an ONNX file at ``path``."""
    import torch

    module = _export_module(ft)
    ids = ft.backbone_.tokenize(["an example sentence to trace", "a second, somewhat longer one for the batch"], 32)
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), ft.backbone_.pad_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, seq in enumerate(ids):
        input_ids[i, : len(seq)] = torch.as_tensor(seq)
        mask[i, : len(seq)] = 1
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}, "logits": {0: "batch"}}
    trace_to_onnx(module, (input_ids, mask), path, ["input_ids", "attention_mask"], axes, opset=opset)


# --- data for the checks ---------------------------------------------------------------------


@dataclass
class _Sample:
    frame: pd.DataFrame
    source: str
    labeled: bool


def _generated_texts(ft: Any, n: int, seed: int) -> list[str]:
    """Sentences of real vocabulary words at many lengths, for a parity check without data."""
    vocab = [w for w in ft.backbone_.tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) > 1]
    rng = np.random.default_rng(seed)
    words = np.asarray(sorted(vocab))
    limit = max(2, min(ft.config_.max_length, 96))
    return [" ".join(rng.choice(words, size=int(rng.integers(1, limit)))) for _ in range(n)]


def _sample(ft: Any, meta: dict[str, Any], data: Any, target: str | None, sample_size: int, seed: int) -> _Sample:
    """Rows for the checks: the run's own test split when ``data`` is its training file."""
    schema = ft.schema_
    target = target or schema.target
    if data is None:
        texts = _generated_texts(ft, sample_size, seed)
        return _Sample(pd.DataFrame({schema.text_columns[0]: texts}), "generated sentences", labeled=False)
    source = "the rows given"
    if isinstance(data, pd.DataFrame):
        df = data.reset_index(drop=True)
    else:
        path = Path(data)
        df = read_table(path)
        info = meta.get("data") or {}
        rows = info.get("test_rows")
        if rows and info.get("sha256") == file_sha256(path):
            picked = np.asarray(rows, dtype=np.int64) - 1
            if picked.size and picked.max() < len(df):
                df = df.iloc[picked].reset_index(drop=True)
                source = f"the run's test split of {path.name}"
        if source == "the rows given":
            source = f"all rows of {path.name}"
    missing = [c for c in schema.text_columns if c not in df.columns]
    if missing:
        raise DataError(
            f"column {missing[0]!r} used in training is missing",
            file=None if isinstance(data, pd.DataFrame) else str(data),
            column=missing[0],
            hint=f"Columns present: {', '.join(map(str, df.columns))}",
        )
    labeled = target in df.columns
    if labeled:
        df = df[df[target].notna()].reset_index(drop=True)
    return _Sample(df, source, labeled)


def _accuracy(values: np.ndarray, truth: pd.Series, task: str) -> float:
    if task == "regression":
        return float(np.mean(np.abs(values.astype(float) - pd.to_numeric(truth, errors="coerce").to_numpy(float))))
    return float(np.mean([label_string(a) == label_string(b) for a, b in zip(values, truth, strict=True)]))


# --- the export ------------------------------------------------------------------------------


def _torch_logits(ft: Any, texts: Sequence[str]) -> np.ndarray:
    ids = ft.backbone_.tokenize(list(texts), ft.config_.max_length)
    return np.asarray(ft._outputs_from_ids(ids, progress=False), dtype=np.float32)


def _predictor(
    folder: Path, meta: dict[str, Any], graph: Path, precision: str, threads: int | None, safe: SafeFolder
) -> OnnxPredictor:
    return OnnxPredictor(
        folder,
        meta,
        precision=precision,
        batch_size=64,
        threads=threads,
        version="export-check",
        graph=graph,
        safe=safe,
    )


def check_parity(
    model: Any,
    graph: str | os.PathLike[str],
    *,
    texts: Sequence[str] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    threads: int | None = None,
) -> dict[str, Any]:
    """Compare an ONNX graph with the PyTorch model on ``texts``; raise above ``tolerance``.

    ``model`` is a model folder or a saved :class:`FineTuner`. The comparison runs the whole
    prediction path of each side (tokenizer included), so a tokenizer mismatch fails it
    too. Returns ``{"max_abs_diff", "mean_abs_diff", "label_agreement", "rows", "tolerance"}``.
    """
    need_onnx()
    ft, folder, safe, meta = _resolve_model(model)
    if texts is None:
        texts = _generated_texts(ft, 64, 0)
    predictor = _predictor(folder, meta, Path(graph), "fp32", threads, safe)
    report = _compare(ft, predictor, list(texts))
    report["tolerance"] = tolerance
    if not report["max_abs_diff"] <= tolerance:  # written so that NaN fails too
        raise ArtifactError(
            f"the ONNX graph disagrees with the PyTorch model: max |logit difference| "
            f"{report['max_abs_diff']:.3g} over {report['rows']} rows is above the tolerance {tolerance:g}",
            path=Path(graph),
            hint="Re-export the model; if it persists, report it with the model's backbone and opset",
        )
    return report


def _compare(ft: Any, predictor: OnnxPredictor, texts: list[str]) -> dict[str, Any]:
    reference = _torch_logits(ft, texts)
    got = predictor.logits(texts)
    diff = np.abs(got.astype(np.float64) - reference.astype(np.float64))
    agree = float(np.mean(got.argmax(axis=1) == reference.argmax(axis=1))) if reference.shape[1] > 1 else None
    return {
        "max_abs_diff": float(np.nanmax(diff)) if diff.size and not np.isnan(diff).any() else float("nan"),
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "label_agreement": agree,
        "rows": len(texts),
    }


def export_text_onnx(
    folder: Path,
    safe: SafeFolder,
    meta: dict[str, Any],
    *,
    model: Any = None,
    quantize: str | None = None,
    data: Any = None,
    target: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    max_accuracy_drop: float | None = None,
    max_mae_increase: float | None = None,
    sample_size: int = 256,
    opset: int = OPSET,
    threads: int | None = None,
    seed: int = 0,
    started: float | None = None,
) -> ExportResult:
    """Export the opened text model folder (see :func:`tunesmith.export.onnx.export_onnx`).

    ``model`` is the saved :class:`~tunesmith.estimators.text.FineTuner` when the caller has
    it (else the folder's model is loaded once, from ``safe``).
    """
    started = time.perf_counter() if started is None else started
    opened = (safe, meta)
    from tunesmith.estimators.text import FineTuner  # here, not at the top: ONNX serving must not load torch

    ft, folder, safe, meta = _resolve_model(model if isinstance(model, FineTuner) else folder, opened)
    schema = ft.schema_
    sample = _sample(ft, meta, data, target, sample_size, seed)
    # The base predictor builds the model's input text from rows exactly as serving will.
    shaper = Predictor(folder, meta, batch_size=64, version="export-check", safe=safe)
    all_texts = shaper.texts(sample.frame.reindex(columns=list(schema.feature_columns)))
    rng = np.random.default_rng(seed)
    parity_idx = np.sort(rng.permutation(len(all_texts))[:sample_size])
    parity_texts = [all_texts[i] for i in parity_idx]

    out_dir = folder / ONNX_DIR
    # Build in a scratch folder beside the final one: a failed check leaves the old export intact.
    scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=folder))
    try:
        fp32 = scratch / ONNX_FILES["fp32"]
        write_graph(ft, fp32, opset=opset)
        fp32_check = _predictor(folder, meta, fp32, "fp32", threads, safe)
        parity = _compare(ft, fp32_check, parity_texts)
        parity.update({"tolerance": tolerance, "source": sample.source})
        if not parity["max_abs_diff"] <= tolerance:
            raise ArtifactError(
                f"the exported graph disagrees with the PyTorch model: max |logit difference| "
                f"{parity['max_abs_diff']:.3g} over {parity['rows']} rows is above the tolerance {tolerance:g}",
                path=folder,
                hint="Nothing was written; raise --tolerance only if the difference is expected",
            )
        files = {"fp32": f"{ONNX_DIR}/{ONNX_FILES['fp32']}"}
        int8_report: dict[str, Any] | None = None
        if quantize == "int8":
            q = scratch / ONNX_FILES["int8"]
            quantize_int8(fp32, q)
            int8_check = _predictor(folder, meta, q, "int8", threads, safe)
            int8_report = _compare(ft, int8_check, parity_texts)
            int8_report["source"] = sample.source
            if sample.labeled:
                int8_report.update(_int8_accuracy(ft, fp32_check, int8_check, all_texts, sample, schema.task))
            else:
                int8_report["accuracy_note"] = "not measured: give labeled data (--data) to measure it"
            _gate_int8(int8_report, max_accuracy_drop, max_mae_increase, sample.source, folder)
            files["int8"] = f"{ONNX_DIR}/{ONNX_FILES['int8']}"
        version = model_version(folder)
        info = versions()
        info["max_positions"] = min(int(ft.config_.max_length), int(ft.backbone_.max_positions))
        info["opset"] = opset
        info["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        result = ExportResult(
            folder=out_dir,
            files=files,
            parity=parity,
            int8=int8_report,
            model_version=version,
            seconds=time.perf_counter() - started,
            info=info,
        )
        out_dir.mkdir(exist_ok=True)
        for precision, rel in files.items():
            os.replace(scratch / ONNX_FILES[precision], folder / rel)
        if quantize is None:
            # An int8 graph from an earlier export no longer matches the fp32 one just written.
            (out_dir / ONNX_FILES["int8"]).unlink(missing_ok=True)
        write_export_info(out_dir, result)
        update_card(folder, result, safe)
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _gate_int8(
    report: dict[str, Any], max_drop: float | None, max_mae_increase: float | None, source: str, folder: Path
) -> None:
    """Fail the export when int8 costs more than allowed (accuracy points, or MAE for regression)."""
    drop = report.get("accuracy_drop_points")
    if max_drop is not None and drop is not None and drop > max_drop:
        raise ArtifactError(
            f"int8 costs {drop:.2f} accuracy points on {source}, more than the {max_drop:g} allowed",
            path=folder,
            hint="Serve the fp32 graph, or allow a larger drop with --max-accuracy-drop",
        )
    change = report.get("mae_change")
    if max_mae_increase is not None and change is not None and change > max_mae_increase:
        raise ArtifactError(
            f"int8 raises the MAE by {change:.4g} on {source}, more than the {max_mae_increase:g} allowed",
            path=folder,
            hint="Serve the fp32 graph, or allow a larger increase with --max-mae-increase",
        )
    if (max_drop is not None or max_mae_increase is not None) and drop is None and change is None:
        raise ArtifactError(
            "an int8 accuracy gate was set but accuracy was not measured",
            path=folder,
            hint="Give labeled rows with --data",
        )


def _int8_accuracy(
    ft: Any, fp32: OnnxPredictor, int8: OnnxPredictor, texts: list[str], sample: _Sample, task: str
) -> dict[str, Any]:
    """Score fp32 and int8 on every labeled row (not just the parity sample)."""
    truth = sample.frame[ft.schema_.target]
    out: dict[str, Any] = {"rows_scored": len(texts)}
    results = {}
    for name, predictor in (("fp32", fp32), ("int8", int8)):
        logits = predictor.logits(texts)
        if task == "regression":
            s = predictor.target_scaling
            values = logits[:, 0] * float(s["std"]) + float(s["mean"])
        else:
            values = np.asarray(predictor.label_values, dtype=object)[logits.argmax(axis=1)]
        results[name] = _accuracy(values, truth, task)
    if task == "regression":
        out.update({"mae_fp32": results["fp32"], "mae_int8": results["int8"]})
        out["mae_change"] = results["int8"] - results["fp32"]
    else:
        out.update({"accuracy_fp32": results["fp32"], "accuracy_int8": results["int8"]})
        out["accuracy_drop_points"] = round(100.0 * (results["fp32"] - results["int8"]), 4)
    return out
