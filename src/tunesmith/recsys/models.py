"""Classic recommenders on an implicit-feedback matrix: popularity, item-kNN, EASE and BPR-MF.

Every model is fitted on a ``users x items`` :class:`scipy.sparse.csr_matrix` whose values are
interaction weights (1 for binary feedback) and scores whole rows of histories, so a user unseen
in training is served from the raw history (fold-in) without retraining::

    model = EASE(l2=500.0).fit(train)            # train: users x items
    scores = model.score(history)                # (n, n_items) float32
    arrays, settings = model.state()             # safetensors + JSON, never pickle
    same = EASE.from_state(arrays, settings)

Scores are raw: items already in a history are *not* removed. Whether to exclude them (a music
service wants re-plays, a shop usually does not) is the caller's decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from tunesmith.errors import ArtifactError, ConfigError
from tunesmith.recsys.bpr import BPRMF
from tunesmith.recsys.scorer import (
    _BLOCK_FLOATS,
    ItemScorer,
    _expect_shape,
    _Model,
    _number,
    _positive_int,
    _train_matrix,
)

if TYPE_CHECKING:
    from typing import Self

SIMILARITIES = ("cosine", "jaccard")


class Popularity(_Model):
    """Everyone gets the same scores: how many users interacted with each item.

    With ``weighted=True`` an item's score is the sum of its interaction weights instead of
    the number of users, which matters only when the matrix holds counts or ratings.
    """

    _arrays = ("counts",)

    def __init__(self, weighted: bool = False) -> None:
        super().__init__()
        if not isinstance(weighted, bool):
            raise ConfigError(f"must be true or false, got {weighted!r}", key="weighted")
        self.weighted = weighted
        self.counts = np.zeros(0, dtype=np.float32)

    def params(self) -> dict[str, Any]:
        """The constructor settings, JSON-safe."""
        return {"weighted": self.weighted}

    def fit(self, train: sp.csr_matrix) -> Self:
        """Count each item's interactions in ``train`` (users x items)."""
        x = _train_matrix(train)
        if self.weighted:
            counts = np.asarray(x.sum(axis=0), dtype=np.float64).ravel()
        else:
            counts = np.bincount(x.indices, minlength=x.shape[1]).astype(np.float64)
        self.counts = counts.astype(np.float32)
        self.n_items = x.shape[1]
        self._fitted = True
        return self

    def score(self, history: sp.csr_matrix) -> np.ndarray:
        """The item counts, repeated for every row of ``history``."""
        h = self._history(history)
        return np.tile(self.counts, (h.shape[0], 1))

    def _check_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        _expect_shape(self, arrays, "counts", (self.n_items,))


