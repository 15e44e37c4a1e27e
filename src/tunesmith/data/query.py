"""Which unlabeled rows to label next: batch-mode query strategies for active learning.

Every strategy takes what a model produced for the pool of unlabeled rows (class
probabilities, and for the diversity-aware ones embeddings) and returns the indices of a
batch to label, in the order they were chosen. Nothing here trains: the loop that retrains
between rounds lives above the estimators and hands these functions its outputs, as cleanlab's
functions take ``pred_probs``.

- ``random``: a uniform draw (the baseline every strategy must beat).
- ``least_confidence``: the lowest top-class probability.
- ``margin``: the smallest gap between the two most probable classes ("breaking ties"; for
  two classes the same ranking as least confidence and entropy).
- ``entropy``: the highest predictive entropy.
- ``coreset``: k-center greedy in embedding space (Sener and Savarese, 2018): each pick is the
  row farthest from everything labeled or picked so far, so a batch covers the pool instead of
  piling onto one uncertain region.
- ``badge``: k-means++ seeding on gradient embeddings (Ash et al., 2020): the gradient of the
  loss at the predicted label with respect to the last layer, ``(p - onehot(argmax p)) ⊗ x``,
  whose norm is the model's uncertainty and whose direction is the row's content, so a batch is
  both uncertain and diverse. Distances are computed from the two factors without forming the
  ``classes x dim`` vectors.

Uncertainty ties are broken at random (seeded), never by position in the pool.
"""

from __future__ import annotations

import numpy as np

from tunesmith.errors import ConfigError

STRATEGIES = ("random", "least_confidence", "margin", "entropy", "coreset", "badge")
NEEDS_EMBEDDINGS = frozenset({"coreset", "badge"})


def uncertainty(strategy: str, proba: np.ndarray) -> np.ndarray:
    """Per-row uncertainty under ``strategy`` (higher: label it sooner)."""
    p = _checked_proba(proba)
    if strategy == "least_confidence":
        return 1.0 - p.max(axis=1)
    if strategy == "margin":
        top2 = np.sort(p, axis=1)[:, -2:] if p.shape[1] > 1 else np.concatenate([np.zeros_like(p), p], axis=1)
        return 1.0 - (top2[:, 1] - top2[:, 0])
    if strategy == "entropy":
        safe = np.clip(p, 1e-12, 1.0)
        return -(p * np.log(safe)).sum(axis=1)
    raise ConfigError(
        f"{strategy!r} is not an uncertainty strategy",
        key="strategy",
        hint="Use least_confidence, margin or entropy",
    )


def query(
    strategy: str,
    proba: np.ndarray,
    batch_size: int,
    *,
    embeddings: np.ndarray | None = None,
    labeled_embeddings: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Indices (into the pool) of the next ``batch_size`` rows to label, in the order chosen.

    Args:
        strategy: one of :data:`STRATEGIES`.
        proba: ``(n_pool, n_classes)`` predicted probabilities of the unlabeled rows.
        batch_size: rows to pick (at most the pool's size).
        embeddings: ``(n_pool, dim)`` representations of the pool rows (``coreset``, ``badge``).
        labeled_embeddings: ``(n_labeled, dim)`` of the rows already labeled (``coreset``: the
            first pick is the pool row farthest from them; without them, a random row).
        seed: the seed of random draws and tie-breaks.

    Raises:
        ConfigError: an unknown strategy, a batch larger than the pool, probabilities that are
            not a probability table, or embeddings missing or of the wrong shape.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown query strategy {strategy!r}", key="strategy", hint=f"Use one of {STRATEGIES}")
    p = _checked_proba(proba)
    n = p.shape[0]
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"must be a positive whole number, got {batch_size!r}", key="batch_size")
    if batch_size > n:
        raise ConfigError(
            f"asks for {batch_size} rows but the pool holds {n}",
            key="batch_size",
            hint="Label the whole pool, or ask for fewer rows",
        )
    rng = np.random.default_rng(seed)
    if strategy == "random":
        return rng.permutation(n)[:batch_size]
    if strategy not in NEEDS_EMBEDDINGS:
        scores = uncertainty(strategy, p)
        # lexsort's last key sorts first: highest score, ties in a seeded random order
        ties = np.asarray(rng.random(size=n))
        order = np.lexsort(np.stack([ties, -scores]))
        return order[:batch_size]
    x = _checked_embeddings(embeddings, n)
    if strategy == "coreset":
        known = None
        if labeled_embeddings is not None and len(labeled_embeddings):
            known = _checked_embeddings(labeled_embeddings, None, dim=x.shape[1], name="labeled_embeddings")
        return _k_center_greedy(x, known, batch_size, rng)
    return _badge(p, x, batch_size, rng)


def _checked_proba(proba: np.ndarray) -> np.ndarray:
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ConfigError(f"must be a (rows, classes) table, got shape {p.shape}", key="proba")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ConfigError("holds negative, NaN or infinite values", key="proba", hint="Pass predict_proba's output")
    sums = p.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-3):
        worst = int(np.argmax(np.abs(sums - 1.0)))
        raise ConfigError(
            f"rows must sum to 1 (row {worst} sums to {sums[worst]:.4f})",
            key="proba",
            hint="Pass predict_proba's output, not logits",
        )
    return p


