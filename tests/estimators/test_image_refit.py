"""ImageFineTuner.refit on the tiny random CNN: the champion stays as it was, the challenger
learns the new images, and replay + L2-SP + WiSE-FT keep what the old images taught.

The toy shift: the model learned three classes of bright bands on a dark background; the new
period's images are inverted (dark bands on a bright background) and hold classes 0 and 1 only.
Trained on those alone, the network forgets the old look and class 2.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import tunesmith
from tests.estimators.test_image import FAST, stripes
from tunesmith.data.io import file_sha256
from tunesmith.errors import ConfigError, DataError
from tunesmith.estimators.base import NotSupportedError
from tunesmith.estimators.image import ImageFineTuner
from tunesmith.runs.artifacts import json_safe
from tunesmith.runs.fingerprint import model_version


def shifted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The new period: inverted images of classes 0 and 1."""
    x, y = stripes(n, seed)
    keep = y != 2
    return 1.0 - x[keep], y[keep]


@pytest.fixture(scope="module")
def champion() -> ImageFineTuner:
    x, y = stripes(150, seed=0)
    return ImageFineTuner(**FAST, epochs=4, test_size=0, baselines=False).fit(x, y)


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        "new": shifted(120, seed=1),
        "replay": stripes(150, seed=0),  # the old training images
        "old_test": stripes(90, seed=7),
        "new_test": shifted(90, seed=9),
    }


def weights(est: ImageFineTuner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in est.model_.state_dict().items()}


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """L2 distance between the trainable weights of two states (BatchNorm statistics left out)."""
    keys = [k for k in a if a[k].is_floating_point() and "running_" not in k]
    return float(sum(((a[k] - b[k]) ** 2).sum() for k in keys) ** 0.5)


def test_refit_returns_a_new_model_and_leaves_the_champion_byte_for_byte(champion, data):
    x_old = data["old_test"][0]
    before_proba = champion.predict_proba(x_old).tobytes()
    before = weights(champion)
    challenger = champion.refit(*data["new"], method="naive")
    assert isinstance(challenger, ImageFineTuner) and challenger is not champion
    assert challenger.model_ is not champion.model_
    assert champion.predict_proba(x_old).tobytes() == before_proba
    after = weights(champion)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert champion.refit_info_ is None
    # the challenger did learn: the old model calls every inverted image wrong, the new one right
    assert champion.score(*data["new_test"]) < 0.2
    assert challenger.score(*data["new_test"]) >= 0.9
    assert list(challenger.classes_) == list(champion.classes_)
    info = challenger.refit_info_
    assert info["epochs"] == 2 and 1 <= info["epochs_run"] <= 2  # max(1, 4 // 2)
    assert info["batchnorm"]["mode"] == "recalibrate"
    assert info["parent"]["weights_sha256"] and info["data"]["replay_sha256"] is None
    assert len(info["data"]["new_sha256"]) == 64 and info["seconds"] >= info["train_seconds"] > 0


def test_unseen_label_is_refused_before_training_with_the_fit_a_new_model_hint(champion, data):
    x, y = data["new"]
    y = y.copy()
    y[3] = 7
    with pytest.raises(DataError, match="'7'") as caught:
        champion.refit(x, y)
    assert "fit a new model" in (caught.value.hint or "") and caught.value.row == 4
    x_old, y_old = data["replay"]
    with pytest.raises(DataError, match="replay data holds label"):
        champion.refit(*data["new"], replay=(x_old, np.where(y_old == 2, 9, y_old)))


@pytest.mark.filterwarnings("ignore:.*read as text:UserWarning")  # the odd label makes the column text
def test_unseen_label_in_a_table_names_file_row_and_column(champion, tmp_path):
    x, y = stripes(6, seed=3)
    for i, img in enumerate(x):
        Image.fromarray((img * 255).astype(np.uint8)).save(tmp_path / f"{i}.png")
    labels = [str(v) for v in y]
    labels[4] = "sideways"
    pd.DataFrame({"path": [f"{i}.png" for i in range(6)], "label": labels}).to_csv(tmp_path / "new.csv", index=False)
    with pytest.raises(DataError, match="'sideways'") as caught:
        champion.refit(tmp_path / "new.csv")
    err = caught.value
    assert err.file == str(tmp_path / "new.csv") and err.row == 5 and err.column == "label"


