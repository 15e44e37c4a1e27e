"""Prediction and ONNX export for image models.

The graph takes normalised pixels ``(batch, 3, size, size)``; decoding, resizing and
normalising run in numpy/Pillow before it, the same code for the torch and the ONNX backend.
Requests carry each image base64-encoded. :class:`ImagePredictor` follows the predictor
contract (:class:`~tunesmith.export.predictor.Predictor`), so ``tunesmith serve``,
``tunesmith predict`` and the micro-batcher work on it unchanged.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tunesmith.data.images import decode_image_bytes, decode_images, images_from_array, resolve_image_paths
from tunesmith.errors import ConfigError, DataError
from tunesmith.export.graph import ExportResult, check_tolerance, finish, parity, refuse_int8, trace_to_onnx
from tunesmith.export.predictor import ONNX_FILES, ModalPredictor, Prediction, graph_path
from tunesmith.export.session import onnx_session
from tunesmith.runs.trust import SafeFolder, open_model

if TYPE_CHECKING:
    from tunesmith.backbones.image import ImagePreprocessing

IMAGE_FIELD = "image"


class ImagePredictor(ModalPredictor):
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
        # ``opened``: the folder as the caller scanned it, read from without a second scan.
        source: str | os.PathLike[str] = opened if opened is not None else folder

        # Everything the predictor uses comes from the trust-checked folder: the loaded model
        # (torch), or the checked metadata (onnx); ``meta`` is read only for metadata()'s report.
        model: Any = None
        if backend == "torch":
            from tunesmith.estimators.image import (
                ImageFineTuner,  # here, not at the top: ONNX serving must not load torch
            )

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
            from tunesmith.estimators.image import (
                image_model_info,  # here, not at the top: ONNX serving must not load torch
            )

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
            self._session = onnx_session(graph or graph_path(folder, "fp32"), threads)

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
) -> ExportResult:
    """Trace an image model into ``onnx/model.onnx`` and check it against PyTorch."""
    import torch

    started = time.perf_counter()
    # Written into below: opened (links refused) before anything is, and loaded from that scan.
    safe, _ = open_model(folder)
    from tunesmith.estimators.image import ImageFineTuner  # here, not at the top: ONNX serving must not load torch

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
        result = parity(torch_side.logits_from_images(images), onnx_side.logits_from_images(images))
        result.update({"tolerance": tolerance, "source": source})
        check_tolerance(result, tolerance, folder)
        return finish(folder, scratch, result, opset, started, safe)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def open_image_predictor(
    folder: Path,
    safe: SafeFolder,
    meta: dict[str, Any],
    *,
    backend: str,
    precision: str,
    batch_size: int,
    threads: int | None,
    version: str | None,
    backbone: str | None = None,
) -> ImagePredictor:
    """The predictor of an opened image model folder (what the registry's ``image`` kind predicts with)."""
    if backbone is not None:
        raise ConfigError(
            "backbone= applies to text and tabular models; this folder holds an image model",
            key="backbone",
            hint="Leave backbone out for this model",
        )
    graph = graph_path(folder, precision) if backend == "onnx" else None
    return ImagePredictor(
        folder,
        meta,
        backend=backend,
        batch_size=batch_size,
        threads=threads,
        version=version,
        graph=graph,
        opened=safe,
    )


def exporter(
    folder: Path, safe: SafeFolder, meta: dict[str, Any], *, quantize: str | None, **options: Any
) -> ExportResult:
    """The registry's ONNX exporter of image models: fp32 only (see :func:`export_image_onnx`)."""
    refuse_int8("image", quantize)
    return export_image_onnx(folder, meta, **{k: options[k] for k in _EXPORT_OPTIONS})


_EXPORT_OPTIONS = ("data", "tolerance", "sample_size", "opset", "threads", "seed")
