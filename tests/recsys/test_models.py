"""Classic recommenders: planted-structure recovery, fold-in, state round-trips and setting checks."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from safetensors.numpy import load_file, save_file

from tunesmith.errors import ArtifactError, ConfigError, DataError, NotFittedError
from tunesmith.recsys.models import (
    BPRMF,
    EASE,
    ItemKNN,
    ItemScorer,
    Popularity,
    model_from_state,
)

N_USERS, N_ITEMS, BLOCK = 80, 40, 20


def planted_log(seed: int = 0) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray]:
    """Two user groups, each liking its own half of the items (popularity-skewed inside it), plus noise.

    Returns the training matrix, a held-out matrix of 2 own-block items per user, and each user's group.
    """
    rng = np.random.default_rng(seed)
    group = np.arange(N_USERS) % 2
    skew = 1.0 / np.arange(1, BLOCK + 1) ** 0.7
    train_rows, train_cols, test_rows, test_cols = [], [], [], []
    for u in range(N_USERS):
        own = rng.choice(BLOCK, size=10, replace=False, p=skew / skew.sum()) + group[u] * BLOCK
        noise = rng.choice(N_ITEMS, size=2, replace=False)
        train_items = set(own[2:]) | set(noise)
        held = [i for i in own[:2] if i not in train_items]
        train_rows += [u] * len(train_items)
        train_cols += sorted(train_items)
        test_rows += [u] * len(held)
        test_cols += held
    train = sp.csr_matrix((np.ones(len(train_rows), np.float32), (train_rows, train_cols)), shape=(N_USERS, N_ITEMS))
    test = sp.csr_matrix((np.ones(len(test_rows), np.float32), (test_rows, test_cols)), shape=(N_USERS, N_ITEMS))
    return train, test, group


@pytest.fixture(scope="module")
def log() -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray]:
    return planted_log()


def top_unseen(scores: np.ndarray, train: sp.csr_matrix, k: int) -> np.ndarray:
    """Top-k item codes per row over items not in the row's training history (the caller's exclusion)."""
    masked = scores.astype(np.float64).copy()
    masked[train.nonzero()] = -np.inf
    return np.argsort(-masked, axis=1, kind="stable")[:, :k]


def own_block_share(top: np.ndarray, group: np.ndarray) -> float:
    return float(np.mean(top // BLOCK == group[:, None]))


def hit_rate(top: np.ndarray, test: sp.csr_matrix) -> float:
    hits = [len(set(top[u]) & set(test[u].indices)) > 0 for u in range(test.shape[0]) if test[u].nnz]
    return float(np.mean(hits))


def random_hit_rate(train: sp.csr_matrix, test: sp.csr_matrix, k: int) -> float:
    """Expected hit rate of a random top-k over each user's unseen items."""
    rates = []
    for u in range(test.shape[0]):
        n_unseen, n_held = N_ITEMS - train[u].nnz, test[u].nnz
        if n_held:
            miss = np.prod([(n_unseen - n_held - t) / (n_unseen - t) for t in range(k)])
            rates.append(1.0 - miss)
    return float(np.mean(rates))


def small_bpr(**kw: object) -> BPRMF:
    settings: dict = {"factors": 8, "lr": 0.05, "reg": 0.03, "epochs": 40, "batch_size": 128, "seed": 0}
    settings.update(kw)
    return BPRMF(**settings)


PERSONAL = {
    "ItemKNN": lambda: ItemKNN(k=20, shrink=2.0),
    "ItemKNN-jaccard": lambda: ItemKNN(k=20, shrink=2.0, similarity="jaccard"),
    "EASE": lambda: EASE(l2=10.0),
    "BPRMF": small_bpr,
}


@pytest.mark.parametrize("name", list(PERSONAL))
def test_personal_models_recover_the_planted_blocks(log, name: str) -> None:
    train, test, group = log
    model = PERSONAL[name]().fit(train)
    assert isinstance(model, ItemScorer)
    scores = model.score(train)
    assert scores.shape == (N_USERS, N_ITEMS) and scores.dtype == np.float32
    top = top_unseen(scores, train, k=5)
    # A block-blind ranking puts half its picks in the user's own block.
    assert own_block_share(top, group) >= 0.85
    assert hit_rate(top, test) >= 2.0 * random_hit_rate(train, test, k=5)


@pytest.mark.parametrize("name", list(PERSONAL))
def test_new_users_are_served_from_their_history_alone(log, name: str) -> None:
    train, _, _ = log
    model = PERSONAL[name]().fit(train)
    # Users absent from training, each with six popular items of one block.
    rows = np.repeat(np.arange(4), 6)
    cols = np.concatenate([np.arange(6), np.arange(6) + BLOCK, np.arange(1, 7), np.arange(1, 7) + BLOCK])
    history = sp.csr_matrix((np.ones(24, np.float32), (rows, cols)), shape=(4, N_ITEMS))
    top = top_unseen(model.score(history), history, k=5)
    assert own_block_share(top, np.array([0, 1, 0, 1])) >= 0.9