def test_a_table_of_paths_refits_beside_replayed_arrays(champion, data, tmp_path):
    x, y = shifted(40, seed=4)
    for i, img in enumerate(x):
        Image.fromarray((img * 255).astype(np.uint8)).save(tmp_path / f"{i}.png")
    table = tmp_path / "new.csv"
    pd.DataFrame({"path": [f"{i}.png" for i in range(len(x))], "label": y}).to_csv(table, index=False)
    challenger = champion.refit(table, replay=data["replay"], method="replay")
    info = challenger.refit_info_
    assert info["data"]["new_sha256"] == file_sha256(table) and info["data"]["new_file"] == "new.csv"
    assert info["rows"]["new_train"] + info["rows"]["new_valid"] == len(x) and info["rows"]["replay_train"] > 0
    assert challenger.score(*data["new_test"]) > champion.score(*data["new_test"]) + 0.5


def test_empty_new_data_is_refused(champion):
    with pytest.raises(DataError, match="new data has no rows"):
        champion.refit(np.zeros((0, 16, 16), dtype=np.float32), np.zeros(0, dtype=np.int64))
    with pytest.raises(DataError, match="new data has no rows"):
        champion.refit(pd.DataFrame({"path": [], "label": []}))


def test_lora_is_not_offered_and_settings_are_checked(champion, data):
    with pytest.raises(NotSupportedError, match="refit method 'lora'") as caught:
        champion.refit(*data["new"], method="lora")
    assert "method='auto'" in (caught.value.hint or "") and "'l2sp'" in (caught.value.hint or "")
    with pytest.raises(ConfigError) as bad:
        champion.refit(*data["new"], metod="naive")
    assert bad.value.key == "metod"
    with pytest.raises(ConfigError) as bad:
        champion.refit(*data["new"], replay_ratio=-1)
    assert bad.value.key == "replay_ratio"


def test_replayed_rows_are_counted(champion, data):
    challenger = champion.refit(*data["new"], replay=data["replay"], method="replay", replay_ratio=0.5, epochs=1)
    rows, note = challenger.refit_info_["rows"], challenger.refit_info_["replay"]
    assert rows["replay_train"] == round(0.5 * rows["new_train"]) > 0
    assert rows["train"] == rows["new_train"] + rows["replay_train"]
    assert rows["old_valid"] == rows["new_valid"] > 0
    assert note["replayed"] == rows["replay_train"] and note["old_rows"] == 150 - rows["old_valid"]
    assert challenger.refit_info_["plan"]["replay"] is True and challenger.refit_info_["epochs"] == 1
    # naive trains on the new rows only, even when old rows are offered
    naive = champion.refit(*data["new"], replay=data["replay"], method="naive", epochs=1)
    assert naive.refit_info_["rows"]["replay_train"] == 0 and naive.refit_info_["plan"]["replay"] is False


def test_wise_picks_an_alpha_from_the_plan_by_mean_held_out_accuracy(champion, data):
    challenger = champion.refit(*data["new"], replay=data["replay"], method="wise", alphas=(0.3, 0.6))
    info = challenger.refit_info_
    trials = info["alpha_trials"]
    assert [t["alpha"] for t in trials] == [0.3, 0.6, 1.0]
    assert info["alpha"] in (0.3, 0.6, 1.0)
    for t in trials:
        assert len(t["scores"]) == 2 and t["mean"] == pytest.approx(sum(t["scores"]) / 2)
        # the interpolated networks' statistics are re-estimated; 1.0 is the refitted network itself
        assert t["batchnorm"] == ("refitted" if t["alpha"] == 1.0 else "re-estimated")
    best = max(t["mean"] for t in trials)
    assert next(t for t in trials if t["alpha"] == info["alpha"])["mean"] == best
    assert info["plan"]["wise_ft"] is True and info["plan"]["l2sp_weight"] == 0.0


