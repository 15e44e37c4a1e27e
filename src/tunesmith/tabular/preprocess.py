"""Turn table rows into model inputs, with every statistic learned from the training rows only.

:class:`TabularPreprocessor` is fitted once, on the training part, and then applied unchanged
to validation, test and prediction rows, so nothing about held-out rows (their medians, their
categories, their texts) leaks into the features. Its state is plain JSON plus, for text
columns, a few tensors (PCA mean and components) stored in the model's safetensors file.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tunesmith.backbones import create_backbone
from tunesmith.backbones.embed import embed_texts
from tunesmith.data.schema import label_string, missing_mask, require_column
from tunesmith.data.validate import row_numbers
from tunesmith.errors import ArtifactError, ConfigError, DataError
from tunesmith.runs.trust import field

if TYPE_CHECKING:
    import torch

    from tunesmith.backbones.text import TextBackbone

__all__ = ["TabularFeatures", "TabularPreprocessor"]

PREPROCESSOR_VERSION = 1
MAX_TEXT_DIMS = 4096
"""Most PCA components per text column a saved preprocessor may keep."""
_ROLES = ("numeric_columns", "categorical_columns", "text_columns")


def _names(value: Any, where: str, file: str | os.PathLike[str]) -> list[str]:
    """``value`` as a list of distinct strings (column names, categories), or an ArtifactError naming it."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ArtifactError(f"field {where!r} must be a list of strings", path=file)
    if len(set(value)) != len(value):
        raise ArtifactError(f"field {where!r} repeats a name", path=file)
    return value