def test_popularity_ranks_the_most_frequent_item_first(log) -> None:
    train, _, _ = log
    counts = np.bincount(train.indices, minlength=N_ITEMS)
    model = Popularity().fit(train)
    scores = model.score(train[:3])
    assert np.array_equal(scores, np.tile(counts.astype(np.float32), (3, 1)))
    assert int(np.argmax(scores[0])) == int(np.argmax(counts))
    # Weighted counts follow the values, not the number of users.
    weighted = train + sp.csr_matrix(([1000.0], ([0], [N_ITEMS - 1])), shape=train.shape)
    assert int(np.argmax(Popularity(weighted=True).fit(weighted).score(train[:1])[0])) == N_ITEMS - 1


def test_item_item_models_have_zero_diagonal_and_do_not_exclude_history(log) -> None:
    train, _, _ = log
    ease = EASE(l2=10.0).fit(train)
    knn = ItemKNN(k=5, shrink=2.0).fit(train)
    assert np.all(np.diag(ease.weights) == 0.0)
    sim = knn.similarity_matrix
    assert np.all(sim.diagonal() == 0.0)
    # At most k neighbours feed each item's score (column j holds j's neighbours).
    assert np.asarray((sim != 0).sum(axis=0)).max() <= 5
    for model in (ease, knn):
        scores = model.score(train)
        assert np.isfinite(scores).all()
        # Items a user already has are scored like any other: excluding them is the caller's job.
        assert (scores[train.nonzero()] > 0).mean() > 0.5


def test_knn_keeps_the_k_most_similar_neighbours() -> None:
    rng = np.random.default_rng(3)
    x = sp.csr_matrix((rng.random((50, 12)) < 0.3).astype(np.float32))
    full = ItemKNN(k=11, shrink=0.0).fit(x).similarity_matrix.toarray()
    dense = x.toarray()
    norms = np.linalg.norm(dense, axis=0)
    cos = dense.T @ dense / np.maximum(np.outer(norms, norms), 1e-12)
    np.fill_diagonal(cos, 0.0)
    np.testing.assert_allclose(full, cos, atol=1e-6)
    top3 = ItemKNN(k=3, shrink=0.0).fit(x).similarity_matrix.toarray()
    for j in range(12):
        kept = set(np.flatnonzero(top3[:, j]))
        assert kept == set(np.argsort(-cos[:, j], kind="stable")[:3])


def test_knn_is_fast_on_a_movielens_sized_matrix() -> None:
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 943, 100_000), rng.zipf(1.3, 100_000) % 1682
    x = sp.csr_matrix((np.ones(100_000, np.float32), (users, items)), shape=(943, 1682))
    x.data[:] = 1.0
    started = time.perf_counter()
    ItemKNN(k=100).fit(x)
    assert time.perf_counter() - started < 2.0


def test_bpr_loss_falls_and_fold_in_agrees_with_learned_users(log) -> None:
    train, _, _ = log
    losses: list[tuple[int, float]] = []
    model = small_bpr().fit(train, on_epoch=lambda epoch, loss: losses.append((epoch, loss)))
    assert [e for e, _ in losses] == list(range(1, 41))
    values = [loss for _, loss in losses]
    # Each epoch draws fresh negatives, so the loss is noisy from one epoch to the next.
    assert values[0] == pytest.approx(np.log(2), abs=0.02)
    assert np.mean(values[-5:]) < 0.5 * np.mean(values[:5])
    assert np.mean(np.diff(values) < 0) > 0.6
    assert model.item_vectors.shape == (N_ITEMS, 8)
    assert not model.item_vectors.flags.writeable
    learned = model.score_users(np.arange(N_USERS))
    folded = model.score(train)
    top_learned = top_unseen(learned, train, k=1)[:, 0]
    top_folded = top_unseen(folded, train, k=1)[:, 0]
    assert np.mean(top_learned == top_folded) >= 0.6
    corr = [np.corrcoef(learned[u], folded[u])[0, 1] for u in range(N_USERS)]
    assert np.median(corr) > 0.8
    # An empty history falls back to the item biases.
    np.testing.assert_allclose(model.score(sp.csr_matrix((1, N_ITEMS)))[0], model.item_bias)


