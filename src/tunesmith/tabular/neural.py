"""A small neural network for table rows, and its training loop.

Rows are small and already numeric, so the loop slices tensors directly (no ``DataLoader``)
and scores the whole validation set in one pass: on a CPU that overhead would otherwise
dominate the run time.
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

from tunesmith.errors import ConfigError

__all__ = ["TabularNet", "TrainResult", "embedding_dim", "net_spec", "predict_outputs", "train_tabular_net"]

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
    from tunesmith.errors import ArtifactError
    from tunesmith.runs.trust import field

    root = {name: info}

    def ints(key: str, low: int, high: int, most: int) -> list[int]:
        values = field(root, f"{name}.{key}", list, file=file)
        if len(values) > most or not all(
            isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in values
        ):
            raise ArtifactError(
                f"field '{name}.{key}' must be a list of at most {most} whole numbers in [{low}, {high}]", path=file
            )
        return values

    return {
        "n_numeric": field(root, f"{name}.n_numeric", int, file=file, low=0, high=MAX_WIDTH),
        "cardinalities": ints("cardinalities", 1, MAX_WIDTH, 100_000),
        "n_outputs": field(root, f"{name}.n_outputs", int, file=file, low=1, high=MAX_OUTPUTS),
        "hidden": tuple(ints("hidden", 1, MAX_WIDTH, MAX_LAYERS)),
        "dropout": float(field(root, f"{name}.dropout", float, file=file, low=0.0, high=0.999999)),
        "norm": field(root, f"{name}.norm", (str, type(None)), file=file, default=None, choices=NORMS),
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
) -> TrainResult:
    """Train ``net`` in place with AdamW, restoring the weights of the best validation epoch.

    ``train``/``valid`` are ``(numeric, categorical, target)``; targets are class indices or,
    for regression, already-scaled floats. Early stopping watches the validation loss
    (unweighted, so class weights shape training but not the choice of epoch) and stops after
    ``patience`` epochs without improvement. ``schedule`` is ``"onecycle"``, ``"cosine"`` or
    ``"constant"``. Everything random (initialisation aside, which the caller seeds) draws
    from generators seeded with ``seed``; the global torch RNG is left as it was.
    """
    if schedule not in ("onecycle", "cosine", "constant"):
        raise ConfigError(f"unknown schedule {schedule!r}", key="schedule", hint="Use onecycle, cosine or constant")
    if epochs < 1 or batch_size < 1:
        raise ConfigError("epochs and batch_size must be at least 1", key="epochs" if epochs < 1 else "batch_size")
    regression = task == "regression"
    num = torch.as_tensor(train[0], dtype=torch.float32)
    cat = torch.as_tensor(train[1], dtype=torch.long)
    y = torch.as_tensor(train[2], dtype=torch.float32 if regression else torch.long)
    if regression:
        y = y.reshape(-1, 1)
    n = len(num)
    steps = max(1, math.ceil(n / batch_size))
    loss_fn = _loss_fn(task, class_weights)
    plain_loss = _loss_fn(task, None)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler: Any = None
    if schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    elif schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps)

    gen = torch.Generator().manual_seed(seed)
    result = TrainResult()
    best_state = copy.deepcopy(net.state_dict())
    bad_epochs = 0
    # dropout draws from the global RNG; fork it so the caller's stream is untouched and runs repeat
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for epoch in range(1, epochs + 1):
            net.train()
            order = torch.randperm(n, generator=gen)
            total = 0.0
            for s in range(steps):
                idx = order[s * batch_size : (s + 1) * batch_size]
                if len(idx) < 2 and net.training and any(isinstance(m, nn.BatchNorm1d) for m in net.modules()):
                    continue  # BatchNorm cannot train on a batch of one
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(net(num[idx], cat[idx]), y[idx])
                loss.backward()
                opt.step()
                if scheduler is not None:
                    scheduler.step()
                total += float(loss.detach()) * len(idx)
            row: dict[str, float] = {"epoch": float(epoch), "train_loss": total / max(n, 1)}
            if valid is None:
                result.history.append(row)
                best_state = copy.deepcopy(net.state_dict())
                result.best_epoch = epoch
                continue
            out = torch.as_tensor(predict_outputs(net, valid[0], valid[1]))
            vy = torch.as_tensor(valid[2], dtype=torch.float32 if regression else torch.long)
            vloss = float(plain_loss(out, vy.reshape(-1, 1) if regression else vy))
            row["valid_loss"] = vloss
            if not regression:
                row["valid_accuracy"] = float((out.argmax(dim=1) == vy).float().mean())
            result.history.append(row)
            if math.isfinite(vloss) and vloss < result.best_valid_loss - 1e-7:
                result.best_valid_loss = vloss
                result.best_epoch = epoch
                best_state = copy.deepcopy(net.state_dict())
                bad_epochs = 0
            else:
                bad_epochs += 1
                if bad_epochs >= patience:
                    result.stopped_early = True
                    break
    net.load_state_dict(best_state)
    net.eval()
    return result
