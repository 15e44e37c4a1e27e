"""Weight averaging: the moving average is what validation, early stopping and the fit's result see."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from tunesmith import FineTuner
from tunesmith.train.averaging import WeightAverage
from tunesmith.train.callbacks import TrainState


def test_the_average_is_swapped_in_for_validation_and_kept_at_the_end() -> None:
    model = torch.nn.Linear(2, 1)
    frozen_bias = model.bias.detach().clone()
    model.bias.requires_grad_(False)  # not trained: not averaged
    avg = WeightAverage(0.9)
    state = TrainState(model=model, epochs=1, steps_per_epoch=5)
    avg.on_fit_start(state)
    avg.on_epoch_start(state)
    expected = model.weight.detach().clone()
    for n in range(1, 6):
        with torch.no_grad():
            model.weight.add_(1.0)
        avg.on_step_end(state, 0.0)
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * model.weight.detach()
    raw = model.weight.detach().clone()
    avg.on_validation_start(state)
    assert torch.allclose(model.weight, expected) and not torch.allclose(model.weight, raw)
    avg.on_epoch_start(state)  # the next epoch trains the raw weights again
    assert torch.equal(model.weight, raw)
    avg.on_fit_end(state)
    assert torch.allclose(model.weight, expected) and torch.equal(model.bias, frozen_bias)
    with pytest.raises(ValueError, match="decay must be in"):
        WeightAverage(1.0)


def test_with_gradient_accumulation_the_average_moves_once_per_update() -> None:
    model = torch.nn.Linear(1, 1, bias=False)
    avg = WeightAverage(0.5)
    state = TrainState(model=model, epochs=1, steps_per_epoch=4, extra={"updates": 0})  # as the loop starts it
    avg.on_fit_start(state)
    for batch in range(4):  # two batches per update
        if batch % 2 == 1:
            with torch.no_grad():
                model.weight.add_(1.0)
            state.extra["updates"] = state.extra.get("updates", 0) + 1
        avg.on_step_end(state, 0.0)
    assert avg.updates == 2  # the two batches between updates are not counted twice


def test_a_fit_with_averaging_returns_the_weights_it_validated(reviews: pd.DataFrame, fast_params: dict) -> None:
    first = [i % 4 < 2 for i in range(len(reviews))]  # both labels on each side
    train, valid = reviews[first].reset_index(drop=True), reviews[[not f for f in first]].reset_index(drop=True)
    params = {**fast_params, "ema_decay": 0.9, "mixed_precision": "no", "monitor": "loss"}
    ft = FineTuner(**params).fit(train, target="label", eval_set=valid)
    plain = FineTuner(**{**params, "ema_decay": 0.0}).fit(train, target="label", eval_set=valid)
    assert ft.history_[0]["valid_loss"] != pytest.approx(plain.history_[0]["valid_loss"], abs=1e-6)
    # The model returned is the averaged state of the best epoch: scoring it again gives that epoch's loss.
    best = ft.history_[ft.training_info_["best_epoch"] - 1]
    assert ft.evaluate(valid)["log_loss"] == pytest.approx(best["valid_loss"], rel=1e-4)
