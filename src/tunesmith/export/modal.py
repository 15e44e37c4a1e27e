"""Prediction and ONNX export for image and tabular models.

Both follow the text predictor's contract (:class:`~tunesmith.export.runtime.Predictor`:
``predict_rows``, ``predict_frame``, ``warmup``, ``metadata``), so ``tunesmith serve``,
``tunesmith predict`` and the micro-batcher work on them unchanged.

- Images: the graph takes normalised pixels ``(batch, 3, size, size)``; decoding, resizing
  and normalising run in numpy/Pillow before it, the same code for the torch and the ONNX
  backend. Requests carry each image base64-encoded.
- Tables: the graph takes the preprocessed feature matrix (LightGBM trees converted with
  onnxmltools, or the neural network traced by torch); the preprocessing itself (imputation,
  scaling, category codes, text vectors) runs before it, from the model's JSON.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tunesmith.errors import ArtifactError, ConfigError, DataError
from tunesmith.export.runtime import (
    EXPORT_INFO,
    ONNX_DIR,
    ONNX_FILES,
    Prediction,
    Predictor,
    model_version,
    onnx_session,
    softmax,
)
from tunesmith.runs.trust import SafeFolder

if TYPE_CHECKING:
    from tunesmith.backbones.image import ImagePreprocessing

IMAGE_FIELD = "image"


def _graph_path(folder: Path, precision: str) -> Path:
    if precision == "int8":
        raise ConfigError(
            "image and tabular models are exported in fp32 only",
            key="precision",
            hint="Use --precision fp32 (or auto)",
        )
    graph = folder / ONNX_DIR / ONNX_FILES["fp32"]
    # lstat: a link in the graph's place is refused, never followed out of the folder.
    try:
        regular = stat.S_ISREG(os.lstat(graph).st_mode) and not os.path.islink(folder / ONNX_DIR)
    except OSError:
        regular = False
    if not regular:
        raise ArtifactError(
            f"no fp32 ONNX graph ({ONNX_DIR}/{ONNX_FILES['fp32']})",
            path=folder,
            hint=f"Export it first: tunesmith export {folder} --format onnx",
        )
    return graph


class _ModalPredictor(Predictor):
    """Shared set-up of the image and tabular predictors (labels, version, decoding of outputs).

    Every value here comes from a checked source (the loaded estimator or
    :func:`~tunesmith.vision.image_model_info`), never straight from ``tunesmith.json``.
    """

    def __init__(
        self,
        folder: Path,
        meta: Mapping[str, Any],
        *,
        task: str,
        labels: Sequence[str],
        label_values: Sequence[Any],
        target_scaling: Mapping[str, float] | None,
        batch_size: int,
        version: str | None,
    ) -> None:
        # The text predictor's constructor reads a text schema and tokenizer settings; these
        # models have neither, so the common fields are set here.
        self.folder = folder
        self.meta = _shown_meta(meta)
        self.task = task
        self.labels = [str(x) for x in labels]
        values = list(label_values)
        self.label_values = values if len(values) == len(self.labels) else list(self.labels)
        self.target_scaling = dict(target_scaling or {"mean": 0.0, "std": 1.0})
        if batch_size < 1:
            raise ConfigError(f"must be at least 1, got {batch_size}", key="batch_size")
        self.batch_size = batch_size
        self.version = version or model_version(folder)


def _shown_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``tunesmith.json`` that ``metadata()`` reports, each of the type it expects.

    ``/v1/metadata`` shows them as they are; a folder whose report fields have another shape
    (a list of metrics, a backbone that is a string) shows nothing for them instead of failing.
    """
    out: dict[str, Any] = {}
    if not isinstance(meta, Mapping):
        return out
    metrics = meta.get("metrics")
    if isinstance(metrics, dict):
        out["metrics"] = metrics
    backbone = meta.get("backbone")
    if isinstance(backbone, dict) and isinstance(backbone.get("name"), str):
        out["backbone"] = {"name": backbone["name"]}
    for key in ("created", "tunesmith_version"):
        if isinstance(meta.get(key), str):
            out[key] = meta[key]
    return out


# --- images ------------------------------------------------------------------------------------


