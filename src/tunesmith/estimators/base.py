"""The one estimator contract every kind of model follows (text, image, tabular, recommender,
personalised).

It is scikit-learn's contract, made strict:

* settings are keyword arguments of the constructor, validated there by one pydantic model
  (``settings_model``); the constructor stores them and does nothing else;
* ``fit(data, y=None, *, target=None, eval_set=None, test_set=None, callbacks=None)`` learns and
  returns ``self``; ``data`` is a path, a DataFrame, or arrays where the kind takes them, and
  ``target`` names the column to learn (``y`` is for arrays, as scikit-learn passes it);
* learned state ends in ``_``; ``predict``, ``predict_proba`` (classifiers), ``score``,
  ``embed`` (kinds with a learned representation), ``save(folder)``;
  ``get_params``/``set_params`` and :func:`sklearn.base.clone` work;
* :func:`tunesmith.load` gives back the right kind from a saved folder.

Where a kind cannot honour a part of the contract it raises :class:`NotSupportedError`,
saying so and what to use instead. Code that works over models (search, cross-validation,
monitoring, refitting, explanations, federated clients) is written once against this class.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np

from tunesmith.config import SettingsEstimator
from tunesmith.errors import ConfigError, NotFittedError, TunesmithError


class NotSupportedError(TunesmithError, NotImplementedError):
    """A part of the estimator contract this kind of model cannot honour; the message says what to use."""


class FitArguments(NamedTuple):
    """What a call to ``fit`` asked for, once deprecated spellings are mapped to the contract's."""

    data: Any
    y: Any
    target: str | None
    eval_set: Any
    test_set: Any
    callbacks: list[Any]
    resume: Path | None = None


def unsupported(estimator: Any, what: str, instead: str) -> NotSupportedError:
    """The error for a contract method a kind cannot offer: ``what`` it is and what to use ``instead``."""
    kind = getattr(estimator, "kind", None) or type(estimator).__name__
    return NotSupportedError(f"{what} is not offered for {kind} models", hint=instead)


def row_limit(max_rows: int | None) -> int | None:
    """``max_rows`` of :meth:`Estimator.embed`, checked: ``None`` (every row) or a positive whole number."""
    if max_rows is None:
        return None
    if isinstance(max_rows, bool) or not isinstance(max_rows, (int, np.integer)) or max_rows < 1:
        raise ConfigError(
            f"max_rows must be a positive whole number, got {max_rows!r}",
            key="max_rows",
            hint="Pass max_rows=None to embed every row",
        )
    return int(max_rows)


def fit_arguments(
    estimator: Any,
    data: Any,
    y: Any = None,
    *,
    target: str | None = None,
    eval_set: Any = None,
    test_set: Any = None,
    callbacks: Sequence[Any] | None = None,
    deprecated: dict[str, Any] | None = None,
    resume: Any = None,
) -> FitArguments:
    """Normalise ``fit``'s arguments: map the old keywords (``valid``, ``test``) with a warning.

    ``deprecated`` holds the extra keywords a kind's ``fit`` still accepts for one release;
    any other keyword is refused with a sentence naming the contract's spelling.
    """
    renames = {"valid": "eval_set", "validation": "eval_set", "test": "test_set"}
    given = {"eval_set": eval_set, "test_set": test_set}
    for old, value in (deprecated or {}).items():
        new = renames.get(old)
        if new is None:
            raise ConfigError(
                f"{type(estimator).__name__}.fit() got an unexpected keyword {old!r}",
                key=old,
                hint="fit takes data, y, target=, eval_set=, test_set= and callbacks=",
            )
        if value is None:
            continue
        if given[new] is not None:
            raise ConfigError(
                f"both {old}= and {new}= were given; they mean the same split", key=old, hint=f"Use {new}="
            )
        warnings.warn(
            f"{type(estimator).__name__}.fit({old}=...) is deprecated and will be removed in the next release; "
            f"use {new}=...",
            DeprecationWarning,
            stacklevel=3,
        )
        given[new] = value
    if data is None:
        raise ConfigError("fit needs data: a file path, a DataFrame or arrays", key="data")
    if resume is not None and not isinstance(resume, (str, os.PathLike)):
        raise ConfigError(
            f"resume must be a run folder path, got {type(resume).__name__}",
            key="resume",
            hint="Pass the run folder `tunesmith fit` printed (runs/<time>-<name>)",
        )
    return FitArguments(
        data,
        y,
        target,
        given["eval_set"],
        given["test_set"],
        list(callbacks or []),
        Path(resume) if resume is not None else None,
    )


