"""Run records: one folder per run with everything needed to understand and repeat it.

A record folder ``runs/<YYYYmmdd-HHMMSS>-<name>/`` holds::

    config.yaml        every setting, defaults included (re-run with `tunesmith fit --config`)
    data.json          the data file's sha256, rows per split, what was dropped and why
    environment.json   Python, platform, package versions, hardware, seed
    metrics.jsonl      one JSON line per epoch, written as training goes
    metrics.json, report.md, *.png   written at the end by the estimator
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from tunesmith.errors import ArtifactError
from tunesmith.runs.artifacts import atomic_write_json, atomic_write_text, json_safe

__all__ = ["PACKAGES", "RunRecord", "environment_info"]

PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "tokenizers",
    "safetensors",
    "numpy",
    "pandas",
    "scikit-learn",
    "tunesmith",
)
"""Distributions whose versions are recorded with every run and model."""

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                return value.strip()
    return platform.processor() or None


def _memory_total_bytes() -> int | None:
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.virtual_memory().total)
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024  # the value is in kB
    return None


def _torch_info() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"torch_threads": None, "cuda_available": False, "cuda_devices": [], "cuda_version": None}
    cuda = bool(torch.cuda.is_available())
    devices: list[str] = []
    if cuda:
        with contextlib.suppress(Exception):  # a broken driver must not break a run record
            devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    return {
        "torch_threads": torch.get_num_threads(),
        "cuda_available": cuda,
        "cuda_devices": devices,
        "cuda_version": torch.version.cuda,
        "mps_available": bool(mps is not None and mps.is_available()),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }


def environment_info(seed: int | None = None) -> dict[str, Any]:
    """What a run ran on: Python, platform, package versions, hardware and the seed.

    Returns::

        {"python": "3.11.7", "python_implementation": "CPython", "platform": "Linux-...",
         "packages": {"torch": "2.4.0", ..., "peft": None},   # None: not installed
         "hardware": {"cpu_count": 8, "cpu_model": "...", "memory_total_bytes": ...,
                      "memory_total_gib": 31.2, "torch_threads": 8, "cuda_available": False,
                      "cuda_devices": [], "cuda_version": None, "mps_available": False,
                      "deterministic_algorithms": True},
         "seed": 0, "argv": [...], "created": "2024-05-01T12:00:00Z"}

    Everything is JSON-safe. Imports torch if it is installed.
    """
    memory = _memory_total_bytes()
    hardware: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_total_bytes": memory,
        "memory_total_gib": round(memory / 2**30, 1) if memory else None,
        **_torch_info(),
    }
    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": {name: _package_version(name) for name in PACKAGES},
        "hardware": hardware,
        "seed": seed,
        "argv": list(sys.argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


class RunRecord:
    """A run's folder. Create one with :meth:`create`; open an existing one with ``RunRecord(path)``.

    Attributes:
        path: the run folder.
    """

    CONFIG = "config.yaml"
    DATA = "data.json"
    ENVIRONMENT = "environment.json"
    METRICS = "metrics.jsonl"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunRecord({str(self.path)!r})"

    @classmethod
    def create(cls, root: str | os.PathLike[str] = "runs", name: str = "fit") -> RunRecord:
        """Make ``root/<YYYYmmdd-HHMMSS>-<name>/`` (``-2``, ``-3``... appended if it exists).

        ``name`` is reduced to letters, digits, ``.``, ``_`` and ``-`` so it is a safe
        folder name on every platform.

        Raises:
            ArtifactError: ``root`` cannot be created or written.
        """
        slug = _SAFE_NAME.sub("-", str(name)).strip("-.") or "fit"
        base = Path(root)
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}"
        try:
            base.mkdir(parents=True, exist_ok=True)
            for attempt in range(1, 10_000):
                path = base / (stem if attempt == 1 else f"{stem}-{attempt}")
                try:
                    # exist_ok=False makes the claim atomic when runs start in parallel
                    path.mkdir()
                except FileExistsError:
                    continue
                return cls(path)
        except OSError as exc:
            raise ArtifactError(
                f"cannot create a run folder: {exc.strerror or exc}",
                path=base,
                hint="Set runs_dir to a writable folder, or '' to disable run records",
            ) from None
        raise ArtifactError("too many run folders with the same name and second", path=base)

    def _file(self, name: str) -> Path:
        if not name or Path(name).name != name or name in (".", ".."):
            raise ArtifactError(f"{name!r} is not a plain file name", path=self.path)
        return self.path / name

    def write_config(self, config: dict[str, Any]) -> Path:
        """Write ``config.yaml`` (keys in the given order) and return its path."""
        text = yaml.safe_dump(json_safe(config), sort_keys=False, allow_unicode=True)
        return atomic_write_text(self.path / self.CONFIG, text)

    def write_data(self, info: dict[str, Any]) -> Path:
        """Write ``data.json``: file, sha256, rows per split, drop report; return its path."""
        return atomic_write_json(self.path / self.DATA, info)

    def write_environment(self, seed: int | None = None) -> Path:
        """Write ``environment.json`` (see :func:`environment_info`) and return its path."""
        return atomic_write_json(self.path / self.ENVIRONMENT, environment_info(seed=seed))

    def log_epoch(self, metrics: dict[str, Any]) -> None:
        """Append ``metrics`` as one JSON line to ``metrics.jsonl``, flushed at once.

        Lines are flushed as they are written so a crashed or interrupted run still
        leaves its history behind; NaN becomes ``null``.
        """
        line = json.dumps(json_safe(metrics), allow_nan=False, ensure_ascii=False)
        with (self.path / self.METRICS).open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()

    def write_json(self, name: str, obj: Any) -> Path:
        """Write ``obj`` as JSON to ``name`` inside the run folder (atomically); return the path."""
        return atomic_write_json(self._file(name), obj)

    def write_text(self, name: str, text: str) -> Path:
        """Write UTF-8 ``text`` to ``name`` inside the run folder (atomically); return the path."""
        return atomic_write_text(self._file(name), text)

    def history(self) -> list[dict[str, Any]]:
        """The epochs logged so far, read back from ``metrics.jsonl`` (empty if none).

        A truncated last line (the run was killed mid-write) is skipped.

        Raises:
            ArtifactError: a line other than the last is not valid JSON.
        """
        file = self.path / self.METRICS
        if not file.is_file():
            return []
        lines = file.read_text(encoding="utf-8").splitlines()
        rows: list[dict[str, Any]] = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    break
                raise ArtifactError(f"line {i + 1} is not valid JSON", path=file) from None
        return rows
