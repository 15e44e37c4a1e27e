"""Transfer-learning controls: what trains, and how fast each part learns.

- :func:`apply_freezing`: head only, or a frozen prefix (embeddings and the first N layers).
- :class:`GradualUnfreezer`: fastai-style schedule, head first, then one more layer from the top each epoch.
- :func:`param_groups`: layer-wise learning-rate decay, and no weight decay on biases and norms.
- :func:`add_lora` / :func:`lora_state_dict` / :func:`load_lora_state_dict`: LoRA adapters through peft.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from tunesmith.backbones.text import TextBackbone
from tunesmith.errors import ConfigError

# Parameter names that get no weight decay: shrinking a bias or a norm's scale towards zero
# regularises nothing and hurts (the convention of BERT and Hugging Face examples).
_NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")

DEFAULT_LORA_TARGETS = ["query", "value"]


def set_trainable(module: nn.Module, trainable: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(trainable)


def frozen_prefix(backbone: TextBackbone, *, freeze_embeddings: bool, freeze_layers: int) -> int:
    """How many layer groups, counted from the bottom, stay frozen for the whole run."""
    n_layers = backbone.num_layers
    if freeze_layers > n_layers:
        raise ConfigError(
            f"must be at most the backbone's {n_layers} layers, got {freeze_layers}",
            key="freeze_layers",
            hint="Use strategy=head_only to freeze every layer",
        )
    if freeze_layers > 0:
        # Freezing layer k while training the embeddings under it would feed frozen
        # layers a moving input; a frozen layer implies frozen embeddings.
        return 1 + freeze_layers
    return 1 if freeze_embeddings else 0


def apply_freezing(backbone: TextBackbone, *, strategy: str, freeze_embeddings: bool, freeze_layers: int) -> int:
    """Set ``requires_grad`` on the backbone for the chosen strategy; returns the frozen prefix length."""
    if strategy == "head_only":
        set_trainable(backbone, False)
        return len(backbone.layer_groups())
    if strategy == "lora":
        # peft already froze everything but the adapters.
        return len(backbone.layer_groups())
    set_trainable(backbone, True)
    prefix = frozen_prefix(backbone, freeze_embeddings=freeze_embeddings, freeze_layers=freeze_layers)
    for group in backbone.layer_groups()[:prefix]:
        set_trainable(group, False)
    return prefix


class GradualUnfreezer:
    """Head first, then one more layer group per ``every`` epochs, from the top down.

    Epoch 0 trains only the head; epoch ``k`` also trains the top ``k`` layer groups. Groups
    inside the permanently frozen prefix never unfreeze. This is fastai's ``fine_tune``
    idea (the new head settles before its gradients reach pre-trained weights) extended
    layer by layer, as in ULMFiT.
    """

    def __init__(self, backbone: TextBackbone, *, frozen_prefix: int, every: int = 1) -> None:
        self.groups = backbone.layer_groups()
        self.frozen_prefix = frozen_prefix
        self.every = max(1, every)

    def trainable_groups(self, epoch: int) -> int:
        """Number of top groups trainable at ``epoch`` (0-based)."""
        available = len(self.groups) - self.frozen_prefix
        return min(available, epoch // self.every)

    def apply(self, epoch: int) -> int:
        n_top = self.trainable_groups(epoch)
        n = len(self.groups)
        for i, group in enumerate(self.groups):
            set_trainable(group, i >= n - n_top and i >= self.frozen_prefix)
        return n_top


def _decays(name: str) -> bool:
    return not any(key in name for key in _NO_DECAY) and not name.endswith(".bias")


def param_groups(
    backbone: TextBackbone,
    head: nn.Module,
    *,
    lr: float,
    head_lr: float | None,
    weight_decay: float,
    layer_lr_decay: float,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups with layer-wise learning-rate decay.

    The top layer gets ``lr``, the one below ``lr * layer_lr_decay``, and so on down to the
    embeddings; the head gets ``head_lr`` (default ``lr``). Frozen parameters are included,
    so gradual unfreezing needs no new optimizer: a parameter without a gradient is skipped
    by every torch optimizer.
    """
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    layer_list = backbone.layer_groups()
    n = len(layer_list)

    def add(named: list[tuple[str, nn.Parameter]], group_lr: float, tag: str) -> None:
        decay = [p for name, p in named if _decays(name) and id(p) not in seen]
        no_decay = [p for name, p in named if not _decays(name) and id(p) not in seen]
        for params, wd, suffix in ((decay, weight_decay, ""), (no_decay, 0.0, "/no_decay")):
            if params:
                seen.update(id(p) for p in params)
                groups.append({"params": params, "lr": group_lr, "weight_decay": wd, "name": tag + suffix})

    add(list(head.named_parameters()), head_lr if head_lr is not None else lr, "head")
    for depth, group in enumerate(reversed(layer_list)):
        tag = "embeddings" if depth == n - 1 else f"layer_{n - 2 - depth}"
        add(list(group.named_parameters()), lr * layer_lr_decay**depth, tag)
    # Anything outside the listed groups (adapters' extra modules, final norms) trains at lr.
    rest = [(name, p) for name, p in backbone.named_parameters() if id(p) not in seen]
    add(rest, lr, "backbone_other")
    return groups


def add_lora(backbone: TextBackbone, *, r: int, alpha: float, dropout: float, targets: list[str] | None) -> None:
    """Wrap the backbone's encoder with LoRA adapters (peft); only the adapters train."""
    from peft import LoraConfig, get_peft_model

    target_modules = list(targets) if targets else list(DEFAULT_LORA_TARGETS)
    names = {name.rsplit(".", 1)[-1] for name, _ in backbone.model.named_modules()}
    missing = [t for t in target_modules if t not in names]
    if missing:
        raise ConfigError(
            f"no module named {missing[0]!r} in backbone {backbone.name!r}",
            key="lora_targets",
            hint=f"Linear layers here include: {', '.join(sorted(n for n in names if n)[:12])}",
        )
    # peft types lora_alpha as int but uses it as a float scale; a float alpha is fine.
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,  # type: ignore[arg-type]
        lora_dropout=dropout,
        target_modules=target_modules,
        bias="none",
    )
    with warnings.catch_warnings():
        # peft probes a property transformers has deprecated; nothing for a user to act on.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        backbone.model = get_peft_model(backbone.model, config)


def lora_state_dict(backbone: TextBackbone) -> dict[str, torch.Tensor]:
    """Only the adapter weights, keyed as peft saves them."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(backbone.model).items()}


def load_lora_state_dict(backbone: TextBackbone, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(backbone.model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ConfigError(f"adapter weights do not fit this backbone: unexpected {unexpected[:3]}", key="backbone")
    # An adapter weight left out would stay at its initial value (B = 0): the model would
    # silently be the base model. Every adapter parameter must have been loaded.
    wanted = [n for n, _ in backbone.model.named_parameters() if "lora_" in n]
    missing = len(wanted) - len(state)
    if missing:
        raise ConfigError(f"adapter weights are incomplete: {missing} of {len(wanted)} are missing", key="backbone")


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return trainable, total
