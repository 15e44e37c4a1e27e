"""Few-shot fine-tuning: contrastive pairs, then a head; the automatic choice; the model path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import make_reviews
from tunesmith import FineTuner, load
from tunesmith.errors import ConfigError
from tunesmith.estimators.text.fewshot import FEWSHOT_MAX_PER_CLASS, auto_steps, balanced_batches, pair_loss
from tunesmith.train.heads import choose_head, fit_head, head_weights


def _params(tmp_path, **extra):
    return {
        "backbone": "tiny-text",
        "max_length": 32,
        "progress": False,
        "runs_dir": str(tmp_path / "runs"),
        "num_threads": 1,
        "baselines": False,
        "fewshot_lr": 1e-3,
        **extra,
    }


def test_pair_loss_is_zero_for_perfect_embeddings_and_balances_pairs():
    y = torch.tensor([0, 0, 1, 1])
    perfect = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    assert float(pair_loss(perfect, y)) == pytest.approx(0.0, abs=1e-7)
    # All rows alike: every positive pair is right (cos 1), every negative wrong by 1.
    same = torch.ones(4, 2)
    assert float(pair_loss(same, y)) == pytest.approx(0.5)
    # Three classes, one row each: only negative pairs, still defined.
    assert float(pair_loss(torch.eye(3), torch.tensor([0, 1, 2]))) == pytest.approx(0.0, abs=1e-7)


def test_batches_are_balanced_distinct_and_use_every_example():
    y = np.array([0] * 30 + [1] * 6)
    batches = balanced_batches(y, batch_size=8, steps=12, seed=0)
    assert len(batches) == 12
    for b in batches:
        assert len(b) == len(set(b.tolist()))
        assert (y[b] == 0).sum() == 4 and (y[b] == 1).sum() == 4
    used = np.concatenate(batches)
    assert set(used.tolist()) == set(range(36))
    assert [b.tolist() for b in balanced_batches(y, 8, 12, 0)] == [b.tolist() for b in batches]


def test_steps_grow_with_the_data_and_stop_at_the_cap():
    assert auto_steps(16, 16, 0) == 8
    assert auto_steps(64, 16, 0) == 16
    assert auto_steps(100_000, 16, 0) == 60
    assert auto_steps(100_000, 16, 7) == 7


def test_binary_logistic_head_reproduces_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5))
    y = (x[:, 0] + 0.3 * rng.normal(size=40) > 0).astype(int)
    weight, bias = fit_head(x, y, 2, 1.0, 0)
    logits = x @ weight.T + bias
    proba = np.exp(logits - logits.max(1, keepdims=True))
    proba /= proba.sum(1, keepdims=True)
    expected = LogisticRegression(C=1.0, max_iter=2000, random_state=0).fit(x, y).predict_proba(x)
    assert np.allclose(proba, expected, atol=1e-5)


def test_prototype_head_picks_the_nearest_class_direction_and_never_an_absent_class():
    x = np.array([[1.0, 0.1, 0], [3.0, 0.0, 0], [0.1, 1.0, 0], [0.0, 2.0, 0]])
    y = np.array([0, 0, 2, 2])
    weight, bias = head_weights("prototype", x, y, 3, 1.0, 0)
    query = np.array([[10.0, 1.0, 0], [0.2, 0.5, 0]])
    assert ((query @ weight.T + bias).argmax(1) == [0, 2]).all()
    assert bias[1] < -1e3  # class 1 had no rows: never predicted
    assert choose_head(x, y, 1.0, 0) in ("logistic", "prototype")


def test_auto_picks_fewshot_with_few_labels_and_full_with_many(tmp_path):
    few = FineTuner(**_params(tmp_path)).fit(make_reviews(40), target="label")
    assert few.get_params()["strategy"] == "auto" and few.config_.strategy == "fewshot"
    assert few.history_[-1]["contrastive_steps"] >= 8 and few.history_[-1]["head"] in ("logistic", "prototype")
    many = make_reviews(2 * (FEWSHOT_MAX_PER_CLASS + 20) * 10 // 8, seed=1)
    ft = FineTuner(**_params(tmp_path, epochs=1, batch_size=32)).fit(many, target="label")
    assert ft.config_.strategy == "full"
    # A setting only full fine-tuning uses keeps auto on the full path, even with few labels.
    frozen = FineTuner(**_params(tmp_path, freeze_layers=1, epochs=1)).fit(make_reviews(40), target="label")
    assert frozen.config_.strategy == "full"


def test_fewshot_learns_saves_and_reloads_the_same_predictions(tmp_path):
    df = make_reviews(48, seed=2)
    ft = FineTuner(**_params(tmp_path, strategy="fewshot", fewshot_steps=20)).fit(df, target="label")
    assert ft.test_metrics_["accuracy"] >= 0.8
    assert ft.history_[0]["train_loss"] < 0.25  # the contrastive loss went down from about 0.5
    folder = ft.save(tmp_path / "model")
    back = load(folder)
    probe = make_reviews(20, seed=7)
    assert back.config_.strategy == "fewshot"
    assert np.allclose(back.predict_proba(probe), ft.predict_proba(probe), atol=1e-6)
    # Same settings and seed, same weights.
    again = FineTuner(**_params(tmp_path, strategy="fewshot", fewshot_steps=20)).fit(df, target="label")
    for (name, a), (_, b) in zip(ft.model_.state_dict().items(), again.model_.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_fewshot_model_exports_to_onnx_with_the_same_predictions(tmp_path):
    pytest.importorskip("onnx")
    from tunesmith.export import export_onnx, load_predictor

    ft = FineTuner(**_params(tmp_path, strategy="fewshot", fewshot_steps=8)).fit(make_reviews(40), target="label")
    folder = ft.save(tmp_path / "model")
    export_onnx(folder)
    probe = make_reviews(16, seed=5)
    got, _ = load_predictor(folder, backend="onnx", precision="fp32", threads=1).predict_frame(probe)
    assert list(got) == list(ft.predict(probe))


def test_fewshot_refuses_regression_and_refits_as_full(tmp_path):
    df = make_reviews(40)
    df["score"] = np.linspace(0.0, 1.0, len(df))
    with pytest.raises(ConfigError, match="regression") as exc:
        FineTuner(**_params(tmp_path, strategy="fewshot")).fit(df[["text", "score"]], target="score")
    assert exc.value.key == "strategy"
    ft = FineTuner(**_params(tmp_path, strategy="fewshot", fewshot_steps=8)).fit(make_reviews(40), target="label")
    new = ft.refit(make_reviews(24, seed=3), epochs=1)
    assert new.config_.strategy == "full" and new.predict(make_reviews(4)).shape == (4,)


def test_many_classes_never_make_a_step_larger_than_the_batch():
    y = np.repeat(np.arange(40), 5)
    batches = balanced_batches(y, batch_size=16, steps=10, seed=0)
    assert all(len(b) == 16 for b in batches)
    assert all(len(set(y[b].tolist())) == 8 for b in batches)
    # the classes rotate: after five steps every class has been in a batch
    assert set(np.concatenate([y[b] for b in batches[:5]]).tolist()) == set(range(40))


def test_auto_keeps_the_loop_when_loop_settings_are_set_and_on_refits(tmp_path):
    small = make_reviews(40)
    assert FineTuner(**_params(tmp_path, epochs=1)).fit(small, target="label").config_.strategy == "full"
    ft = FineTuner(**_params(tmp_path)).fit(make_reviews(210), target="label")
    assert ft.config_.strategy == "full"
    # a refit on a few new rows continues the network; it must not switch to few-shot
    assert ft.refit(make_reviews(24, seed=4), epochs=1).config_.strategy == "full"
    with pytest.raises(ConfigError, match="fewshot"):
        FineTuner(strategy="fewshot", freeze_layers=2)


def test_fewshot_keeps_the_callback_contract_and_reports_a_validation_loss(tmp_path):
    from tunesmith.train.callbacks import Callback, StopTraining

    seen = []

    class Stopper(Callback):
        def on_epoch_end(self, state, metrics):
            seen.append("epoch")
            raise StopTraining("enough")

        def on_fit_end(self, state):
            seen.append("end")

    ft = FineTuner(**_params(tmp_path, strategy="fewshot", fewshot_steps=4, valid_size=0.25, monitor="loss"))
    ft.fit(make_reviews(48), target="label", callbacks=[Stopper()])
    assert seen == ["epoch", "end"] and ft.stop_reason_ == "enough"
    assert ft.history_[0]["valid_loss"] > 0 and ft.best_score_ == pytest.approx(ft.history_[0]["valid_loss"])
