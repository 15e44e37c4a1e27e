"""The collaborative-filtering (CF) baseline that per-user adapters must beat.

:class:`CollaborativeBaseline` learns from the same labeled ``(user, item, like/dislike)`` rows
as the adapters and scores any ``(user, item)`` row with a real number: higher means the
positive label is more likely. Three model families compete, each over a small grid:

* ``mf``: logistic matrix factorisation of the labels, ``logit = mu + b_u + b_i + p_u . q_i``,
  full-batch Adam in torch with an L2 penalty weighted by how often each user and item occurs;
* ``ease``: :class:`~tunesmith.recsys.models.EASE` fitted on the liked pairs only, a row scored
  by ``history_u @ B`` at its item;
* ``bpr``: :class:`~tunesmith.recsys.bpr.BPRMF` fitted on the liked pairs, a row scored through
  the fold-in of the user's liked history.

Each setting is fitted on all but every user's latest ``valid_fraction`` of rows and judged by
the mean per-user ROC AUC on those held-out rows (users whose held-out rows hold both labels).
The winner is refitted on all rows, with the same settings, for :meth:`CollaborativeBaseline.score_rows`.

Users and items unseen in fitting never fail a row. ``mf`` scores them with what it has:
``mu + b_i`` for an unknown user, ``mu + b_u`` for an unknown item, ``mu`` for both. ``ease``
and ``bpr`` give an unknown user an empty history (EASE: 0 for every item; BPR: the item
biases) and an unknown item the user's mean score over the known catalogue.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from tunesmith.errors import ConfigError, DataError, NotFittedError
from tunesmith.personalize.settings import time_ordered_holdout
from tunesmith.progress import progress as progress_bar
from tunesmith.recsys.bpr import BPRMF
from tunesmith.recsys.models import EASE

CANDIDATES = ("mf", "ease", "bpr")
"""The model families :class:`CollaborativeBaseline` can try."""

MF_GRID: tuple[tuple[int, float], ...] = ((16, 0.02), (16, 0.04), (32, 0.02), (32, 0.04), (16, 0.1))
"""``(rank, l2)`` settings of the logistic matrix factorisation.

