"""Few-shot fine-tuning: contrastive tuning of the sentence encoder, then a head (as SetFit does).

With a handful of labeled examples per class, a classification loss on a new head moves a
pre-trained encoder little and overfits fast. SetFit's answer is to tune the encoder first on
*pairs* of examples (same class: cosine similarity 1; different classes: 0), which turns 16
labels into 120 training signals, then fit a logistic regression on the tuned embeddings.

tunesmith does the same with one change that matters on a CPU: SetFit encodes both sentences of
every pair in every batch (16 pairs = 32 encodings for 16 signals), while here each step
encodes a class-balanced batch of distinct examples once and takes the loss over *every* pair in
the batch (32 examples = 496 pairs). The number of pairs seen grows with the square of the batch
at the cost of one forward and backward pass, so the same training signal costs a fraction of
SetFit's time, and large labeled sets cannot blow up into millions of pairs: the work is
``fewshot_steps`` batches, whatever the number of examples (SetFit's pair count grows with the
square of the data set).

The head is a logistic regression (scikit-learn, L-BFGS) on the tuned encoder's pooled vectors,
copied into the model's linear head, so the result is an ordinary text model: one network that
saves, predicts, exports to ONNX and serves as every fine-tuned model does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from tunesmith.adapt import count_parameters
from tunesmith.backbones.embed import run_batches
from tunesmith.backbones.text import TextBackbone
from tunesmith.config import FitConfig
from tunesmith.errors import ConfigError
from tunesmith.estimators.text.fitting import Built, Splits, Trained, WarmStart, _deterministic
from tunesmith.evaluate.metrics import metric_direction
from tunesmith.model import TextModel
from tunesmith.progress import progress
from tunesmith.runs.record import RunRecord
from tunesmith.train.batching import Collator
from tunesmith.train.callbacks import Callback, TrainState, end_epoch
from tunesmith.train.heads import FEWSHOT_MAX_PER_CLASS, choose_head, head_weights, resolve_auto_strategy

__all__ = [
    "FEWSHOT_MAX_PER_CLASS",
    "auto_steps",
    "balanced_batches",
    "contrastive_tune",
    "pair_loss",
    "resolve_strategy",
    "train_fewshot",
]
from tunesmith.train.losses import make_loss
from tunesmith.train.precision import attention_kernel
from tunesmith.train.threads import set_trainable_all


@dataclass(frozen=True)
class FewShotSettings:
    """How the contrastive stage runs; the defaults are those measured in bench/few_labels.py."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_ratio: float
    head_c: float
    seed: int


def auto_steps(n_examples: int, batch_size: int, requested: int) -> int:
    """Contrastive steps: ``requested`` if positive, else enough passes for every pair to be seen.

    With ``n`` examples in batches of ``b``, one pass over the data sees about ``n * (b - 1) / 2``
    of the ``n**2 / 2`` pairs; ``n / b`` passes see each pair about once in expectation. The
    count is kept between 8 steps (a few examples still need several updates) and 60 (the cap
    that keeps a large labeled set from running for ever: 60 steps of 32 encodings, whatever
    the data's size).
    """
    if requested > 0:
        return requested
    b = max(2, min(batch_size, n_examples))
    passes = max(1.0, n_examples / b)
    return int(min(60, max(8, math.ceil(passes * n_examples / b))))


