"""The settings of :class:`~tunesmith.personalize.personalizer.Personalizer` and of its stores.

:class:`PersonalizerSettings` validates a Personalizer's keywords at construction;
:func:`load_settings` reads back the ``personalize.json`` a store was built with, every
field checked; :func:`time_ordered_holdout` picks each user's validation rows.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from tunesmith.config import validate_settings
from tunesmith.errors import ArtifactError, ConfigError
from tunesmith.personalize.head import HeadAdapterSettings
from tunesmith.personalize.joint import JointAdapterSettings
from tunesmith.personalize.lora import LoraAdapterSettings
from tunesmith.personalize.store import ADAPTER_KINDS, MAX_ADAPTER_RANK, open_store
from tunesmith.runs.trust import field

SETTINGS_FILE = "personalize.json"
MAX_STEPS = 1_000_000
"""Most training steps per adapter a store's settings may ask for."""


class PersonalizerSettings(BaseModel):
    """Every setting of a Personalizer, defaults included (see its docstring)."""

    model_config = ConfigDict(extra="forbid")

    base: str | Path = Field(..., description="Folder of the shared text classifier.")
    store: str | Path = Field(..., description="Folder of the adapter store (created or reused).")
    user_column: str = Field(..., description="Column naming each row's user.")
    segment_column: str | None = Field(None, description="Also one adapter per value of this column.")
    time_column: str | None = Field(None, description="Order of each user's rows (default: row order).")
    min_rows: StrictInt = Field(10, description="Labeled rows a user or segment needs for an adapter.")
    valid_fraction: float = Field(0.2, description="Latest share of each user's rows that validates it.")
    rank: StrictInt = Field(4, description="Rank of the head adapter's low-rank correction.")
    l2: float = Field(1e-2, description="L2 penalty of the adapters.")
    steps: StrictInt = Field(100, description="Head adapter training steps.")
    lr: float = Field(0.05, description="Head adapter learning rate.")
    seed: StrictInt = Field(0, description="Random seed.")
    adapter_kind: str = Field(
        "head",
        description="joint (low-rank user vectors learned across users), head (over cached features), lora (last "
        "encoder block), or several joined by commas (each user gets the best on its validation rows).",
    )
    item_column: str | None = Field(None, description="Column naming each row's item (joint adapters learn items).")
    joint_rank: StrictInt = Field(16, description="Rank of the joint adapters' user and item vectors.")
    joint_l2: float | list[float] = Field(0.1, description="Penalty on joint vectors; several: the best on validation.")
    joint_steps: StrictInt = Field(300, description="Full-batch training steps of the joint adapters.")
    joint_lr: float = Field(0.05, description="Joint adapters' learning rate.")
    local_min_rows: StrictInt = Field(
        50, description="Rows a user needs for a head or LoRA adapter when joint adapters are trained beside them."
    )
    feature_dtype: str = Field(
        "float32", description="Precision of the shared model's pass over training rows: float32 or bfloat16."
    )
    lora_rank: StrictInt = Field(4, description="LoRA rank.")
    lora_alpha: float = Field(8.0, description="LoRA scale numerator.")
    lora_steps: StrictInt = Field(40, description="LoRA training steps.")
    lora_lr: float = Field(0.02, description="LoRA learning rate.")
    progress: StrictBool = Field(True, description="Show progress (a bar, or log lines off a terminal).")
    runs_dir: str | None = Field(None, description="Where each fit writes its run record (None or '': none).")
    run_name: str | None = Field(None, description="The run record's name (default: personalize).")


def check_settings(params: dict[str, Any]) -> tuple[PersonalizerSettings, HeadAdapterSettings, LoraAdapterSettings]:
    """``params`` validated, and the head and LoRA adapter settings they make; ConfigError naming the setting."""
    s = validate_settings(PersonalizerSettings, params)
    if s.min_rows < 2:
        raise ConfigError(f"must be at least 2, got {s.min_rows}", key="min_rows")
    if not 0 < s.valid_fraction < 1:
        raise ConfigError(f"must be between 0 and 1, got {s.valid_fraction}", key="valid_fraction")
    adapter_kinds(s.adapter_kind)
    if s.feature_dtype not in FEATURE_DTYPES:
        raise ConfigError(f"must be one of {', '.join(FEATURE_DTYPES)}, got {s.feature_dtype!r}", key="feature_dtype")
    if s.local_min_rows < 2:
        raise ConfigError(f"must be at least 2, got {s.local_min_rows}", key="local_min_rows")
    head = HeadAdapterSettings(rank=s.rank, l2=s.l2, steps=s.steps, lr=s.lr)
    lora = LoraAdapterSettings(rank=s.lora_rank, alpha=s.lora_alpha, l2=s.l2, steps=s.lora_steps, lr=s.lora_lr)
    return s, head, lora


