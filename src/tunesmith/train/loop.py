"""The supervised fine-tuning loop, readable top to bottom.

Plain PyTorch driven through Accelerate, so ``accelerate launch`` or ``torchrun`` run the
same code on several processes or devices. Early stopping, unfreezing schedules,
progress and logging are callbacks (see :mod:`tunesmith.train.callbacks`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tunesmith.errors import ArtifactError
from tunesmith.train.batching import LengthGroupedBatchSampler
from tunesmith.train.callbacks import Callback, TrainState, end_epoch
from tunesmith.train.checkpoint import (
    Checkpoint,
    Checkpointer,
    callback_key,
    load_optimizer_state,
    optimizer_state,
    random_state,
    set_random_state,
)
from tunesmith.train.precision import autocast

MetricsFn = Callable[[np.ndarray, np.ndarray], dict[str, Any]]


@dataclass
class LoopSettings:
    """What the loop itself needs to know (a subset of :class:`tunesmith.config.FitConfig`)."""

    epochs: int
    batch_size: int
    eval_batch_size: int
    grad_accum_steps: int = 1
    grad_clip: float | None = 1.0
    seed: int = 0
    length_bucketing: bool = True
    # bfloat16 autocast of the forward passes (training and validation); None is float32.
    autocast_dtype: torch.dtype | None = None


def _model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k not in ("target", "index")}


def make_loader(
    dataset: Dataset[Any],
    lengths: np.ndarray,
    collate: Callable[[list[Any]], dict[str, torch.Tensor]],
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    group_by_length: bool,
) -> tuple[DataLoader[Any], LengthGroupedBatchSampler]:
    sampler = LengthGroupedBatchSampler(
        lengths, batch_size, shuffle=shuffle, group_by_length=group_by_length, seed=seed
    )
    # A loader draws a base seed from its generator at every pass; its own generator keeps that
    # draw off the global one dropout uses, so a fit resumed mid-epoch draws the same masks.
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=0, generator=generator)
    return loader, sampler


def predict_outputs(
    model: nn.Module,
    loader: DataLoader[Any],
    accelerator: Any,
    n: int,
    autocast_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Model outputs for every example of ``loader``'s dataset, in dataset order."""
    model.eval()
    outs: list[torch.Tensor] = []
    idxs: list[torch.Tensor] = []
    with torch.inference_mode(), autocast(accelerator.device, autocast_dtype):
        for batch in loader:
            logits = model(**_model_inputs(batch))
            logits, index = accelerator.gather_for_metrics((logits.float(), batch["index"]))
            outs.append(logits.cpu())
            idxs.append(index.cpu())
    if not outs:
        return np.zeros((0, 0), dtype=np.float32)
    logits_all = torch.cat(outs).numpy()
    index_all = torch.cat(idxs).numpy()
    result = np.zeros((n, logits_all.shape[1]), dtype=np.float32)
    result[index_all] = logits_all
    missing = n - len(np.unique(index_all))
    if missing:
        raise RuntimeError(f"{missing} of {n} examples got no prediction from the data loader")
    return result


