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

import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol, runtime_checkable

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from tunesmith.errors import ArtifactError, ConfigError, DataError, NotFittedError

if TYPE_CHECKING:
    from typing import Self

_STATE_VERSION = 1
SIMILARITIES = ("cosine", "jaccard")
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


class _FoldInItems(NamedTuple):
    """Item parameters in float64 and their catalogue totals, shared by every row of a fold-in."""

    v: np.ndarray
    b: np.ndarray
    sum_v: np.ndarray
    sum_vv: np.ndarray
    sum_bv: np.ndarray
    sum_b: float
    ridge: np.ndarray

    @classmethod
    def of(cls, factors: np.ndarray, bias: np.ndarray, reg: float) -> _FoldInItems:
        # Totals make each row's moments over its negatives O(|h| f^2) instead of O(n_items f^2).
        v, b = factors.astype(np.float64), bias.astype(np.float64)
        return cls(v, b, v.sum(axis=0), v.T @ v, b @ v, float(b.sum()), reg * np.eye(v.shape[1]))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class BPRMF(_Model):
    """Matrix factorisation trained with Bayesian Personalised Ranking (Rendle et al., 2009), plus item biases.

    The score of item ``j`` for user ``u`` is ``U_u . V_j + b_j``. Training runs mini-batch SGD
    in numpy over ``(user, positive, negative)`` triples: every stored interaction once per
    epoch, each with ``negatives`` items drawn uniformly among those the user has not touched,
    maximising ``w * log sigmoid(s_ui - s_uj)`` with L2 penalty ``reg`` (``w`` is the interaction
    weight, 1 for binary data; it scales the step, so keep weights near 1, e.g. ``log1p(count)``).
    Updates are summed over a batch as if applied one triple at a time, so ``lr`` means what it
    means in per-sample BPR.

    :meth:`score` serves any history by *fold-in* (:meth:`fold_in`): with the item factors and
    biases fixed, the user vector is solved deterministically from the same BPR objective, all
    items outside the history serving as negatives. :meth:`score_users` uses the learned vectors
    of training users; for them the two agree closely (fold-in is often slightly better, being
    the exact optimum rather than an SGD iterate).
    """

    _arrays = ("user_factors", "item_factors", "item_bias")

    def __init__(
        self,
        factors: int = 64,
        lr: float = 0.02,
        reg: float = 0.03,
        epochs: int = 50,
        batch_size: int = 1024,
        seed: int = 0,
        negatives: int = 1,
        patience: int = 5,
        fold_in_steps: int = 3,
        init_std: float = 0.1,
    ) -> None:
        super().__init__()
        self.factors = _positive_int("factors", factors)
        self.lr = _number("lr", lr)
        # Strictly positive: the penalty also keeps fold-in well posed for short histories.
        self.reg = _number("reg", reg)
        self.epochs = _positive_int("epochs", epochs)
        self.batch_size = _positive_int("batch_size", batch_size)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"must be a non-negative integer, got {seed!r}", key="seed")
        self.seed = int(seed)
        self.negatives = _positive_int("negatives", negatives)
        self.patience = _positive_int("patience", patience)
        if isinstance(fold_in_steps, bool) or not isinstance(fold_in_steps, (int, np.integer)) or fold_in_steps < 0:
            raise ConfigError(f"must be a non-negative integer, got {fold_in_steps!r}", key="fold_in_steps")
        self.fold_in_steps = int(fold_in_steps)
        self.init_std = _number("init_std", init_std)
        self.user_factors = np.zeros((0, self.factors), dtype=np.float32)
        self.item_factors = np.zeros((0, self.factors), dtype=np.float32)
        self.item_bias = np.zeros(0, dtype=np.float32)
        self.history_: list[dict[str, float]] = []
        self.best_epoch_: int | None = None
        self.fit_seconds_: float | None = None

    def params(self) -> dict[str, Any]:
        """The constructor settings, JSON-safe."""
        return {
            "factors": self.factors,
            "lr": self.lr,
            "reg": self.reg,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "negatives": self.negatives,
            "patience": self.patience,
            "fold_in_steps": self.fold_in_steps,
            "init_std": self.init_std,
        }

    @property
    def item_vectors(self) -> np.ndarray:
        """Item factors ``(n_items, factors)`` float32 (read-only view), e.g. for a serving index."""
        self._require_fitted()
        view = self.item_factors.view()
        view.flags.writeable = False
        return view

    @property
    def n_users(self) -> int:
        """Number of training users (rows of ``user_factors``)."""
        return int(self.user_factors.shape[0])

    def fit(
        self,
        train: sp.csr_matrix,
        *,
        valid_fn: Callable[[BPRMF], float] | None = None,
        on_epoch: Callable[[int, float], None] | None = None,
    ) -> Self:
        """Train on ``train`` (users x items).

        ``on_epoch(epoch, loss)`` is called after every epoch (1-based) with the mean BPR loss
        ``-log sigmoid(s_ui - s_uj)`` of its triples. With ``valid_fn`` (higher is better, called
        with this model after every epoch) training stops after ``patience`` epochs without
        improvement and the best epoch's parameters are kept. ``history_`` records every epoch.
        """
        started = time.perf_counter()
        x = _train_matrix(train)
        n_users, n_items = x.shape
        rng = np.random.default_rng(self.seed)
        f = self.factors
        self.user_factors = (rng.standard_normal((n_users, f)) * self.init_std).astype(np.float32)
        self.item_factors = (rng.standard_normal((n_items, f)) * self.init_std).astype(np.float32)
        self.item_bias = np.zeros(n_items, dtype=np.float32)
        self.n_items = n_items
        self._fitted = True
        self.history_, self.best_epoch_ = [], None

        coo = x.tocoo()
        users = coo.row.astype(np.int64)
        pos = coo.col.astype(np.int64)
        weights = coo.data.astype(np.float32)
        # CSR order makes these keys sorted, so membership is a binary search.
        keys = users * n_items + pos
        users_rep = np.tile(users, self.negatives)
        pos_rep = np.tile(pos, self.negatives)
        weights_rep = np.tile(weights, self.negatives)

        best_value = -math.inf
        best: dict[str, np.ndarray] | None = None
        waited = 0
        for epoch in range(1, self.epochs + 1):
            order = rng.permutation(len(users_rep))
            u_all, i_all, w_all = users_rep[order], pos_rep[order], weights_rep[order]
            j_all, valid = _sample_negatives(rng, u_all, keys, n_items)
            w_all = w_all * valid
            loss = self._epoch(u_all, i_all, j_all, w_all)
            record = {"epoch": epoch, "loss": loss}
            if on_epoch is not None:
                on_epoch(epoch, loss)
            if valid_fn is not None:
                value = float(valid_fn(self))
                record["valid"] = value
                if value > best_value:
                    best_value, waited, self.best_epoch_ = value, 0, epoch
                    best = {name: a.copy() for name, a in self._get_arrays().items()}
                else:
                    waited += 1
            self.history_.append(record)
            if valid_fn is not None and waited >= self.patience:
                break
        if best is not None:
            self._set_arrays(best)
        self.fit_seconds_ = time.perf_counter() - started
        return self

    def _epoch(self, u_all: np.ndarray, i_all: np.ndarray, j_all: np.ndarray, w_all: np.ndarray) -> float:
        uf, vf, bias = self.user_factors, self.item_factors, self.item_bias
        lr, reg = np.float32(self.lr), np.float32(self.reg)
        total, weight = 0.0, float(w_all.sum())
        for start in range(0, len(u_all), self.batch_size):
            sl = slice(start, start + self.batch_size)
            u, i, j, w = u_all[sl], i_all[sl], j_all[sl], w_all[sl]
            pu, qi, qj = uf[u], vf[i], vf[j]
            diff = qi - qj
            margin = np.einsum("nf,nf->n", pu, diff) + bias[i] - bias[j]
            total += float(np.dot(w, np.logaddexp(0.0, -margin)))
            g = (w * _sigmoid(-margin)).astype(np.float32)
            _scatter_add(uf, u, g[:, None] * diff - reg * pu, lr)
            _scatter_add(
                vf,
                np.concatenate([i, j]),
                np.concatenate([g[:, None] * pu - reg * qi, -g[:, None] * pu - reg * qj]),
                lr,
            )
            bias += lr * (
                np.bincount(i, weights=g - reg * bias[i], minlength=len(bias))
                + np.bincount(j, weights=-g - reg * bias[j], minlength=len(bias))
            ).astype(np.float32)
        return total / weight if weight > 0 else 0.0

    def fold_in(self, history: sp.csr_matrix) -> np.ndarray:
        """User vectors ``(n, factors)`` float32 for rows of histories, solved with the item parameters fixed.

        Each row's vector maximises the objective training optimises for one user, in expectation
        over its negatives: ``sum_i w_i/|h| mean_j log sigmoid(x_ij) - reg/2 |u|^2`` with ``i`` over
        the history, ``j`` over every other item and ``x_ij = u.(V_i - V_j) + b_i - b_j``. It starts
        from the closed-form optimum of the second-order Taylor expansion of ``log sigmoid`` and takes
        ``fold_in_steps`` bound-optimisation (MM) steps: ``log sigmoid`` curves by at most 1/4, so the
        same quadratic bounds the Hessian and no step lowers the objective. No sampling, so a row's
        vector depends on that row alone. Cost per row: ``O(|h| f^2 + f^3)`` plus ``O(|h| n_items)`` a step.
        """
        h = self._history(history)
        items = _FoldInItems.of(self.item_factors, self.item_bias, self.reg)
        out = np.zeros((h.shape[0], self.factors))
        # The per-row f x f algebra is too small to share: threaded BLAS made it 10x slower on 2 cores.
        with threadpool_limits(1, user_api="blas"):
            for r in range(h.shape[0]):
                lo, hi = h.indptr[r], h.indptr[r + 1]
                out[r] = self._fold_in_row(h.indices[lo:hi], h.data[lo:hi].astype(np.float64), items)
        return out.astype(np.float32)

    def _fold_in_row(self, history: np.ndarray, weights: np.ndarray, items: _FoldInItems) -> np.ndarray:
        v, b = items.v, items.b
        n_neg = len(b) - len(history)
        if len(history) == 0 or n_neg == 0:
            return np.zeros(v.shape[1])
        # Training draws one triple per interaction, its loss scaled by the weight.
        p = weights / len(history)
        vh, bh, mass = v[history], b[history], p.sum()
        pos_v, pos_vv, pos_bv = p @ vh, (vh * p[:, None]).T @ vh, (p * bh) @ vh
        neg_v, neg_b = (items.sum_v - vh.sum(axis=0)) / n_neg, (items.sum_b - bh.sum()) / n_neg
        neg_vv, neg_bv = (items.sum_vv - vh.T @ vh) / n_neg, (items.sum_bv - bh @ vh) / n_neg
        # Weighted means over pairs of d = V_i - V_j, d d^T and (b_i - b_j) d.
        mean_d = pos_v - mass * neg_v
        mean_dd = pos_vv - np.outer(pos_v, neg_v) - np.outer(neg_v, pos_v) + mass * neg_vv
        mean_bd = pos_bv - (p @ bh) * neg_v - neg_b * pos_v + mass * neg_bv
        bound = scipy.linalg.cho_factor(mean_dd / 4.0 + items.ridge, check_finite=False)
        # log sigmoid(x) ~ -log 2 + x/2 - x^2/8 makes the objective quadratic in u.
        u = scipy.linalg.cho_solve(bound, mean_d / 2.0 - mean_bd / 4.0, check_finite=False)
        for _ in range(self.fold_in_steps):
            grad = self._fold_in_gradient(u, history, p, n_neg)
            u = u + scipy.linalg.cho_solve(bound, grad, check_finite=False)
        return np.asarray(u)

    def _fold_in_gradient(self, u: np.ndarray, history: np.ndarray, p: np.ndarray, n_neg: int) -> np.ndarray:
        """Gradient of the fold-in objective at ``u``; pairs are summed in blocks of history items."""
        v32 = self.item_factors
        s = v32 @ u.astype(np.float32) + self.item_bias
        pos_weight = np.zeros(len(history))
        neg_weight = np.zeros(len(s))
        step = max(1, _BLOCK_FLOATS // len(s))
        for start in range(0, len(history), step):
            block = history[start : start + step]
            # sigmoid(-x_ij) = sigmoid(s_j - s_i): how much pair (i, j) still pulls on u.
            pull = _sigmoid(s[None, :] - s[block][:, None])
            pull[:, history] = 0.0
            pos_weight[start : start + step] = pull.sum(axis=1, dtype=np.float64)
            neg_weight += p[start : start + step] @ pull
        grad = (p * pos_weight) @ v32[history] - neg_weight @ v32
        return grad / n_neg - self.reg * u

    def score(self, history: sp.csr_matrix) -> np.ndarray:
        """Scores ``(n, n_items)`` for any histories, through :meth:`fold_in`; an empty history gets the biases."""
        users = self.fold_in(history)
        return users @ self.item_factors.T + self.item_bias[None, :]

    def score_users(self, codes: np.ndarray | list[int]) -> np.ndarray:
        """Scores ``(len(codes), n_items)`` for training users (row indices of the training matrix)."""
        self._require_fitted()
        idx = np.asarray(codes)
        if idx.size == 0:
            idx = idx.astype(np.int64)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise DataError("user codes must be a 1-D array of integers (training matrix rows)")
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_users):
            raise DataError(
                f"user codes must lie in [0, {self.n_users}), got values in [{idx.min()}, {idx.max()}]",
                hint="Score users unseen in training with score(history) instead",
            )
        return self.user_factors[idx] @ self.item_factors.T + self.item_bias[None, :]

    def _check_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        _expect_shape(self, arrays, "item_factors", (self.n_items, self.factors))
        _expect_shape(self, arrays, "item_bias", (self.n_items,))
        users = arrays["user_factors"]
        if users.ndim != 2 or users.shape[1] != self.factors:
            raise ArtifactError(
                f"BPRMF state array 'user_factors' has shape {users.shape}, expected (n, {self.factors})"
            )


