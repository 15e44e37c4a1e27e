"""A small neural network for table rows, trained by the shared loop of :mod:`tunesmith.train`.

Rows are small and already numeric, so a batch is one slice of the split's tensors (no
per-row collation) and the whole validation set is scored in one pass: on a CPU that
overhead would otherwise dominate the run time.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from tunesmith.errors import ArtifactError, ConfigError
from tunesmith.runs.trust import field as meta_field
from tunesmith.tabular.preprocess import TabularFeatures
from tunesmith.tabular.settings import TabularConfig
from tunesmith.train.callbacks import Callback, EarlyStopping, ProgressBar
from tunesmith.train.checkpoint import Checkpointer
from tunesmith.train.continual import AnchorPenalty, PenalisedLoss, anchor_state
from tunesmith.train.loop import LocalAccelerator, LoopSettings
from tunesmith.train.loop import train as train_loop

__all__ = [
    "TabularNet",
    "TrainResult",
    "embedding_dim",
    "fit_net",
    "net_spec",
    "predict_outputs",
    "train_tabular_net",
]

NORMS = (None, "batch", "layer")
MAX_WIDTH = 1 << 20
"""Widest input, hidden layer or category count a saved network may declare."""
MAX_LAYERS = 64
MAX_OUTPUTS = 100_000


def net_spec(info: Any, *, file: str | os.PathLike[str], name: str = "net") -> dict[str, Any]:
    """The :class:`TabularNet` arguments saved under ``info`` (field ``name`` of ``file``), checked.

    Returns ``n_numeric``, ``cardinalities``, ``n_outputs``, ``hidden``, ``dropout`` and
    ``norm``, each of the right type and within bounds; the caller still compares the network
    they describe with the weights (build it on the ``meta`` device) before building it for
    real. A wrong field is an :class:`~tunesmith.errors.ArtifactError` naming the file and field.
    """
    root = {name: info}

    def ints(key: str, low: int, high: int, most: int) -> list[int]:
        values = meta_field(root, f"{name}.{key}", list, file=file)
        if len(values) > most or not all(
            isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in values
        ):
            raise ArtifactError(
                f"field '{name}.{key}' must be a list of at most {most} whole numbers in [{low}, {high}]", path=file
            )
        return values

    return {
        "n_numeric": meta_field(root, f"{name}.n_numeric", int, file=file, low=0, high=MAX_WIDTH),
        "cardinalities": ints("cardinalities", 1, MAX_WIDTH, 100_000),
        "n_outputs": meta_field(root, f"{name}.n_outputs", int, file=file, low=1, high=MAX_OUTPUTS),
        "hidden": tuple(ints("hidden", 1, MAX_WIDTH, MAX_LAYERS)),
        "dropout": float(meta_field(root, f"{name}.dropout", float, file=file, low=0.0, high=0.999999)),
        "norm": meta_field(root, f"{name}.norm", (str, type(None)), file=file, default=None, choices=NORMS),
    }


def embedding_dim(cardinality: int) -> int:
    """Width of a categorical column's embedding: ``min(16, (cardinality + 1) // 2 + 1)``."""
    return min(16, (cardinality + 1) // 2 + 1)


class TabularNet(nn.Module):
    """Embeddings for categorical columns, concatenated with numeric features, then an MLP.

    Args:
        n_numeric: numeric feature count (``d`` of the numeric matrix).
        cardinalities: per categorical column, the number of indices (vocabulary + unknown).
        n_outputs: classes (classification) or 1 (regression).
        hidden: widths of the hidden layers.
        dropout: dropout after each hidden layer.
        norm: ``None``, ``"batch"`` (BatchNorm1d) or ``"layer"`` (LayerNorm) after each linear layer.
    """

    def __init__(
        self,
        n_numeric: int,
        cardinalities: Sequence[int],
        n_outputs: int,
        *,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.1,
        norm: str | None = None,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ConfigError(f"unknown norm {norm!r}", key="norm", hint="Use None, 'batch' or 'layer'")
        self.n_numeric = int(n_numeric)
        self.cardinalities = [int(c) for c in cardinalities]
        self.embeddings = nn.ModuleList(nn.Embedding(c, embedding_dim(c)) for c in self.cardinalities)
        # Index 0 stands for an unknown or missing category. Without missing values in training
        # it never receives a gradient, so it starts at zero ("no information") rather than at
        # a random vector that would push every unseen category somewhere arbitrary.
        with torch.no_grad():
            for emb in self.embeddings:
                assert isinstance(emb, nn.Embedding)
                emb.weight[0].zero_()
        width = self.n_numeric + sum(embedding_dim(c) for c in self.cardinalities)
        layers: list[nn.Module] = []
        for h in hidden:
            layers.append(nn.Linear(width, int(h)))
            if norm == "batch":
                layers.append(nn.BatchNorm1d(int(h)))
            elif norm == "layer":
                layers.append(nn.LayerNorm(int(h)))
            layers += [nn.ReLU(), nn.Dropout(dropout)]
            width = int(h)
        layers.append(nn.Linear(width, int(n_outputs)))
        self.mlp = nn.Sequential(*layers)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """Outputs ``(batch, n_outputs)``: logits for classification, a scaled value for regression."""
        parts = [numeric] + [emb(categorical[:, j]) for j, emb in enumerate(self.embeddings)]
        return self.mlp(torch.cat(parts, dim=1))


@dataclass
class TrainResult:
    """What :func:`train_tabular_net` did: per-epoch history and the epoch whose weights were kept."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_valid_loss: float = math.inf
    stopped_early: bool = False
    stop_reason: str | None = None


@torch.no_grad()
def predict_outputs(net: nn.Module, numeric: np.ndarray, categorical: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """Raw outputs (logits or scaled values) in evaluation mode, float32 ``(n, n_outputs)``."""
    was_training = net.training
    net.eval()
    try:
        num = torch.as_tensor(numeric, dtype=torch.float32)
        cat = torch.as_tensor(categorical, dtype=torch.long)
        chunks = [net(num[i : i + batch_size], cat[i : i + batch_size]) for i in range(0, len(num), batch_size)]
        out = torch.cat(chunks) if chunks else torch.zeros((0, 1))
    finally:
        net.train(was_training)
    return out.numpy().astype(np.float32)


def _loss_fn(task: str, class_weights: np.ndarray | None) -> nn.Module:
    if task == "regression":
        return nn.MSELoss()
    weight = torch.as_tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
    return nn.CrossEntropyLoss(weight=weight)


class _Rows(Dataset[tuple[str, int]]):
    """Row positions of one split; :class:`_Slices` turns a batch of them into tensors."""

    def __init__(self, split: str, n: int) -> None:
        self.split = split
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.split, i


class _Slices:
    """Slices the split's tensors once per batch: rows are small and already numeric, so a
    per-row collate would cost more than the network's step on a CPU."""

    def __init__(self, splits: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        self.splits = splits

    def __call__(self, items: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
        numeric, categorical, target = self.splits[items[0][0]]
        index = torch.as_tensor([i for _, i in items], dtype=torch.long)
        return {"numeric": numeric[index], "categorical": categorical[index], "target": target[index], "index": index}


def train_tabular_net(
    net: TabularNet,
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    *,
    task: str,
    epochs: int = 50,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 1e-5,
    patience: int = 5,
    schedule: str = "onecycle",
    class_weights: np.ndarray | None = None,
    seed: int = 0,
    callbacks: Sequence[Callback] = (),
    progress: bool = False,
    penalty: AnchorPenalty | None = None,
    checkpointer: Checkpointer | None = None,
) -> TrainResult:
    """Train ``net`` in place with AdamW through the shared loop, keeping the best validation epoch.

    ``train``/``valid`` are ``(numeric, categorical, target)``; targets are class indices or,
    for regression, already-scaled floats. Training runs through
    :func:`tunesmith.train.loop.train` on the CPU: early stopping watches the validation
    loss (unweighted, so class weights shape training but not the choice of epoch) and stops
    after ``patience`` epochs without improvement, then the best epoch's weights are put back.
    Each epoch's metrics (``train_loss``, ``valid_loss``, ``valid_accuracy`` for classes) reach
    ``callbacks``' ``on_epoch_end``. ``schedule`` is ``"onecycle"``, ``"cosine"`` or
    ``"constant"``. Everything random (initialisation aside, which the caller seeds) draws from
    ``seed``; the global torch RNG is left as it was. ``penalty`` (L2-SP toward earlier
    weights, :class:`~tunesmith.train.continual.AnchorPenalty`) is added to the training loss
    only: it is zero while gradients are off, so validation losses stay those of the data.
    """
    if schedule not in ("onecycle", "cosine", "constant"):
        raise ConfigError(f"unknown schedule {schedule!r}", key="schedule", hint="Use onecycle, cosine or constant")
    if epochs < 1 or batch_size < 1:
        raise ConfigError("epochs and batch_size must be at least 1", key="epochs" if epochs < 1 else "batch_size")
    regression = task == "regression"
    target_dtype = torch.float32 if regression else torch.long

    def tensors(part: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            torch.as_tensor(part[0], dtype=torch.float32),
            torch.as_tensor(part[1], dtype=torch.long),
            torch.as_tensor(part[2], dtype=target_dtype),
        )

    splits = {"train": tensors(train)}
    n = len(splits["train"][0])
    has_valid = valid is not None and len(valid[0]) > 0
    if has_valid:
        assert valid is not None
        splits["valid"] = tensors(valid)
    if n % batch_size == 1 and any(isinstance(m, nn.BatchNorm1d) for m in net.modules()):
        batch_size += 1  # BatchNorm cannot train on a last batch of one row
    loss_fn = _loss_fn(task, class_weights)
    if penalty is not None:
        loss_fn = PenalisedLoss(loss_fn, penalty)
    plain_loss = _loss_fn(task, None) if class_weights is not None else None

    def valid_metrics(targets: np.ndarray, outputs: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if plain_loss is not None:
            # the loop's valid_loss is weighted like training; the choice of epoch is not
            out["loss"] = float(plain_loss(torch.as_tensor(outputs), torch.as_tensor(targets)))
        if not regression:
            out["accuracy"] = float((outputs.argmax(axis=1) == targets).mean())
        return out

    def make_scheduler(opt: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LRScheduler:
        if schedule == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total)
        if schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)

    loop_callbacks: list[Callback] = []
    if has_valid:
        loop_callbacks.append(
            EarlyStopping(
                "loss",
                "min",
                patience=patience,
                min_delta=1e-7,
                state_fn=net.state_dict,
                load_fn=net.load_state_dict,
            )
        )
    if progress:
        loop_callbacks.append(ProgressBar("training the network"))
    loop_callbacks.extend(callbacks)
    valid_targets = splits["valid"][2].numpy() if has_valid else None
    # dropout draws from the global RNG; fork it so the caller's stream is untouched and runs repeat
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = train_loop(
            net,
            train_set=_Rows("train", n),
            train_lengths=np.ones(n, dtype=np.int64),
            valid_set=_Rows("valid", len(valid_targets)) if valid_targets is not None else None,
            valid_lengths=np.ones(len(valid_targets), dtype=np.int64) if valid_targets is not None else None,
            valid_targets=valid_targets,
            collate=_Slices(splits),
            loss_fn=loss_fn,
            optimizer=torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay),
            make_scheduler=make_scheduler,
            settings=LoopSettings(
                epochs=epochs,
                batch_size=batch_size,
                eval_batch_size=8192,
                grad_clip=None,
                seed=seed,
                length_bucketing=False,
            ),
            accelerator=LocalAccelerator("cpu"),
            valid_metrics=valid_metrics,
            callbacks=loop_callbacks,
            checkpointer=checkpointer,
        )
    net.eval()
    best = state.best_epoch if has_valid and state.best_epoch is not None else len(state.history)
    return TrainResult(
        history=state.history,
        best_epoch=int(best or 0),
        best_valid_loss=float(state.best_value) if state.best_value is not None else math.inf,
        stopped_early=state.stop_reason is not None,
        stop_reason=state.stop_reason,
    )


def fit_net(
    cfg: TabularConfig,
    task: str,
    n_outputs: int,
    cardinalities: Sequence[int],
    train: tuple[TabularFeatures, np.ndarray],
    valid: tuple[TabularFeatures, np.ndarray],
    *,
    init_net: TabularNet | None = None,
    target_scaling: dict[str, float] | None = None,
    callbacks: Sequence[Callback] = (),
    l2sp: float = 0.0,
    checkpointer: Checkpointer | None = None,
) -> tuple[TabularNet, dict[str, Any]]:
    """The network candidate of a fit (a copy of ``init_net`` trained on, or a new one) and what training did.

    A regression target is standardised with ``target_scaling`` for training. With
    ``init_net`` and ``l2sp > 0`` the training loss adds ``l2sp * sum((w - w0)^2)``, a pull
    toward ``init_net``'s weights ``w0`` (L2-SP; ``init_net`` itself is never changed). The
    info holds ``best_epoch``, ``epochs_run``, ``stopped_early``, ``stop_reason`` and the
    per-epoch ``history``.
    """
    if init_net is not None:
        net = copy.deepcopy(init_net)
    else:
        # seed initialisation without disturbing the caller's global RNG stream
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            net = TabularNet(
                train[0].numeric.shape[1], cardinalities, n_outputs, hidden=tuple(cfg.hidden), dropout=cfg.dropout
            )
    penalty = AnchorPenalty(net, anchor_state(init_net), l2sp) if init_net is not None and l2sp > 0 else None
    y_train, y_valid = train[1], valid[1]
    if target_scaling is not None:
        y_train = (y_train - target_scaling["mean"]) / target_scaling["std"]
        y_valid = (y_valid - target_scaling["mean"]) / target_scaling["std"]
    result = train_tabular_net(
        net,
        (train[0].numeric, train[0].categorical, y_train),
        (valid[0].numeric, valid[0].categorical, y_valid),
        task=task,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        patience=cfg.patience,
        seed=cfg.seed,
        callbacks=callbacks,
        progress=cfg.progress,
        penalty=penalty,
        checkpointer=checkpointer,
    )
    info = {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "stop_reason": result.stop_reason,
        "history": result.history,
    }
    return net, info