def _finite(value: Any, where: str, file: str | os.PathLike[str]) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ArtifactError(f"field {where!r} must hold finite numbers, got {value!r:.40}", path=file)
    return float(value)


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
      :func:`tunesmith.backbones.embed.embed_texts`), reduced by a PCA fitted on train to
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
        cls,
        data: Mapping[str, Any],
        tensors: Mapping[str, torch.Tensor] | None = None,
        prefix: str = "preprocess.",
        *,
        file: str | os.PathLike[str] | None = None,
        name: str = "preprocessor",
    ) -> TabularPreprocessor:
        """Rebuild a preprocessor from :meth:`to_dict` (and :meth:`tensors` when it has text columns).

        Every field is checked (types, lengths, distinct names, finite statistics), so a saved
        state read from a loaded folder either rebuilds a working preprocessor or raises an
        :class:`~tunesmith.errors.ArtifactError` naming ``file`` and the field (``name`` is the
        field the state sits under in that file).
        """
        pre = cls._from_json(data, file=file, name=name)
        if pre.text_columns:
            if tensors is None:
                raise ArtifactError(f"field {name!r} has text columns but the text PCA tensors are missing", path=file)
            pre.attach_pca(tensors, prefix, file=file)
        pre.check_widths(file=file, name=name)
        return pre

    @classmethod
    def _from_json(cls, data: Any, *, file: str | os.PathLike[str] | None, name: str) -> TabularPreprocessor:
        """The preprocessor of the JSON state alone (text PCA not attached, widths not checked)."""
        where: str | os.PathLike[str] = file if file is not None else "saved preprocessor"
        root = {name: data}

        def get(key: str, types: type | tuple[type, ...], **kw: Any) -> Any:
            return field(root, f"{name}.{key}", types, file=where, **kw)

        if not isinstance(data, Mapping):
            get("version", int)  # names the field as not an object
        version = get("version", int, default=None)
        if version != PREPROCESSOR_VERSION:
            raise ArtifactError(
                f"field '{name}.version': preprocessor version {version!r} is not supported "
                f"(expected {PREPROCESSOR_VERSION})",
                path=where,
                hint="Re-save the model with this tunesmith version",
            )
        roles = {key: _names(get(key, list), f"{name}.{key}", where) for key in _ROLES}
        seen: set[str] = set()
        for key, names in roles.items():
            twice = seen.intersection(names)
            if twice:
                raise ArtifactError(f"field '{name}.{key}' repeats column {sorted(twice)[0]!r}", path=where)
            seen.update(names)
        pre = cls(
            roles["numeric_columns"],
            roles["categorical_columns"],
            roles["text_columns"],
            min_count=get("min_count", int, low=1),
            text_backbone=get("text_backbone", str),
            text_dims=get("text_dims", int, low=1, high=MAX_TEXT_DIMS),
        )
        medians = get("medians", dict)
        if set(medians) != set(pre.numeric_columns):
            raise ArtifactError(f"field '{name}.medians' must hold one median per numeric column", path=where)
        pre.medians = {c: _finite(medians[c], f"{name}.medians", where) for c in pre.numeric_columns}
        indicators = _names(get("indicator_columns", list), f"{name}.indicator_columns", where)
        if not set(indicators) <= set(pre.numeric_columns):
            raise ArtifactError(f"field '{name}.indicator_columns' names a column that is not numeric", path=where)
        pre.indicator_columns = tuple(indicators)
        pre.means = [_finite(x, f"{name}.means", where) for x in get("means", list)]
        pre.stds = [_finite(x, f"{name}.stds", where) for x in get("stds", list)]
        if any(x <= 0 for x in pre.stds):
            raise ArtifactError(f"field '{name}.stds' must hold numbers above 0", path=where)
        vocabularies = get("vocabularies", dict)
        if set(vocabularies) != set(pre.categorical_columns):
            raise ArtifactError(
                f"field '{name}.vocabularies' must hold one vocabulary per categorical column", path=where
            )
        pre.vocabularies = {
            c: _names(vocabularies[c], f"{name}.vocabularies.{c}", where) for c in pre.categorical_columns
        }
        pre.backbone_fingerprint = get("backbone_fingerprint", (str, type(None)), default=None)
        pre.fitted = get("fitted", bool)
        pre._build_index()
        return pre

    def pca_shapes(
        self, header: Mapping[str, Any], prefix: str = "preprocess.", *, file: str | os.PathLike[str] | None = None
    ) -> dict[str, tuple[int, ...]]:
        """The shapes the text PCA tensors must have, checked against a safetensors ``header``.

        Per text column ``i``: ``{prefix}pca.{i}.mean`` is ``(hidden,)`` and
        ``{prefix}pca.{i}.components`` is ``(k, hidden)`` with ``1 <= k <= text_dims``, one
        ``hidden`` for all columns; the components together must fill the standardised width
        that ``means`` describes. Read before any tensor, so nothing is allocated for a folder
        whose shapes do not fit.
        """
        out: dict[str, tuple[int, ...]] = {}
        hidden: int | None = None
        total = 0
        for i, col in enumerate(self.text_columns):
            mean_key, comp_key = f"{prefix}pca.{i}.mean", f"{prefix}pca.{i}.components"
            mean, comp = header.get(mean_key), header.get(comp_key)
            if mean is None or comp is None:
                raise ArtifactError(f"weights lack the text PCA of column {col!r} ({mean_key})", path=file)
            m, c = tuple(mean.shape), tuple(comp.shape)
            if len(m) != 1 or len(c) != 2 or c[1] != m[0] or not 1 <= c[0] <= self.text_dims or m[0] < 1:
                raise ArtifactError(
                    f"the text PCA of column {col!r} has shapes {list(m)} and {list(c)}; expected [hidden] and "
                    f"[k, hidden] with k at most {self.text_dims}",
                    path=file,
                )
            if hidden is not None and m[0] != hidden:
                raise ArtifactError("the text PCA tensors disagree on the text vector width", path=file)
            hidden = m[0]
            total += c[0]
            out[mean_key], out[comp_key] = m, c
        expected = len(self.means) - len(self.numeric_columns) - len(self.indicator_columns)
        if self.text_columns and total != expected:
            raise ArtifactError(
                f"the text PCA keeps {total} components but the saved statistics describe {expected}", path=file
            )
        return out

    def attach_pca(
        self,
        tensors: Mapping[str, torch.Tensor],
        prefix: str = "preprocess.",
        *,
        file: str | os.PathLike[str] | None = None,
    ) -> None:
        """Take the text PCA of each text column from ``tensors`` (as :meth:`tensors` wrote them)."""
        for i, col in enumerate(self.text_columns):
            try:
                mean = tensors[f"{prefix}pca.{i}.mean"].float().numpy().astype(np.float32)
                components = tensors[f"{prefix}pca.{i}.components"].float().numpy().astype(np.float32)
            except KeyError:
                raise ArtifactError(f"weights lack the text PCA of column {col!r}", path=file) from None
            if mean.ndim != 1 or components.ndim != 2 or components.shape[1] != mean.shape[0]:
                raise ArtifactError(f"the text PCA of column {col!r} has mismatched shapes", path=file)
            if not (np.isfinite(mean).all() and np.isfinite(components).all()):
                raise ArtifactError(f"the text PCA of column {col!r} holds non-finite values", path=file)
            self.pca[col] = (mean, components)

    def check_widths(self, *, file: str | os.PathLike[str] | None = None, name: str = "preprocessor") -> None:
        """Refuse saved statistics whose lengths do not match the features they standardise."""
        width = len(self.numeric_columns) + len(self.indicator_columns)
        width += sum(self.pca[c][1].shape[0] for c in self.text_columns if c in self.pca)
        if not self.fitted:
            raise ArtifactError(f"field '{name}.fitted' is false: the preprocessor was never fitted", path=file)
        if len(self.means) != width or len(self.stds) != width:
            raise ArtifactError(
                f"fields '{name}.means' and '{name}.stds' must hold {width} values each "
                f"(got {len(self.means)} and {len(self.stds)})",
                path=file,
            )

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
        widths = {self.pca[c][0].shape[0] for c in self.text_columns if c in self.pca}
        if widths and widths != {backbone.hidden_size}:
            raise ArtifactError(
                f"text backbone {self.text_backbone!r} gives {backbone.hidden_size}-wide vectors but the text PCA "
                f"was fitted on {widths.pop()}-wide ones",
                path=path,
                hint="Use the text backbone the model was trained with",
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
            self._backbone = create_backbone(self.text_backbone)
        return self._backbone

    def _embed(self, series: pd.Series) -> np.ndarray:
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
