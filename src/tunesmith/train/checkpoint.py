"""Checkpoints a killed fit resumes from, bit for bit.

A checkpoint is a folder ``step-000123/`` inside the run's ``checkpoints/`` folder::

    state.safetensors   the model, the optimizer's tensors, callbacks' tensors, random states
    checkpoint.json     where training stood (epoch, batch, step), the optimizer's groups, the
                        scheduler, the loop's counters, every generator's state, the history,
                        the fingerprint of the data and settings, and the SHA-256 of the tensors

It is written into a hidden temporary folder, flushed to disk and renamed into place, so a
process killed at any moment (SIGKILL included) leaves either a whole checkpoint or none.
Loading goes through the same trust boundary as a model folder
(:class:`~tunesmith.runs.trust.SafeFolder`: no pickle, no links, strict JSON, safetensors
headers checked against the live model's shapes) and checks the SHA-256; a checkpoint that
fails any check is reported and the one before it is used.

Saving happens only between optimizer updates, so no accumulated gradient is ever lost; the
loop resumes mid-epoch by skipping the batches it already trained on (the batch order is a
function of the seed and the epoch).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunesmith.errors import ArtifactError, ConfigError
from tunesmith.runs.artifacts import AtomicDirectory, json_safe, save_tensors
from tunesmith.runs.fingerprint import file_sha256
from tunesmith.runs.trust import SafeFolder

logger = logging.getLogger(__name__)

META = "checkpoint.json"
TENSORS = "state.safetensors"
FORMAT = 1
_NAME = re.compile(r"^step-(\d{9})$")


# --- what goes in: optimizer, scheduler, generators, callbacks -----------------------------------


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimizer's state as tensors (``optimizer.<param>.<key>``) and JSON (groups, scalars)."""
    full = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in full["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().clone()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": json_safe(full["param_groups"]), "scalars": json_safe(scalars)}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for index, values in dict(meta.get("scalars") or {}).items():
        state.setdefault(int(index), {}).update(values)
    groups = [dict(g) for g in meta["param_groups"]]
    for live, saved in zip(optimizer.param_groups, groups, strict=False):
        # tuples (Adam's betas) come back from JSON as lists; keep the live group's types
        for key, value in list(saved.items()):
            if isinstance(live.get(key), tuple) and isinstance(value, list):
                saved[key] = tuple(value)
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    # Moment buffers take their parameter's memory layout (channels-last convolutions): the
    # update kernels then run as they did before the checkpoint, so the sums are the same.
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                    optimizer.state[param][key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def random_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every generator a training step may draw from: torch (CPU and CUDA), NumPy's and Python's."""
    tensors = {"random.torch": torch.get_rng_state().clone()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"random.cuda.{i}"] = s.clone()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["random.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64).copy())
    version, internal, gauss = random.getstate()
    meta = {
        "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": list(internal), "gauss": gauss},
    }
    return tensors, meta


def set_random_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors["random.torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("random.cuda."))]
        if states:
            torch.cuda.set_rng_state_all(states)
    np_meta = meta["numpy"]
    np.random.set_state(
        (
            np_meta["kind"],
            tensors["random.numpy"].numpy().astype(np.uint32),
            np_meta["pos"],
            np_meta["has_gauss"],
            np_meta["cached_gaussian"],
        )
    )
    py = meta["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))


def callback_key(index: int, callback: Any) -> str:
    """The name a callback's state is kept under: its place in the run order and its class."""
    return f"{index}.{type(callback).__name__}"


# --- the folder ----------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """One loaded checkpoint: where training stood (``meta``) and its tensors."""

    folder: Path
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    def part(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors whose names start with ``prefix + '.'``, with the prefix taken off."""
        cut = len(prefix) + 1
        return {k[cut:]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}


@dataclass
class Checkpointer:
    """Writes and finds the checkpoints of one training run.

    Args:
        folder: where the ``step-*`` folders go (a run's ``checkpoints/`` or a part of it).
        every_steps: also save every this many batches (at the next optimizer update); 0 saves at
            epoch ends only.
        keep: how many checkpoints to keep (the newest); at least 2, so a damaged newest one
            still leaves one to resume from.
        fingerprint: what the run trains on (data and settings); a checkpoint with another
            fingerprint is refused, since resuming it would mix two runs.
        resume: look for a checkpoint to continue from; otherwise existing ones are an error
            (a new run must not silently continue an old one).
    """

    folder: Path
    every_steps: int = 0
    keep: int = 2
    fingerprint: str = ""
    resume: bool = False
    skipped: list[dict[str, str]] = field(default_factory=list)
    saved: int = 0

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        if self.every_steps < 0:
            raise ConfigError(f"must be 0 or more, got {self.every_steps}", key="checkpoint_every_steps")
        self.keep = max(2, int(self.keep))

    def due(self, step: int, last_saved: int) -> bool:
        """Whether a mid-epoch checkpoint is due at ``step`` (batches trained so far), the last one
        having been written at ``last_saved``. Asked only at optimizer updates, so with gradient
        accumulation a checkpoint comes at the first update at least ``every_steps`` batches on."""
        return self.every_steps > 0 and step - last_saved >= self.every_steps

    def names(self) -> list[str]:
        """The complete checkpoint folders, newest first (hidden temporary ones are not listed)."""
        if not self.folder.is_dir():
            return []
        found = [p.name for p in self.folder.iterdir() if _NAME.match(p.name)]
        return sorted(found, reverse=True)

    def latest(self, expected: Mapping[str, Sequence[int]] | None = None) -> Checkpoint | None:
        """The newest checkpoint that passes every check, or None when there is none.

        A checkpoint that fails (cut short, edited, from another run) is recorded in
        :attr:`skipped` with the reason and logged; the one before it is tried next.
        """
        for name in self.names():
            try:
                return self._load(self.folder / name, expected)
            except ArtifactError as exc:
                self.skipped.append({"checkpoint": name, "reason": str(exc)})
                logger.warning("checkpoint %s is unusable (%s); trying the one before it", name, exc)
        return None

    def _load(self, path: Path, expected: Mapping[str, Sequence[int]] | None) -> Checkpoint:
        folder = SafeFolder.open(path, marker=META, what="checkpoint", hint="Resume from the run folder it is in")
        meta = folder.read_json(META)
        if meta.get("format") != FORMAT:
            raise ArtifactError(f"unknown checkpoint format {meta.get('format')!r}", path=path / META)
        if self.fingerprint and meta.get("fingerprint") != self.fingerprint:
            raise ArtifactError(
                "was written by a run on other data or settings (its fingerprint differs)",
                path=path,
                hint="Resume with the same data and settings as the run, or start a new run",
            )
        claimed = meta.pop("meta_sha256", None)
        if claimed != _meta_sha256(meta):
            raise ArtifactError(f"{META} does not match its own SHA-256 (edited or damaged)", path=path)
        tensors_file = folder.file(TENSORS)
        assert tensors_file is not None
        if meta.get("tensors_sha256") != file_sha256(tensors_file):
            raise ArtifactError(f"{TENSORS} does not match the SHA-256 in {META} (damaged)", path=path)
        header = folder.header(TENSORS)
        if expected is not None:
            # Only the model's part is checked against the live shapes: the rest is the loop's own.
            model_shapes = {k[len("model.") :]: v.shape for k, v in header.items() if k.startswith("model.")}
            if set(model_shapes) != set(expected) or any(
                tuple(model_shapes[k]) != tuple(expected[k]) for k in expected
            ):
                raise ArtifactError("holds a model of other names or shapes than this run's", path=path)
        return Checkpoint(path, meta, folder.tensors(TENSORS))

    def save(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
        """Write one checkpoint atomically and drop the oldest beyond ``keep``."""
        final = self.folder / f"step-{int(meta['step']):09d}"
        # Written in a hidden sibling, flushed and renamed into place: a kill leaves no partial step-*.
        with AtomicDirectory(final, overwrite=True, marker=META) as tmp:
            save_tensors(tmp / TENSORS, tensors)
            full = {
                "format": FORMAT,
                "fingerprint": self.fingerprint,
                "tensors_sha256": file_sha256(tmp / TENSORS),
                **json_safe(meta),
            }
            full["meta_sha256"] = _meta_sha256(full)
            (tmp / META).write_text(json.dumps(full, allow_nan=False, ensure_ascii=False), encoding="utf-8")
        self.saved += 1
        for old in self.names()[self.keep :]:
            shutil.rmtree(self.folder / old, ignore_errors=True)
        self._sweep()
        return final

    def _sweep(self) -> None:
        # Temporary folders of a process killed mid-write: never complete, never read.
        for p in self.folder.iterdir():
            if p.name.startswith(".step-") and ".tmp-" in p.name:
                with contextlib.suppress(OSError):
                    shutil.rmtree(p)

    def clear(self) -> None:
        """Remove every checkpoint (the run finished and its model is saved)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _meta_sha256(meta: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(meta, sort_keys=True, allow_nan=False).encode("utf-8")).hexdigest()
