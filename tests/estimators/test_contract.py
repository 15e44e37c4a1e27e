"""One contract test, run over every kind of model (scikit-learn's ``check_estimator`` is the model).

Each kind is fitted once per module on tiny data with a tiny backbone; every check then asks
the same questions of every kind: fit returns self, predict and score work, predict_proba is
offered by classifiers and refused with a clear error otherwise, ``embed`` gives each row's
representation (or says what to monitor instead), save then ``tunesmith.load`` gives the same
kind and identical predictions and representations, clone and get/set params round-trip, bad
settings are refused at construction, a run record is written, the same seed gives the same
model, and the registry knows the kind.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from tunesmith.errors import ConfigError, NotFittedError
from tunesmith.estimators import registry
from tunesmith.estimators.base import Estimator, NotSupportedError
from tunesmith.kinds import load


def _reviews(n: int = 48, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    good = ["great fun movie", "best film i love it", "good story", "a great great film"]
    bad = ["awful boring movie", "worst film i hate it", "bad dull story", "a dull dull film"]
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        pool = good if label == "pos" else bad
        rows.append({"text": pool[rng.integers(len(pool))] + " " + rng.choice(["the", "a", "it"]), "label": label})
    return pd.DataFrame(rows)


def _stripes(n: int = 90, seed: int = 0, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = np.zeros((n, size, size), dtype=np.float32)
    band = size // 3
    for i, c in enumerate(y):
        x[i, c * band : (c + 1) * band, :] = 1.0
    return np.clip(x + rng.normal(0, 0.15, x.shape), 0, 1).astype(np.float32), y


def _table(n: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    color = rng.choice(["red", "green", "blue"], size=n)
    logit = 2.0 * x1 - x2 + np.where(color == "red", 2.0, -1.0)
    label = np.where(logit + rng.normal(scale=0.5, size=n) > 0, "yes", "no")
    return pd.DataFrame({"x1": x1, "x2": x2, "color": color, "label": label})


def _log(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(60):
        group = u % 3
        picks = rng.choice(np.arange(group * 10, group * 10 + 10), size=6, replace=False)
        for t, i in enumerate(picks):
            rows.append({"user_id": f"u{u}", "item_id": f"i{i}", "timestamp": t, "rating": 5 if t % 2 == 0 else 4})
    return pd.DataFrame(rows)


def _ratings(n_users: int = 12, rows: int = 20, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    out = []
    for u in range(n_users):
        contrarian = u % 4 == 0
        for t in range(rows):
            good = bool(rng.random() < 0.5)
            out.append(
                {
                    "user": f"u{u}",
                    "t": t,
                    "text": ("a good great film" if good else "a bad awful film") + rng.choice([" indeed", ""]),
                    "label": "yes" if good != contrarian else "no",
                }
            )
    return pd.DataFrame(out)


@dataclass
class Case:
    """How to build, fit and query one kind on tiny data."""

    kind: str
    params: Callable[[Path], dict[str, Any]]
    data: Callable[[], Any]
    fit_kwargs: dict[str, Any]
    predict_input: Callable[[Any], Any]
    bad_setting: tuple[str, Any]
    classifier: bool = True
    load_options: Callable[[Path], dict[str, Any]] = field(default=lambda tmp: {})
    embed_refusal: str | None = None  # for kinds without a representation: words of the hint


TEXT = {"backbone": "tiny-text", "epochs": 2, "batch_size": 8, "lr": 3e-3, "max_length": 16, "progress": False}


def _shared_model(tmp: Path) -> Path:
    folder = tmp / "shared-model"
    if not folder.exists():
        from tunesmith.estimators.text import FineTuner

        params = {**TEXT, "epochs": 3, "runs_dir": "", "baselines": False, "num_threads": 1}
        FineTuner(**params).fit(_ratings()[["text", "label"]], target="label").save(folder)
    return folder


CASES = [
    Case(
        "text",
        lambda tmp: {**TEXT, "runs_dir": str(tmp / "runs"), "num_threads": 1},
        _reviews,
        {"target": "label"},
        lambda data: data[["text"]],
        ("lr", -1.0),
    ),
    Case(
        "image",
        lambda tmp: {
            "backbone": "tiny-image",
            "image_size": 16,
            "progress": False,
            "batch_size": 32,
            "lr": 3e-3,
            "epochs": 2,
            "runs_dir": str(tmp / "runs"),
        },
        _stripes,
        {},
        lambda data: data[0][:12],
        ("lr", -1.0),
    ),
    Case(
        "tabular",
        lambda tmp: {
            "n_estimators": 40,
            "early_stopping_rounds": 10,
            "epochs": 4,
            "progress": False,
            "runs_dir": str(tmp / "runs"),
        },
        _table,
        {"target": "label"},
        lambda data: data.drop(columns=["label"]).head(20),
        ("n_estimators", 0),
        embed_refusal="input columns",
    ),
    Case(
        "recommender",
        lambda tmp: {"model": "ease", "min_rating": 5, "runs_dir": str(tmp / "runs")},
        _log,
        {"target": "rating"},
        lambda data: data.head(30),
        ("model", "no-such-model"),
        classifier=False,
        embed_refusal="users, items and recommended items",
    ),
    Case(
        "personalized",
        lambda tmp: {
            "base": str(_shared_model(tmp)),
            "store": str(tmp / "store"),
            "user_column": "user",
            "time_column": "t",
            "min_rows": 8,
            "steps": 30,
            "progress": False,
            "runs_dir": str(tmp / "runs"),
        },
        _ratings,
        {"target": "label"},
        lambda data: data.drop(columns=["label"]).head(20),
        ("min_rows", 1),
        load_options=lambda tmp: {"base": str(_shared_model(tmp))},
    ),
]


def _data(case: Case) -> tuple[Any, dict[str, Any]]:
    data = case.data()
    if isinstance(data, tuple):  # arrays: X, y
        return data[0], {"y": data[1], **case.fit_kwargs}
    return data, dict(case.fit_kwargs)


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.kind)
def fitted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Case, Any, Any, Path]:
    case: Case = request.param
    tmp = tmp_path_factory.mktemp(case.kind)
    cls = registry.get(case.kind).estimator
    est = cls(**case.params(tmp))
    data, kwargs = _data(case)
    y = kwargs.pop("y", None)
    out = est.fit(data, y, **kwargs) if y is not None else est.fit(data, **kwargs)
    assert out is est, "fit must return self"
    return case, est, data, tmp


def test_every_kind_is_registered() -> None:
    assert set(registry.names()) >= {c.kind for c in CASES}
    for case in CASES:
        kind = registry.get(case.kind)
        assert issubclass(kind.estimator, Estimator)
        assert kind.estimator.kind == case.kind
        assert registry.of(kind.estimator) is kind


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.kind)
def test_bad_and_unknown_settings_are_refused_at_construction(case: Case, tmp_path: Path) -> None:
    cls = registry.get(case.kind).estimator
    name, value = case.bad_setting
    with pytest.raises(ConfigError) as err:
        cls(**{**case.params(tmp_path), name: value})
    assert err.value.key == name
    with pytest.raises(ConfigError, match="nonsense"):
        cls(**case.params(tmp_path), nonsense=1)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.kind)
def test_params_round_trip_and_clone(case: Case, tmp_path: Path) -> None:
    cls = registry.get(case.kind).estimator
    est = cls(**case.params(tmp_path))
    params = est.get_params()
    for key, value in case.params(tmp_path).items():
        assert params[key] == value
    twin = clone(est)
    assert type(twin) is cls and twin is not est and twin.get_params() == params
    name, value = case.bad_setting
    with pytest.raises(ConfigError):
        est.set_params(**{name: value})
    assert est.get_params() == params, "a refused set_params must change nothing"
    assert not est.is_fitted
    with pytest.raises(NotFittedError):
        est.predict(case.predict_input(_data(case)[0]))


def test_predict_score_and_proba(fitted: tuple[Case, Any, Any, Path]) -> None:
    case, est, data, _ = fitted
    rows = case.predict_input(data)
    pred = est.predict(rows)
    assert len(pred) == len(rows)
    full, kwargs = _data(case)
    y = kwargs.pop("y", None)
    score = est.score(full, y) if y is not None else est.score(full, **kwargs)
    assert isinstance(score, float) and math.isfinite(score)
    if case.classifier:
        proba = np.asarray(est.predict_proba(rows))
        assert proba.shape[0] == len(rows)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    else:
        with pytest.raises(NotSupportedError, match="predict_proba"):
            est.predict_proba(rows)


def test_save_load_gives_the_same_kind_and_predictions(fitted: tuple[Case, Any, Any, Path]) -> None:
    case, est, data, tmp = fitted
    folder = est.save(tmp / "saved", overwrite=True)
    again = load(folder, **case.load_options(tmp))
    assert type(again) is type(est)
    rows = case.predict_input(data)
    first, second = est.predict(rows), again.predict(rows)
    assert [str(v) for v in np.asarray(first, dtype=object).ravel()] == [
        str(v) for v in np.asarray(second, dtype=object).ravel()
    ]
    meta_file = Path(folder) / registry.get(case.kind).marker
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    if registry.get(case.kind).marker == "tunesmith.json":
        assert meta["format"] == "tunesmith-model" and meta["format_version"] == 2 and meta["kind"] == case.kind


def _take(rows: Any, index: list[int]) -> Any:
    return rows.iloc[index] if isinstance(rows, pd.DataFrame) else rows[index]


def test_embed_gives_the_models_representation_or_says_what_to_monitor(fitted: tuple[Case, Any, Any, Path]) -> None:
    case, est, data, tmp = fitted
    rows = case.predict_input(data)
    if case.embed_refusal is not None:
        with pytest.raises(NotSupportedError, match="embed") as err:
            est.embed(rows)
        assert case.embed_refusal in str(err.value.hint)
        return
    vectors = est.embed(rows)
    assert vectors.dtype == np.float32 and vectors.ndim == 2
    assert vectors.shape[0] == len(rows) and vectors.shape[1] > 1
    assert np.isfinite(vectors).all()
    np.testing.assert_array_equal(est.embed(rows), vectors)
    assert not np.allclose(vectors[0], vectors[1]), "different rows get different vectors"
    order = [0, 1, 2, 3]
    np.testing.assert_allclose(est.embed(_take(rows, order[::-1])), vectors[order][::-1], atol=1e-5)
    np.testing.assert_array_equal(est.embed(rows, max_rows=2), vectors[:2])
    with pytest.raises(ConfigError) as err:
        est.embed(rows, max_rows=0)
    assert err.value.key == "max_rows"
    folder = est.save(tmp / "saved-for-embed", overwrite=True)
    again = load(folder, **case.load_options(tmp))
    np.testing.assert_allclose(again.embed(rows), vectors, atol=1e-5)


def test_embed_is_what_the_head_sees(fitted: tuple[Case, Any, Any, Path]) -> None:
    import torch

    case, est, data, _ = fitted
    if case.kind not in ("text", "image"):
        pytest.skip("only the fine-tuned networks have their head as model_.head")
    rows = case.predict_input(data)
    with torch.inference_mode():
        logits = est.model_.head(torch.as_tensor(est.embed(rows)))
    np.testing.assert_allclose(torch.softmax(logits, dim=-1).numpy(), est.predict_proba(rows), atol=1e-5)


def test_a_run_record_is_written(fitted: tuple[Case, Any, Any, Path]) -> None:
    _, est, _, _ = fitted
    run = Path(est.run_dir_)
    for name in ("config.yaml", "data.json", "environment.json", "metrics.json", "report.md"):
        assert (run / name).is_file(), f"{name} missing from the run record"
    data = json.loads((run / "data.json").read_text(encoding="utf-8"))
    assert data.get("rows"), "rows per split are recorded"
    assert "dropped" in data, "dropped rows by reason are recorded"


def test_same_seed_same_model(fitted: tuple[Case, Any, Any, Path]) -> None:
    case, est, data, tmp = fitted
    cls = type(est)
    params = {**est.get_params()}
    if "store" in params:
        params["store"] = str(tmp / "store-again")
    if "runs_dir" in params:
        params["runs_dir"] = ""
    data, kwargs = _data(case)
    y = kwargs.pop("y", None)
    twin = cls(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        twin.fit(data, y, **kwargs) if y is not None else twin.fit(data, **kwargs)
    rows = case.predict_input(data)
    if case.classifier:
        np.testing.assert_allclose(np.asarray(twin.predict_proba(rows)), np.asarray(est.predict_proba(rows)), atol=1e-6)
    else:
        assert [str(v) for v in np.asarray(twin.predict(rows), dtype=object).ravel()] == [
            str(v) for v in np.asarray(est.predict(rows), dtype=object).ravel()
        ]


@pytest.mark.parametrize("case", [c for c in CASES if c.kind in ("text", "tabular", "image")], ids=lambda c: c.kind)
def test_a_small_test_split_is_called_out(case: Case, tmp_path: Path) -> None:
    cls = registry.get(case.kind).estimator
    fields = cls.settings_model.model_fields
    params = {**case.params(tmp_path), "runs_dir": "", "epochs": 1}
    params.update({k: v for k, v in (("baselines", False), ("test_size", 0.1)) if k in fields})
    data, kwargs = _data(case)
    y = kwargs.pop("y", None)
    if "test_size" not in fields:  # a kind without its own test split is given four test rows
        data, kwargs["test_set"] = data.iloc[:-4], data.iloc[-4:]
    est = cls(**params)
    est.fit(data, y, **kwargs) if y is not None else est.fit(data, **kwargs)
    warned = " ".join(est.uncertainty_.get("warnings") or [])
    assert "test rows" in warned or "test split" in warned, warned
    metric = "accuracy"
    lo, hi = est.test_metrics_[f"{metric}_ci"]
    assert lo <= est.test_metrics_[metric] <= hi


@pytest.mark.parametrize("case", [c for c in CASES if c.kind in ("text", "tabular")], ids=lambda c: c.kind)
def test_a_target_with_as_many_classes_as_rows_is_refused(case: Case, tmp_path: Path) -> None:
    from tunesmith.errors import DataError

    cls = registry.get(case.kind).estimator
    data = case.data()
    data = data.assign(label=[f"row{i}" for i in range(len(data))])
    with pytest.raises(DataError, match=r"column 'label'.*distinct classes"):
        cls(**{**case.params(tmp_path), "runs_dir": ""}).fit(data, target="label")
