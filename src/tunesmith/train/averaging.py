"""Weight averaging: an exponential moving average (EMA) of the weights as they train.

The average of the last few hundred steps' weights sits nearer the middle of the basin the
optimizer is bouncing around in than the last step's weights do, and generalises a little
better (Polyak averaging; SWA and EMA in fine-tuning recipes). The loop trains the raw
weights; validation, early stopping's snapshots and the returned model use the average.
"""

from __future__ import annotations

from typing import Any

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
        self._model: torch.nn.Module | None = None

    def _track(self, model: torch.nn.Module) -> None:
        known = {id(p) for p in self._params}
        for p in model.parameters():
            if p.requires_grad and p.is_floating_point() and id(p) not in known:
                self._params.append(p)
                self._average.append(p.detach().clone())

    def on_fit_start(self, state: TrainState) -> None:
        self._model = state.model
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

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        # Parameters are named by the model's own names, so a resumed fit matches them up
        # whatever order gradual unfreezing added them in.
        names = self._names()
        tensors = {f"average.{names[id(p)]}": a for p, a in zip(self._params, self._average, strict=True)}
        if self._raw is not None:
            tensors.update({f"raw.{names[id(p)]}": r for p, r in zip(self._params, self._raw, strict=True)})
        meta = {"updates": self.updates, "seen_updates": self._seen_updates, "swapped_in": self._raw is not None}
        return tensors, meta

    def load_checkpoint_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        assert self._model is not None, "load_checkpoint_state runs after on_fit_start"
        by_name = dict(self._model.named_parameters())
        order = [k[len("average.") :] for k in tensors if k.startswith("average.")]
        self._params = [by_name[n] for n in order]
        self._average = [tensors[f"average.{n}"].to(by_name[n].device) for n in order]
        self._raw = [tensors[f"raw.{n}"].to(by_name[n].device) for n in order] if meta.get("swapped_in") else None
        self.updates = int(meta["updates"])
        self._seen_updates = meta.get("seen_updates")

    def _names(self) -> dict[int, str]:
        assert self._model is not None
        return {id(p): n for n, p in self._model.named_parameters()}

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