def balanced_batches(y: np.ndarray, batch_size: int, steps: int, seed: int) -> list[np.ndarray]:
    """``steps`` batches of distinct examples, as class-balanced as the data allows.

    Each class's examples are taken in a fresh seeded permutation, cycling, so every example is
    used about equally often; a batch holds ``batch_size // n_classes`` of each class (at least
    two, so every batch has positive pairs) or all of a class that has fewer. With more than
    ``batch_size / 2`` classes each batch takes two rows of each of ``batch_size / 2`` classes,
    the classes rotating in a seeded order, so a step never encodes more than ``batch_size`` rows.
    """
    rng = np.random.default_rng(seed)
    all_classes = np.unique(y)
    # Two rows of each of at most batch_size / 2 classes: with many classes a step takes a
    # rotating subset of them, so no step encodes more than ``batch_size`` rows.
    width = max(1, batch_size // 2)
    per_class = max(2, batch_size // len(all_classes))
    class_order: np.ndarray | None = None
    class_cursor = 0
    pools = {c: np.flatnonzero(y == c) for c in all_classes}
    orders = {c: rng.permutation(p) for c, p in pools.items()}
    cursors = dict.fromkeys(all_classes, 0)
    batches = []
    for _ in range(steps):
        picked = []
        classes = all_classes
        if len(all_classes) > width:
            if class_order is None or class_cursor + width > len(class_order):
                class_order, class_cursor = rng.permutation(all_classes), 0
            classes = class_order[class_cursor : class_cursor + width]
            class_cursor += width
        for c in classes:
            pool, take = pools[c], min(per_class, len(pools[c]))
            mine: list[int] = []
            for _ in range(take):
                if cursors[c] >= len(orders[c]):
                    # A fresh pass starts mid-batch: what this batch already holds goes last,
                    # so no example appears twice in one batch.
                    fresh = rng.permutation(pool)
                    orders[c] = np.concatenate([fresh[~np.isin(fresh, mine)], fresh[np.isin(fresh, mine)]])
                    cursors[c] = 0
                mine.append(int(orders[c][cursors[c]]))
                cursors[c] += 1
            picked.extend(mine)
        batches.append(np.unique(np.asarray(picked, dtype=np.int64)))
    return batches


def pair_loss(embeddings: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SetFit's cosine-similarity loss over every pair in the batch, positives and negatives weighted equally.

    ``(cos(a, b) - [same class])**2``, averaged within the positive pairs and within the
    negative pairs and then over the two, as SetFit's oversampling balances their counts.
    """
    z = F.normalize(embeddings.float(), dim=-1)
    sim = z @ z.T
    same = (y[:, None] == y[None, :]).float()
    upper = torch.triu(torch.ones_like(sim), diagonal=1)
    err = (sim - same) ** 2
    pos, neg = same * upper, (1.0 - same) * upper
    terms = []
    if pos.sum() > 0:
        terms.append((err * pos).sum() / pos.sum())
    if neg.sum() > 0:
        terms.append((err * neg).sum() / neg.sum())
    return torch.stack(terms).mean()


def contrastive_tune(
    backbone: TextBackbone,
    ids: Sequence[Sequence[int]],
    y: np.ndarray,
    settings: FewShotSettings,
    *,
    device: torch.device | str = "cpu",
    autocast: torch.dtype | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Tune ``backbone`` in place on the pairs of ``ids`` (token ids) with class codes ``y``.

    Returns what ran: steps, examples and pairs per step, the mean loss of the first and last
    steps, and the seconds. ``progress`` (optional) is called with ``(step, steps)``.
    """
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        raise ValueError("few-shot contrastive tuning needs examples of at least two classes")
    steps = auto_steps(len(y), settings.batch_size, settings.steps)
    batches = balanced_batches(y, settings.batch_size, steps, settings.seed)
    params = [p for p in backbone.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
    )
    warmup = max(1, round(settings.warmup_ratio * steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (steps - step) / max(1, steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    collate = Collator(backbone.pad_id)
    backbone.train()
    losses: list[float] = []
    generator = torch.Generator().manual_seed(settings.seed)
    start = time.perf_counter()
    # Dropout draws from the global generator: seed it so the same settings give the same weights.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        for step, batch in enumerate(batches):
            feed = collate([{"input_ids": list(ids[i]), "index": int(i)} for i in batch])
            input_ids = feed["input_ids"].to(device)
            mask = feed["attention_mask"].to(device)
            context = (
                torch.autocast(device_type=torch.device(device).type, dtype=autocast)
                if autocast is not None
                else nullcontext()
            )
            with context:
                emb = backbone(input_ids, mask)
            loss = pair_loss(emb, torch.as_tensor(y[batch], device=emb.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(step + 1, steps)
    backbone.eval()
    sizes = [len(b) for b in batches]
    head = max(1, len(losses) // 5)
    return {
        "steps": steps,
        "examples_per_step": float(np.mean(sizes)),
        "pairs_per_step": float(np.mean([s * (s - 1) / 2 for s in sizes])),
        "loss_first": float(np.mean(losses[:head])),
        "loss_last": float(np.mean(losses[-head:])),
        "seconds": time.perf_counter() - start,
    }


def _tune_and_fit_head(
    model: TextModel, cfg: FitConfig, built: Built, y_train: np.ndarray, settings: FewShotSettings, steps: int
) -> tuple[str, dict[str, Any], float]:
    """Contrastive tuning of ``model``'s encoder, then its head in closed form: (head, tuning info, seconds)."""
    backbone = built.backbone
    started = time.perf_counter()
    show = cfg.progress and built.accelerator.is_main_process
    bar = progress(f"few-shot tuning {cfg.backbone} (pairs)", steps, unit="steps", enabled=show)
    with bar, _deterministic(cfg.deterministic):
        info = contrastive_tune(
            backbone,
            built.ids["train"],
            y_train,
            settings,
            device=built.accelerator.device,
            autocast=built.autocast,
            progress=lambda step, total: bar.advance(1),
        )
    features = run_batches(
        backbone, built.ids["train"], cfg.eval_batch_size, backbone.pad_id, progress=False, description="embedding"
    )
    head: str = cfg.fewshot_head
    if head == "auto":
        head = choose_head(features, y_train, cfg.fewshot_head_c, cfg.seed)
    weight, bias = head_weights(head, features, y_train, model.head.linear.out_features, cfg.fewshot_head_c, cfg.seed)
    with torch.no_grad():
        model.head.linear.weight.copy_(torch.as_tensor(weight))
        model.head.linear.bias.copy_(torch.as_tensor(bias))
    model.eval()
    set_trainable_all(model, False)
    return head, info, time.perf_counter() - started


def _validation(
    est: Any, model: TextModel, cfg: FitConfig, schema: Any, built: Built, y_valid: np.ndarray
) -> dict[str, float]:
    """``valid_loss`` (the configured classification loss) and ``valid_<metric>``, as the loop reports them."""
    outputs = run_batches(
        model, built.ids["valid"], cfg.eval_batch_size, built.backbone.pad_id, progress=False, description="validating"
    )
    loss_fn = make_loss(cfg.loss, schema.task, label_smoothing=cfg.label_smoothing, focal_gamma=cfg.focal_gamma)
    with torch.no_grad():
        found = {"valid_loss": float(loss_fn(torch.as_tensor(outputs), torch.as_tensor(np.asarray(y_valid))))}
    labels = list(schema.labels or [])
    for key, value in est._metrics_from_outputs(schema.task, y_valid, outputs, labels, built.mean, built.std).items():
        if isinstance(value, (int, float)) and key != "n":
            found[f"valid_{key}"] = float(value)
    return found


def train_fewshot(
    est: Any,
    cfg: FitConfig,
    schema: Any,
    splits: Splits,
    built: Built,
    record: RunRecord | None,
    callbacks: Sequence[Callback],
    warm: WarmStart | None = None,
) -> Trained:
    """Step 7 for ``strategy="fewshot"``: contrastive tuning of the encoder, then the head.

    The result is the same :class:`~tunesmith.model.TextModel` a full fine-tune gives (every
    weight saved), so everything downstream is unchanged. The run's history holds one entry,
    as one epoch would: the contrastive loss and the validation metrics of the final model.
    ``callbacks`` see that entry through ``on_epoch_end``.
    """
    from accelerate.utils import set_seed

    if warm is not None:
        raise ConfigError("a refit cannot run the few-shot strategy", key="strategy", hint="refit with strategy='full'")
    backbone, ids = built.backbone, built.ids
    labels = list(schema.labels or [])
    y_train = np.asarray(splits.train.y).astype(np.int64)
    kernel = backbone.use_attention(attention_kernel(cfg.attention, built.accelerator.device, built.autocast))
    set_seed(cfg.seed)
    model = TextModel(backbone, len(labels), cfg.dropout)
    model.to(built.accelerator.device)
    settings = FewShotSettings(
        steps=cfg.fewshot_steps,
        batch_size=cfg.fewshot_batch_size,
        lr=cfg.fewshot_lr,
        weight_decay=cfg.weight_decay,
        warmup_ratio=cfg.warmup_ratio,
        head_c=cfg.fewshot_head_c,
        seed=cfg.seed,
    )
    steps = auto_steps(len(y_train), settings.batch_size, settings.steps)
    state = TrainState(model=model, epochs=1, steps_per_epoch=steps)
    ordered = sorted(callbacks, key=lambda cb: cb.order)
    monitor = cfg.monitor if cfg.monitor != "auto" else "f1_macro"
    mode = metric_direction(monitor, schema.task)
    started = time.perf_counter()
    # The callback contract of the loop: on_fit_end always runs, StopTraining ends cleanly
    # and every callback still sees the epoch that stops.
    try:
        for cb in ordered:
            cb.on_fit_start(state)
        head, info, train_seconds = _tune_and_fit_head(model, cfg, built, y_train, settings, steps)
        state.step = info["steps"]
        state.examples_seen = round(info["steps"] * info["examples_per_step"])
        metrics: dict[str, Any] = {
            "epoch": 1,
            "train_loss": info["loss_last"],
            "lr": settings.lr,
            "epoch_seconds": train_seconds,
            "train_examples_per_s": state.examples_seen / train_seconds if train_seconds > 0 else None,
            "contrastive_steps": info["steps"],
            "pairs_per_step": info["pairs_per_step"],
            "head": head,
        }
        y_valid = splits.valid.y
        if ids["valid"] and y_valid is not None and len(y_valid):
            metrics.update(_validation(est, model, cfg, schema, built, y_valid))
            state.best_epoch = 1
        state.epoch = 1
        state.history.append(metrics)
        if record is not None:
            record.log_epoch(metrics)
        end_epoch(ordered, state, metrics)
    finally:
        for cb in ordered:
            cb.on_fit_end(state)
    trainable, total = count_parameters(model)
    compute = {"precision": "bfloat16" if built.autocast == torch.bfloat16 else "float32", "attention": kernel}
    loop_seconds = time.perf_counter() - started
    train_seconds = float(state.history[-1]["epoch_seconds"]) if state.history else loop_seconds
    return Trained(
        model, state, monitor, mode, train_seconds, loop_seconds, {"trainable": trainable, "total": total}, compute
    )


# Settings only the training loop reads: one set to other than its default asks for the loop.
_LOOP_SETTINGS = (
    "epochs",
    "lr",
    "head_lr",
    "batch_size",
    "grad_accum_steps",
    "optimizer",
    "scheduler",
    "loss",
    "label_smoothing",
    "class_weight",
    "ema_decay",
    "gradual_unfreeze",
    "freeze_layers",
    "freeze_embeddings",
    "layer_lr_decay",
)


def resolve_strategy(cfg: FitConfig, task: str, y_train: Any, *, warm: bool = False) -> FitConfig:
    """The settings with ``strategy="auto"`` resolved (:func:`~tunesmith.train.heads.resolve_auto_strategy`).

    A fit that continues an earlier model (``warm``) keeps full fine-tuning.
    """
    resolved: FitConfig = resolve_auto_strategy(
        cfg,
        task,
        y_train,
        loop_settings=_LOOP_SETTINGS,
        keep_full=warm,
        hint="Use strategy='full' (or 'lora', 'head_only') for regression",
    )
    return resolved
