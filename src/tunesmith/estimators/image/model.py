"""The image network and what training it needs: :class:`ImageModel`, BatchNorm recalibration,
the index dataset and the collate function that augments and normalises batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from tunesmith.backbones.image import ImageBackbone, ImagePreprocessing
from tunesmith.data.image_augment import ImageAugment, augment_batch, mix_batch
from tunesmith.model import Head
from tunesmith.progress import progress
from tunesmith.train.callbacks import Callback, TrainState


class ImageModel(nn.Module):
    """Backbone + head; ``forward(pixels)`` returns logits. Keeps chosen BatchNorm layers in eval mode."""

    def __init__(self, backbone: ImageBackbone, n_outputs: int, dropout: float, *, freeze_all_bn: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = Head(backbone.hidden_size, n_outputs, dropout)
        self.freeze_all_bn = freeze_all_bn

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(pixels))

    def train(self, mode: bool = True) -> ImageModel:
        super().train(mode)
        if mode:
            # A BatchNorm layer whose scale and shift are frozen keeps its statistics frozen
            # too; otherwise a "frozen" layer would still drift with every batch.
            for bn in self.backbone.batchnorm_layers():
                affine = [p for p in (bn.weight, bn.bias) if p is not None]
                if self.freeze_all_bn or (affine and not any(p.requires_grad for p in affine)):
                    bn.eval()
        return self


def recalibrate_batchnorm(
    model: ImageModel,
    layers: Sequence[nn.modules.batchnorm._BatchNorm],
    images: torch.Tensor,
    pre: ImagePreprocessing,
    batch_size: int,
    *,
    show_progress: bool = False,
) -> None:
    """Replace the running statistics of ``layers`` by their averages over ``images`` (uint8 NCHW).

    Each batch counts equally (PyTorch's cumulative average), so keep ``batch_size`` large.
    """
    was_training = model.training
    momenta = {id(bn): bn.momentum for bn in layers}
    model.eval()
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over every batch of the pass
        bn.train()
    device = next(model.parameters()).device
    with (
        torch.no_grad(),
        progress("re-estimating BatchNorm statistics", len(images), unit="images", enabled=show_progress) as bar,
    ):
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device).float().div_(255.0)
            model.backbone(pre.normalize(x))
            bar.advance(len(x))
    for bn in layers:
        bn.momentum = momenta[id(bn)]
    model.train(was_training)


def settle_batchnorm(
    model: ImageModel,
    layers: list[nn.modules.batchnorm._BatchNorm],
    images: torch.Tensor,
    batch_size: int,
    score: Callable[[str], float | None] | None,
    monitor: str,
    mode: str,
    *,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Re-estimate BatchNorm statistics of the trained ``layers`` on un-augmented training ``images``.

    Running averages gathered while the weights were still moving lag behind the final
    weights; a pass with the final weights gives the statistics the model will see. With a
    validation ``score`` (metric name -> value), the new statistics are kept only when the
    ``monitor`` metric does not get worse (``mode`` ``max`` or ``min``).
    """
    before = {id(bn): (bn.running_mean.clone(), bn.running_var.clone()) for bn in layers}  # type: ignore[union-attr]
    score_before = None
    if score is not None:
        score_before = score(monitor)
        if score_before is None:
            # A monitor compute_metrics has no value for (the loss; AUC with one class present)
            # falls back to accuracy.
            monitor, mode = "accuracy", "max"
            score_before = score(monitor)
    recalibrate_batchnorm(model, layers, images, model.backbone.preprocessing, batch_size, show_progress=show_progress)
    info: dict[str, Any] = {"recalibrated_layers": len(layers), "kept": True}
    if score is not None and score_before is not None:
        score_after = score(monitor)
        assert score_after is not None
        worse = score_after < score_before if mode == "max" else score_after > score_before
        info.update({f"valid_{monitor}_before": score_before, f"valid_{monitor}_after": score_after})
        if worse:
            for bn in layers:
                mean, var = before[id(bn)]
                bn.running_mean.copy_(mean)  # type: ignore[union-attr]
                bn.running_var.copy_(var)  # type: ignore[union-attr]
            info["kept"] = False
    return info


def trained_batchnorm(model: ImageModel) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers whose scale is being trained (their statistics are worth re-estimating)."""
    return [bn for bn in model.backbone.batchnorm_layers() if bn.weight is not None and bn.weight.requires_grad]


class RecalibrateBeforeValidation(Callback):
    """Fresh BatchNorm statistics before each validation, from a fixed sample of training images.

    Running averages lag the weights (EfficientNet keeps 99% of the old value per step), so
    a network whose features moved far from ImageNet's, or one trained from scratch, scores
    near chance in eval mode although it has learned: early stopping would then keep the
    wrong epoch. 1,024 images give statistics close to the full pass at a fraction of its cost.
    """

    order = 10  # before early stopping reads the metrics

    def __init__(self, model: ImageModel, images: torch.Tensor, pre: ImagePreprocessing, batch: int, seed: int):
        self.model = model
        gen = torch.Generator().manual_seed(seed)
        take = torch.randperm(len(images), generator=gen)[: min(len(images), 1024)]
        self.images = images[take]
        self.pre = pre
        self.batch = batch

    def on_validation_start(self, state: TrainState) -> None:
        layers = trained_batchnorm(self.model)
        if layers:
            recalibrate_batchnorm(self.model, layers, self.images, self.pre, self.batch)


class IndexDataset(torch.utils.data.Dataset[dict[str, Any]]):
    """Row indices and targets; the images stay in one uint8 tensor that :class:`Collate` gathers from."""

    def __init__(self, targets: np.ndarray, augment: bool) -> None:
        self.targets = targets
        self.augment = augment

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"index": i, "target": int(self.targets[i]), "augment": self.augment}


class Collate:
    """Gathers uint8 images by index, augments training batches (seeded), normalises."""

    def __init__(
        self,
        train_images: torch.Tensor,
        valid_images: torch.Tensor | None,
        pre: ImagePreprocessing,
        aug: ImageAugment,
        n_classes: int,
        seed: int,
    ) -> None:
        self.train_images = train_images
        self.valid_images = valid_images
        self.pre = pre
        self.aug = aug
        self.n_classes = n_classes
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The training loop says which epoch the next batches belong to."""
        self.epoch = epoch

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        index = torch.tensor([b["index"] for b in batch], dtype=torch.long)
        target = torch.tensor([b["target"] for b in batch], dtype=torch.long)
        training = bool(batch[0]["augment"])
        source = self.train_images if training else self.valid_images
        assert source is not None
        x = source[index].float().div_(255.0)
        out_target: torch.Tensor = target
        if training and self.aug.enabled:
            # Each batch draws from its own generator, seeded by the epoch and its first example
            # (an example is in one batch an epoch): the draws do not depend on how many batches
            # were collated before, so a fit resumed mid-epoch augments exactly as before.
            key = np.random.SeedSequence([self.seed, self.epoch, int(index[0])]).generate_state(1)[0]
            generator = torch.Generator().manual_seed(int(key))
            x = augment_batch(x, self.aug, generator)
            if self.aug.needs_soft_targets:
                x, out_target = mix_batch(x, target, self.n_classes, self.aug, generator)
        return {"pixels": self.pre.normalize(x), "target": out_target, "index": index}


def nhwc_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(n, h, w, 3)`` images -> a contiguous uint8 ``(n, 3, h, w)`` tensor."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, computed stably in float64 and returned as float32.

    The same arithmetic as the ONNX runtime's, so both backends agree on probabilities.
    """
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def reset_random(backbone: ImageBackbone, seed: int) -> None:
    """Give ``backbone`` fresh random weights (He-normal convolutions, reset BatchNorm), seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in backbone.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_parameters()


def backbone_features(
    backbone: ImageBackbone, images: np.ndarray, batch_size: int, *, show_progress: bool = False
) -> np.ndarray:
    """Pooled features ``(n, hidden_size)`` of uint8 NHWC ``images`` from ``backbone`` in eval mode."""
    backbone.eval()
    device = next(backbone.parameters()).device
    out = []
    with (
        torch.inference_mode(),
        progress("frozen features for the baseline", len(images), unit="images", enabled=show_progress) as bar,
    ):
        for start in range(0, len(images), batch_size):
            x = nhwc_to_tensor(images[start : start + batch_size]).to(device).float().div_(255.0)
            out.append(backbone(backbone.preprocessing.normalize(x)).float().cpu().numpy())
            bar.advance(len(x))
    return np.concatenate(out) if out else np.zeros((0, backbone.hidden_size), dtype=np.float32)


def model_logits(
    model: ImageModel, images: torch.Tensor, batch_size: int, n_outputs: int, *, show_progress: bool = False
) -> np.ndarray:
    """Logits ``(n, n_outputs)`` of uint8 NCHW ``images``, in eval mode and batches of ``batch_size``."""
    return _run_images(model, model, images, batch_size, n_outputs, "predicting", show_progress)


def model_features(
    model: ImageModel, images: torch.Tensor, batch_size: int, *, show_progress: bool = False
) -> np.ndarray:
    """Pooled features ``(n, hidden_size)`` of uint8 NCHW ``images``: the trained backbone's output,
    what the head sees, in eval mode and batches of ``batch_size``."""
    return _run_images(
        model, model.backbone, images, batch_size, model.backbone.hidden_size, "embedding", show_progress
    )


def _run_images(
    model: ImageModel,
    part: nn.Module,
    images: torch.Tensor,
    batch_size: int,
    width: int,
    description: str,
    show_progress: bool,
) -> np.ndarray:
    """``part`` of ``model`` (the whole network or its backbone) over normalised batches of ``images``."""
    model.eval()
    pre = model.backbone.preprocessing
    device = next(model.parameters()).device
    out = []
    with (
        torch.inference_mode(),
        progress(description, len(images), unit="images", enabled=show_progress) as bar,
    ):
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device).float().div_(255.0)
            out.append(part(pre.normalize(x)).float().cpu().numpy())
            bar.advance(len(x))
    if not out:
        return np.zeros((0, width), dtype=np.float32)
    return np.concatenate(out)