class ItemKNN(_Model):
    """Item-based nearest neighbours: the score of item ``j`` sums its similarity to the history items.

    Similarity of items ``i`` and ``j`` from the columns of the training matrix, shrunk toward 0
    when few users support it (Koren's shrinkage):

    * ``"cosine"``: ``x_i . x_j / (|x_i| |x_j| + shrink)`` on the weights;
    * ``"jaccard"``: ``c_ij / (c_i + c_j - c_ij + shrink)`` on binarised interactions.

    Only the ``k`` most similar items are kept as neighbours of each item, and an item is never
    its own neighbour, so the similarity matrix ``S`` is sparse with a zero diagonal and
    ``score = history @ S``.
    """

    _arrays = ("indptr", "indices", "data")
    _index_arrays = ("indptr", "indices")

    def __init__(self, k: int = 100, shrink: float = 10.0, similarity: str = "cosine") -> None:
        super().__init__()
        self.k = _positive_int("k", k)
        self.shrink = _number("shrink", shrink, allow_zero=True)
        if similarity not in SIMILARITIES:
            raise ConfigError(f"must be one of {', '.join(SIMILARITIES)}, got {similarity!r}", key="similarity")
        self.similarity = similarity
        self.indptr = np.zeros(1, dtype=np.int64)
        self.indices = np.zeros(0, dtype=np.int32)
        self.data = np.zeros(0, dtype=np.float32)
        self._sim: sp.csr_matrix | None = None

    def params(self) -> dict[str, Any]:
        """The constructor settings, JSON-safe."""
        return {"k": self.k, "shrink": self.shrink, "similarity": self.similarity}

    @property
    def similarity_matrix(self) -> sp.csr_matrix:
        """Sparse ``(n_items, n_items)`` matrix ``S``: ``S[i, j]`` is how much history item ``i`` adds to ``j``."""
        self._require_fitted()
        if self._sim is None:
            self._sim = sp.csr_matrix((self.data, self.indices, self.indptr), shape=(self.n_items, self.n_items))
        return self._sim

    def fit(self, train: sp.csr_matrix) -> Self:
        """Compute the top-``k`` neighbour similarities from ``train`` (users x items)."""
        x = _train_matrix(train)
        n = x.shape[1]
        if self.similarity == "jaccard":
            x = x.copy()
            x.data[:] = 1.0
            norms = np.bincount(x.indices, minlength=n).astype(np.float64)
        else:
            norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0), dtype=np.float64).ravel())
        xt = x.T.tocsr().astype(np.float64)
        x64 = x.astype(np.float64)
        k = min(self.k, n - 1)
        rows: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
        cols: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
        vals: list[np.ndarray] = [np.zeros(0)]
        step = max(1, _BLOCK_FLOATS // n)
        for start in range(0, n if k > 0 else 0, step):
            block_items = np.arange(start, min(n, start + step))
            co = (xt[block_items] @ x64).toarray()
            if self.similarity == "jaccard":
                denom = norms[block_items, None] + norms[None, :] - co + self.shrink
            else:
                denom = norms[block_items, None] * norms[None, :] + self.shrink
            sim = np.divide(co, denom, out=np.zeros_like(co), where=denom > 0)
            sim[np.arange(len(block_items)), block_items] = 0.0
            # argpartition finds the k largest per row in linear time; ties go by position,
            # which is deterministic for a given matrix.
            top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
            top_vals = np.take_along_axis(sim, top, axis=1)
            keep = top_vals > 0
            rows.append(np.repeat(block_items, keep.sum(axis=1)))
            cols.append(top[keep])
            vals.append(top_vals[keep])
        # Row j of `neighbours` holds j's neighbours i; scoring needs them as column j, hence the transpose.
        neighbours = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n), dtype=np.float32
        )
        s = neighbours.T.tocsr()
        s.sort_indices()
        self.indptr, self.indices, self.data = s.indptr.astype(np.int64), s.indices.astype(np.int32), s.data
        self._sim = None
        self.n_items = n
        self._fitted = True
        return self

    def score(self, history: sp.csr_matrix) -> np.ndarray:
        """``history @ S`` as a dense float32 array ``(n, n_items)``."""
        h = self._history(history)
        return np.asarray((h @ self.similarity_matrix).toarray(), dtype=np.float32)

    def _check_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        _expect_shape(self, arrays, "indptr", (self.n_items + 1,))
        indptr, indices = arrays["indptr"], arrays["indices"]
        nnz = int(indptr[-1])
        if (
            indptr[0] != 0
            or (np.diff(indptr) < 0).any()
            or indices.shape != (nnz,)
            or arrays["data"].shape != (nnz,)
            or (nnz and (indices.min() < 0 or indices.max() >= self.n_items))
        ):
            raise ArtifactError("ItemKNN state arrays do not form a valid sparse similarity matrix")

    def _set_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        super()._set_arrays(arrays)
        self._sim = None


class EASE(_Model):
    """Embarrassingly Shallow Autoencoder (Steck, 2019): a dense item-item regression in closed form.

    ``B = I - P / diag(P)`` with ``P = (XᵀX + l2 I)⁻¹`` (column ``j`` divided by ``P_jj``), so
    ``diag(B) = 0``: an item cannot predict itself. ``score = history @ B``. Fitting inverts an
    ``n_items x n_items`` matrix: memory and time grow with the square and cube of the catalogue,
    fine up to some 20-30 thousand items. ``l2`` is the one setting worth tuning; larger catalogues
    and denser data want larger values.
    """

    _arrays = ("weights",)

    def __init__(self, l2: float = 500.0) -> None:
        super().__init__()
        self.l2 = _number("l2", l2)
        self.weights = np.zeros((0, 0), dtype=np.float32)

    def params(self) -> dict[str, Any]:
        """The constructor settings, JSON-safe."""
        return {"l2": self.l2}

    def fit(self, train: sp.csr_matrix) -> Self:
        """Solve for the item-item weight matrix ``B`` from ``train`` (users x items)."""
        x = _train_matrix(train).astype(np.float64)
        gram = (x.T @ x).toarray()
        diag = np.diag_indices_from(gram)
        gram[diag] += self.l2
        p = np.linalg.inv(gram)
        b = p / -np.diag(p)[None, :]
        b[diag] = 0.0
        self.weights = b.astype(np.float32)
        self.n_items = x.shape[1]
        self._fitted = True
        return self

    def score(self, history: sp.csr_matrix) -> np.ndarray:
        """``history @ B`` as a dense float32 array ``(n, n_items)``."""
        h = self._history(history)
        return np.asarray(h @ self.weights, dtype=np.float32)

    def _check_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        _expect_shape(self, arrays, "weights", (self.n_items, self.n_items))


MODELS: dict[str, type[_Model]] = {m.__name__: m for m in (Popularity, ItemKNN, EASE, BPRMF)}


def model_from_state(arrays: Mapping[str, np.ndarray], settings: Mapping[str, Any]) -> _Model:
    """Rebuild whichever model :meth:`state` saved, by the ``"model"`` name in ``settings``."""
    name = settings.get("model") if isinstance(settings, Mapping) else None
    if name not in MODELS:
        raise ArtifactError(f"unknown recommender model {name!r} in state", hint=f"Known: {', '.join(MODELS)}")
    return MODELS[name].from_state(arrays, settings)


__all__ = ["BPRMF", "EASE", "MODELS", "SIMILARITIES", "ItemKNN", "ItemScorer", "Popularity", "model_from_state"]
