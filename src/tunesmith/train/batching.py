"""Dynamic padding and length-bucketed batches.

Padding every batch to the longest example in the data wastes most of the compute on
short texts; padding to the longest example of a randomly drawn batch still wastes a
lot. Grouping examples of similar length into the same batch, while keeping the order
of batches random, removes nearly all padding at no cost to training.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class TokenDataset(Dataset[dict[str, object]]):
    """Pre-tokenised examples: token ids plus an optional target per row."""

    def __init__(self, ids: Sequence[Sequence[int]], targets: np.ndarray | None = None) -> None:
        self.ids = [list(x) for x in ids]
        self.targets = targets
        self.lengths = np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, object]:
        item: dict[str, object] = {"input_ids": self.ids[i], "index": i}
        if self.targets is not None:
            item["target"] = self.targets[i]
        return item


class Collator:
    """Pads a list of examples to the longest one in the batch."""

    def __init__(self, pad_id: int, regression: bool = False) -> None:
        self.pad_id = pad_id
        self.regression = regression

    def __call__(self, batch: list[dict[str, object]]) -> dict[str, torch.Tensor]:
        seqs = [b["input_ids"] for b in batch]
        width = max(len(s) for s in seqs)  # type: ignore[arg-type]
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            n = len(seq)  # type: ignore[arg-type]
            ids[row, :n] = torch.as_tensor(seq, dtype=torch.long)
            mask[row, :n] = 1
        out = {
            "input_ids": ids,
            "attention_mask": mask,
            "index": torch.as_tensor([b["index"] for b in batch], dtype=torch.long),
        }
        if "target" in batch[0]:
            dtype = torch.float32 if self.regression else torch.long
            out["target"] = torch.as_tensor(np.asarray([b["target"] for b in batch]), dtype=dtype)
        return out


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Random batches of similar-length examples, reproducible from ``seed`` and the epoch.

    Each epoch shuffles all indices, cuts them into windows of ``batch_size * window``
    examples, sorts each window by length, slices it into batches, and shuffles the batches.
    With ``shuffle=False`` batches follow ascending length (for evaluation).
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = True,
        group_by_length: bool = True,
        seed: int = 0,
        window: int = 50,
        drop_last: bool = False,
    ) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.seed = seed
        self.window = window
        self.drop_last = drop_last
        self.epoch = 0
        # Batches the next pass leaves out (a resumed fit already trained on them); one pass only.
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        n = len(self.lengths)
        rng = np.random.default_rng([self.seed, self.epoch])
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable") if self.group_by_length else np.arange(n)
            return [order[i : i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]
        order = rng.permutation(n)
        if self.group_by_length:
            size = self.batch_size * self.window
            chunks = [order[i : i + size] for i in range(0, n, size)]
            order = (
                np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks]) if chunks else order
            )
        batches = [order[i : i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.group_by_length:
            # Shuffle the full batches only: a short batch stays last, where distributed
            # sharding (which fills or drops the final round) expects it.
            short = batches.pop() if batches and len(batches[-1]) < self.batch_size else None
            perm = rng.permutation(len(batches))
            batches = [batches[i] for i in perm]
            if short is not None:
                batches.append(short)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        yield from self._batches()[skip:]

    def __len__(self) -> int:
        n = len(self.lengths)
        full, rest = divmod(n, self.batch_size)
        return full if (self.drop_last and self.shuffle) else full + (1 if rest else 0)
