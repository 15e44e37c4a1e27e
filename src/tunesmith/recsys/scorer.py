"""The common ground of the classic recommenders: the :class:`ItemScorer` protocol, setting
checks, history matrices and the state round-trip every model shares (see :mod:`tunesmith.recsys.models`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp

from tunesmith.errors import ArtifactError, ConfigError, DataError, NotFittedError

if TYPE_CHECKING:
    from typing import Self

_STATE_VERSION = 1
# Dense similarity blocks are built this many floats at a time (128 MB), so ItemKNN's memory
# stays flat however large the catalogue is.
_BLOCK_FLOATS = 1 << 25


@runtime_checkable
class ItemScorer(Protocol):
    """What every model here offers: fit on a users x items matrix, score rows of histories."""

    n_items: int

    def fit(self, train: sp.csr_matrix) -> Self:
        """Learn from a users x items matrix of implicit feedback (values are weights)."""
        ...

    def score(self, history: sp.csr_matrix) -> np.ndarray:
        """Scores ``(n, n_items)`` float32 for ``n`` rows of histories of any users."""
        ...

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays for safetensors and JSON-safe settings that rebuild the fitted model."""
        ...


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"must be a positive integer, got {value!r}", key=name)
    return int(value)


def _number(name: str, value: Any, *, allow_zero: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    if not ok or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        kind = "a non-negative" if allow_zero else "a positive"
        raise ConfigError(f"must be {kind} finite number, got {value!r}", key=name)
    return float(value)


def _as_matrix(x: Any, *, n_items: int | None, what: str) -> sp.csr_matrix:
    """A canonical float32 CSR copy of ``x``, checked for shape and weights."""
    if sp.issparse(x):
        m = sp.csr_matrix(x, dtype=np.float32, copy=True)
    elif isinstance(x, np.ndarray) and x.ndim == 2:
        m = sp.csr_matrix(x.astype(np.float32))
    else:
        raise DataError(
            f"{what} must be a 2-D scipy.sparse matrix (rows x items), got {type(x).__name__}",
            hint="Build it with scipy.sparse.csr_matrix((weights, (rows, item_codes)), shape=(n_rows, n_items))",
        )
    if n_items is not None and m.shape[1] != n_items:
        raise DataError(
            f"{what} has {m.shape[1]} item columns but the model was fitted on {n_items} items",
            hint="Encode items with the same item index that was used in training",
        )
    m.sum_duplicates()
    if m.nnz and (not np.isfinite(m.data).all() or (m.data < 0).any()):
        raise DataError(f"{what} holds negative or non-finite weights", hint="Implicit feedback weights must be >= 0")
    m.eliminate_zeros()
    return m


def _train_matrix(train: Any) -> sp.csr_matrix:
    m = _as_matrix(train, n_items=None, what="train")
    if m.shape[0] == 0 or m.shape[1] == 0 or m.nnz == 0:
        raise DataError(f"train has no interactions (shape {m.shape[0]} x {m.shape[1]}, {m.nnz} stored values)")
    return m


class _Model:
    """Shared plumbing: fitted checks, history validation and the state round-trip."""

    # Names of the fitted arrays that state() saves; from_state() requires exactly these.
    _arrays: ClassVar[tuple[str, ...]] = ()
    # Those of them that hold integer indices (every other one holds floats).
    _index_arrays: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.n_items = 0
        self._fitted = False

    def params(self) -> dict[str, Any]:
        """The constructor settings, JSON-safe."""
        raise NotImplementedError

    def _require_fitted(self) -> None:
        if not self._fitted:
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted", hint="Call fit() on a users x items matrix first"
            )

    def _history(self, history: Any) -> sp.csr_matrix:
        self._require_fitted()
        return _as_matrix(history, n_items=self.n_items, what="history")

    def _get_arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in self._arrays}

    def _set_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        for name in self._arrays:
            setattr(self, name, arrays[name])

    def _check_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Raise ArtifactError if loaded arrays do not fit ``self.n_items``; subclasses add checks."""

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays for safetensors and JSON-safe settings; ``from_state`` rebuilds an identical model."""
        self._require_fitted()
        arrays = {name: np.ascontiguousarray(a) for name, a in self._get_arrays().items()}
        settings = {
            "model": type(self).__name__,
            "version": _STATE_VERSION,
            "n_items": self.n_items,
            "params": self.params(),
        }
        return arrays, settings

    @classmethod
    def from_state(cls, arrays: Mapping[str, np.ndarray], settings: Mapping[str, Any]) -> Self:
        """Rebuild a model saved by :meth:`state`; raises ArtifactError on a mismatched or damaged state."""
        name = settings.get("model") if isinstance(settings, Mapping) else None
        if name != cls.__name__ or settings.get("version") != _STATE_VERSION:
            raise ArtifactError(
                f"state is not a {cls.__name__}.state() of version {_STATE_VERSION} (model={name!r})",
                hint="Load it with the class named in its settings",
            )
        missing = [a for a in cls._arrays if a not in arrays]
        if missing:
            raise ArtifactError(f"{cls.__name__} state lacks arrays {missing}")
        params = settings.get("params")
        n_items = settings.get("n_items")
        if not isinstance(params, Mapping) or not isinstance(n_items, int) or n_items < 1:
            raise ArtifactError(f"{cls.__name__} state settings are malformed: need 'params' and 'n_items'")
        try:
            model = cls(**params)
        except TypeError as exc:
            raise ArtifactError(f"{cls.__name__} state settings hold unknown params: {exc}") from None
        except ConfigError as exc:
            # Settings read from a saved state: a bad one means the state is damaged, not the call.
            raise ArtifactError(f"{cls.__name__} state setting {exc.key!r}: {exc.message}") from None
        model.n_items = n_items
        loaded = {a: np.asarray(arrays[a]) for a in cls._arrays}
        for a, v in loaded.items():
            if v.dtype.kind not in "fiu" or not (v.dtype.kind == "f" or a in cls._index_arrays):
                raise ArtifactError(f"{cls.__name__} state array {a!r} has dtype {v.dtype}, which does not fit it")
        # Scores are float32 whatever precision the arrays were stored in.
        loaded = {a: v.astype(np.float32) if v.dtype.kind == "f" else v for a, v in loaded.items()}
        model._check_arrays(loaded)
        model._set_arrays(loaded)
        model._fitted = True
        return model

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        fitted = f", {self.n_items} items" if self._fitted else ", not fitted"
        return f"{type(self).__name__}({args}{fitted})"


def _expect_shape(model: _Model, arrays: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...]) -> None:
    if arrays[name].shape != shape:
        raise ArtifactError(
            f"{type(model).__name__} state array {name!r} has shape {arrays[name].shape}, expected {shape}"
        )


__all__ = ["ItemScorer"]
