"""The pieces every refit is built from: new-data checks, replay sampling, L2-SP, WiSE-FT."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from tunesmith.config import validate_settings
from tunesmith.data.replay import RefitData, check_new_data, hold_out, replay_sample
from tunesmith.errors import ConfigError, DataError
from tunesmith.train.continual import (
    AnchorPenalty,
    PenalisedLoss,
    RefitSettings,
    anchor_state,
    choose_alpha,
    interpolate_state,
)


def _frame(n: int, labels: tuple[str, ...] = ("a", "b"), seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"text": [f"row {i}" for i in range(n)], "label": rng.choice(labels, size=n)})


def test_new_class_is_refused_with_its_rows_and_how_to_add_it() -> None:
    df = pd.DataFrame({"text": ["x", "y", "z", "w"], "label": ["a", "c", "b", "c"]})
    with pytest.raises(DataError) as err:
        check_new_data(df, columns=["text"], target="label", labels=["a", "b"], file="new.csv")
    msg = str(err.value)
    assert "'c'" in msg and "2 rows" in msg and "[2, 4]" in msg and "new.csv" in msg
    assert "fit a new model on the old and new data together" in msg


def test_whole_number_float_labels_match_integer_classes() -> None:
    df = pd.DataFrame({"text": ["x", "y"], "label": [1.0, 0.0]})
    check_new_data(df, columns=["text"], target="label", labels=["0", "1"])


def test_empty_and_missing_column_are_refused() -> None:
    with pytest.raises(DataError, match="the new data has no rows"):
        check_new_data(_frame(0), columns=["text"], target="label", labels=["a", "b"])
    with pytest.raises(DataError, match=r"lacks column\(s\) 'review'") as err:
        check_new_data(_frame(5), columns=["review"], target="label", labels=["a", "b"], what="replay data")
    assert err.value.column == "review" and "replay data" in str(err.value)


def test_replay_sample_keeps_the_label_shares_and_a_rare_class() -> None:
    old = pd.DataFrame({"x": range(1000), "label": ["a"] * 900 + ["b"] * 95 + ["rare"] * 5})
    sample, note = replay_sample(old, 100, stratify="label", seed=3)
    counts = sample["label"].value_counts().to_dict()
    assert len(sample) == 100 and note == {"old_rows": 1000, "replayed": 100, "stratified_by": "label"}
    assert counts["a"] == 90 and counts["b"] in (9, 10) and counts["rare"] >= 1
    again, _ = replay_sample(old, 100, stratify="label", seed=3)
    pd.testing.assert_frame_equal(sample, again)
    everything, note = replay_sample(old, 5000, stratify="label")
    assert len(everything) == 1000 and note["replayed"] == 1000


def test_replay_sample_of_many_rare_labels_draws_no_more_than_asked() -> None:
    # nine labels of one row each: their row apiece must come out of the big label's share
    old = pd.DataFrame({"x": range(999), "label": ["a"] * 990 + [f"r{i}" for i in range(9)]})
    sample, note = replay_sample(old, 10, stratify="label", seed=0)
    counts = sample["label"].value_counts().to_dict()
    assert len(sample) == 10 and note["replayed"] == 10
    assert counts == {"a": 1, **{f"r{i}": 1 for i in range(9)}}


def test_refit_data_keeps_held_out_old_rows_out_of_the_replay() -> None:
    new, old = _frame(100, seed=1), _frame(400, seed=2)
    old["text"] = [f"old {i}" for i in range(len(old))]
    parts = RefitData(
        new, old, target="label", stratify=True, replay_ratio=1.0, use_replay=True, valid_size=0.2, seed=0
    )
    rows = parts.rows()
    assert rows == {"new_train": 80, "new_valid": 20, "replay_train": 80, "old_valid": 20, "train": 160}
    assert not set(parts.old_valid["text"]) & set(parts.replayed["text"])
    assert set(parts.train["text"]) == set(parts.new_train["text"]) | set(parts.replayed["text"])
    none = RefitData(
        new, old, target="label", stratify=True, replay_ratio=1.0, use_replay=False, valid_size=0.2, seed=0
    )
    assert none.rows()["replay_train"] == 0 and none.rows()["old_valid"] == 20


def test_hold_out_is_stratified_and_never_empties_a_side() -> None:
    df = _frame(50)
    keep, held = hold_out(df, 0.2, stratify="label", seed=0)
    assert len(held) == 10 and len(keep) == 40
    assert abs(held["label"].eq("a").mean() - df["label"].eq("a").mean()) < 0.11
    keep, held = hold_out(_frame(2), 0.9)
    assert len(keep) == 1 and len(held) == 1


def test_plan_of_each_method() -> None:
    auto = RefitSettings().plan(has_replay=True)
    assert (auto.replay, auto.penalty > 0, auto.interpolate, auto.adapters) == (True, True, True, False)
    assert RefitSettings().plan(has_replay=False).replay is False
    naive = RefitSettings(method="naive").plan(has_replay=True)
    assert (naive.replay, naive.penalty, naive.interpolate) == (False, 0.0, False)
    assert RefitSettings(method="lora").plan(True).adapters
    assert RefitSettings(alphas=(0.3, 2.0)).plan(False).alphas == (0.3, 1.0)
    with pytest.raises(ConfigError, match="method"):
        validate_settings(RefitSettings, {"method": "ewc2"})
    with pytest.raises(ConfigError, match="replay_rate"):
        validate_settings(RefitSettings, {"replay_rate": 1})


def test_l2sp_pulls_weights_back_to_the_anchor() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randn(64, 1) * 5

    def train(weight: float) -> float:
        torch.manual_seed(1)
        net = nn.Linear(4, 1)
        anchor = anchor_state(net)
        loss_fn = PenalisedLoss(nn.MSELoss(), AnchorPenalty(net, anchor, weight))
        opt = torch.optim.SGD(net.parameters(), lr=0.05)
        for _ in range(200):
            opt.zero_grad()
            loss_fn(net(x), y).backward()
            opt.step()
        with torch.no_grad():
            return float(sum(((p - anchor[n]) ** 2).sum() for n, p in net.named_parameters()))

    free, pulled = train(0.0), train(10.0)
    assert pulled < 0.05 * free
    with torch.no_grad():
        assert float(AnchorPenalty(nn.Linear(4, 1), {}, 1.0)()) == 0.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU to move the module to")
def test_l2sp_follows_a_module_moved_to_the_gpu_after_the_penalty_was_built() -> None:
    # accelerate's prepare moves the model after the text fit built its penalty: the same
    # Parameter objects, now on the GPU, must meet their anchors there
    net = nn.Linear(4, 1)
    loss_fn = PenalisedLoss(nn.MSELoss(), AnchorPenalty(net, anchor_state(net), 1.0))
    net.cuda()
    with torch.no_grad():
        net.weight.add_(1.0)
    loss = loss_fn(net(torch.zeros(2, 4, device="cuda")), torch.zeros(2, 1, device="cuda"))
    assert loss.device.type == "cuda" and float(loss) > 3.9


def test_interpolation_and_the_choice_of_alpha() -> None:
    a = {"w": torch.zeros(3), "count": torch.tensor(1), "only_old": torch.ones(2)}
    b = {"w": torch.ones(3) * 4, "count": torch.tensor(7), "new_head": torch.ones(5)}
    mid = interpolate_state(a, b, 0.25)
    assert torch.equal(mid["w"], torch.ones(3)) and int(mid["count"]) == 7 and "only_old" not in mid
    assert torch.equal(mid["new_head"], torch.ones(5))
    # new-data score rises with alpha, old-data score falls: the mean peaks at 0.5
    alpha, trials = choose_alpha(lambda al: [al, 1.0 - 2.0 * abs(al - 0.5) - al / 2], (0.25, 0.5, 0.75, 1.0))
    assert alpha == 0.5 and [t["alpha"] for t in trials] == [0.25, 0.5, 0.75, 1.0]
    flat, _ = choose_alpha(lambda al: [1.0], (0.25, 1.0))
    assert flat == 1.0
