"""The data-quality steps of a fit, in the order :class:`~tunesmith.FineTuner` runs them.

Before splitting (on all rows, so copies cannot straddle train and test):
    conflicting labels (``conflicts``), exact duplicates (``duplicates``).
On the training split only (validation and test are measured as they are):
    missing values (``missing``; imputed values are learned here and also applied to
    validation, test and prediction inputs), label errors (``label_errors``), class
    balance (``balance``), text augmentation (``augment``).
Fitted on the training split, applied everywhere:
    numeric scaling (``numeric_scaling``).

Every step that drops, adds or changes rows is one :class:`~tunesmith.data.clean.CleanAction`
in the fit's :class:`~tunesmith.data.clean.CleanReport` (``FineTuner.cleaning_``), which
goes into the run record.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tunesmith.data.augment import NeighbourTable, TextAugmenter, words_in
from tunesmith.data.balance import resample
from tunesmith.data.clean import CleanAction, apply_label_issues, drop_duplicates, handle_missing
from tunesmith.data.clean import resolve_conflicts as _resolve_conflicts
from tunesmith.data.label_issues import find_label_issues
from tunesmith.data.normalize import NumericScaler
from tunesmith.data.schema import ROW_COLUMN, Schema, missing_mask
from tunesmith.data.validate import texts_of
from tunesmith.errors import TunesmithError

if TYPE_CHECKING:
    from tunesmith.config import FitConfig

# Scaled numbers reach a text encoder as text: three decimals say enough and keep inputs short.
SCALED_DECIMALS = 3


@dataclass
class Preprocessing:
    """What the training split taught about the inputs, applied to every later input.

    ``impute`` maps a column to its fill value; ``scaler`` is a fitted
    :class:`~tunesmith.data.normalize.NumericScaler` as a dict. Saved in ``tunesmith.json``.
    """

    impute: dict[str, Any] = field(default_factory=dict)
    scaler: dict[str, Any] | None = None

    def __bool__(self) -> bool:
        return bool(self.impute) or self.scaler is not None

    def apply(self, df: pd.DataFrame) -> pd.DataFrame:
        """A copy of ``df`` with missing values filled and numeric columns scaled."""
        if not self:
            return df
        out = df.copy()
        for col, value in self.impute.items():
            if col in out.columns:
                filled = out[col].astype(object)
                filled[missing_mask(out[col]).to_numpy(dtype=bool)] = value
                out[col] = filled
        if self.scaler is not None:
            scaler = NumericScaler.from_dict(self.scaler)
            cols = [c for c in scaler.fitted_columns if c in out.columns]
            if cols:
                numeric = out[cols].apply(pd.to_numeric, errors="coerce")
                scaled = scaler.transform(numeric) if len(cols) == len(scaler.fitted_columns) else None
                if scaled is None:
                    # Prediction inputs may lack a training column; scale those present.
                    full = numeric.reindex(columns=scaler.fitted_columns)
                    scaled = scaler.transform(full)[cols]
                for c in cols:
                    out[c] = scaled[c].round(SCALED_DECIMALS)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {"impute": self.impute, "scaler": self.scaler}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Preprocessing:
        """Inverse of :meth:`to_dict` (``None`` gives an empty one)."""
        data = data or {}
        return cls(impute=dict(data.get("impute") or {}), scaler=data.get("scaler"))


def clean_before_split(df: pd.DataFrame, schema: Schema, cfg: FitConfig) -> tuple[pd.DataFrame, list[CleanAction]]:
    """Conflicts, then duplicates, on all rows."""
    actions: list[CleanAction] = []
    if cfg.conflicts != "keep":
        df, action = _resolve_conflicts(df, schema, cfg.conflicts)
        actions.append(action)
    if cfg.duplicates == "drop":
        df, action = drop_duplicates(df, schema)
        actions.append(action)
    return df, actions


def clean_train(
    train: pd.DataFrame,
    schema: Schema,
    cfg: FitConfig,
    *,
    backbone: Any = None,
    fold_model: Callable[..., Any] | None = None,
) -> tuple[pd.DataFrame, list[CleanAction], Preprocessing]:
    """Missing values, label errors, balance, augmentation and scaling on the training split.

    ``backbone`` (a built :class:`~tunesmith.backbones.text.TextBackbone`) is reused for
    the fast label-error search and the augmentation's neighbour table. ``fold_model`` is the
    classifier class the thorough label-error search fine-tunes per fold (the fitting
    estimator passes its own class; this layer imports none).
    """
    actions: list[CleanAction] = []
    prep = Preprocessing()
    if cfg.missing != "keep":
        train, action, fills = handle_missing(train, schema, cfg.missing)
        actions.append(action)
        prep.impute = {k: _plain(v) for k, v in fills.items()}
    if cfg.label_errors != "keep" and schema.is_classification:
        texts = texts_of(train, schema)
        embeddings = None
        if cfg.label_error_mode == "fast" and backbone is not None:
            # Imported here so that reading data does not load torch.
            from tunesmith.backbones.embed import embed_texts

            embeddings = embed_texts(
                texts,
                backbone,
                max_length=cfg.max_length,
                progress=cfg.progress,
                description="embedding for label errors",
            )
        try:
            issues = find_label_issues(
                texts,
                train[schema.target].tolist(),
                mode=cfg.label_error_mode,
                folds=cfg.label_error_folds,
                seed=cfg.seed,
                backbone=cfg.backbone,
                rows=train[ROW_COLUMN].to_numpy(),
                classes=schema.labels,
                groups=train[cfg.group_column].tolist() if cfg.group_column else None,
                embeddings=embeddings,
                fit_params=_fold_params(cfg),
                max_length=cfg.max_length,
                progress=cfg.progress,
                fold_model=fold_model,
            )
        except TunesmithError as exc:
            # Too few rows of a class (or groups) for the folds: the fit goes on without this
            # step, and the record says why, rather than failing an hour into a run.
            warnings.warn(f"label errors not searched: {exc}", stacklevel=3)
            actions.append(CleanAction("skip_label_errors", 0, [], f"label errors not searched: {exc}"))
        else:
            train, action = apply_label_issues(
                train, schema, issues, cfg.label_errors, fraction=cfg.label_error_fraction
            )
            action.details["seconds"] = round(issues.seconds, 2)
            action.details["out_of_fold_accuracy"] = issues.oof_accuracy
            actions.append(action)
    if cfg.balance in ("oversample", "undersample") and schema.is_classification:
        train, action = resample(train, schema.target, cfg.balance, seed=cfg.seed)
        actions.append(action)
    if cfg.augment:
        train, action = augment_frame(train, schema, cfg, backbone=backbone)
        actions.append(action)
    if cfg.numeric_scaling != "none" and schema.numeric_columns:
        cols = [c for c in schema.numeric_columns if c in train.columns]
        numeric = train[cols].apply(pd.to_numeric, errors="coerce")
        prep.scaler = NumericScaler(cfg.numeric_scaling, columns=cols).fit(numeric).to_dict()
        train = Preprocessing(scaler=prep.scaler).apply(train)
    return train, actions, prep


def augment_frame(
    train: pd.DataFrame, schema: Schema, cfg: FitConfig, *, backbone: Any = None
) -> tuple[pd.DataFrame, CleanAction]:
    """Add ``augment_copies`` augmented copies of every training row (text columns edited)."""
    ops = tuple(cfg.augment)
    neighbours = None
    if "replace" in ops or "insert" in ops:
        if backbone is None:
            from tunesmith.backbones import create_backbone

            backbone = create_backbone(cfg.backbone)
        vocabulary = words_in(t for c in schema.text_columns for t in train[c].astype(str))
        neighbours = NeighbourTable.from_backbone(backbone, vocabulary=vocabulary)
    augmenter = TextAugmenter(ops, p=cfg.augment_p, neighbours=neighbours)
    copies = []
    unchanged = 0
    for i, col in enumerate(schema.text_columns):
        texts = train[col].astype(str).tolist()
        # A distinct seed per text column, so two columns holding the same text differ.
        out, _ = augmenter.augment_many(texts, [0] * len(texts), copies=cfg.augment_copies, seed=cfg.seed + 7919 * i)
        copies.append(out[len(texts) :])
        unchanged += augmenter.last_stats.get("unchanged", 0)
    blocks = [train]
    n = len(train)
    for c in range(cfg.augment_copies):
        block = train.copy()
        for col, out in zip(schema.text_columns, copies, strict=True):
            block[col] = out[c * n : (c + 1) * n]
        blocks.append(block)
    result = pd.concat(blocks, axis=0)
    added = len(result) - n
    if added and unchanged > added / 2:
        words = len(neighbours) if neighbours is not None else None
        warnings.warn(
            f"{unchanged} of {added} augmented copies equal their original text"
            + (f" (the neighbour table holds {words} words)" if words is not None else "")
            + "; raise augment_p or add 'delete'/'swap' to augment",
            stacklevel=3,
        )
    return result, CleanAction(
        "augment",
        added,
        [],
        f"added {added} augmented copies of training rows ({', '.join(ops)}, p={cfg.augment_p})",
        {**augmenter.describe(), "copies": cfg.augment_copies, "unchanged_copies": unchanged},
    )


def _fold_params(cfg: FitConfig) -> dict[str, Any]:
    """Fine-tuning settings for the thorough mode's folds: the fit's own, minus what would recurse."""
    keep = ("lr", "batch_size", "max_length", "strategy", "lora_r", "lora_alpha", "weight_decay", "pooling", "seed")
    params = {k: getattr(cfg, k) for k in keep}
    params.update({"num_threads": cfg.num_threads, "progress": cfg.progress, "deterministic": cfg.deterministic})
    return params


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
