"""End-to-end behaviour of FineTuner on the tiny backbone."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone

import tunesmith
from tests.conftest import make_reviews
from tunesmith import ArtifactError, ConfigError, DataError, FineTuner, NotFittedError


def test_constructor_validates_and_params_roundtrip():
    with pytest.raises(ConfigError, match="setting 'epoch'.*did you mean 'epochs'"):
        FineTuner(epoch=3)
    ft = FineTuner(backbone="tiny-text", lr=1e-3)
    params = ft.get_params()
    assert params["lr"] == 1e-3 and params["epochs"] == 3
    other = clone(ft)
    assert other.get_params() == params and other is not ft
    ft.set_params(epochs=5)
    assert ft.get_params()["epochs"] == 5
    with pytest.raises(ConfigError, match="setting 'epochs'"):
        ft.set_params(epochs=0)
    assert ft.get_params()["epochs"] == 5  # a rejected change leaves the estimator as it was


def test_not_fitted():
    with pytest.raises(NotFittedError, match="not fitted"):
        FineTuner(backbone="tiny-text").predict(["x"])


def test_fit_learns_and_beats_majority(fast_params, reviews):
    ft = FineTuner(**{**fast_params, **dict(epochs=8, lr=1e-2)}).fit(reviews, target="label")
    assert ft is not None and ft.test_metrics_ is not None
    assert ft.split_sizes_ == {"train": 38, "valid": 5, "test": 5} or sum(ft.split_sizes_.values()) == 48
    assert set(ft.classes_) == {"neg", "pos"}
    acc = ft.score(make_reviews(40, seed=7), target="label")
    assert acc >= 0.9
    assert {"majority", "tfidf", "frozen"} <= set(ft.baseline_metrics_)
    assert ft.history_ and "valid_loss" in ft.history_[0]
    proba = ft.predict_proba(["great fun movie", "awful boring movie"])
    assert proba.shape == (2, 2) and np.allclose(proba.sum(1), 1.0, atol=1e-5)
    assert list(ft.predict(["great fun movie", "awful boring movie"])) == ["pos", "neg"]


def test_same_seed_same_weights(fast_params, reviews):
    a = FineTuner(**{**fast_params, **dict(baselines=False)}).fit(reviews, target="label")
    b = FineTuner(**{**fast_params, **dict(baselines=False)}).fit(reviews, target="label")
    sa, sb = a.model_.state_dict(), b.model_.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c = FineTuner(**{**fast_params, "seed": 1, "baselines": False}).fit(reviews, target="label")
    assert not torch.equal(sa["head.linear.weight"], c.model_.state_dict()["head.linear.weight"])


def test_run_record_and_report(fast_params, reviews, tmp_path):
    ft = FineTuner(**fast_params).fit(reviews, target="label")
    run = ft.run_dir_
    for name in (
        "config.yaml",
        "data.json",
        "environment.json",
        "metrics.jsonl",
        "report.md",
        "learning_curves.png",
        "confusion_matrix.png",
    ):
        assert (run / name).is_file(), name
    lines = (run / "metrics.jsonl").read_text().strip().splitlines()
    assert len(lines) == len(ft.history_)
    data = json.loads((run / "data.json").read_text())
    assert data["rows"]["train"] + data["rows"]["valid"] + data["rows"]["test"] == 48
    assert len(data["sha256"]) == 64
    report = (run / "report.md").read_text()
    assert "majority" in report.lower() and "tf-idf" in report.lower()


@pytest.mark.parametrize(
    "extra",
    [
        {"strategy": "head_only", "lr": 1e-2},
        {"strategy": "lora", "lr": 1e-2, "lora_r": 4},
        {"freeze_layers": 1, "freeze_embeddings": True},
        {"gradual_unfreeze": True, "layer_lr_decay": 0.8},
        {
            "loss": "focal",
            "class_weight": "balanced",
            "optimizer": "sgd",
            "scheduler": "cosine",
            "warmup_ratio": 0.1,
            "grad_accum_steps": 2,
        },
        {
            "loss": "cross_entropy",
            "label_smoothing": 0.1,
            "optimizer": "rmsprop",
            "lr": 1e-3,
            "scheduler": "constant",
        },
    ],
    ids=["head_only", "lora", "frozen_prefix", "gradual", "focal_sgd_accum", "smoothing_rmsprop"],
)
def test_strategies_save_and_load_identically(fast_params, reviews, tmp_path, extra):
    ft = FineTuner(**{**fast_params, **extra, "baselines": False}).fit(reviews, target="label")
    before = ft.predict_proba(["great fun movie", "dull awful film"])
    path = ft.save(tmp_path / "model")
    assert (path / "model.safetensors").is_file() and (path / "tunesmith.json").is_file()
    assert (path / "card.md").is_file() and (path / "tokenizer").is_dir()
    loaded = tunesmith.load(path)
    after = loaded.predict_proba(["great fun movie", "dull awful film"])
    np.testing.assert_allclose(before, after, atol=1e-5)
    if extra.get("strategy") in ("lora", "head_only"):
        # only what was trained is stored: much smaller than the full backbone
        full_bytes = sum(p.numel() * 4 for p in ft.model_.parameters())
        assert (path / "model.safetensors").stat().st_size < full_bytes / 2


def test_frozen_prefix_really_frozen(fast_params, reviews):
    before = FineTuner(**{**fast_params, **dict(baselines=False, epochs=1)})
    from tunesmith.backbones import create_backbone

    fresh = create_backbone("tiny-text")
    ft = FineTuner(**{**fast_params, **dict(baselines=False, freeze_layers=1)}).fit(reviews, target="label")
    emb = ft.backbone_.model.embeddings.word_embeddings.weight
    assert torch.equal(emb, fresh.model.embeddings.word_embeddings.weight)
    top = ft.backbone_.model.encoder.layer[1].output.dense.weight
    assert not torch.equal(top, fresh.model.encoder.layer[1].output.dense.weight)
    assert before.get_params()["freeze_layers"] == 0


def test_regression(fast_params):
    rng = np.random.default_rng(0)
    texts = [("great " * int(k)) + "film" for k in rng.integers(0, 6, size=60)]
    y = [t.count("great") * 2.0 + 1.0 + float(rng.normal(0, 0.1)) for t in texts]
    ft = FineTuner(**{**fast_params, **dict(epochs=8, baselines=True)}).fit(texts, y)
    assert ft.schema_.task == "regression"
    assert ft.test_metrics_["rmse"] < ft.baseline_metrics_["majority"]["rmse"]
    pred = ft.predict(["great great great film"])
    assert pred.dtype.kind == "f"


def test_integer_labels_come_back_as_ints(fast_params, reviews):
    df = reviews.assign(label=(reviews.label == "pos").astype(int))
    ft = FineTuner(**{**fast_params, **dict(baselines=False, epochs=1)}).fit(df, target="label")
    assert ft.predict(["great fun"]).dtype.kind == "i"


def test_unseen_label_at_evaluation(fast_params, reviews):
    ft = FineTuner(**{**fast_params, **dict(baselines=False, epochs=1)}).fit(reviews, target="label")
    bad = reviews.head(5).copy()
    bad.loc[bad.index[3], "label"] = "meh"
    with pytest.raises(DataError, match=r"row 4.*'meh'.*not seen in training"):
        ft.evaluate(bad, target="label")


def test_missing_text_column_at_prediction(fast_params, reviews):
    df = reviews.rename(columns={"text": "review"})
    ft = FineTuner(**{**fast_params, **dict(baselines=False, epochs=1)}).fit(df, target="label")
    with pytest.raises(DataError, match="column 'review'"):
        ft.predict(reviews[["text"]].rename(columns={"text": "body"}).assign(x=1))


def test_refuses_pickle_in_model_folder(fast_params, reviews, tmp_path):
    ft = FineTuner(**{**fast_params, **dict(baselines=False, epochs=1)}).fit(reviews, target="label")
    path = ft.save(tmp_path / "m")
    (path / "extra.pkl").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ArtifactError, match="pickle"):
        tunesmith.load(path)


def test_save_is_atomic_and_refuses_overwrite(fast_params, reviews, tmp_path):
    ft = FineTuner(**{**fast_params, **dict(baselines=False, epochs=1)}).fit(reviews, target="label")
    ft.save(tmp_path / "m")
    with pytest.raises(ArtifactError, match="already exists"):
        ft.save(tmp_path / "m")
    ft.save(tmp_path / "m", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "runs"]  # no temporary folder left


def test_group_column_keeps_groups_apart(fast_params, reviews):
    ft = FineTuner(
        **{
            **fast_params,
            **dict(baselines=False, epochs=1, group_column="user", valid_size=0.25, test_size=0.25),
        }
    ).fit(make_reviews(users=True), target="label")
    assert ft.split_info_["strategy"] == "grouped"


def test_early_stopping_stops_and_restores(fast_params, reviews):
    ft = FineTuner(**{**fast_params, **dict(baselines=False, epochs=30, lr=5e-2, patience=1, monitor="loss")}).fit(
        reviews, target="label"
    )
    assert ft.stop_reason_ is not None and len(ft.history_) < 30
    best = min(h["valid_loss"] for h in ft.history_)
    assert ft.history_[ft.best_epoch_ - 1]["valid_loss"] == best


def test_sklearn_score_with_y_and_single_text(fast_params, reviews):
    ft = FineTuner(**{**fast_params, "baselines": False, "epochs": 4}).fit(reviews.text.tolist(), reviews.label)
    assert 0.0 <= ft.score(reviews.text.tolist(), reviews.label.tolist()) <= 1.0
    assert ft.predict("great fun movie").shape == (1,)


def test_class_weight_keys_in_label_type(fast_params, reviews):
    df = reviews.assign(label=(reviews.label == "pos").astype(int))
    ft = FineTuner(**{**fast_params, "baselines": False, "epochs": 1, "class_weight": {0: 1.0, 1: 3.0}})
    ft.fit(df, target="label")
    with pytest.raises(ConfigError, match="label '7'"):
        FineTuner(**{**fast_params, "baselines": False, "class_weight": {7: 1.0}}).fit(df, target="label")


def test_monitor_must_fit_task(fast_params, reviews):
    with pytest.raises(ConfigError, match="monitor"):
        FineTuner(**{**fast_params, "monitor": "rmse"}).fit(reviews, target="label")


def test_eval_set_errors_name_their_own_file(fast_params, reviews, tmp_path):
    bad = reviews.head(8).copy()
    bad.loc[bad.index[2], "label"] = "meh"
    path = tmp_path / "valid.csv"
    bad.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"valid\.csv, row 3.*'meh'"):
        FineTuner(**fast_params).fit(reviews, target="label", eval_set=path)


def test_failed_refit_leaves_estimator_unfitted(fast_params, reviews):
    ft = FineTuner(**{**fast_params, "baselines": False, "epochs": 1}).fit(reviews, target="label")
    with pytest.raises(DataError):
        ft.fit(reviews.assign(label="same"), target="label")
    with pytest.raises(NotFittedError):
        ft.predict(["great fun"])


# --- the text kind under the one contract --------------------------------------------------------


def test_text_kind_is_registered_and_saves_the_one_metadata_format(tmp_path):
    from tunesmith.estimators import registry
    from tunesmith.estimators.base import Estimator
    from tunesmith.estimators.text import FineTuner as TextFineTuner

    assert FineTuner is TextFineTuner and issubclass(FineTuner, Estimator)
    kind = registry.get("text")
    assert kind.estimator is FineTuner and kind.options == ("backbone",) and kind.serving == "predict"
    ft = FineTuner(backbone="tiny-text", epochs=1, batch_size=8, runs_dir="", seed=0, progress=False)
    ft.fit(make_reviews(60), target="label")
    path = ft.save(tmp_path / "m")
    meta = json.loads((path / "tunesmith.json").read_text())
    assert meta["format"] == "tunesmith-model" and meta["format_version"] == 2 and meta["kind"] == "text"
    # Every field of the text layout is still there: the export and serving loaders read them.
    for name in ("schema", "labels", "label_values", "n_outputs", "backbone", "config", "preprocessing"):
        assert name in meta
    assert meta["settings"] == meta["config"]
    loaded = registry.load(path)
    assert isinstance(loaded, FineTuner)
    assert list(loaded.predict(["great fun movie"])) == list(ft.predict(["great fun movie"]))


def test_a_version_1_text_folder_still_loads(tmp_path):
    ft = FineTuner(backbone="tiny-text", epochs=1, batch_size=8, runs_dir="", seed=0, progress=False)
    ft.fit(make_reviews(60), target="label")
    path = ft.save(tmp_path / "m")
    meta = json.loads((path / "tunesmith.json").read_text())
    for name in ("format", "kind", "settings"):
        meta.pop(name)
    meta["format_version"] = 1
    (path / "tunesmith.json").write_text(json.dumps(meta))
    loaded = FineTuner.load(path)
    assert list(loaded.predict(["great fun movie"])) == list(ft.predict(["great fun movie"]))
    meta["format_version"] = 3
    (path / "tunesmith.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="format_version"):
        FineTuner.load(path)


def test_old_import_path_is_a_deprecated_alias():
    import tunesmith.estimator as old
    from tunesmith.data.schema import restore_label_values
    from tunesmith.estimators.text import FineTuner as TextFineTuner

    with pytest.warns(DeprecationWarning, match="tunesmith.estimators.text.FineTuner"):
        assert old.FineTuner is TextFineTuner
    with pytest.warns(DeprecationWarning):
        assert old._restore_label_values is restore_label_values
    with pytest.warns(DeprecationWarning, match="tunesmith.kinds.load"):
        assert callable(old.load)
    with pytest.raises(AttributeError):
        old.no_such_name  # noqa: B018


def test_predict_proba_of_a_regression_model_is_not_supported():
    from tunesmith.estimators.base import NotSupportedError

    df = make_reviews(40)
    df["score"] = np.linspace(0.0, 1.0, len(df))
    ft = FineTuner(backbone="tiny-text", epochs=1, batch_size=8, runs_dir="", progress=False, baselines=False)
    ft.fit(df.drop(columns=["label"]), target="score")
    with pytest.raises(NotSupportedError, match="regression"):
        ft.predict_proba(["great fun movie"])
