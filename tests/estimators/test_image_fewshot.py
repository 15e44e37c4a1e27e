"""strategy="fewshot" for images on the tiny random CNN: when auto picks it, what it learns, and
that the model saves, loads, exports and refits as every image model does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tunesmith
from tests.estimators.test_image import FAST, stripes
from tunesmith.backbones import create_image_backbone
from tunesmith.errors import ConfigError
from tunesmith.estimators.image import ImageFineTuner, make_image_config
from tunesmith.estimators.image.fewshot import IMAGE_FEWSHOT_MAX_PER_CLASS, resolve_strategy

# The default strategy ("auto") and the loop's own defaults: a loop setting of the caller's
# (FAST's batch size and learning rate) would keep auto on full fine-tuning.
AUTO = {k: v for k, v in FAST.items() if k not in ("strategy", "batch_size", "lr")}


@pytest.fixture(scope="module")
def fewshot(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageFineTuner, Path]:
    x, y = stripes(60)
    ft = ImageFineTuner(**AUTO, num_threads=1).fit(x, y)
    return ft, ft.save(tmp_path_factory.mktemp("fewshot") / "model")


def test_auto_takes_fewshot_with_few_images_per_class_and_full_with_many():
    cfg = make_image_config({})
    assert cfg.strategy == "auto"
    few, many = np.repeat([0, 1, 2], IMAGE_FEWSHOT_MAX_PER_CLASS), np.repeat([0, 1, 2], IMAGE_FEWSHOT_MAX_PER_CLASS + 1)
    assert resolve_strategy(cfg, "multiclass", few).strategy == "fewshot"
    assert resolve_strategy(cfg, "multiclass", many).strategy == "full"
    # settings only full fine-tuning uses, and a randomly initialised backbone, keep it
    for update in ({"freeze_layers": 2}, {"gradual_unfreeze": True}, {"layer_lr_decay": 0.8}, {"pretrained": False}):
        assert resolve_strategy(make_image_config(update), "multiclass", few).strategy == "full", update
    for explicit in ("full", "head_only"):
        assert resolve_strategy(make_image_config({"strategy": explicit}), "binary", few).strategy == explicit
    # and a fit resolves it from its own training split: 80 images per class train in full
    x, y = stripes(300)
    ft = ImageFineTuner(**AUTO, epochs=1, baselines=False, num_threads=1).fit(x, y)
    assert ft.config_.strategy == "full" and ft.get_params()["strategy"] == "auto"


def test_fewshot_learns_a_tiny_separable_set_and_keeps_the_backbone(fewshot):
    ft, _ = fewshot
    assert ft.config_.strategy == "fewshot" and ft.split_sizes_["train"] == 48
    x_new, y_new = stripes(90, seed=7)
    assert ft.score(x_new, y_new) >= 0.9
    assert ft.test_metrics_["accuracy"] > ft.baseline_metrics_["majority"]["accuracy"]
    # the pre-trained weights and BatchNorm statistics are those the features were computed with
    reference = create_image_backbone("tiny-image", image_size=16).state_dict()
    for k, v in ft.model_.backbone.state_dict().items():
        assert torch.equal(v, reference[k]), k
    (entry,) = ft.history_
    assert entry["head"] in ("logistic", "prototype") and entry["valid_accuracy"] >= 0.8
    assert ft.training_info_["epochs_run"] == 1 and ft.training_info_["batchnorm"]["recalibrated_layers"] == 0


@pytest.mark.parametrize("head", ["logistic", "prototype"])
def test_each_head_is_deterministic(head):
    x, y = stripes(45, seed=2)
    opts = {**FAST, "strategy": "fewshot", "fewshot_head": head, "num_threads": 1}
    a, b = ImageFineTuner(**opts).fit(x, y), ImageFineTuner(**opts).fit(x, y)
    assert a.history_[0]["head"] == head
    np.testing.assert_array_equal(a.predict_proba(x[:10]), b.predict_proba(x[:10]))
    assert a.score(*stripes(60, seed=3)) >= 0.9


def test_augmented_copies_join_the_head_only_when_augmentation_is_on():
    x, y = stripes(45, seed=2)
    opts = {**FAST, "strategy": "fewshot", "fewshot_head": "logistic", "num_threads": 1}
    plain = ImageFineTuner(**opts).fit(x, y)
    views = ImageFineTuner(**opts, augment="digits", fewshot_views=2).fit(x, y)
    again = ImageFineTuner(**opts, augment="digits", fewshot_views=2).fit(x, y)
    assert plain.history_[0]["augmented_views"] == 0 and views.history_[0]["augmented_views"] == 2
    assert views.training_info_["train_examples"] == 3 * views.split_sizes_["train"]
    np.testing.assert_array_equal(views.predict_proba(x[:10]), again.predict_proba(x[:10]))
    assert not np.array_equal(views.predict_proba(x[:10]), plain.predict_proba(x[:10]))


def test_save_load_gives_identical_probabilities(fewshot):
    ft, folder = fewshot
    meta = json.loads((folder / "tunesmith.json").read_text())
    assert meta["settings"]["strategy"] == "fewshot"
    loaded = tunesmith.load(folder)
    assert isinstance(loaded, ImageFineTuner) and loaded.config_.strategy == "fewshot"
    x = stripes(20, seed=5)[0]
    np.testing.assert_allclose(loaded.predict_proba(x), ft.predict_proba(x), atol=1e-6)


def test_onnx_export_matches_the_torch_model(fewshot):
    pytest.importorskip("onnxruntime")
    from tunesmith.export import export_onnx
    from tunesmith.export.runtime import load_predictor

    _, folder = fewshot
    assert export_onnx(folder).parity["max_abs_diff"] < 1e-4
    x = (stripes(8, seed=9)[0] * 255).astype(np.uint8)
    images = np.repeat(x[..., None], 3, axis=-1)
    onnx_side = load_predictor(folder, backend="onnx").logits_from_images(images)
    torch_side = load_predictor(folder, backend="torch").logits_from_images(images)
    np.testing.assert_allclose(onnx_side, torch_side, atol=1e-4)


def test_a_fewshot_model_refits_as_a_full_fine_tune(fewshot):
    ft, _ = fewshot
    x, y = stripes(60, seed=4)
    challenger = ft.refit(x, y, method="naive", epochs=1)
    assert challenger.config_.strategy == "fewshot" and len(challenger.history_) == 1
    before, after = ft.model_.backbone.state_dict(), challenger.model_.backbone.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))


def test_fewshot_is_refused_for_regression():
    with pytest.raises(ConfigError) as err:
        resolve_strategy(make_image_config({"strategy": "fewshot"}), "regression", np.zeros(10))
    assert err.value.key == "strategy" and "regression" in str(err.value)
    cfg = make_image_config({})
    assert resolve_strategy(cfg, "regression", np.zeros(10)).strategy == "full"
    with pytest.raises(ConfigError) as err:
        ImageFineTuner(strategy="prototypes")
    assert err.value.key == "strategy"


def test_fewshot_keeps_the_callback_contract():
    from tunesmith.train.callbacks import Callback, StopTraining

    seen = []

    class Stopper(Callback):
        def on_epoch_end(self, state, metrics):
            seen.append("epoch")
            raise StopTraining("enough")

        def on_fit_end(self, state):
            seen.append("end")

    x, y = stripes(45, seed=2)
    ft = ImageFineTuner(**{**FAST, "strategy": "fewshot", "num_threads": 1})
    ft.fit(x, y, callbacks=[Stopper()])
    assert seen == ["epoch", "end"] and ft.stop_reason_ == "enough"