def test_bpr_fold_in_climbs_the_bpr_objective_row_by_row(log) -> None:
    train, _, _ = log
    model = small_bpr().fit(train)
    v, b = model.item_factors.astype(np.float64), model.item_bias.astype(np.float64)

    def objective(u: np.ndarray, items: np.ndarray) -> float:
        s = v @ u + b
        negatives = np.setdiff1d(np.arange(N_ITEMS), items)
        margins = s[items][:, None] - s[negatives][None, :]
        return float(-np.logaddexp(0.0, -margins).mean() - model.reg / 2 * u @ u)

    values = []
    for steps in (0, 1, 3, 10):
        model.fold_in_steps = steps
        users = model.fold_in(train[:10])
        values.append([objective(users[r].astype(np.float64), train[r].indices) for r in range(10)])
    gains = np.diff(np.array(values), axis=0)
    assert (gains > -1e-5).all() and gains[0].mean() > 0
    # Rows are solved independently: a slice scores like the same rows of the whole batch.
    # Equal up to float rounding: matrix products of other shapes may round differently.
    np.testing.assert_allclose(model.score(train[3:6]), model.score(train)[3:6], rtol=1e-5, atol=1e-6)


def test_bpr_is_deterministic_for_a_seed(log) -> None:
    train, _, _ = log
    a, b = small_bpr(epochs=3).fit(train), small_bpr(epochs=3).fit(train)
    c = small_bpr(epochs=3, seed=1).fit(train)
    assert np.array_equal(a.item_factors, b.item_factors) and np.array_equal(a.user_factors, b.user_factors)
    assert not np.array_equal(a.item_factors, c.item_factors)


def test_bpr_early_stopping_keeps_the_best_epoch(log) -> None:
    train, _, _ = log
    # Validation peaks at epoch 3 and never recovers: training stops 2 epochs later, epoch 3 kept.
    curve = iter([0.1, 0.2, 0.5, 0.4, 0.3, 0.9])
    snapshots: list[np.ndarray] = []

    def valid_fn(model: BPRMF) -> float:
        snapshots.append(model.item_factors.copy())
        return next(curve)

    model = small_bpr(patience=2).fit(train, valid_fn=valid_fn)
    assert len(model.history_) == 5 and model.best_epoch_ == 3
    assert [r["valid"] for r in model.history_] == [0.1, 0.2, 0.5, 0.4, 0.3]
    assert np.array_equal(model.item_factors, snapshots[2])


@pytest.mark.parametrize(
    "make",
    [Popularity, lambda: ItemKNN(k=5), lambda: EASE(l2=10.0), lambda: small_bpr(epochs=2)],
    ids=["Popularity", "ItemKNN", "EASE", "BPRMF"],
)
def test_state_round_trips_through_safetensors_and_json(log, tmp_path: Path, make) -> None:
    train, _, _ = log
    model = make().fit(train)
    arrays, settings = model.state()
    save_file(arrays, str(tmp_path / "model.safetensors"))
    (tmp_path / "model.json").write_text(json.dumps(settings))
    loaded_arrays = load_file(str(tmp_path / "model.safetensors"))
    loaded_settings = json.loads((tmp_path / "model.json").read_text())
    for again in (type(model).from_state(loaded_arrays, loaded_settings), model_from_state(arrays, settings)):
        assert type(again) is type(model) and again.params() == model.params()
        assert np.array_equal(again.score(train[:7]), model.score(train[:7]))
    if isinstance(model, BPRMF):
        again = BPRMF.from_state(loaded_arrays, loaded_settings)
        assert np.array_equal(again.score_users([0, 5]), model.score_users([0, 5]))


def test_state_refuses_the_wrong_model_or_damaged_arrays(log) -> None:
    train, _, _ = log
    arrays, settings = EASE(l2=10.0).fit(train).state()
    with pytest.raises(ArtifactError, match="ItemKNN"):
        ItemKNN.from_state(arrays, settings)
    with pytest.raises(ArtifactError, match="shape"):
        EASE.from_state({"weights": arrays["weights"][:5]}, settings)
    with pytest.raises(ArtifactError, match="lacks"):
        EASE.from_state({}, settings)
    with pytest.raises(ArtifactError, match="unknown params"):
        EASE.from_state(arrays, {**settings, "params": {"lambda": 3.0}})
    with pytest.raises(ArtifactError, match="unknown recommender"):
        model_from_state(arrays, {**settings, "model": "Nope"})


@pytest.mark.parametrize("make", [Popularity, ItemKNN, EASE, BPRMF])
def test_scoring_needs_a_fit_and_the_right_columns(log, make) -> None:
    train, _, _ = log
    model = make()
    with pytest.raises(NotFittedError, match="not fitted"):
        model.score(train)
    with pytest.raises(NotFittedError):
        model.state()
    model = make(epochs=1) if make is BPRMF else make()
    model.fit(train)
    with pytest.raises(DataError, match=f"41 item columns but the model was fitted on {N_ITEMS}"):
        model.score(sp.csr_matrix((2, N_ITEMS + 1)))
    with pytest.raises(DataError, match="scipy.sparse"):
        model.score([[1, 0]])