FEATURE_DTYPES = ("float32", "bfloat16")


def adapter_kinds(value: str) -> tuple[str, ...]:
    """The adapter kinds an ``adapter_kind`` setting names (``"joint,head"``: both), each checked."""
    kinds = tuple(part.strip() for part in str(value).split(","))
    for kind in kinds:
        if kind not in ADAPTER_KINDS:
            raise ConfigError(
                f"must be one of {', '.join(ADAPTER_KINDS)} or several joined by commas, got {value!r}",
                key="adapter_kind",
            )
    if len(set(kinds)) != len(kinds):
        raise ConfigError(f"names a kind twice: {value!r}", key="adapter_kind")
    return kinds


def joint_settings(s: PersonalizerSettings) -> JointAdapterSettings:
    """The joint adapter settings of a Personalizer's settings."""
    l2 = tuple(s.joint_l2) if isinstance(s.joint_l2, list) else (s.joint_l2,)
    return JointAdapterSettings(rank=s.joint_rank, l2=l2, steps=s.joint_steps, lr=s.joint_lr)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, computed stably in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


def time_ordered_holdout(
    df: pd.DataFrame, group_column: str, fraction: float, time_column: str | None = None
) -> np.ndarray:
    """Boolean mask of each group's last ``fraction`` of rows (by ``time_column``, else row order).

    A group with ``n`` rows holds out ``floor(fraction * n)`` of them, so a group with very
    few rows keeps them all for training.
    """
    if not 0 <= fraction < 1:
        raise ConfigError(f"must be in [0, 1), got {fraction}", key="valid_fraction")
    order = np.arange(len(df))
    keys = df[group_column].astype(str).to_numpy()
    if time_column is not None:
        times = pd.to_numeric(df[time_column], errors="coerce").to_numpy(dtype=float)
        sorted_idx = np.lexsort((order, times, keys))
    else:
        sorted_idx = np.lexsort((order, keys))
    held = np.zeros(len(df), dtype=bool)
    sorted_keys = keys[sorted_idx]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    ends = np.r_[starts[1:], len(sorted_idx)]
    for s, e in zip(starts, ends, strict=True):
        k = int(np.floor(fraction * (e - s)))
        if k:
            held[sorted_idx[e - k : e]] = True
    return held


def load_settings(store: str | os.PathLike[str]) -> dict[str, Any]:
    """The settings a store was built with (``personalize.json``), every field checked.

    The store is opened through :func:`~tunesmith.personalize.store.open_store` (scanned:
    no links, FIFOs, devices, code or pickles) and the file read with a size cap. Absent or
    ``null`` fields come back with their defaults (``head`` and ``lora`` hold only the
    fields present).

    Raises:
        ArtifactError: no store, no ``personalize.json``, or a field of the wrong type or out
            of range, naming the file and the field.
    """
    folder = open_store(store, marker=SETTINGS_FILE)
    file = folder.root / SETTINGS_FILE
    data: dict[str, Any] = folder.read_json(SETTINGS_FILE)
    out = dict(data)
    out["base"] = field(data, "base", str, file=file)
    out["base_fingerprint"] = field(data, "base_fingerprint", str, default=None, file=file)
    out["user_column"] = field(data, "user_column", str, file=file)
    if not out["user_column"]:
        raise ArtifactError(
            "field 'user_column' is empty", path=file, hint="Rebuild the store with tunesmith personalize"
        )
    for name in ("segment_column", "time_column"):
        out[name] = field(data, name, str, default=None, file=file) or None
    out["min_rows"] = field(data, "min_rows", int, default=10, low=2, file=file)
    out["valid_fraction"] = field(data, "valid_fraction", float, default=0.2, file=file)
    if not 0 < out["valid_fraction"] < 1:
        raise ArtifactError(f"field 'valid_fraction' must be between 0 and 1, got {out['valid_fraction']!r}", path=file)
    out["adapter_kind"] = field(data, "adapter_kind", str, default="head", file=file)
    try:
        adapter_kinds(out["adapter_kind"])
    except ConfigError as exc:
        raise ArtifactError(f"field 'adapter_kind' {exc.message}", path=file) from None
    out["item_column"] = field(data, "item_column", str, default=None, file=file) or None
    out["local_min_rows"] = field(data, "local_min_rows", int, default=50, low=2, file=file)
    out["feature_dtype"] = field(data, "feature_dtype", str, default="float32", choices=FEATURE_DTYPES, file=file)
    joint = field(data, "joint", dict, default={}, file=file)
    view = {"joint": joint}
    checked_joint: dict[str, Any] = {
        "rank": field(view, "joint.rank", int, default=None, low=1, high=MAX_ADAPTER_RANK, file=file),
        "steps": field(view, "joint.steps", int, default=None, low=1, high=MAX_STEPS, file=file),
        "lr": _finite(view, "joint.lr", file, zero=False),
    }
    l2s = field(view, "joint.l2", list, default=None, file=file)
    if l2s is not None:
        if not l2s or len(l2s) > 64:
            raise ArtifactError("field 'joint.l2' must list 1 to 64 numbers", path=file)
        checked_joint["l2"] = [_finite({"v": v}, "v", file, zero=True) for v in l2s]
    out["joint"] = {k: v for k, v in checked_joint.items() if v is not None}
    for kind, low_rank in (("head", 0), ("lora", 1)):
        given = field(data, kind, dict, default={}, file=file)
        view = {kind: given}  # null stands for {}: every field its default
        checked: dict[str, Any] = {
            "rank": field(view, f"{kind}.rank", int, default=None, low=low_rank, high=MAX_ADAPTER_RANK, file=file),
            "steps": field(view, f"{kind}.steps", int, default=None, low=1, high=MAX_STEPS, file=file),
        }
        for name, zero in (("lr", False), ("l2", True), ("alpha", False)):
            checked[name] = _finite(view, f"{kind}.{name}", file, zero=zero)
        # A checked field that is absent or null is left out: the Personalizer's default applies.
        out[kind] = {k: v for k, v in {**given, **checked}.items() if v is not None or k not in checked}
    out["seed"] = field(data, "seed", int, default=0, low=0, high=2**63 - 1, file=file)
    out["refit"] = field(data, "refit", dict, default=None, file=file)
    return out


