"""Turn table rows into model inputs, with every statistic learned from the training rows only.

:class:`TabularPreprocessor` is fitted once, on the training part, and then applied unchanged
to validation, test and prediction rows, so nothing about held-out rows (their medians, their
categories, their texts) leaks into the features. Its state is plain JSON plus, for text
columns, a few tensors (PCA mean and components) stored in the model's safetensors file.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tunesmith.data.schema import label_string, missing_mask, require_column
from tunesmith.data.validate import row_numbers
from tunesmith.errors import ArtifactError, ConfigError, DataError

if TYPE_CHECKING:
    import torch

    from tunesmith.backbones.text import TextBackbone

__all__ = ["TabularFeatures", "TabularPreprocessor"]

PREPROCESSOR_VERSION = 1


@dataclass
class TabularFeatures:
    """The three views of a batch of rows.

    ``numeric``: float32 ``(n, d)``, imputed and standardised (missing indicators and text
    components included); ``categorical``: int64 ``(n, c)`` vocabulary indices, 0 for an unknown
    or missing category; ``raw``: float64 ``(n, d_raw)`` for LightGBM, numbers as they are with
    NaN kept, then categorical codes (``NaN`` where unknown or missing), then text components.
    """

    numeric: np.ndarray
    categorical: np.ndarray
    raw: np.ndarray


def _category_key(value: Any) -> str:
    # the same normalisation as labels, so 1, 1.0 and " 1" are one category across files
    return label_string(value)


class TabularPreprocessor:
    """Numeric, categorical and text columns to arrays, fitted on training rows only.

    - Numeric columns: the train median replaces missing values; a column that had missing
      values in train also gets a 0/1 missing-indicator feature; then ``(x - mean) / std`` with
      train mean and std (a constant column gets std 1). A value that is not a number is a
      :class:`~tunesmith.errors.DataError` naming its row and column.
    - Categorical columns: a vocabulary of the train categories seen at least ``min_count``
      times, as :func:`~tunesmith.data.schema.label_string` forms; index 0 means unknown or
      missing.
    - Text columns (mixed rows): frozen vectors of ``text_backbone`` (via
      :func:`tunesmith.estimator.embed_texts`), reduced by a PCA fitted on train to
      ``text_dims`` components per column, appended to the numeric features.

    Args:
        numeric_columns, categorical_columns, text_columns: the columns of each role.
        min_count: fewer train occurrences than this make a category unknown.
        text_backbone: registered backbone name or local folder for text columns.
        text_dims: PCA components kept per text column (fewer when train has fewer rows).
        progress: show a progress bar while embedding many texts.
    """

    def __init__(
        self,
        numeric_columns: Sequence[str] = (),
        categorical_columns: Sequence[str] = (),
        text_columns: Sequence[str] = (),
        *,
        min_count: int = 1,
        text_backbone: str = "minilm-l6",
        text_dims: int = 32,
        progress: bool = False,
    ) -> None:
        if min_count < 1:
            raise ConfigError(f"min_count must be at least 1, got {min_count}", key="min_count")
        if text_dims < 1:
            raise ConfigError(f"text_dims must be at least 1, got {text_dims}", key="text_dims")
        self.numeric_columns = tuple(str(c) for c in numeric_columns)
        self.categorical_columns = tuple(str(c) for c in categorical_columns)
        self.text_columns = tuple(str(c) for c in text_columns)
        self.min_count = int(min_count)
        self.text_backbone = str(text_backbone)
        self.text_dims = int(text_dims)
        self.progress = progress
        self.fitted = False
        self.medians: dict[str, float] = {}
        self.indicator_columns: tuple[str, ...] = ()
        self.means: list[float] = []
        self.stds: list[float] = []
        self.vocabularies: dict[str, list[str]] = {}
        self.backbone_fingerprint: str | None = None
        # per text column: (mean (hidden,), components (k, hidden)), float32
        self.pca: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._backbone: TextBackbone | None = None
        self._index: dict[str, dict[str, int]] = {}

    # --- properties ------------------------------------------------------------------------

    @property
    def columns(self) -> tuple[str, ...]:
        """Every input column read, text first, then numeric, then categorical."""
        return (*self.text_columns, *self.numeric_columns, *self.categorical_columns)

    @property
    def cardinalities(self) -> list[int]:
        """Per categorical column, vocabulary size + 1 (index 0 is unknown/missing)."""
        return [len(self.vocabularies[c]) + 1 for c in self.categorical_columns]

    @property
    def text_feature_names(self) -> list[str]:
        return [f"{c}__pc{i}" for c in self.text_columns for i in range(self.pca[c][1].shape[0])]

    @property
    def numeric_feature_names(self) -> list[str]:
        """Names of the columns of :attr:`TabularFeatures.numeric`."""
        return [
            *self.numeric_columns,
            *(f"{c}__missing" for c in self.indicator_columns),
            *self.text_feature_names,
        ]

    @property
    def raw_feature_names(self) -> list[str]:
        """Names of the columns of :attr:`TabularFeatures.raw` (LightGBM's feature names)."""
        return [*self.numeric_columns, *self.categorical_columns, *self.text_feature_names]

    @property
    def raw_categorical_indices(self) -> list[int]:
        """Positions of the categorical codes in the raw matrix (LightGBM's ``categorical_feature``)."""
        start = len(self.numeric_columns)
        return list(range(start, start + len(self.categorical_columns)))

    # --- fitting ---------------------------------------------------------------------------

    def fit(self, df: pd.DataFrame, *, file: str | Path | None = None) -> TabularPreprocessor:
        """Learn medians, scales, vocabularies and the text PCA from ``df`` (training rows only)."""
        self._check_columns(df, file)
        if len(df) == 0:
            raise DataError("no training rows to fit the preprocessor on", file=file)
        numbers = self._numbers(df, file)
        medians: dict[str, float] = {}
        indicators: list[str] = []
        for j, col in enumerate(self.numeric_columns):
            values = numbers[:, j]
            present = values[~np.isnan(values)]
            medians[col] = float(np.median(present)) if present.size else 0.0
            if present.size < values.size:
                indicators.append(col)
        self.medians = medians
        self.indicator_columns = tuple(indicators)

        self.vocabularies = {}
        for col in self.categorical_columns:
            series = df[col]
            keep = ~missing_mask(series).to_numpy(dtype=bool)
            counts = Counter(_category_key(v) for v in series[keep].tolist())
            # sorted, so that the same train data gives the same indices in every run
            self.vocabularies[col] = sorted(k for k, n in counts.items() if n >= self.min_count)
        self._build_index()

        self.pca = {}
        projected = [np.zeros((len(df), 0), dtype=np.float32)]
        if self.text_columns:
            backbone = self._get_backbone()
            self.backbone_fingerprint = backbone.fingerprint
            for col in self.text_columns:
                vectors = self._embed(df[col]).astype(np.float64)
                mean = vectors.mean(axis=0)
                k = max(1, min(self.text_dims, vectors.shape[0], vectors.shape[1]))
                _, _, vt = np.linalg.svd(vectors - mean, full_matrices=False)
                components = vt[:k]
                # SVD signs are arbitrary; fix them so that refits on the same data agree
                signs = np.sign(components[np.arange(k), np.abs(components).argmax(axis=1)])
                components = components * np.where(signs == 0, 1.0, signs)[:, None]
                self.pca[col] = (mean.astype(np.float32), components.astype(np.float32))
                projected.append(((vectors - mean) @ components.T).astype(np.float32))

        self.fitted = True
        dense = self._dense(df, numbers, standardise=False, texts=np.concatenate(projected, axis=1))
        self.means = [float(x) for x in dense.mean(axis=0)] if dense.shape[1] else []
        stds = dense.std(axis=0) if dense.shape[1] else np.zeros(0)
        self.stds = [float(s) if np.isfinite(s) and s > 1e-12 else 1.0 for s in stds]
        return self

    # --- transforming ----------------------------------------------------------------------

    def transform(self, df: pd.DataFrame, *, file: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(numeric float32 (n, d), categorical int64 (n, c))`` for the neural net."""
        features = self.encode(df, file=file, raw=False)
        return features.numeric, features.categorical

    def transform_raw(self, df: pd.DataFrame, *, file: str | Path | None = None) -> np.ndarray:
        """The float64 matrix LightGBM reads (see :class:`TabularFeatures`)."""
        return self.encode(df, file=file).raw

    def encode(self, df: pd.DataFrame, *, file: str | Path | None = None, raw: bool = True) -> TabularFeatures:
        """All views at once, so text columns are embedded only once per call."""
        self._check_fitted()
        self._check_columns(df, file)
        numbers = self._numbers(df, file)
        texts = self._text_components(df)
        dense = self._dense(df, numbers, standardise=True, texts=texts)
        codes = self._codes(df)
        raw_matrix = np.zeros((len(df), 0))
        if raw:
            cat_raw = codes.astype(np.float64)
            # LightGBM treats NaN (like any negative code) as missing; unknown goes the same way
            cat_raw[codes == 0] = np.nan
            raw_matrix = np.concatenate([numbers, cat_raw, texts.astype(np.float64)], axis=1)
        return TabularFeatures(numeric=dense.astype(np.float32), categorical=codes, raw=raw_matrix)

    # --- state -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state; the text PCA lives in :meth:`tensors`."""
        return {
            "version": PREPROCESSOR_VERSION,
            "numeric_columns": list(self.numeric_columns),
            "categorical_columns": list(self.categorical_columns),
            "text_columns": list(self.text_columns),
            "min_count": self.min_count,
            "text_backbone": self.text_backbone,
            "text_dims": self.text_dims,
            "medians": dict(self.medians),
            "indicator_columns": list(self.indicator_columns),
            "means": list(self.means),
            "stds": list(self.stds),
            "vocabularies": {k: list(v) for k, v in self.vocabularies.items()},
            "backbone_fingerprint": self.backbone_fingerprint,
            "fitted": self.fitted,
        }

    def tensors(self, prefix: str = "preprocess.") -> dict[str, torch.Tensor]:
        """The text PCA as tensors, for the model's safetensors file."""
        import torch

        out: dict[str, torch.Tensor] = {}
        for i, col in enumerate(self.text_columns):
            mean, components = self.pca[col]
            # indexed by position: column names may hold characters unfit for tensor keys
            out[f"{prefix}pca.{i}.mean"] = torch.from_numpy(mean.copy())
            out[f"{prefix}pca.{i}.components"] = torch.from_numpy(components.copy())
        return out

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], tensors: Mapping[str, torch.Tensor] | None = None, prefix: str = "preprocess."
    ) -> TabularPreprocessor:
        """Rebuild a preprocessor from :meth:`to_dict` (and :meth:`tensors` when it has text columns)."""
        try:
            if data.get("version") != PREPROCESSOR_VERSION:
                raise ArtifactError(f"preprocessor version {data.get('version')!r} is not supported")
            pre = cls(
                data["numeric_columns"],
                data["categorical_columns"],
                data["text_columns"],
                min_count=int(data["min_count"]),
                text_backbone=str(data["text_backbone"]),
                text_dims=int(data["text_dims"]),
            )
            pre.medians = {str(k): float(v) for k, v in data["medians"].items()}
            pre.indicator_columns = tuple(str(c) for c in data["indicator_columns"])
            pre.means = [float(x) for x in data["means"]]
            pre.stds = [float(x) for x in data["stds"]]
            pre.vocabularies = {str(k): [str(x) for x in v] for k, v in data["vocabularies"].items()}
            pre.backbone_fingerprint = data.get("backbone_fingerprint")
            pre.fitted = bool(data["fitted"])
            for i, col in enumerate(pre.text_columns):
                if tensors is None:
                    raise ArtifactError("the text PCA tensors are missing")
                mean = tensors[f"{prefix}pca.{i}.mean"].numpy().astype(np.float32)
                components = tensors[f"{prefix}pca.{i}.components"].numpy().astype(np.float32)
                pre.pca[col] = (mean, components)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(
                f"saved preprocessor is malformed ({type(exc).__name__}: {exc})",
                hint="The model folder may be from another version or damaged; retrain it",
            ) from None
        pre._build_index()
        return pre

    def check_backbone(self, path: str | Path | None = None) -> None:
        """Refuse a text backbone whose weights differ from the ones the PCA was fitted on."""
        if not self.text_columns:
            return
        backbone = self._get_backbone()
        if self.backbone_fingerprint and backbone.fingerprint != self.backbone_fingerprint:
            raise ArtifactError(
                f"text backbone {self.text_backbone!r} has different weights from the ones this model was trained on",
                path=path,
                hint="Use the same version of the pre-trained model",
            )

    # --- internals -------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise ConfigError("the preprocessor is not fitted", hint="Call fit on the training rows first")

    def _check_columns(self, df: pd.DataFrame, file: str | Path | None) -> None:
        for col in self.columns:
            require_column(df, col, "feature", file)

    def _build_index(self) -> None:
        self._index = {c: {v: i + 1 for i, v in enumerate(vocab)} for c, vocab in self.vocabularies.items()}

    def _numbers(self, df: pd.DataFrame, file: str | Path | None) -> np.ndarray:
        """Numeric columns as float64 with NaN for missing; non-numbers are errors naming their row."""
        out = np.empty((len(df), len(self.numeric_columns)), dtype=np.float64)
        for j, col in enumerate(self.numeric_columns):
            series = df[col]
            missing = missing_mask(series).to_numpy(dtype=bool)
            if pd.api.types.is_bool_dtype(series.dtype):
                values = series.astype(float).to_numpy(dtype=np.float64)
            else:
                values = pd.to_numeric(series.where(~missing), errors="coerce").to_numpy(dtype=np.float64)
            bad = ~missing & ~np.isfinite(values)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DataError(
                    f"value {series.iloc[i]!r} is not a finite number",
                    file=file,
                    row=int(row_numbers(df)[i]),
                    column=col,
                    hint="Fix the value, or make the column categorical (categorical_columns=...)",
                )
            out[:, j] = values
        return out

    def _codes(self, df: pd.DataFrame) -> np.ndarray:
        out = np.zeros((len(df), len(self.categorical_columns)), dtype=np.int64)
        for j, col in enumerate(self.categorical_columns):
            series = df[col]
            missing = missing_mask(series).to_numpy(dtype=bool)
            index = self._index[col]
            out[:, j] = [
                0 if m else index.get(_category_key(v), 0) for v, m in zip(series.tolist(), missing, strict=True)
            ]
        return out

    def _dense(
        self,
        df: pd.DataFrame,
        numbers: np.ndarray,
        *,
        standardise: bool,
        texts: np.ndarray | None = None,
    ) -> np.ndarray:
        filled = numbers.copy()
        for j, col in enumerate(self.numeric_columns):
            nan = np.isnan(filled[:, j])
            filled[nan, j] = self.medians[col]
        positions = [self.numeric_columns.index(c) for c in self.indicator_columns]
        indicators = np.isnan(numbers[:, positions]).astype(np.float64)
        if texts is None:
            texts = self._text_components(df)
        dense = np.concatenate([filled, indicators, texts.astype(np.float64)], axis=1)
        if standardise and dense.shape[1]:
            dense = (dense - np.asarray(self.means)) / np.asarray(self.stds)
        return dense

    def _get_backbone(self) -> TextBackbone:
        if self._backbone is None:
            from tunesmith.backbones import create_backbone

            self._backbone = create_backbone(self.text_backbone)
        return self._backbone

    def _embed(self, series: pd.Series) -> np.ndarray:
        from tunesmith.estimator import embed_texts

        missing = missing_mask(series).to_numpy(dtype=bool)
        texts = ["" if m else str(v) for v, m in zip(series.tolist(), missing, strict=True)]
        # Text columns of tables repeat (a product's description on each of its orders): each
        # distinct text is embedded once.
        unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
        vectors = embed_texts(
            [str(t) for t in unique],
            self._get_backbone(),
            progress=self.progress and len(unique) >= 2048,
            description="embedding text columns",
        )
        return vectors[inverse.reshape(-1)]

    def _text_components(self, df: pd.DataFrame) -> np.ndarray:
        parts = [np.zeros((len(df), 0), dtype=np.float32)]
        for col in self.text_columns:
            mean, components = self.pca[col]
            parts.append(((self._embed(df[col]) - mean) @ components.T).astype(np.float32))
        return np.concatenate(parts, axis=1)