def test_bad_inputs_raise_data_errors(log) -> None:
    train, _, _ = log
    with pytest.raises(DataError, match="no interactions"):
        EASE().fit(sp.csr_matrix((5, 4)))
    negative = train.copy()
    negative.data[0] = -1.0
    with pytest.raises(DataError, match="negative"):
        ItemKNN().fit(negative)
    model = small_bpr(epochs=1).fit(train)
    with pytest.raises(DataError, match=r"\[0, 80\)"):
        model.score_users([0, 80])


@pytest.mark.parametrize(
    ("make", "key"),
    [
        (lambda: ItemKNN(k=0), "k"),
        (lambda: ItemKNN(shrink=-1.0), "shrink"),
        (lambda: ItemKNN(similarity="pearson"), "similarity"),
        (lambda: EASE(l2=0.0), "l2"),
        (lambda: EASE(l2=float("nan")), "l2"),
        (lambda: BPRMF(factors=0), "factors"),
        (lambda: BPRMF(lr=-0.1), "lr"),
        (lambda: BPRMF(reg=-1.0), "reg"),
        (lambda: BPRMF(epochs=2.5), "epochs"),
        (lambda: BPRMF(batch_size=True), "batch_size"),
        (lambda: BPRMF(seed=-1), "seed"),
        (lambda: BPRMF(negatives=0), "negatives"),
        (lambda: BPRMF(patience=0), "patience"),
        (lambda: BPRMF(fold_in_steps=-1), "fold_in_steps"),
        (lambda: BPRMF(reg=0.0), "reg"),
        (lambda: Popularity(weighted="yes"), "weighted"),
    ],
)
def test_bad_settings_raise_config_error_naming_the_setting(make, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        make()
    assert info.value.key == key
    assert f"setting {key!r}" in str(info.value)


# --- real data -----------------------------------------------------------------------------------


def movielens_split() -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """ML-100K as users x items, split 75/25 per user at random (seed 0); every rating counts as relevant."""
    spec = importlib.util.find_spec("recbole")
    path = Path(spec.origin).parent / "dataset_example" / "ml-100k" / "ml-100k.inter" if spec and spec.origin else None
    if path is None or not path.exists():
        pytest.skip("MovieLens-100K from recbole's examples is not installed")
    raw = np.loadtxt(path, delimiter="\t", skiprows=1, usecols=(0, 1), dtype=np.int64)
    users = np.unique(raw[:, 0], return_inverse=True)[1]
    items = np.unique(raw[:, 1], return_inverse=True)[1]
    rng = np.random.default_rng(0)
    order = np.lexsort((rng.random(len(users)), users))
    users, items = users[order], items[order]
    counts = np.bincount(users)
    rank = np.arange(len(users)) - np.repeat(np.cumsum(counts) - counts, counts)
    is_train = rank < np.round(0.75 * counts)[users]
    shape = (counts.size, int(items.max()) + 1)

    def matrix(mask: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix((np.ones(mask.sum(), np.float32), (users[mask], items[mask])), shape=shape)

    return matrix(is_train), matrix(~is_train)


def ndcg_at_10(scores: np.ndarray, train: sp.csr_matrix, test: sp.csr_matrix) -> float:
    top = top_unseen(scores, train, k=10)
    relevant = np.asarray(test[np.arange(test.shape[0])[:, None], top].todense()) > 0
    discount = 1.0 / np.log2(np.arange(2, 12))
    n_relevant = np.diff(test.indptr)
    ideal = np.cumsum(discount)[np.minimum(n_relevant, 10) - 1]
    has = n_relevant > 0
    return float(((relevant * discount).sum(axis=1)[has] / ideal[has]).mean())


@pytest.mark.slow
def test_movielens_100k_ndcg() -> None:
    train, test = movielens_split()
    assert train.shape == (943, 1682) and train.nnz + test.nnz == 100_000
    found = {}
    for name, model in {
        "EASE": EASE(l2=400.0),
        "ItemKNN": ItemKNN(k=200, shrink=10.0),
        "BPRMF": BPRMF(factors=64, lr=0.02, reg=0.03, negatives=3, epochs=60),
    }.items():
        started = time.perf_counter()
        model.fit(train)
        fit_seconds = time.perf_counter() - started
        found[name] = ndcg_at_10(model.score(train), train, test)
        print(f"{name}: NDCG@10 {found[name]:.4f}, fit {fit_seconds:.1f}s")
    # Published for this protocol: BiVAE 0.475, BPR 0.441 (Microsoft Recommenders benchmark).
    assert found["EASE"] > 0.47
    assert found["ItemKNN"] > 0.43
    assert found["BPRMF"] > 0.44