class ImagePredictor(_ModalPredictor):
    """Predicts from images: base64 in requests, image paths in files, arrays from Python."""

    def __init__(
        self,
        folder: Path,
        meta: dict[str, Any],
        *,
        backend: str,
        batch_size: int,
        threads: int | None,
        version: str | None,
        graph: Path | None = None,
        opened: SafeFolder | None = None,
    ) -> None:
        from tunesmith.runs.trust import open_model
        from tunesmith.vision import ImageFineTuner, image_model_info

        # ``opened``: the folder as the caller scanned it, read from without a second scan.
        source: str | os.PathLike[str] = opened if opened is not None else folder

        # Everything the predictor uses comes from the trust-checked folder: the loaded model
        # (torch), or the checked metadata (onnx); ``meta`` is read only for metadata()'s report.
        model: Any = None
        if backend == "torch":
            est = ImageFineTuner.load(source)
            model = est.model_
            info = {
                "task": est.task_,
                "labels": est.labels_,
                "label_values": est.label_values_,
                "preprocessing": model.backbone.preprocessing,
                "config": est.config_,
            }
        else:
            safe, checked = open_model(source)
            info = image_model_info(checked, file=safe.root / "tunesmith.json")
        super().__init__(
            folder,
            meta,
            task=info["task"],
            labels=info["labels"],
            label_values=info["label_values"],
            target_scaling=None,
            batch_size=batch_size,
            version=version,
        )
        self.pre: ImagePreprocessing = info["preprocessing"]
        self.path_column: str = info["config"].path_column
        self.root: Path | None = None
        self.backend = backend
        self.precision = "fp32"
        self._mean = np.asarray(self.pre.mean, dtype=np.float32).reshape(1, 3, 1, 1)
        self._std = np.asarray(self.pre.std, dtype=np.float32).reshape(1, 3, 1, 1)
        self._model: Any = model
        self._session: Any = None
        if backend == "torch":
            import torch

            if threads:
                torch.set_num_threads(threads)
            self._torch = torch
        else:
            self._session = onnx_session(graph or _graph_path(folder, "fp32"), threads)

    @property
    def required_columns(self) -> list[str]:
        return [self.path_column]

    def input_schema(self) -> dict[str, Any]:
        return {
            "image_field": IMAGE_FIELD,
            "encoding": "base64 of the image file's bytes (PNG, JPEG, BMP, GIF, WebP, TIFF)",
            "image_size": self.pre.size,
            "resize": self.pre.resize,
            "path_column": self.path_column,
            "required": [IMAGE_FIELD],
        }

    def rows_to_texts(  # type: ignore[override]
        self, rows: Sequence[Mapping[str, Any] | str], *, where: str = "inputs"
    ) -> list[np.ndarray]:
        """Decoded images, one per row (the server's validation step); errors name ``where[i]``."""
        from tunesmith.data.images import decode_image_bytes

        out = []
        for i, row in enumerate(rows):
            if isinstance(row, Mapping):
                unknown = [k for k in row if k != IMAGE_FIELD]
                if unknown:
                    raise DataError(
                        f"{where}[{i}] has unknown field {unknown[0]!r}",
                        row=i + 1,
                        column=str(unknown[0]),
                        hint=f"An image model reads one field, {IMAGE_FIELD!r}: the base64-encoded image",
                    )
                value = row.get(IMAGE_FIELD)
                field = f"{where}[{i}].{IMAGE_FIELD}"
            else:
                value, field = row, f"{where}[{i}]"
            if not isinstance(value, str) or not value.strip():
                raise DataError(
                    f"{field} must be a base64-encoded image", row=i + 1, hint="Send the image file's bytes in base64"
                )
            try:
                data = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise DataError(
                    f"{field} is not valid base64", row=i + 1, hint="Encode the file's bytes with standard base64"
                ) from None
            out.append(decode_image_bytes(data, self.pre.size, resize=self.pre.resize, where=field))  # type: ignore[arg-type]
        return out

    def logits_from_images(self, images: np.ndarray) -> np.ndarray:
        """Raw outputs for uint8 images ``(n, size, size, 3)``."""
        n = len(images)
        if n == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        out = []
        for start in range(0, n, self.batch_size):
            x = images[start : start + self.batch_size].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
            x = (x - self._mean) / self._std
            out.append(self._run_pixels(np.ascontiguousarray(x, dtype=np.float32)))
        return np.concatenate(out)

    def _run_pixels(self, x: np.ndarray) -> np.ndarray:
        if self._session is not None:
            return np.asarray(self._session.run(["logits"], {"pixels": x})[0], dtype=np.float32)
        assert self._model is not None, "this predictor was closed"
        with self._torch.inference_mode():
            return np.asarray(self._model(self._torch.from_numpy(x)).float().numpy(), dtype=np.float32)

    def predict_rows(self, rows: Sequence[Mapping[str, Any] | str], *, probabilities: bool = True) -> list[Prediction]:
        images = self.rows_to_texts(rows)
        stacked = np.stack(images) if images else np.zeros((0, self.pre.size, self.pre.size, 3), np.uint8)
        return self.predictions(self.logits_from_images(stacked), probabilities)

    def predict_frame(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions for a table with the image-path column (paths inside ``root``, default the working folder)."""
        from tunesmith.data.images import decode_images, resolve_image_paths

        if self.path_column not in df.columns:
            raise DataError(
                f"column {self.path_column!r} with the image paths is missing",
                column=self.path_column,
                hint=f"Columns present: {', '.join(map(str, df.columns))}",
            )
        root = (self.root or Path.cwd()).resolve()
        paths = resolve_image_paths(df, self.path_column, root)
        images, _, _ = decode_images(paths, self.pre.size, on_error="raise", resize=self.pre.resize)  # type: ignore[arg-type]
        return self._decode(self.logits_from_images(images))

    def warmup(self) -> None:
        self.logits_from_images(np.full((1, self.pre.size, self.pre.size, 3), 128, dtype=np.uint8))

    def close(self) -> None:
        self._model = None
        self._session = None


def _sample_images(ft: Any, data: Any, sample_size: int, seed: int) -> tuple[np.ndarray, str]:
    size = ft.model_.backbone.preprocessing.size
    if data is not None:
        images = ft._images_for_prediction(data)
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.permutation(len(images))[:sample_size])
        return images[idx], f"{len(idx)} given images"
    rng = np.random.default_rng(seed)
    # Smooth random images (upsampled noise) exercise the network like photos do, unlike white noise.
    small = rng.integers(0, 256, size=(min(sample_size, 32), 8, 8, 3)).astype(np.uint8)
    from tunesmith.data.images import images_from_array

    return images_from_array(small, size), "generated images"


def export_image_onnx(
    folder: Path,
    meta: dict[str, Any],
    *,
    data: Any,
    tolerance: float,
    sample_size: int,
    opset: int,
    threads: int | None,
    seed: int,
) -> Any:
    """Trace an image model into ``onnx/model.onnx`` and check it against PyTorch."""
    import torch

    from tunesmith.export.onnx import trace_to_onnx
    from tunesmith.runs.trust import open_model
    from tunesmith.vision import ImageFineTuner

    started = time.perf_counter()
    # Written into below: opened (links refused) before anything is, and loaded from that scan.
    safe, _ = open_model(folder)
    ft = ImageFineTuner.load(safe)
    images, source = _sample_images(ft, data, sample_size, seed)
    size = ft.model_.backbone.preprocessing.size
    scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=folder))
    try:
        fp32 = scratch / ONNX_FILES["fp32"]
        axes = {"pixels": {0: "batch"}, "logits": {0: "batch"}}
        trace_to_onnx(ft.model_, (torch.zeros(2, 3, size, size),), fp32, ["pixels"], axes, opset=opset)
        onnx_side = ImagePredictor(
            folder, meta, backend="onnx", batch_size=32, threads=threads, version="export-check", graph=fp32
        )
        torch_side = ImagePredictor(folder, meta, backend="torch", batch_size=32, threads=threads, version="check")
        parity = _parity(torch_side.logits_from_images(images), onnx_side.logits_from_images(images))
        parity.update({"tolerance": tolerance, "source": source})
        _check_tolerance(parity, tolerance, folder)
        return _finish(folder, scratch, parity, opset, started, safe)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _parity(reference: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    diff = np.abs(got.astype(np.float64) - reference.astype(np.float64))
    agree = float(np.mean(got.argmax(axis=1) == reference.argmax(axis=1))) if reference.shape[1] > 1 else None
    return {
        "max_abs_diff": float(diff.max()) if diff.size and not np.isnan(diff).any() else float("nan"),
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "label_agreement": agree,
        "rows": len(reference),
    }


def _check_tolerance(parity: dict[str, Any], tolerance: float, folder: Path) -> None:
    if not parity["max_abs_diff"] <= tolerance:  # written so that NaN fails too
        raise ArtifactError(
            f"the exported graph disagrees with the PyTorch model: max |logit difference| "
            f"{parity['max_abs_diff']:.3g} over {parity['rows']} rows is above the tolerance {tolerance:g}",
            path=folder,
            hint="Nothing was written; raise --tolerance only if the difference is expected",
        )


def _finish(folder: Path, scratch: Path, parity: dict[str, Any], opset: int, started: float, safe: Any) -> Any:
    """Move the checked graph into place, write ``export.json`` and the model card's export section.

    ``safe`` is the folder as opened (:class:`~tunesmith.runs.trust.SafeFolder`) before the
    export began: the card is read through it, never through a link.
    """
    from tunesmith.export.onnx import ExportResult, _json_ready, _update_card, _versions
    from tunesmith.runs.artifacts import atomic_write_json

    info = _versions()
    info["opset"] = opset
    info["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    files = {"fp32": f"{ONNX_DIR}/{ONNX_FILES['fp32']}"}
    result = ExportResult(
        folder=folder / ONNX_DIR,
        files=files,
        parity=parity,
        int8=None,
        model_version=model_version(folder),
        seconds=time.perf_counter() - started,
        info=info,
    )
    out_dir = folder / ONNX_DIR
    out_dir.mkdir(exist_ok=True)
    os.replace(scratch / ONNX_FILES["fp32"], folder / files["fp32"])
    (out_dir / ONNX_FILES["int8"]).unlink(missing_ok=True)
    payload = result.to_dict()
    payload["folder"] = ONNX_DIR
    atomic_write_json(out_dir / EXPORT_INFO, _json_ready(payload))
    _update_card(folder, result, safe)
    return result


# --- tables ------------------------------------------------------------------------------------

NEURAL_GRAPH = "model.neural.onnx"


class TabularPredictor(_ModalPredictor):
    """Predicts from rows of column values with the model's own preprocessing.

    ``backend="torch"`` runs LightGBM's and PyTorch's own predictors; ``"onnx"`` runs the
    exported graphs (``model.onnx``: the trees, or the network; ``model.neural.onnx``: the
    network of an ensemble). Text columns of a mixed-row model are embedded by the text
    encoder in PyTorch either way.
    """

    def __init__(
        self,
        folder: Path,
        meta: dict[str, Any],
        *,
        backend: str,
        batch_size: int,
        threads: int | None,
        version: str | None,
        graph: Path | None = None,
        backbone: str | None = None,
        opened: SafeFolder | None = None,
    ) -> None:
        from tunesmith.tabular import TabularFineTuner

        # Everything below comes from the loaded estimator, which checked every field; the
        # ``meta`` passed in is read only for the report fields of metadata().
        # ``opened``: the folder as the caller scanned it, read from without a second scan.
        est = TabularFineTuner.load(opened if opened is not None else folder, backbone=backbone)
        assert est.preprocessor_ is not None and est.schema_ is not None
        super().__init__(
            folder,
            meta,
            task=est.schema_.task,
            labels=list(est.schema_.labels or []),
            label_values=list(est.label_values_),
            target_scaling=est.target_scaling_,
            batch_size=batch_size,
            version=version,
        )
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.backend = backend
        self.precision = "fp32"
        self.schema = est.schema_
        self.columns = list(est.preprocessor_.columns)
        self.estimator: Any = est
        self._sessions: dict[str, Any] = {}
        if backend == "onnx":
            graph = graph or _graph_path(folder, "fp32")
            chosen = self.estimator.chosen_
            first = "neural" if chosen == "neural" else "lightgbm"
            self._sessions[first] = onnx_session(graph, threads)
            if chosen == "ensemble":
                self._sessions["neural"] = onnx_session(graph.parent / NEURAL_GRAPH, threads)

    @property
    def required_columns(self) -> list[str]:
        return []

    def input_schema(self) -> dict[str, Any]:
        s = self.schema
        return {
            "text_columns": list(s.text_columns),
            "numeric_columns": list(s.numeric_columns),
            "categorical_columns": list(s.categorical_columns),
            "required": [],
            "missing_values": "a column left out of a row counts as missing (imputed as in training)",
        }

    def rows_to_texts(  # type: ignore[override]
        self, rows: Sequence[Mapping[str, Any] | str], *, where: str = "inputs"
    ) -> list[Mapping[str, Any]]:
        """The rows, checked: objects whose fields are the model's columns (the server's validation step)."""
        known = set(self.columns)
        out: list[Mapping[str, Any]] = []
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise DataError(
                    f"{where}[{i}] must be an object of column values, got {type(row).__name__}",
                    row=i + 1,
                    hint=f"This model reads: {', '.join(self.columns)}",
                )
            unknown = [k for k in row if k not in known]
            if unknown:
                raise DataError(
                    f"{where}[{i}] has unknown field {unknown[0]!r}",
                    row=i + 1,
                    column=str(unknown[0]),
                    hint=f"This model reads: {', '.join(self.columns)}",
                )
            for key, value in row.items():
                if value is not None and not isinstance(value, (str, int, float, bool)):
                    raise DataError(
                        f"{where}[{i}].{key} must be a number, a string or null, got {type(value).__name__}",
                        row=i + 1,
                        column=str(key),
                    )
            out.append(row)
        return out

    def outputs(self, df: pd.DataFrame) -> np.ndarray:
        """Probabilities ``(n, k)`` (classification) or values ``(n,)`` (regression) for a frame."""
        est = self.estimator
        for col in self.columns:
            if col not in df.columns:
                raise DataError(
                    f"column {col!r} used in training is missing",
                    column=col,
                    hint=f"Columns present: {', '.join(map(str, df.columns))}",
                )
        features = est.preprocessor_.encode(est._with_rows(df))
        if not self._sessions:
            return np.asarray(est._outputs(features, est.chosen_))
        parts = []
        for name, session in self._sessions.items():
            parts.append(self._run_graph(name, session, features))
        return np.mean(parts, axis=0) if len(parts) > 1 else parts[0]

    def _run_graph(self, name: str, session: Any, features: Any) -> np.ndarray:
        task = self.task
        if name == "lightgbm":
            outs = session.run(None, {"raw": features.raw.astype(np.float32)})
            if task == "regression":
                return np.asarray(outs[0], dtype=np.float64).reshape(-1)
            return np.asarray(outs[1], dtype=np.float64)
        feed = {"numeric": features.numeric.astype(np.float32), "categorical": features.categorical.astype(np.int64)}
        names = {i.name for i in session.get_inputs()}
        logits = np.asarray(session.run(["logits"], {k: v for k, v in feed.items() if k in names})[0], np.float64)
        if task == "regression":
            s = self.target_scaling
            return logits[:, 0] * float(s["std"]) + float(s["mean"])
        return softmax(logits)

    def _decode(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        # A tabular model's outputs are already probabilities (or values), not logits.
        if self.task == "regression":
            return logits.astype(np.float64), None
        proba = logits.astype(np.float32)
        return np.asarray(self.label_values, dtype=object)[proba.argmax(axis=1)], proba

    def predict_frame(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
        return self._decode(self.outputs(df))

    def predict_rows(self, rows: Sequence[Mapping[str, Any] | str], *, probabilities: bool = True) -> list[Prediction]:
        records = self.rows_to_texts(rows)
        frame = pd.DataFrame.from_records([dict(r) for r in records], columns=self.columns)
        return self.predictions(self.outputs(frame), probabilities)

    def warmup(self) -> None:
        self.predict_rows([{}])

    def close(self) -> None:
        self._sessions = {}
        self.estimator = None


def _sample_rows(est: Any, data: Any, sample_size: int, seed: int) -> tuple[pd.DataFrame, str]:
    """Rows to check parity on: the given data, or rows drawn from what the preprocessor learned."""
    rng = np.random.default_rng(seed)
    if data is not None:
        frame, _ = est._read(data, "data")
        idx = np.sort(rng.permutation(len(frame))[:sample_size])
        return frame.iloc[idx].reset_index(drop=True), f"{len(idx)} given rows"
    pre = est.preprocessor_
    n = min(sample_size, 128)
    cols: dict[str, Any] = {}
    for i, col in enumerate(pre.numeric_columns):
        values = rng.normal(
            pre.means[i] if i < len(pre.means) else 0.0, 1.0 + abs(pre.stds[i] if i < len(pre.stds) else 1.0), n
        )
        values[rng.random(n) < 0.1] = np.nan
        cols[col] = values
    for col in pre.categorical_columns:
        vocab = [*list(pre.vocabularies.get(col) or []), "never-seen-category"]
        cols[col] = [vocab[j] for j in rng.integers(0, len(vocab), n)]
    for col in pre.text_columns:
        words = ["good", "bad", "price", "quality", "fast", "slow", "great", "poor"]
        cols[col] = [" ".join(rng.choice(words, 5)) for _ in range(n)]
    return pd.DataFrame(cols), "generated rows"


def export_tabular_onnx(
    folder: Path,
    meta: dict[str, Any],
    *,
    data: Any,
    tolerance: float,
    sample_size: int,
    opset: int,
    threads: int | None,
    seed: int,
) -> Any:
    """Convert a tabular model to ONNX (trees with onnxmltools, the network with torch) and check parity."""
    from tunesmith.runs.trust import open_model
    from tunesmith.tabular import TabularFineTuner

    started = time.perf_counter()
    # Written into below: opened (links refused) before anything is, and loaded from that scan.
    safe, _ = open_model(folder)
    est: Any = TabularFineTuner.load(safe)
    frame, source = _sample_rows(est, data, sample_size, seed)
    features = est.preprocessor_.encode(est._with_rows(frame))
    chosen = est.chosen_
    scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=folder))
    try:
        first = scratch / ONNX_FILES["fp32"]
        if chosen in ("lightgbm", "ensemble"):
            _write_trees(est.booster_, features.raw.shape[1], first)
        if chosen == "neural":
            _write_net(est.net_, features, first, opset)
        if chosen == "ensemble":
            _write_net(est.net_, features, scratch / NEURAL_GRAPH, opset)
        reference = np.asarray(est._outputs(features, chosen), dtype=np.float64)
        check = TabularPredictor(folder, meta, backend="torch", batch_size=64, threads=threads, version="check")
        check._sessions["neural" if chosen == "neural" else "lightgbm"] = onnx_session(first, threads)
        if chosen == "ensemble":
            check._sessions["neural"] = onnx_session(scratch / NEURAL_GRAPH, threads)
        got = check.outputs(frame)
        ref2 = reference if reference.ndim == 2 else reference[:, None]
        got2 = got if got.ndim == 2 else got[:, None]
        parity = _parity(ref2, got2)
        parity.update({"tolerance": tolerance, "source": source, "graph": chosen})
        _check_tolerance(parity, tolerance, folder)
        if chosen == "ensemble":
            (folder / ONNX_DIR).mkdir(exist_ok=True)
            os.replace(scratch / NEURAL_GRAPH, folder / ONNX_DIR / NEURAL_GRAPH)
        else:
            (folder / ONNX_DIR / NEURAL_GRAPH).unlink(missing_ok=True)
        result = _finish(folder, scratch, parity, opset, started, safe)
        if chosen == "ensemble":
            result.files["neural"] = f"{ONNX_DIR}/{NEURAL_GRAPH}"
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# onnxmltools' LightGBM converter supports opsets up to 15 (ai.onnx.ml TreeEnsemble included).
TREE_OPSET = 15


def _write_trees(booster: Any, n_features: int, path: Path) -> None:
    try:
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType
    except ImportError:
        raise ConfigError(
            "exporting LightGBM trees to ONNX needs the package onnxmltools",
            key="format",
            hint="Install it with: pip install 'tunesmith[serve]'",
        ) from None
    graph = convert_lightgbm(
        booster, initial_types=[("raw", FloatTensorType([None, n_features]))], target_opset=TREE_OPSET, zipmap=False
    )
    path.write_bytes(graph.SerializeToString())


def _write_net(net: Any, features: Any, path: Path, opset: int) -> None:
    import torch

    from tunesmith.export.onnx import trace_to_onnx

    numeric = torch.as_tensor(features.numeric[:2], dtype=torch.float32)
    categorical = torch.as_tensor(features.categorical[:2], dtype=torch.long)
    net.eval()
    axes = {"numeric": {0: "batch"}, "categorical": {0: "batch"}, "logits": {0: "batch"}}
    trace_to_onnx(net, (numeric, categorical), path, ["numeric", "categorical"], axes, opset=opset)