def _checked_embeddings(
    embeddings: np.ndarray | None, n: int | None, *, dim: int | None = None, name: str = "embeddings"
) -> np.ndarray:
    if embeddings is None:
        raise ConfigError(
            "this strategy needs the pool's embeddings", key=name, hint="Pass embeddings=model.embed(pool)"
        )
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or (n is not None and x.shape[0] != n) or (dim is not None and x.shape[1] != dim):
        want = f"({n if n is not None else 'rows'}, {dim if dim is not None else 'dim'})"
        raise ConfigError(f"must have shape {want}, got {x.shape}", key=name)
    if not np.isfinite(x).all():
        raise ConfigError("holds NaN or infinite values", key=name)
    return x


def _k_center_greedy(x: np.ndarray, known: np.ndarray | None, k: int, rng: np.random.Generator) -> np.ndarray:
    sq = np.einsum("ij,ij->i", x, x)
    if known is not None:
        # distance of each pool row to its nearest labeled row, a block of labeled rows at a time
        nearest = np.full(len(x), np.inf)
        for start in range(0, len(known), 1024):
            block = known[start : start + 1024]
            d = sq[:, None] + np.einsum("ij,ij->i", block, block)[None, :] - 2.0 * x @ block.T
            nearest = np.minimum(nearest, d.min(axis=1))
        first = int(np.argmax(nearest))
    else:
        nearest = np.full(len(x), np.inf)
        first = int(rng.integers(len(x)))
    chosen = [first]
    for _ in range(k - 1):
        last = x[chosen[-1]]
        nearest = np.minimum(nearest, sq + last @ last - 2.0 * x @ last)
        nearest[chosen] = -np.inf
        chosen.append(int(np.argmax(nearest)))
    return np.asarray(chosen, dtype=np.int64)


def _badge(p: np.ndarray, x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    # g_i = a_i ⊗ x_i with a_i = p_i - onehot(argmax p_i); ||g_i - g_j||^2 =
    # |a_i|^2 |x_i|^2 + |a_j|^2 |x_j|^2 - 2 (a_i . a_j)(x_i . x_j)
    a = p.copy()
    a[np.arange(len(p)), p.argmax(axis=1)] -= 1.0
    norms = np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", x, x)
    if not (norms > 0).any():
        # every row predicted with certainty: no gradient to tell them apart, so spread out instead
        return _k_center_greedy(x, None, k, rng)
    first = int(np.argmax(norms))  # the largest gradient, as BADGE's k-means++ starts
    chosen = [first]
    nearest = np.full(len(p), np.inf)
    for _ in range(k - 1):
        j = chosen[-1]
        d = norms + norms[j] - 2.0 * (a @ a[j]) * (x @ x[j])
        nearest = np.minimum(nearest, np.maximum(d, 0.0))
        nearest[chosen] = 0.0
        total = nearest.sum()
        if total <= 0:
            rest = np.setdiff1d(np.arange(len(p)), chosen)
            chosen.extend(rng.permutation(rest)[: k - len(chosen)].tolist())
            break
        chosen.append(int(rng.choice(len(p), p=nearest / total)))
    return np.asarray(chosen, dtype=np.int64)