On MovieLens-100K the factors die out (the model keeps its biases only) from ``l2`` of about
0.07 whatever the rank, so one strong setting stands for all of them; below 0.02 they overfit.
"""
EASE_GRID: tuple[float, ...] = (100.0, 300.0, 1000.0)
"""``l2`` settings of EASE."""
BPR_GRID: tuple[tuple[int, float], ...] = ((64, 0.01), (64, 0.03))
"""``(factors, reg)`` settings of BPR-MF."""

MF_STEPS = 200
"""Full-batch Adam steps of ``mf``: validation AUC on MovieLens-100K is flat from 200 to 300."""
MF_LR = 0.05
MF_INIT_STD = 0.1
"""Scale of the initial factors: large enough that they do not linger at the saddle at zero."""
BPR_EPOCHS = 30
# EASE scores the whole catalogue for this many floats' worth of users at a time, so memory
# does not grow with the number of users scored.
_SCORE_BLOCK_FLOATS = 1 << 22


@dataclass(frozen=True)
class _Rows:
    """Labeled rows as integer codes: ``users`` and ``items`` index the fitted tables (-1: unknown)."""

    users: np.ndarray
    items: np.ndarray
    liked: np.ndarray
    n_users: int
    n_items: int


@dataclass(frozen=True)
class _Setting:
    family: str
    params: tuple[tuple[str, float], ...]

    @property
    def name(self) -> str:
        return f"{self.family}({', '.join(f'{k}={v:g}' for k, v in self.params)})"


class _Fitted:
    """A fitted candidate: scores rows given as codes (-1 for a user or item it has not seen)."""

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class _MFModel(_Fitted):
    def __init__(self, mu: float, bu: np.ndarray, bi: np.ndarray, p: np.ndarray, q: np.ndarray) -> None:
        self.mu, self.bu, self.bi, self.p, self.q = mu, bu, bi, p, q

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        ku, ki = users >= 0, items >= 0
        u, i = np.where(ku, users, 0), np.where(ki, items, 0)
        # An unknown user or item has a zero bias and a zero vector: what the penalty pulls them to.
        dot = np.einsum("nf,nf->n", self.p[u], self.q[i])
        return self.mu + np.where(ku, self.bu[u], 0.0) + np.where(ki, self.bi[i], 0.0) + np.where(ku & ki, dot, 0.0)


class _EASEModel(_Fitted):
    """EASE scoring the catalogue from each user's liked history, a few users at a time."""

    def __init__(self, ease: EASE, liked: sp.csr_matrix) -> None:
        self.ease = ease
        # One empty row at the end stands for every unknown user.
        self.history = sp.vstack([liked, sp.csr_matrix((1, liked.shape[1]), dtype=np.float32)], format="csr")

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        n_users, n_items = self.history.shape[0] - 1, self.history.shape[1]
        rows = np.where(users >= 0, users, n_users)
        out = np.zeros(len(rows))
        wanted, inverse = np.unique(rows, return_inverse=True)
        block = max(1, _SCORE_BLOCK_FLOATS // max(1, n_items))
        for start in range(0, len(wanted), block):
            chunk = wanted[start : start + block]
            scores = np.asarray(self.ease.score(self.history[chunk]), dtype=np.float64)
            at = np.flatnonzero((inverse >= start) & (inverse < start + len(chunk)))
            local = inverse[at] - start
            known = items[at] >= 0
            out[at] = np.where(known, scores[local, np.where(known, items[at], 0)], scores.mean(axis=1)[local])
        return out


class _BPRModel(_Fitted):
    """BPR-MF with every known user folded in once; a row's score depends on that row alone."""

    def __init__(self, bpr: BPRMF, liked: sp.csr_matrix) -> None:
        self.users = bpr.fold_in(liked).astype(np.float64)
        self.items = bpr.item_factors.astype(np.float64)
        self.bias = bpr.item_bias.astype(np.float64)

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        ku, ki = users >= 0, items >= 0
        # An unknown user has an empty history, whose fold-in is the zero vector.
        vec = np.where(ku[:, None], self.users[np.where(ku, users, 0)], 0.0)
        i = np.where(ki, items, 0)
        known = np.einsum("nf,nf->n", vec, self.items[i]) + self.bias[i]
        # An unknown item gets the mean of the user's scores over the catalogue.
        mean = vec @ self.items.mean(axis=0) + self.bias.mean()
        return np.where(ki, known, mean)


def _liked_matrix(rows: _Rows) -> sp.csr_matrix:
    pos = rows.liked
    m = sp.csr_matrix(
        (np.ones(int(pos.sum()), dtype=np.float32), (rows.users[pos], rows.items[pos])),
        shape=(rows.n_users, rows.n_items),
    )
    m.sum_duplicates()
    # A pair liked twice is still one interaction.
    m.data[:] = 1.0
    return m


def _fit_mf(rows: _Rows, rank: int, l2: float, seed: int) -> _MFModel:
    gen = torch.Generator().manual_seed(seed)
    u = torch.as_tensor(rows.users, dtype=torch.long)
    i = torch.as_tensor(rows.items, dtype=torch.long)
    y = torch.tensor(rows.liked, dtype=torch.float32)
    n = len(y)
    # sum over rows of |p_u|^2 equals sum over users of count_u |p_u|^2: cheaper, same penalty.
    count_u = torch.bincount(u, minlength=rows.n_users).to(torch.float32)
    count_i = torch.bincount(i, minlength=rows.n_items).to(torch.float32)
    rate = float(y.mean().clamp(1e-3, 1 - 1e-3))
    mu = torch.tensor([math.log(rate / (1 - rate))], requires_grad=True)
    bu = torch.zeros(rows.n_users, requires_grad=True)
    bi = torch.zeros(rows.n_items, requires_grad=True)
    p = (MF_INIT_STD * torch.randn(rows.n_users, rank, generator=gen)).requires_grad_()
    q = (MF_INIT_STD * torch.randn(rows.n_items, rank, generator=gen)).requires_grad_()
    opt = torch.optim.Adam([mu, bu, bi, p, q], lr=MF_LR)
    for _ in range(MF_STEPS):
        opt.zero_grad()
        logit = mu + bu[u] + bi[i] + (p[u] * q[i]).sum(dim=1)
        penalty = (count_u @ p.pow(2).sum(dim=1) + count_i @ (q.pow(2).sum(dim=1) + bi.pow(2))) / n
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, y) + l2 * penalty
        loss.backward()
        opt.step()
    with torch.no_grad():
        return _MFModel(
            float(mu.item()),
            bu.double().numpy(),
            bi.double().numpy(),
            p.double().numpy(),
            q.double().numpy(),
        )


def _fit(setting: _Setting, rows: _Rows, seed: int) -> _Fitted | None:
    """The candidate fitted on ``rows``; None where it cannot be (a liked-pairs model without liked rows)."""
    params = dict(setting.params)
    if setting.family == "mf":
        return _fit_mf(rows, int(params["rank"]), params["l2"], seed)
    liked = _liked_matrix(rows)
    if liked.nnz == 0:
        return None
    if setting.family == "ease":
        ease = EASE(l2=params["l2"]).fit(liked)
        return _EASEModel(ease, liked)
    bpr = BPRMF(factors=int(params["factors"]), reg=params["reg"], epochs=BPR_EPOCHS, seed=seed).fit(liked)
    return _BPRModel(bpr, liked)


