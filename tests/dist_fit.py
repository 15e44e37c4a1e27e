"""Run by tests/train/test_distributed.py under torchrun: one fit on 2 CPU processes (gloo)."""

from __future__ import annotations

import hashlib
import json
import sys

import torch

from tests.conftest import make_reviews
from tunesmith import FineTuner


def main(out_prefix: str, extra: dict[str, object]) -> None:
    import torch.distributed as dist

    ft = FineTuner(
        **extra,
        backbone="tiny-text",
        epochs=2,
        batch_size=8,
        lr=3e-3,
        max_length=32,
        progress=False,
        runs_dir="",
        baselines=False,
        num_threads=1,
    )
    ft.fit(make_reviews(64), target="label")
    digest = hashlib.sha256()
    for key, value in sorted(ft.model_.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().contiguous().numpy().tobytes())
    rank = dist.get_rank() if dist.is_initialized() else 0
    info = {
        "rank": rank,
        "world_size": dist.get_world_size() if dist.is_initialized() else 1,
        "backend": dist.get_backend() if dist.is_initialized() else None,
        "weights": digest.hexdigest(),
        "examples": ft.train_examples_,
        "train_rows": ft.split_sizes_["train"],
        "accuracy": (ft.test_metrics_ or {}).get("accuracy"),
        "threads": torch.get_num_threads(),
    }
    with open(f"{out_prefix}.{rank}.json", "w") as fh:
        json.dump(info, fh)


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