def settings_record(
    config: PersonalizerSettings,
    *,
    base_fingerprint: str,
    head: HeadAdapterSettings,
    lora: LoraAdapterSettings,
    refit: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What ``personalize.json`` holds: the settings a store was built with (and how a refit made it)."""
    record = {
        "base": str(Path(config.base).resolve()),
        "base_fingerprint": base_fingerprint,
        **{k: getattr(config, k) for k in ("user_column", "segment_column", "time_column", "min_rows")},
        "valid_fraction": config.valid_fraction,
        "adapter_kind": config.adapter_kind,
        "item_column": config.item_column,
        "local_min_rows": config.local_min_rows,
        "feature_dtype": config.feature_dtype,
        "joint": joint_settings(config).record(),
        "head": head.__dict__,
        "lora": lora.__dict__,
        "seed": config.seed,
    }
    return record if refit is None else {**record, "refit": refit}


def store_params(s: dict[str, Any]) -> dict[str, Any]:
    """The Personalizer settings in :func:`load_settings`'s answer (the folders left out)."""
    head, lora = s["head"], s["lora"]
    return {
        **{k: s[k] for k in ("user_column", "segment_column", "time_column", "min_rows", "valid_fraction")},
        "seed": s["seed"],
        "adapter_kind": s["adapter_kind"],
        **{k: s[k] for k in ("item_column", "local_min_rows", "feature_dtype")},
        **{f"joint_{k}": s["joint"][k] for k in ("rank", "l2", "steps", "lr") if k in s["joint"]},
        **{k: head[k] for k in ("rank", "l2", "steps", "lr") if k in head},
        **{f"lora_{k}": lora[k] for k in ("rank", "alpha", "steps", "lr") if k in lora},
    }


def _finite(data: dict[str, Any], name: str, file: Path, *, zero: bool) -> float | None:
    """The number at ``name`` if present: finite and above zero (or at least zero)."""
    value = field(data, name, float, default=None, file=file)
    if value is not None and not (math.isfinite(value) and (value >= 0 if zero else value > 0)):
        bound = "at least 0" if zero else "above 0"
        raise ArtifactError(f"field {name!r} must be a finite number {bound}, got {value!r}", path=file)
    return value


__all__ = [
    "FEATURE_DTYPES",
    "MAX_STEPS",
    "SETTINGS_FILE",
    "PersonalizerSettings",
    "adapter_kinds",
    "check_settings",
    "joint_settings",
    "load_settings",
    "settings_record",
    "softmax",
    "store_params",
    "time_ordered_holdout",
]