def train(
    model: nn.Module,
    *,
    train_set: Dataset[Any],
    train_lengths: np.ndarray,
    valid_set: Dataset[Any] | None,
    valid_lengths: np.ndarray | None,
    valid_targets: np.ndarray | None,
    collate: Callable[[list[Any]], dict[str, torch.Tensor]],
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    make_scheduler: Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler],
    settings: LoopSettings,
    accelerator: Any,
    valid_metrics: MetricsFn,
    callbacks: Sequence[Callback] = (),
    checkpointer: Checkpointer | None = None,
) -> TrainState:
    """Fit ``model`` and return the final :class:`TrainState` (history, best epoch, stop reason).

    With a ``checkpointer`` the loop saves a checkpoint at every epoch end and every
    ``checkpointer.every_steps`` batches (at an optimizer update), and, when it is told to
    resume, first continues from the newest usable one: the final weights are then the same,
    bit for bit on a CPU, as those of a run that was never stopped.
    """
    train_loader, train_sampler = make_loader(
        train_set,
        train_lengths,
        collate,
        batch_size=settings.batch_size,
        shuffle=True,
        seed=settings.seed,
        group_by_length=settings.length_bucketing,
    )
    valid_loader = None
    if valid_set is not None and valid_lengths is not None and len(valid_lengths):
        valid_loader, _ = make_loader(
            valid_set,
            valid_lengths,
            collate,
            batch_size=settings.eval_batch_size,
            shuffle=False,
            seed=settings.seed,
            group_by_length=True,
        )
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    if valid_loader is not None:
        valid_loader = accelerator.prepare(valid_loader)

    accum = settings.grad_accum_steps
    steps_per_epoch = max(1, len(train_loader))
    updates_per_epoch = max(1, -(-steps_per_epoch // accum))
    # The scheduler counts optimizer updates, so it is built after sharding tells us how many there are.
    scheduler = make_scheduler(optimizer, updates_per_epoch * settings.epochs)

    state = TrainState(
        model=model,
        epochs=settings.epochs,
        steps_per_epoch=steps_per_epoch,
        is_main_process=accelerator.is_main_process,
    )
    state.extra["updates"] = 0  # optimizer updates so far (weight averaging counts them)
    ordered = sorted(callbacks, key=lambda c: c.order)
    for cb in ordered:
        cb.on_fit_start(state)
    start_epoch, skip = 0, 0
    resumed: Checkpoint | None = None
    if checkpointer is not None and checkpointer.resume:
        shapes = {k: tuple(v.shape) for k, v in accelerator.unwrap_model(model).state_dict().items()}
        resumed = checkpointer.latest(expected=shapes)
        if resumed is None and checkpointer.names():
            reasons = "; ".join(f"{s['checkpoint']}: {s['reason']}" for s in checkpointer.skipped[:3])
            raise ArtifactError(f"no checkpoint of this run can be resumed ({reasons})", path=checkpointer.folder)
        if resumed is not None:
            start_epoch, skip = _restore(resumed, model, optimizer, scheduler, state, ordered, accelerator)
    last_saved = state.step

    def save(epoch: int, batch: int, progress: dict[str, Any]) -> None:
        nonlocal last_saved
        assert checkpointer is not None
        last_saved = state.step
        # Only the main process writes; the others go on (they may hold no checkpointer at all).
        if accelerator.is_main_process:
            _save(checkpointer, model, optimizer, scheduler, state, ordered, accelerator, epoch, batch, progress)

    try:
        for epoch in range(start_epoch, settings.epochs):
            state.epoch = epoch
            first = skip if epoch == start_epoch else 0
            # Accelerate's loader sets its sampler's epoch from its own count of passes, which
            # starts at 0 in a resumed process: tell it the epoch too.
            if hasattr(train_loader, "set_epoch"):
                train_loader.set_epoch(epoch)
            train_sampler.set_epoch(epoch)
            # Sharded over processes, each step of a process takes one batch per process.
            train_sampler.skip = first * accelerator.num_processes
            if hasattr(collate, "set_epoch"):
                collate.set_epoch(epoch)
            for cb in ordered:
                cb.on_epoch_start(state)
            model.train()
            total_loss, total_n, epoch_examples, before = 0.0, 0, 0, 0.0
            if resumed is not None and epoch == start_epoch:
                carried = resumed.meta["epoch_progress"]
                total_loss, total_n = float(carried["loss_sum"]), int(carried["n"])
                epoch_examples, before = int(carried["examples"]), float(carried["seconds"])
                # Last, so nothing between here and the first batch draws from them.
                set_random_state(resumed.tensors, resumed.meta["random"])
            started = time.perf_counter() - before
            for i, batch in enumerate(train_loader, start=first):
                inputs = _model_inputs(batch)
                target = batch["target"]
                last_of_group = (i + 1) % accum == 0 or i + 1 == steps_per_epoch
                # The last group of an epoch may be shorter; average over its real size.
                group_size = min(accum, steps_per_epoch - (i // accum) * accum)
                # Skip the gradient all-reduce on accumulation steps: it is only needed before an update.
                context = accelerator.no_sync(model) if not last_of_group else _nullcontext()
                with context:
                    with autocast(accelerator.device, settings.autocast_dtype):
                        output = model(**inputs)
                        if output.shape[-1] == 1 and target.dtype.is_floating_point:
                            output = output.squeeze(-1)
                        loss = loss_fn(output.float(), target)
                    accelerator.backward(loss / group_size)
                if last_of_group:
                    if settings.grad_clip:
                        accelerator.clip_grad_norm_(model.parameters(), settings.grad_clip)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    # Callbacks that act per weight update (weight averaging) read this.
                    state.extra["updates"] = state.extra.get("updates", 0) + 1
                n = int(target.shape[0])
                total_loss += float(loss.detach()) * n
                total_n += n
                epoch_examples += n * accelerator.num_processes
                state.step += 1
                for cb in ordered:
                    cb.on_step_end(state, float(loss.detach()))
                if (
                    checkpointer is not None
                    and last_of_group
                    and i + 1 < steps_per_epoch
                    and checkpointer.due(state.step, last_saved)
                ):
                    progress = {
                        "loss_sum": total_loss,
                        "n": total_n,
                        "examples": epoch_examples,
                        "seconds": time.perf_counter() - started,
                    }
                    save(epoch, i + 1, progress)
            seconds = time.perf_counter() - started
            state.examples_seen += epoch_examples
            metrics: dict[str, Any] = {
                "epoch": epoch + 1,
                "train_loss": total_loss / max(1, total_n),
                "lr": float(optimizer.param_groups[0]["lr"]),
                "epoch_seconds": seconds,
                "train_examples_per_s": epoch_examples / seconds if seconds > 0 else None,
            }
            if valid_loader is not None and valid_targets is not None:
                for cb in ordered:
                    cb.on_validation_start(state)
                outputs = predict_outputs(model, valid_loader, accelerator, len(valid_targets), settings.autocast_dtype)
                with torch.no_grad():
                    out_t = torch.as_tensor(outputs).to(accelerator.device)
                    tgt_t = torch.as_tensor(valid_targets).to(accelerator.device)
                    if out_t.shape[-1] == 1 and tgt_t.dtype.is_floating_point:
                        out_t = out_t.squeeze(-1)
                    metrics["valid_loss"] = float(loss_fn(out_t, tgt_t))
                for key, value in valid_metrics(valid_targets, outputs).items():
                    if isinstance(value, (int, float)) and key != "n":
                        metrics[f"valid_{key}"] = float(value)
            state.history.append(metrics)
            # Later callbacks (progress, the run record) still see the epoch that stops training.
            if end_epoch(ordered, state, metrics):
                break
            if checkpointer is not None and epoch + 1 < settings.epochs:
                save(epoch + 1, 0, {"loss_sum": 0.0, "n": 0, "examples": 0, "seconds": 0.0})
    finally:
        for cb in ordered:
            cb.on_fit_end(state)
    accelerator.wait_for_everyone()
    return state


def _save(
    checkpointer: Checkpointer,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainState,
    callbacks: Sequence[Callback],
    accelerator: Any,
    epoch: int,
    batch: int,
    progress: dict[str, Any],
) -> None:
    """One checkpoint: training resumes at batch ``batch`` of epoch ``epoch`` (0-based)."""
    tensors = {f"model.{k}": v for k, v in accelerator.unwrap_model(model).state_dict().items()}
    opt_tensors, opt_meta = optimizer_state(optimizer)
    tensors.update(opt_tensors)
    callback_meta: dict[str, Any] = {}
    for index, cb in enumerate(callbacks):
        kept = cb.checkpoint_state()
        if kept is not None:
            key = callback_key(index, cb)
            tensors.update({f"callback.{key}.{k}": v for k, v in kept[0].items()})
            callback_meta[key] = kept[1]
    rng_tensors, rng_meta = random_state()
    tensors.update(rng_tensors)
    meta = {
        "step": state.step,
        "epoch": epoch,
        "batch": batch,
        "optimizer": opt_meta,
        # Older PyTorch keeps functions in some schedulers' state (OneCycleLR's anneal_func); the
        # scheduler rebuilds them itself.
        "scheduler": {k: v for k, v in scheduler.state_dict().items() if not callable(v)},
        "processes": accelerator.num_processes,
        "random": rng_meta,
        "callbacks": callback_meta,
        "epoch_progress": progress,
        "train_state": {
            "examples_seen": state.examples_seen,
            "history": state.history,
            "best_epoch": state.best_epoch,
            "best_value": state.best_value,
            "extra": state.extra,
        },
    }
    checkpointer.save(tensors, meta)


def _restore(
    found: Checkpoint,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainState,
    callbacks: Sequence[Callback],
    accelerator: Any,
) -> tuple[int, int]:
    """Put the run back where ``found`` left it; returns (epoch, batches of it already trained)."""
    meta = found.meta
    if meta.get("processes", 1) != accelerator.num_processes:
        raise ArtifactError(
            f"was written by a fit on {meta.get('processes')} process(es); "
            f"this one runs on {accelerator.num_processes}",
            path=found.folder,
            hint="Resume with as many processes as the run had",
        )
    try:
        accelerator.unwrap_model(model).load_state_dict(found.part("model"), strict=True)
        load_optimizer_state(optimizer, found.tensors, meta["optimizer"])
        scheduler.load_state_dict(meta["scheduler"])
        saved = meta["train_state"]
        state.step = int(meta["step"])
        state.examples_seen = int(saved["examples_seen"])
        state.history = list(saved["history"])
        state.best_epoch = saved["best_epoch"]
        state.best_value = saved["best_value"]
        state.extra.update(saved["extra"])
        state.extra["resumed_from"] = found.folder.name
        for index, cb in enumerate(callbacks):
            key = callback_key(index, cb)
            if key in meta["callbacks"]:
                cb.load_checkpoint_state(found.part(f"callback.{key}"), meta["callbacks"][key])
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as exc:
        raise ArtifactError(
            f"does not fit this run ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
            path=found.folder,
            hint="Resume with the run's own settings and data, or start a new run",
        ) from None
    return int(meta["epoch"]), int(meta["batch"])


def training_summary(
    state: TrainState, *, monitor: str, train_seconds: float, loop_seconds: float, started: float
) -> dict[str, Any]:
    """What a fit reports about its training run (``training_info_``): epochs, best epoch, speed, time."""
    return {
        "epochs_run": len(state.history),
        "best_epoch": state.best_epoch,
        "monitor": f"valid_{monitor}",
        "stopped_early": state.stop_reason is not None,
        "stop_reason": state.stop_reason,
        "train_seconds": train_seconds,
        "train_examples": state.examples_seen,
        "train_examples_per_s": state.examples_seen / train_seconds if train_seconds > 0 else None,
        "validation_seconds": max(0.0, loop_seconds - train_seconds),
        "total_seconds": time.perf_counter() - started,
    }


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class LocalAccelerator:
    """The loop's accelerator for one process on one device, without Accelerate's global state.

    Small networks (the tabular one) train in the calling process on the CPU: Accelerate's
    process-wide state would tie them to whatever device an earlier fit chose, and its data
    loader wrapper costs more than such a model's steps. It offers what :func:`train` calls.
    """

    is_main_process = True
    num_processes = 1

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)

    def prepare(self, *objects: Any) -> Any:
        for obj in objects:
            if isinstance(obj, nn.Module):
                obj.to(self.device)
        return objects[0] if len(objects) == 1 else objects

    def no_sync(self, model: nn.Module) -> _nullcontext:
        return _nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm_(self, parameters: Any, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def gather_for_metrics(self, tensors: Any) -> Any:
        return tensors

    def unwrap_model(self, model: nn.Module) -> nn.Module:
        return model

    def wait_for_everyone(self) -> None:
        return None
