"""Weight averaging: an exponential moving average (EMA) of the weights as they train.

The average of the last few hundred steps' weights sits nearer the middle of the basin the
optimizer is bouncing around in than the last step's weights do, and generalises a little
better (Polyak averaging; SWA and EMA in fine-tuning recipes). The loop trains the raw
weights; validation, early stopping's snapshots and the returned model use the average.
"""

from __future__ import annotations

import torch

from tunesmith.train.callbacks import Callback, TrainState


class WeightAverage(Callback):
    """Keep an exponential moving average of the trainable weights and evaluate with it.

    After each weight update ``average = d * average + (1 - d) * weights``, with ``d`` ramping up to
    ``decay`` as ``(1 + n) / (10 + n)`` over the first updates so the average does not
    remember the starting weights for long. Before each validation the average is swapped
    into the model (so validation, early stopping and its restored best weights see it) and
    the raw weights go back before the next epoch trains. The fit ends with the average.

    Parameters that start training later (gradual unfreezing) join the average from their
    weights at that moment. Runs before :class:`~tunesmith.train.callbacks.EarlyStopping`.
    """

    order = 15

    def __init__(self, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self._params: list[torch.nn.Parameter] = []
        self._average: list[torch.Tensor] = []
        self._raw: list[torch.Tensor] | None = None
        self._seen_updates: int | None = None

    def _track(self, model: torch.nn.Module) -> None:
        known = {id(p) for p in self._params}
        for p in model.parameters():
            if p.requires_grad and p.is_floating_point() and id(p) not in known:
                self._params.append(p)
                self._average.append(p.detach().clone())

    def on_fit_start(self, state: TrainState) -> None:
        self._seen_updates = state.extra.get("updates")
        self._track(state.model)

    def on_epoch_start(self, state: TrainState) -> None:
        self._swap_out()
        self._track(state.model)

    @torch.no_grad()
    def on_step_end(self, state: TrainState, loss: float) -> None:
        # Average once per weight update: with gradient accumulation the weights do not change
        # between the batches of a group. A loop that does not count updates counts steps.
        done = state.extra.get("updates")
        if done is not None and done == self._seen_updates:
            return
        self._seen_updates = done
        self.updates += 1
        decay = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        if self._params:
            torch._foreach_lerp_(self._average, [p.detach() for p in self._params], 1.0 - decay)

    def on_validation_start(self, state: TrainState) -> None:
        self._swap_in()

    def on_fit_end(self, state: TrainState) -> None:
        self._swap_in()
        # The model keeps the average: the raw weights are not needed any more.
        self._raw = None

    @torch.no_grad()
    def _swap_in(self) -> None:
        if self._raw is not None or not self._params:
            return
        self._raw = [p.detach().clone() for p in self._params]
        torch._foreach_copy_([p.data for p in self._params], self._average)

    @torch.no_grad()
    def _swap_out(self) -> None:
        if self._raw is None:
            return
        torch._foreach_copy_([p.data for p in self._params], self._raw)
        self._raw = None
