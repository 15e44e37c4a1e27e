"""Pooled vectors of a frozen text backbone, batched by length; used wherever texts become features.

The data inspection (near duplicates), the fast label-error search, tabular text columns,
recommender content vectors and the frozen-embedding baseline all embed through here, below
the estimators, so none of them needs an estimator to get vectors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from tunesmith.backbones import create_backbone
from tunesmith.backbones.text import TextBackbone
from tunesmith.progress import progress as progress_bar
from tunesmith.train.batching import Collator, LengthGroupedBatchSampler, TokenDataset


def run_batches(
    module: torch.nn.Module,
    ids: list[list[int]],
    batch_size: int,
    pad_id: int,
    *,
    progress: bool,
    description: str,
) -> np.ndarray:
    """Run ``module`` over token ids in length-sorted batches; results in input order."""
    dataset = TokenDataset(ids)
    sampler = LengthGroupedBatchSampler(dataset.lengths, batch_size, shuffle=False)
    collate = Collator(pad_id)
    results: list[np.ndarray] = []
    order: list[np.ndarray] = []
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    with (
        torch.inference_mode(),
        progress_bar(description, len(dataset), unit="rows", enabled=progress and len(sampler) > 2) as bar,
    ):
        for idx in sampler:
            batch = collate([dataset[i] for i in idx])
            out = module(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            results.append(out.float().cpu().numpy())
            order.append(np.asarray(idx))
            bar.advance(len(idx))
    module.train(was_training)
    if not results:
        return np.zeros((0, 0), dtype=np.float32)
    stacked = np.concatenate(results)
    final = np.empty_like(stacked)
    final[np.concatenate(order)] = stacked
    return final


def embed_texts(
    texts: Sequence[str],
    backbone: str | TextBackbone = "minilm-l6",
    *,
    max_length: int = 128,
    batch_size: int = 128,
    pooling: str = "mean",
    progress: bool = True,
    description: str = "embedding",
) -> np.ndarray:
    """Pooled vectors of the pre-trained (frozen) backbone, one row per text, in input order.

    ``backbone`` is a registered name, a local Hugging Face folder or a built
    :class:`~tunesmith.backbones.text.TextBackbone`.
    """
    model = create_backbone(backbone, pooling=pooling) if isinstance(backbone, str) else backbone
    if not len(texts):
        return np.zeros((0, model.hidden_size), dtype=np.float32)
    ids = model.tokenize(list(texts), max_length)
    return run_batches(model, ids, batch_size, model.pad_id, progress=progress, description=description).astype(
        np.float32
    )
