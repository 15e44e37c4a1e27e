"""Thread and process policy shared by every training and inference path."""

from __future__ import annotations

import os

import torch


def default_threads() -> int:
    """Cores this process may use, shared among the processes of a distributed run on this machine."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, cores // max(1, local))


def is_secondary_process() -> bool:
    """Whether this is a process of a distributed run other than rank 0 (it writes no files)."""
    import torch.distributed as dist

    return bool(dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)


def set_trainable_all(module: torch.nn.Module, flag: bool) -> None:
    """Turn gradients on or off for every parameter of ``module``."""
    for p in module.parameters():
        p.requires_grad_(flag)
