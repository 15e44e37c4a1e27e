"""Resuming a killed fit from its run folder: what every kind's ``fit(..., resume=RUN)`` shares.

A fit with a run folder (``runs_dir`` set) and ``checkpoints`` on writes checkpoints into
``RUN/checkpoints/`` (see :mod:`tunesmith.train.checkpoint`). ``fit(data, resume=RUN)`` (or
``tunesmith fit ... --resume RUN``) then:

1. opens ``RUN`` through the same trust checks as a model folder (no pickle, no links);
2. checks the settings against the run's ``config.yaml``: a setting that differs (other than
   how the run is shown or where it runs: ``progress``, ``num_threads``) is refused, naming it;
3. trains from the newest usable checkpoint, whose fingerprint (settings and training data)
   must match; a damaged newest checkpoint is skipped for the one before it;
4. writes the rest of the run into the same folder and removes the checkpoints once the
   model is saved (unless ``keep_checkpoints``).

Killed before its first checkpoint, a run has nothing to resume and starts again in its folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tunesmith.errors import ArtifactError, ConfigError
from tunesmith.runs.artifacts import json_safe
from tunesmith.runs.record import RunRecord
from tunesmith.runs.safe_paths import read_limited
from tunesmith.runs.trust import MAX_JSON_BYTES
from tunesmith.train.callbacks import Callback, HistoryLogger, TrainState
from tunesmith.train.checkpoint import Checkpointer

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
FINISHED = "metrics.json"  # the run record's last file: written once the fit succeeded
# Settings that change how a run is shown or where it runs, never what it computes.
FREE_SETTINGS = frozenset({"progress", "num_threads", "runs_dir", "run_name", "keep_checkpoints"})
_HINT = "Pass the run folder `tunesmith fit` printed (runs/<time>-<name>)"


def read_run_config(run: str | os.PathLike[str]) -> dict[str, Any]:
    """The settings a run was started with (its ``config.yaml``), read without following links.

    Only ``config.yaml`` is read here: the checkpoints, which may be half-written by a killed
    process, are each opened through the model-folder trust checks when they are used.
    """
    folder = Path(run)
    if not folder.is_dir():
        raise ArtifactError("no run folder here", path=folder, hint=_HINT)
    if not (folder / RunRecord.CONFIG).exists() and not (folder / RunRecord.CONFIG).is_symlink():
        raise ArtifactError(
            f"the folder holds no {RunRecord.CONFIG}, so it is not a run folder", path=folder, hint=_HINT
        )
    text = read_limited(folder / RunRecord.CONFIG, limit=MAX_JSON_BYTES, shown=RunRecord.CONFIG)
    try:
        config = yaml.safe_load(text.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{RunRecord.CONFIG} is not valid YAML ({exc})", path=folder) from None
    if not isinstance(config, dict):
        raise ArtifactError(f"{RunRecord.CONFIG} must hold a mapping of settings", path=folder)
    if (folder / FINISHED).exists() and not (folder / CHECKPOINTS).exists():
        raise ArtifactError(
            f"this run finished (it holds {FINISHED}); there is nothing to resume",
            path=folder,
            hint="Start a new run, or load the model it saved",
        )
    return config


def open_run(
    cfg: Any, name: str, *, resume: Path | None, main_process: bool = True, extra: Mapping[str, Any] | None = None
) -> RunRecord | None:
    """The fit's run folder: ``resume`` reopened (settings checked), or a new one under ``runs_dir``.

    None without ``runs_dir`` (or off the main process). ``extra`` joins the settings in
    ``config.yaml`` (a tabular fit's target).
    """
    config = {**cfg.model_dump(mode="json"), **(extra or {})}
    if resume is not None:
        if not main_process:
            return None
        return reopen(resume, config)
    if not (cfg.runs_dir and main_process):
        return None
    record = RunRecord.create(cfg.runs_dir, cfg.run_name or name)
    record.write_config(config)
    return record


def reopen(run: str | os.PathLike[str], config: Mapping[str, Any]) -> RunRecord:
    """The run folder ``run`` to continue, once ``config`` (this fit's resolved settings) matches it."""
    saved = read_run_config(run)
    now = json.loads(json.dumps(json_safe(dict(config))))
    differ = sorted(k for k in set(saved) | set(now) if k not in FREE_SETTINGS and saved.get(k) != now.get(k))
    if differ:
        shown = "; ".join(f"{k}: {saved.get(k)!r} in the run, {now.get(k)!r} now" for k in differ[:5])
        raise ConfigError(
            f"the settings differ from the run being resumed ({shown})",
            key=differ[0],
            hint="Resume with the run's own settings (tunesmith fit --resume reads them), or start a new run",
        )
    record = RunRecord(Path(run))
    # Logged again as the run continues (see history_logger): what the killed process logged
    # after its last checkpoint was lost with it.
    record.write_text(RunRecord.METRICS, "")
    return record


def fingerprint(config: Mapping[str, Any], parts: Iterable[Any]) -> str:
    """SHA-256 of the settings that shape training and of the training data.

    Parts are arrays (hashed in place, without a copy where they are contiguous), lists of
    token-id lists (hashed as one int64 array and their lengths) or None.
    """
    digest = hashlib.sha256()
    shaping = {k: v for k, v in json_safe(dict(config)).items() if k not in FREE_SETTINGS}
    digest.update(json.dumps(shaping, sort_keys=True, default=str).encode())
    for part in parts:
        if part is None:
            digest.update(b"<none>")
            continue
        if isinstance(part, list) and all(isinstance(row, (list, tuple)) for row in part):
            lengths = np.fromiter((len(row) for row in part), dtype=np.int64, count=len(part))
            flat = np.fromiter((v for row in part for v in row), dtype=np.int64, count=int(lengths.sum()))
            parts_here: list[np.ndarray] = [lengths, flat]
        else:
            parts_here = [np.asarray(part)]
        for arr in parts_here:
            digest.update(str((arr.dtype.str, arr.shape)).encode())
            if arr.dtype == object:
                digest.update(json.dumps(arr.tolist(), default=str).encode())
            elif arr.size:
                digest.update(memoryview(np.ascontiguousarray(arr).reshape(-1).view(np.uint8)))  # type: ignore[arg-type]
    return digest.hexdigest()


def checkpointer(
    record: RunRecord | None,
    cfg: Any,
    print_: Callable[[], str],
    *,
    resume: Path | None,
    part: str = "",
) -> Checkpointer | None:
    """The checkpointer of one training run of a fit (``part`` names it when a fit trains several).

    None when checkpoints are off or the fit keeps no run folder. ``print_`` computes the
    fingerprint of the settings and training data (only when there will be checkpoints). Off the
    main process (several processes through Accelerate) there is no record: a resumed fit still
    reads the checkpoint from ``resume``, and only the main process writes.
    """
    if not getattr(cfg, "checkpoints", False) or (record is None and resume is None):
        if resume is not None:
            raise ConfigError(
                "resuming needs checkpoints in a run folder", key="checkpoints", hint="Keep checkpoints=True"
            )
        return None
    root = record.path if record is not None else Path(resume)  # type: ignore[arg-type]
    folder = root / CHECKPOINTS / part if part else root / CHECKPOINTS
    found = Checkpointer(
        folder, every_steps=int(cfg.checkpoint_every_steps), fingerprint=print_(), resume=resume is not None
    )
    if resume is not None and not found.names():
        logger.warning("%s holds no checkpoint yet; training starts from the beginning", root)
    return found


def history_logger(sink: Callable[[dict[str, Any]], None]) -> Callback:
    """The run log's epoch writer; on resume it first writes again the epochs the checkpoint holds.

    :func:`reopen` empties the log, so the epochs trained before the checkpoint come back from
    it and the ones trained after it (and lost with the process) are logged once, when trained again.
    """
    return _ResumableHistory(sink)


class _ResumableHistory(HistoryLogger):
    replay = False

    def checkpoint_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return {}, {}

    def load_checkpoint_state(self, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
        self.replay = True

    def on_epoch_start(self, state: TrainState) -> None:
        if self.replay and state.is_main_process:
            for metrics in state.history:
                self.sink(dict(metrics))
        self.replay = False


def finish(found: Checkpointer | None, cfg: Any) -> None:
    """The fit succeeded: drop its checkpoints unless the settings keep them."""
    if found is not None and not getattr(cfg, "keep_checkpoints", False):
        found.clear()
        parent = found.folder.parent
        if parent.name == CHECKPOINTS and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