def _unseen_as_unknown(train: _Rows, valid: _Rows) -> _Rows:
    """Validation rows whose user or item never occurs in ``train`` marked unknown (-1), as at scoring time."""
    seen_u = np.bincount(train.users, minlength=train.n_users) > 0
    seen_i = np.bincount(train.items, minlength=train.n_items) > 0
    users = np.where(seen_u[valid.users], valid.users, -1)
    items = np.where(seen_i[valid.items], valid.items, -1)
    return _Rows(users, items, valid.liked, valid.n_users, valid.n_items)


def _settings(candidates: Sequence[str]) -> list[_Setting]:
    out: list[_Setting] = []
    for family in candidates:
        if family == "mf":
            out += [_Setting("mf", (("rank", r), ("l2", l2))) for r, l2 in MF_GRID]
        elif family == "ease":
            out += [_Setting("ease", (("l2", l2),)) for l2 in EASE_GRID]
        else:
            out += [_Setting("bpr", (("factors", f), ("reg", reg))) for f, reg in BPR_GRID]
    return out


def mean_user_auc(users: np.ndarray, liked: np.ndarray, scores: np.ndarray) -> float:
    """Mean ROC AUC over the users whose rows hold both labels; NaN when none do.

    Each user's AUC is sklearn's ``roc_auc_score`` (the Mann-Whitney statistic, ties counting
    one half), computed for all users at once from ranks: a thousand separate calls take seconds.
    """
    group = pd.factorize(pd.Series(np.asarray(users)).astype(str))[0]
    y = np.asarray(liked, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((s, group))
    g, s, y = group[order], s[order], y[order]
    n = len(g)
    first = np.r_[True, g[1:] != g[:-1]] if n else np.zeros(0, dtype=bool)
    # 1-based rank within the user; tied scores share the mean of their ranks.
    rank = np.arange(n) - np.maximum.accumulate(np.where(first, np.arange(n), 0)) + 1.0
    tie = np.cumsum(first | np.r_[True, s[1:] != s[:-1]][:n]) - 1
    rank = (np.bincount(tie, weights=rank) / np.bincount(tie))[tie]
    n_pos = np.bincount(g, weights=y.astype(np.float64))
    n_neg = np.bincount(g) - n_pos
    ok = (n_pos > 0) & (n_neg > 0)
    if not ok.any():
        return math.nan
    rank_sum = np.bincount(g, weights=rank * y)[ok]
    auc = (rank_sum - n_pos[ok] * (n_pos[ok] + 1) / 2) / (n_pos[ok] * n_neg[ok])
    return float(auc.mean())


class CollaborativeBaseline:
    """Best of three CF models on like/dislike rows, chosen on each user's latest rows.

    Args:
        user_column: Column naming each row's user.
        item_column: Column naming each row's item.
        target: Column of labels; rows with a missing label are dropped (counted in ``dropped_``).
        positive: The label meaning "liked" (compared as ``str(label) == str(positive)``).
        time_column: Order of each user's rows for the validation split (default: row order).
        valid_fraction: Latest share of each user's rows that picks the candidate, in (0, 1).
        seed: Seed of every random draw (initial factors, BPR's negatives).
        candidates: Model families to try, any of ``"mf"``, ``"ease"``, ``"bpr"`` (grids:
            :data:`MF_GRID`, :data:`EASE_GRID`, :data:`BPR_GRID`).
        progress: Show one step per candidate setting.

    After :meth:`fit`: ``chosen_`` (name of the winning setting, e.g. ``"mf(rank=32, l2=0.1)"``),
    ``validation_`` (every setting tried -> mean per-user validation ROC AUC, NaN where it could
    not be fitted or no user's held-out rows hold both labels), ``fit_seconds_`` and ``dropped_``.
    When no setting has a validation AUC (too few rows per user to hold any out), the first
    setting tried wins. The module docstring says how unknown users and items are scored.
    """

    def __init__(
        self,
        user_column: str,
        item_column: str,
        target: str,
        positive: Any,
        *,
        time_column: str | None = None,
        valid_fraction: float = 0.2,
        seed: int = 0,
        candidates: Sequence[str] = CANDIDATES,
        progress: bool = False,
    ) -> None:
        if not 0 < valid_fraction < 1:
            raise ConfigError(f"must be between 0 and 1, got {valid_fraction}", key="valid_fraction")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"must be a non-negative integer, got {seed!r}", key="seed")
        wrong = [c for c in candidates if c not in CANDIDATES]
        if isinstance(candidates, str) or wrong or not candidates:
            raise ConfigError(
                f"must be a non-empty list of {', '.join(CANDIDATES)}, got {candidates!r}", key="candidates"
            )
        self.user_column = user_column
        self.item_column = item_column
        self.target = target
        self.positive = positive
        self.time_column = time_column
        self.valid_fraction = float(valid_fraction)
        self.seed = int(seed)
        self.candidates = tuple(dict.fromkeys(candidates))
        self.progress = progress
        self.chosen_: str = ""
        self.validation_: dict[str, float] = {}
        self.fit_seconds_: float = 0.0
        self.dropped_: dict[str, int] = {}
        self._model: _Fitted | None = None
        self._users = pd.Index([], dtype=object)
        self._items = pd.Index([], dtype=object)

    def _check_columns(self, df: pd.DataFrame, columns: Sequence[str | None]) -> None:
        for column in columns:
            if column is not None and column not in df.columns:
                raise DataError(
                    "is missing from the data",
                    column=column,
                    hint=f"The columns are: {', '.join(map(str, df.columns))}",
                )

    def _clean(self, df: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        self._check_columns(df, [self.user_column, self.item_column, self.target, self.time_column])
        no_label = df[self.target].isna().to_numpy()
        no_key = (df[self.user_column].isna() | df[self.item_column].isna()).to_numpy() & ~no_label
        self.dropped_ = {"missing label": int(no_label.sum()), "missing user or item": int(no_key.sum())}
        kept = df.loc[~(no_label | no_key)].reset_index(drop=True)
        if kept.empty:
            raise DataError(
                f"no rows left to fit on ({len(df)} given, {int(no_label.sum())} without a label)", column=self.target
            )
        liked = kept[self.target].map(lambda v: str(v) == str(self.positive))
        if liked.all() or not liked.any():
            raise DataError(
                f"every row is {'liked' if liked.all() else 'not liked'} (positive={self.positive!r}); "
                "ROC AUC needs both labels",
                column=self.target,
                hint="Check the positive label",
            )
        return kept, liked.to_numpy(dtype=bool)

    def _codes(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        def codes(column: str, index: pd.Index) -> np.ndarray:
            values = df[column]
            found = index.get_indexer(pd.Index(values.astype(str)))
            return np.where(values.isna().to_numpy(), -1, found).astype(np.int64)

        return codes(self.user_column, self._users), codes(self.item_column, self._items)

    def _rows(self, df: pd.DataFrame, liked: np.ndarray) -> _Rows:
        users, items = self._codes(df)
        return _Rows(users, items, liked, len(self._users), len(self._items))

    def fit(self, df: pd.DataFrame) -> CollaborativeBaseline:
        """Pick the best setting on each user's latest rows, then refit it on every row.

        Raises:
            DataError: a column is missing, no row has a label, or the labels hold one class only.
        """
        started = time.perf_counter()
        data, liked = self._clean(df)
        self._users = pd.Index(pd.unique(data[self.user_column].astype(str)))
        self._items = pd.Index(pd.unique(data[self.item_column].astype(str)))
        held = time_ordered_holdout(data, self.user_column, self.valid_fraction, self.time_column)
        train = self._rows(data.loc[~held], liked[~held])
        every_valid = self._rows(data.loc[held], liked[held])
        valid = _unseen_as_unknown(train, every_valid)
        settings = _settings(self.candidates)
        self.validation_ = {}
        with progress_bar("CF baseline settings", len(settings), unit="settings", enabled=self.progress) as bar:
            for setting in settings:
                model = _fit(setting, train, self.seed)
                auc = math.nan
                if model is not None and len(valid.users):
                    auc = mean_user_auc(every_valid.users, valid.liked, model.score(valid.users, valid.items))
                self.validation_[setting.name] = auc
                bar.advance(1, info=f"{setting.name}: {auc:.4f}")
        # The first best wins ties; with no AUC at all (no user could hold rows out), the first setting.
        scored = [s for s in settings if not math.isnan(self.validation_[s.name])]
        best = max(scored, key=lambda s: self.validation_[s.name]) if scored else settings[0]
        self.chosen_ = best.name
        self._model = _fit(best, self._rows(data, liked), self.seed)
        self.fit_seconds_ = time.perf_counter() - started
        return self

    def score_rows(self, df: pd.DataFrame) -> np.ndarray:
        """Scores ``(n,)`` float64 of any rows with the user and item columns; higher: more likely liked.

        Users and items unseen in :meth:`fit` (or missing) get finite scores, as the module docstring says.
        """
        if self._model is None:
            raise NotFittedError("this CollaborativeBaseline is not fitted", hint="Call fit() on labeled rows first")
        self._check_columns(df, [self.user_column, self.item_column])
        if len(df) == 0:
            return np.zeros(0)
        users, items = self._codes(df)
        return np.asarray(self._model.score(users, items), dtype=np.float64)


__all__ = ["CANDIDATES", "CollaborativeBaseline", "mean_user_auc"]