def _scatter_add(table: np.ndarray, rows: np.ndarray, updates: np.ndarray, lr: np.float32) -> None:
    """``table[rows] += lr * updates`` with repeated rows summed.

    A sparse "row picker" product does the summing, some 4x faster than ``np.add.at``; only the
    touched rows are written, so the cost does not grow with the table.
    """
    order = np.argsort(rows, kind="stable")
    touched, starts = np.unique(rows[order], return_index=True)
    indptr = np.append(starts, len(rows))
    picker = sp.csr_matrix((np.full(len(rows), lr, dtype=np.float32), order, indptr), shape=(len(touched), len(rows)))
    table[touched] += picker @ updates


def _sample_negatives(
    rng: np.random.Generator, users: np.ndarray, keys: np.ndarray, n_items: int, rounds: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """Uniform negatives per user, redrawn where they hit a positive; also a mask of the ones that never missed."""
    neg = rng.integers(0, n_items, size=len(users))
    todo = np.arange(len(users))
    for _ in range(rounds):
        k = users[todo] * n_items + neg[todo]
        at = np.minimum(np.searchsorted(keys, k), len(keys) - 1)
        hit = keys[at] == k
        todo = todo[hit]
        if not len(todo):
            break
        neg[todo] = rng.integers(0, n_items, size=len(todo))
    valid = np.ones(len(users), dtype=np.float32)
    if len(todo):
        # Only users who touched nearly every item get here; their triple teaches nothing.
        k = users[todo] * n_items + neg[todo]
        at = np.minimum(np.searchsorted(keys, k), len(keys) - 1)
        valid[todo[keys[at] == k]] = 0.0
    return neg, valid


MODELS: dict[str, type[_Model]] = {m.__name__: m for m in (Popularity, ItemKNN, EASE, BPRMF)}


def model_from_state(arrays: Mapping[str, np.ndarray], settings: Mapping[str, Any]) -> _Model:
    """Rebuild whichever model :meth:`state` saved, by the ``"model"`` name in ``settings``."""
    name = settings.get("model") if isinstance(settings, Mapping) else None
    if name not in MODELS:
        raise ArtifactError(f"unknown recommender model {name!r} in state", hint=f"Known: {', '.join(MODELS)}")
    return MODELS[name].from_state(arrays, settings)


__all__ = ["BPRMF", "EASE", "MODELS", "SIMILARITIES", "ItemKNN", "ItemScorer", "Popularity", "model_from_state"]