class Estimator(SettingsEstimator):
    """Base class of every tunesmith estimator (see the module docstring for the contract).

    Subclasses set ``kind`` (the name in :mod:`tunesmith.estimators.registry`) and
    ``settings_model`` (a pydantic model with ``extra="forbid"``), and implement ``fit``,
    ``predict``, ``save`` and the class method ``load``. ``fitted_attribute`` names the learned
    attribute whose presence means the estimator is fitted.
    """

    kind: ClassVar[str] = ""
    needs_target: ClassVar[bool] = True
    fitted_attribute: ClassVar[str] = "model_"

    def fit(
        self,
        data: Any,
        y: Any = None,
        *,
        target: str | None = None,
        eval_set: Any = None,
        test_set: Any = None,
        callbacks: Sequence[Any] | None = None,
    ) -> Any:  # pragma: no cover - every kind overrides it
        raise unsupported(self, "fit", "Use one of the registered kinds")

    def predict(self, data: Any) -> np.ndarray:  # pragma: no cover - every kind overrides it
        raise unsupported(self, "predict", "Use one of the registered kinds")

    def predict_proba(self, data: Any) -> np.ndarray:
        """Class probabilities; kinds that do not classify raise :class:`NotSupportedError`."""
        raise unsupported(self, "predict_proba", "Use predict()")

    def score(self, data: Any, y: Any = None, *, target: str | None = None) -> float:  # pragma: no cover
        raise unsupported(self, "score", "Use evaluate()")

    def embed(self, data: Any, *, max_rows: int | None = None) -> np.ndarray:
        """The model's representation of each input row, ``(n, d)`` float32, rows in input order.

        What the model's head sees (the fine-tuned encoder's pooled vector for text and
        images). Drift monitoring compares these between reference and current data.
        ``max_rows`` embeds only the first ``max_rows`` rows (``None``: every row), to bound
        the cost on large data. Kinds without such a representation raise
        :class:`NotSupportedError` saying what to monitor instead.
        """
        raise unsupported(self, "embed", "Drift monitoring uses the input columns of this kind")

    def refit(self, data: Any, y: Any = None, *, replay: Any = None, target: str | None = None, **settings: Any) -> Any:
        """Continue this fitted model on new labeled ``data``; return the refitted copy (the challenger).

        ``self`` is left as it was (the champion the gate compares with). ``replay`` is old
        labeled data (a file or DataFrame) sampled beside the new rows; ``settings`` are the
        fields of :class:`tunesmith.train.continual.RefitSettings` (``method``,
        ``replay_ratio``, ``penalty_weight``, ``alphas``, ``epochs``, ``lr``, ``valid_size``,
        ``seed``). The copy's ``refit_info_`` says what was done, on which rows, at what cost.
        New data whose columns or labels do not match the model is refused with a
        :class:`~tunesmith.errors.DataError` that says what to do. See docs/refit.md.
        """
        raise unsupported(self, "refit", "Fit a new model on the old and new data together")

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:  # pragma: no cover
        raise unsupported(self, "save", "This kind keeps no model folder")

    @property
    def is_fitted(self) -> bool:
        """Whether ``fit`` (or a load) has given this estimator its learned state."""
        return getattr(self, self.fitted_attribute, None) is not None

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet",
                hint="Call fit() first, or tunesmith.load() a saved model",
            )

    def __sklearn_tags__(self) -> Any:  # pragma: no cover - only used by scikit-learn utilities
        from sklearn.utils import Tags, TargetTags

        return Tags(estimator_type=None, target_tags=TargetTags(required=self.needs_target))
