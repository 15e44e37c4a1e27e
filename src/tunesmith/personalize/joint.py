"""Joint adapters: one low-rank vector per user, learned together across all users.

A head or LoRA adapter learns from its own user's rows alone; with a few dozen rows there is
little to learn. Joint adapters learn the way collaborative filtering does, so users borrow
strength from users who behave alike. Over the shared model's features ``f`` and logits ``z``
of a row of user ``u`` (about item ``i``, when an item column is given)::

    h      = f @ W + Q[i]                            # the row's taste factors, rank r
    logits = z + b + f @ G + E[i]                    # the population model
           + c_u + h @ U_u                           # the user's bias and taste vector
    U_u    = own_u + S[segment of u] + |N(u)|^-1/2 sum_{j in N(u)} Y[j]

``W`` (``d x r``), ``G``, ``b`` and the item tables ``Q``, ``E`` and ``Y`` are shared by every
user and learned jointly with each user's own part of ``U_u`` (``r x k``) and ``c_u`` (``k``).
A user with 15 rows is placed, through ``W`` and ``Q``, near users whose rows look alike, and,
through ``Y``, near users who rated the same items (``N(u)``: SVD++'s implicit feedback, which
needs no label). With a segment column the segment's vector ``S`` is learned too. Penalties are
weighted by the rows each vector appears in (as in matrix factorisation trained by SGD); the
penalty itself is chosen on validation rows.

A new user is *folded in*: with the shared part fixed, the user's ``U_u`` and ``c_u`` solve a
small convex problem on their rows (:func:`fold_in`), without retraining anyone else.

Training is full batch (Adam) over cached features: rows of all users together are a few
hundred thousand small vectors, and one step over them costs milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from tunesmith.errors import ConfigError
from tunesmith.personalize.head import MAX_ADAPTER_RANK, check_training
from tunesmith.personalize.store import JOINT_KEY

__all__ = [
    "JOINT_KEY",
    "JointAdapterSettings",
    "JointFit",
    "JointModel",
    "JointVector",
    "fit_joint",
    "fold_in",
    "index_of",
    "item_ids",
    "joint_logits",
]


@dataclass(frozen=True)
class JointAdapterSettings:
    """How joint adapters are trained.

    ``rank``: width of the taste vectors. ``l2``: penalty on user, segment and item vectors
    and biases, per row they appear in; a tuple of values is tried and the best on the
    validation rows kept. ``l2_shared``: penalty on the shared projection and global weights.
    ``steps`` and ``lr``: full-batch Adam steps over all users' rows. ``fold_in_steps``:
    L-BFGS iterations that place one user with the shared part fixed.
    """

    rank: int = 16
    l2: tuple[float, ...] = (0.1,)
    l2_shared: float = 1e-2
    steps: int = 300
    lr: float = 0.05
    fold_in_steps: int = 50

    def __post_init__(self) -> None:
        if not 1 <= self.rank <= MAX_ADAPTER_RANK:
            raise ConfigError(f"must be 1 to {MAX_ADAPTER_RANK}, got {self.rank}", key="joint_rank")
        if not self.l2:
            raise ConfigError("needs at least one value", key="joint_l2")
        for value in self.l2:
            check_training(value, self.steps, self.lr)
        check_training(self.l2_shared, self.fold_in_steps, self.lr)

    def record(self) -> dict[str, Any]:
        """JSON-safe settings (what a store records)."""
        return {**self.__dict__, "l2": list(self.l2)}


class JointModel(nn.Module):
    """The part every joint adapter shares: ``W``, ``G``, ``b`` and the item tables ``Q``, ``E`` and ``Y``."""

    def __init__(self, n_features: int, n_outputs: int, rank: int, n_items: int = 0, *, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(0.01 * torch.randn(n_features, rank, generator=gen))
        self.G = nn.Parameter(torch.zeros(n_features, n_outputs))
        self.b = nn.Parameter(torch.zeros(n_outputs))
        self.Q = nn.Parameter(0.01 * torch.randn(n_items, rank, generator=gen))
        self.E = nn.Parameter(torch.zeros(n_items, n_outputs))
        self.Y = nn.Parameter(torch.zeros(n_items, rank, n_outputs))

    @property
    def rank(self) -> int:
        return int(self.W.shape[1])

    def implicit(self, items: np.ndarray | torch.Tensor) -> torch.Tensor:
        """What the items a user has rows about say of the user's taste: ``|N|^-1/2 * sum of Y[j]`` ``(r, k)``.

        ``items`` are the item indices of the user's rows (repeats and -1 are ignored). Which
        items a user chose to rate tells of the user before any label does (SVD++'s implicit
        feedback); it places a user with few labels near users who rated alike.
        """
        idx = torch.unique(torch.as_tensor(np.asarray(items, dtype=np.int64)))
        idx = idx[(idx >= 0) & (idx < len(self.Y))]
        if not len(idx):
            return torch.zeros(self.rank, self.Y.shape[2])
        return self.Y[idx].sum(0) / float(len(idx)) ** 0.5

    def outputs(
        self, features: torch.Tensor, logits: torch.Tensor, items: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows' taste factors ``h = f @ W + Q[i]`` and population logits ``z + b + f @ G + E[i]``.

        An unknown item (index -1) has no item vector nor bias. One product with ``[W | G]``
        instead of two: over many rows the features are read from memory once per pass, which
        is what training time is made of.
        """
        r = self.rank
        both = features @ torch.cat([self.W, self.G], dim=1)
        h, out = both[:, :r], logits + self.b + both[:, r:]
        if len(self.Q):
            known = (items >= 0)[:, None]
            idx = items.clamp(min=0)
            h = h + torch.where(known, self.Q[idx], 0.0)
            out = out + torch.where(known, self.E[idx], 0.0)
        return h, out

    def tensors(self) -> dict[str, torch.Tensor]:
        """What the store saves."""
        return {name: p.detach().clone() for name, p in self.named_parameters()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> JointModel:
        """Rebuild the shared part from :meth:`tensors` (shapes checked by the store before)."""
        w, e = tensors["W"], tensors["E"]
        model = cls(int(w.shape[0]), int(e.shape[1]), int(w.shape[1]), int(e.shape[0]))
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(tensors[name])
        model.eval()
        return model


def joint_logits(
    model: JointModel,
    features: np.ndarray | torch.Tensor,
    logits: np.ndarray | torch.Tensor,
    items: np.ndarray | torch.Tensor,
    vector: torch.Tensor,
    bias: torch.Tensor,
) -> np.ndarray:
    """Adapted logits ``(n, k)`` of rows that all belong to one user (or segment) with ``vector`` and ``bias``."""
    with torch.no_grad():
        f = torch.as_tensor(np.asarray(features, dtype=np.float32))
        z = torch.as_tensor(np.asarray(logits, dtype=np.float32))
        i = torch.as_tensor(np.asarray(items, dtype=np.int64))
        h, pop = model.outputs(f, z, i)
        out = pop + bias + h @ vector
    return np.asarray(out.numpy(), dtype=np.float32)


@dataclass(frozen=True)
class JointVector:
    """One user's (or segment's) joint adapter as served: ``u`` ``(r, k)``, ``c`` ``(k,)`` and the id
    of the shared part it was trained with."""

    u: torch.Tensor
    c: torch.Tensor
    joint: str | None = None


@dataclass
class JointFit:
    """A trained joint model: the shared part and every user's and segment's vector and bias.

    ``user_vectors[u]`` already includes the user's segment vector and implicit part (what serving uses).
    """

    model: JointModel
    user_vectors: torch.Tensor  # (n_users, r, k)
    user_bias: torch.Tensor  # (n_users, k)
    segment_vectors: torch.Tensor  # (n_segments, r, k)
    segment_bias: torch.Tensor  # (n_segments, k)
    l2: float
    history: list[float] = field(default_factory=list)

    def logits(
        self, features: np.ndarray, logits: np.ndarray, items: np.ndarray, users: np.ndarray, segments: np.ndarray
    ) -> np.ndarray:
        """Adapted logits of rows: by the user's vector (index >= 0), else the segment's, else the population's."""
        with torch.no_grad():
            f, z = torch.as_tensor(features, dtype=torch.float32), torch.as_tensor(logits, dtype=torch.float32)
            i, u, s = (torch.as_tensor(np.asarray(a, dtype=np.int64)) for a in (items, users, segments))
            vec, bias = _row_vectors(self, u, s)
            h, pop = self.model.outputs(f, z, i)
            out = pop + bias + (h[:, :, None] * vec).sum(1)
        return np.asarray(out.numpy(), dtype=np.float32)


def _row_vectors(fit: JointFit, users: torch.Tensor, segments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r, k = int(fit.user_vectors.shape[1]), int(fit.user_vectors.shape[2])
    vec = torch.zeros(len(users), r, k)
    bias = torch.zeros(len(users), k)
    has_s = segments >= 0
    if has_s.any():
        vec[has_s] = fit.segment_vectors[segments[has_s]]
        bias[has_s] = fit.segment_bias[segments[has_s]]
    has_u = users >= 0
    if has_u.any():
        vec[has_u] = fit.user_vectors[users[has_u]]
        bias[has_u] = fit.user_bias[users[has_u]]
    return vec, bias


def fit_joint(
    features: np.ndarray,
    logits: np.ndarray,
    y: np.ndarray,
    users: np.ndarray,
    items: np.ndarray,
    *,
    n_users: int,
    n_items: int,
    settings: JointAdapterSettings,
    l2: float,
    user_segments: np.ndarray | None = None,
    n_segments: int = 0,
    seed: int = 0,
    on_step: Callable[[], None] | None = None,
) -> JointFit:
    """Train the shared part and every user's (and segment's) vector together, full batch.

    ``users`` and ``items`` are indices per row (``items`` -1 for rows without a known item);
    ``user_segments[u]`` is user ``u``'s segment index (-1: none).
    """
    f = torch.as_tensor(np.asarray(features, dtype=np.float32))
    z = torch.as_tensor(np.asarray(logits, dtype=np.float32))
    t = torch.as_tensor(np.asarray(y, dtype=np.int64))
    u = torch.as_tensor(np.asarray(users, dtype=np.int64))
    i = torch.as_tensor(np.asarray(items, dtype=np.int64))
    n, k = z.shape
    if not (len(f) == len(t) == len(u) == len(i) == n) or n == 0:
        raise ConfigError(f"features, logits, labels, users and items need the same, non-zero row count: {n}")
    torch.manual_seed(seed)
    r = settings.rank
    model = JointModel(f.shape[1], k, r, n_items, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    own = nn.Parameter(0.01 * torch.randn(n_users, r, k, generator=gen))
    own_bias = nn.Parameter(torch.zeros(n_users, k))
    seg_of_user = torch.full((n_users,), -1, dtype=torch.int64)
    if user_segments is not None:
        seg_of_user = torch.as_tensor(np.asarray(user_segments, dtype=np.int64))
    seg = nn.Parameter(torch.zeros(n_segments, r, k))
    seg_bias = nn.Parameter(torch.zeros(n_segments, k))
    # Rows each vector appears in: the penalty of a vector grows with the evidence about it,
    # as SGD matrix factorisation's per-example penalty does.
    user_rows = torch.bincount(u, minlength=n_users).float()
    item_rows = torch.bincount(i[i >= 0], minlength=n_items).float() if n_items else torch.zeros(0)
    seg_rows = torch.zeros(n_segments)
    if n_segments:
        has = seg_of_user >= 0
        seg_rows.index_add_(0, seg_of_user[has], user_rows[has])
    row_seg = seg_of_user[u]
    has_seg = row_seg >= 0
    # Each user's rated items, |N(u)|^-1/2 each: the implicit part of the user's vector is N @ Y.
    pairs = np.unique(np.stack([u.numpy(), i.numpy()], axis=1)[i.numpy() >= 0], axis=0)
    per_user = np.bincount(pairs[:, 0], minlength=n_users) if len(pairs) else np.zeros(n_users)
    weights = 1.0 / np.sqrt(np.maximum(per_user[pairs[:, 0]], 1)) if len(pairs) else np.zeros(0)
    rated = torch.sparse_coo_tensor(
        torch.as_tensor(pairs.T.reshape(2, -1)),
        torch.as_tensor(weights, dtype=torch.float32),
        (n_users, n_items),
        check_invariants=True,
    ).coalesce()
    params = [*model.parameters(), own, own_bias] + ([seg, seg_bias] if n_segments else [])
    opt = torch.optim.Adam(params, lr=settings.lr)
    history: list[float] = []
    for _ in range(settings.steps):
        opt.zero_grad(set_to_none=True)
        vec, bias = own[u], own_bias[u]
        if n_items:
            vec = vec + torch.sparse.mm(rated, model.Y.reshape(n_items, -1)).reshape(n_users, r, k)[u]
        if n_segments and has_seg.any():
            seg_idx = row_seg.clamp(min=0)
            vec = vec + torch.where(has_seg[:, None, None], seg[seg_idx], 0.0)
            bias = bias + torch.where(has_seg[:, None], seg_bias[seg_idx], 0.0)
        h, pop = model.outputs(f, z, i)
        out = pop + bias + (h[:, :, None] * vec).sum(1)
        loss = nn.functional.cross_entropy(out, t)
        penalty = (user_rows * (own.pow(2).sum((1, 2)) + own_bias.pow(2).sum(1))).sum()
        if n_items:
            item_sq = model.Q.pow(2).sum(1) + model.E.pow(2).sum(1) + model.Y.pow(2).sum((1, 2))
            penalty = penalty + (item_rows * item_sq).sum()
        if n_segments:
            penalty = penalty + (seg_rows * (seg.pow(2).sum((1, 2)) + seg_bias.pow(2).sum(1))).sum()
        shared = model.W.pow(2).sum() + model.G.pow(2).sum()
        total = loss + l2 * penalty / n + settings.l2_shared * shared
        total.backward()
        opt.step()
        history.append(float(loss.detach()))
        if on_step is not None:
            on_step()
    model.eval()
    with torch.no_grad():
        full = own.detach().clone()
        full_bias = own_bias.detach().clone()
        if n_items:
            full += torch.sparse.mm(rated, model.Y.detach().reshape(n_items, -1)).reshape(n_users, r, k)
        if n_segments:
            has = seg_of_user >= 0
            full[has] += seg.detach()[seg_of_user[has]]
            full_bias[has] += seg_bias.detach()[seg_of_user[has]]
    return JointFit(model, full, full_bias, seg.detach().clone(), seg_bias.detach().clone(), l2, history)


def fold_in(
    model: JointModel,
    features: np.ndarray,
    logits: np.ndarray,
    y: np.ndarray,
    items: np.ndarray,
    *,
    l2: float,
    steps: int = 50,
    prior: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One user's vector ``(r, k)`` and bias ``(k,)`` from their rows, the shared part fixed.

    Minimises the mean cross-entropy over the rows plus ``l2`` times the squared distance to
    the prior: ``prior`` (the segment's vector and bias; zero without one) plus the implicit
    part of the items the rows are about (:meth:`JointModel.implicit`). That is the objective
    of :func:`fit_joint` for this user alone, so a folded-in user is placed as if trained with
    everyone. Convex in the user's parameters; solved by L-BFGS.
    """
    f = torch.as_tensor(np.asarray(features, dtype=np.float32))
    z = torch.as_tensor(np.asarray(logits, dtype=np.float32))
    t = torch.as_tensor(np.asarray(y, dtype=np.int64))
    i = torch.as_tensor(np.asarray(items, dtype=np.int64))
    if len(t) == 0:
        raise ConfigError("a user needs at least one labeled row to fold in")
    k = z.shape[1]
    p_vec, p_bias = prior if prior is not None else (torch.zeros(model.rank, k), torch.zeros(k))
    with torch.no_grad():
        p_vec = p_vec.float() + model.implicit(i)
        p_bias = p_bias.float()
        h, base = model.outputs(f, z, i)
    vec = nn.Parameter(p_vec.detach().clone().float())
    bias = nn.Parameter(p_bias.detach().clone().float())
    opt = torch.optim.LBFGS([vec, bias], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        out = base + bias + h @ vec
        loss = nn.functional.cross_entropy(out, t) + l2 * ((vec - p_vec).pow(2).sum() + (bias - p_bias).pow(2).sum())
        loss.backward()
        return loss

    opt.step(closure)
    return vec.detach().clone(), bias.detach().clone()


def item_ids(values: Any) -> np.ndarray:
    """Item ids as strings (an object array), ``None`` where missing.

    Whole-number floats lose their ``.0``: ids read as floats because a cell was empty must
    still match the same ids read as integers, and a server given ``42`` must find item ``42``.
    """
    import pandas as pd

    series = pd.Series(values)
    missing = series.isna().to_numpy(dtype=bool)
    out = np.empty(len(series), dtype=object)
    if pd.api.types.is_float_dtype(series.dtype):
        numbers = series.to_numpy(dtype=np.float64)
        whole = ~missing & np.isfinite(numbers) & (numbers == np.round(np.nan_to_num(numbers)))
        out[whole] = [str(int(v)) for v in numbers[whole]]
        rest = ~missing & ~whole
        out[rest] = [str(v) for v in numbers[rest]]
    else:
        out[~missing] = [str(v) for v in series[~missing]]
    out[missing] = None
    return out


def index_of(values: Sequence[Any] | np.ndarray, known: dict[str, int]) -> np.ndarray:
    """Index of each value in ``known`` (by its string), -1 for values not in it or missing."""
    return np.array([known.get(str(v), -1) if v is not None else -1 for v in values], dtype=np.int64)
