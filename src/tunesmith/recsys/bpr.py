"""BPR-MF: matrix factorisation trained with Bayesian Personalised Ranking, served by fold-in."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from tunesmith.errors import ArtifactError, ConfigError, DataError
from tunesmith.recsys.scorer import _BLOCK_FLOATS, _expect_shape, _Model, _number, _positive_int, _train_matrix
from tunesmith.train.callbacks import StopTraining

if TYPE_CHECKING:
    from typing import Self


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


@dataclass(frozen=True)
class BPRAnchor:
    """L2-SP for :meth:`BPRMF.resume`: the factors to stay near, and which rows have them.

    ``user_rows`` and ``item_rows`` are 0/1 float32 flags per row of the grown tables: rows
    of users and items the refitted model already had (1) are pulled with strength
    ``weight``; rows new to the refit (0) are free.
    """

    user_factors: np.ndarray
    item_factors: np.ndarray
    item_bias: np.ndarray
    user_rows: np.ndarray
    item_rows: np.ndarray
    weight: float

    def pull(self, start: np.ndarray, flags: np.ndarray, rows: np.ndarray, now: np.ndarray) -> np.ndarray:
        """``weight * (now - start[rows])`` on flagged rows, 0 elsewhere (the gradient of the penalty)."""
        scale = np.float32(self.weight) * flags[rows]
        if now.ndim == 2:
            scale = scale[:, None]
        return (scale * (now - start[rows])).astype(np.float32)


def _as_csr(m: sp.spmatrix, shape: tuple[int, int]) -> sp.csr_matrix:
    out = sp.csr_matrix(m, dtype=np.float32)
    if out.shape != shape:
        raise DataError(f"seen is {out.shape[0]} x {out.shape[1]}, expected {shape[0]} x {shape[1]}")
    return out


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
        on_record: Callable[[dict[str, float]], None] | None = None,
    ) -> Self:
        """Train on ``train`` (users x items).

        ``on_epoch(epoch, loss)`` is called after every epoch (1-based) with the mean BPR loss
        ``-log sigmoid(s_ui - s_uj)`` of its triples. With ``valid_fn`` (higher is better, called
        with this model after every epoch) training stops after ``patience`` epochs without
        improvement and the best epoch's parameters are kept. ``history_`` records every epoch.
        ``on_record(record)`` gets each epoch's record (``epoch``, ``loss`` and ``valid``) after
        validation; a :class:`~tunesmith.train.callbacks.StopTraining` it raises ends training
        like early stopping does (``stop_reason_`` says why).
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
        self._train_epochs(x, x, rng, self.epochs, self.lr, None, valid_fn, on_epoch, on_record)
        self.fit_seconds_ = time.perf_counter() - started
        return self

    def resume(
        self,
        train: sp.csr_matrix,
        *,
        epochs: int,
        lr: float | None = None,
        seen: sp.csr_matrix | None = None,
        anchor: BPRAnchor | None = None,
        seed: int = 0,
        valid_fn: Callable[[BPRMF], float] | None = None,
        on_record: Callable[[dict[str, float]], None] | None = None,
    ) -> Self:
        """Continue training the current factors on ``train`` (a refit): no re-initialisation.

        ``train`` must have one row per row of ``user_factors`` and one column per item (grow
        the tables first). Negatives are drawn among the items of neither ``train`` nor
        ``seen`` (a user's whole known history), so an old interaction is never taught as a
        dislike. ``anchor`` adds L2-SP, a pull toward the factors the refit started from.
        ``lr`` defaults to the fit's; early stopping and ``on_record`` work as in :meth:`fit`.
        """
        started = time.perf_counter()
        self._require_fitted()
        x = _train_matrix(train)
        if x.shape != (self.n_users, self.n_items):
            raise DataError(
                f"train is {x.shape[0]} x {x.shape[1]} but the model has {self.n_users} users and {self.n_items} items",
                hint="Grow the factor tables to the refit's users and items first",
            )
        known = x if seen is None else (x + _as_csr(seen, x.shape)).tocsr()
        known.sum_duplicates()
        known.sort_indices()
        lr = self.lr if lr is None else _number("lr", lr)
        rng = np.random.default_rng([self.seed, int(seed)])
        self._train_epochs(x, known, rng, _positive_int("epochs", epochs), lr, anchor, valid_fn, None, on_record)
        self.fit_seconds_ = time.perf_counter() - started
        return self

    def grown(self, n_users: int, n_items: int, *, seed: int = 0) -> BPRMF:
        """A copy with rows for more users and items (a refit's new ids); the current rows copied.

        New users start small and random, as a fit starts every user; new items at the mean
        item vector (a little apart) and the mean bias: an average item until trained.
        """
        self._require_fitted()
        old_u, old_i, f = self.n_users, self.n_items, self.factors
        if n_users < old_u or n_items < old_i:
            raise ConfigError(f"cannot shrink {old_u} users x {old_i} items to {n_users} x {n_items}", key="n_items")
        rng = np.random.default_rng(seed)
        fresh_items = self.item_factors.mean(axis=0) + rng.standard_normal((n_items - old_i, f)) * self.init_std
        arrays = {
            "user_factors": np.vstack([self.user_factors, rng.standard_normal((n_users - old_u, f)) * self.init_std]),
            "item_factors": np.vstack([self.item_factors, fresh_items]),
            "item_bias": np.concatenate([self.item_bias, np.full(n_items - old_i, self.item_bias.mean())]),
        }
        return type(self).from_state(arrays, {**self.state()[1], "n_items": n_items})

    def _train_epochs(
        self,
        x: sp.csr_matrix,
        known: sp.csr_matrix,
        rng: np.random.Generator,
        epochs: int,
        lr: float,
        anchor: BPRAnchor | None,
        valid_fn: Callable[[BPRMF], float] | None,
        on_epoch: Callable[[int, float], None] | None,
        on_record: Callable[[dict[str, float]], None] | None,
    ) -> None:
        """SGD epochs over the triples of ``x``, negatives outside ``known``; keeps the best validated epoch."""
        n_items = self.n_items
        self.history_, self.best_epoch_ = [], None
        self.stop_reason_: str | None = None

        coo = x.tocoo()
        users = coo.row.astype(np.int64)
        pos = coo.col.astype(np.int64)
        weights = coo.data.astype(np.float32)
        # CSR order makes these keys sorted, so membership is a binary search.
        k = known.tocoo()
        keys = np.sort(k.row.astype(np.int64) * n_items + k.col)
        users_rep = np.tile(users, self.negatives)
        pos_rep = np.tile(pos, self.negatives)
        weights_rep = np.tile(weights, self.negatives)

        best_value = -math.inf
        best: dict[str, np.ndarray] | None = None
        waited = 0
        for epoch in range(1, epochs + 1):
            order = rng.permutation(len(users_rep))
            u_all, i_all, w_all = users_rep[order], pos_rep[order], weights_rep[order]
            j_all, valid = _sample_negatives(rng, u_all, keys, n_items)
            w_all = w_all * valid
            loss = self._epoch(u_all, i_all, j_all, w_all, lr=lr, anchor=anchor)
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
            if on_record is not None:
                try:
                    on_record(record)
                except StopTraining as stop:
                    self.stop_reason_ = stop.reason
                    break
            if valid_fn is not None and waited >= self.patience:
                break
        if best is not None:
            self._set_arrays(best)

    def _epoch(
        self,
        u_all: np.ndarray,
        i_all: np.ndarray,
        j_all: np.ndarray,
        w_all: np.ndarray,
        *,
        lr: float,
        anchor: BPRAnchor | None = None,
    ) -> float:
        uf, vf, bias = self.user_factors, self.item_factors, self.item_bias
        lr_, reg = np.float32(lr), np.float32(self.reg)
        total, weight = 0.0, float(w_all.sum())
        for start in range(0, len(u_all), self.batch_size):
            sl = slice(start, start + self.batch_size)
            u, i, j, w = u_all[sl], i_all[sl], j_all[sl], w_all[sl]
            pu, qi, qj = uf[u], vf[i], vf[j]
            diff = qi - qj
            margin = np.einsum("nf,nf->n", pu, diff) + bias[i] - bias[j]
            total += float(np.dot(w, np.logaddexp(0.0, -margin)))
            g = (w * _sigmoid(-margin)).astype(np.float32)
            du = g[:, None] * diff - reg * pu
            dv = np.concatenate([g[:, None] * pu - reg * qi, -g[:, None] * pu - reg * qj])
            db_i, db_j = g - reg * bias[i], -g - reg * bias[j]
            if anchor is not None:
                # L2-SP: each touched row is also pulled toward where the refit started.
                du -= anchor.pull(anchor.user_factors, anchor.user_rows, u, pu)
                dv -= anchor.pull(anchor.item_factors, anchor.item_rows, np.concatenate([i, j]), np.vstack([qi, qj]))
                db_i = db_i - anchor.pull(anchor.item_bias, anchor.item_rows, i, bias[i])
                db_j = db_j - anchor.pull(anchor.item_bias, anchor.item_rows, j, bias[j])
            _scatter_add(uf, u, du, lr_)
            _scatter_add(vf, np.concatenate([i, j]), dv, lr_)
            bias += lr_ * (
                np.bincount(i, weights=db_i, minlength=len(bias)) + np.bincount(j, weights=db_j, minlength=len(bias))
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


__all__ = ["BPRMF", "BPRAnchor"]