def test_save_and_load_keep_refit_info_and_predictions(champion, data, tmp_path):
    challenger = champion.refit(*data["new"], replay=data["replay"], epochs=1)
    folder = challenger.save(tmp_path / "challenger")
    meta = json.loads((folder / "tunesmith.json").read_text())
    assert meta["refit"]["plan"]["method"] == "auto"
    loaded = tunesmith.load(folder)
    assert isinstance(loaded, ImageFineTuner)
    assert loaded.refit_info_ == json.loads(json.dumps(json_safe(challenger.refit_info_)))
    x = np.concatenate([data["old_test"][0][:20], data["new_test"][0][:20]])
    np.testing.assert_allclose(loaded.predict_proba(x), challenger.predict_proba(x), atol=1e-6)
    # a loaded champion is the same parent as the one in memory
    parent = tunesmith.load(champion.save(tmp_path / "champion"))
    again = parent.refit(*data["new"], replay=data["replay"], epochs=1)
    assert again.refit_info_["parent"]["weights_sha256"] == challenger.refit_info_["parent"]["weights_sha256"]
    # a parent in a folder is named by that folder's version too; one only in memory has none
    assert again.refit_info_["parent"]["model_version"] == model_version(tmp_path / "champion")
    assert challenger.refit_info_["parent"]["model_version"] is None
    np.testing.assert_allclose(again.predict_proba(x), challenger.predict_proba(x), atol=1e-5)


def test_auto_forgets_less_of_the_old_images_than_naive(champion, data):
    old_before = champion.score(*data["old_test"])
    naive = champion.refit(*data["new"], replay=data["replay"], method="naive")
    auto = champion.refit(*data["new"], replay=data["replay"], method="auto")
    old_naive, old_auto = naive.score(*data["old_test"]), auto.score(*data["old_test"])
    assert old_before >= 0.95
    assert old_naive <= 0.8  # trained on the shifted images alone, class 2 and the old look are lost
    assert old_auto >= old_before - 0.05 and old_auto >= old_naive + 0.15
    assert auto.score(*data["new_test"]) >= 0.9  # at no cost on the new period


def test_a_strong_l2sp_pull_keeps_the_weights_near_the_champion(champion, data):
    start = weights(champion)
    naive = champion.refit(*data["new"], method="naive")
    held = champion.refit(*data["new"], method="l2sp", penalty_weight=100.0)
    moved_naive, moved_held = distance(start, weights(naive)), distance(start, weights(held))
    assert moved_naive > 0.2
    assert moved_held < 0.2 * moved_naive


def test_frozen_batchnorm_statistics_stay_frozen_through_a_refit_of_a_loaded_model(data, tmp_path):
    x, y = stripes(90, seed=0)
    fitted = ImageFineTuner(**FAST, epochs=2, batchnorm="frozen", test_size=0, baselines=False).fit(x, y)
    # a loaded network no longer carries its BatchNorm mode: refit takes it from the settings
    loaded = tunesmith.load(fitted.save(tmp_path / "frozen-bn"))
    challenger = loaded.refit(*data["new"], replay=data["replay"], method="auto", epochs=1)
    start, after = weights(fitted), weights(challenger)
    stats = [k for k in start if "running_" in k]
    assert stats and all(torch.equal(start[k], after[k]) for k in stats)
    assert distance(start, after) > 0.01  # the weights did train
    assert challenger.refit_info_["batchnorm"] == {"mode": "frozen", "recalibrated_layers": 0}
    trials = challenger.refit_info_["alpha_trials"]
    assert all(t["batchnorm"] == ("refitted" if t["alpha"] == 1.0 else "interpolated") for t in trials)
