"""The settings of :class:`~tunesmith.recsys.recommender.Recommender`: one pydantic model.

Types are checked by :class:`RecommenderSettings` (unknown keys refused); what needs a
sentence of its own (a model name, a SASRec field, constructor arguments of a classic
model, a content backbone on a model that cannot use it) is checked by
:func:`check_settings` right after, at construction, with the setting's name and a hint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from tunesmith.config import validate_settings
from tunesmith.errors import ConfigError
from tunesmith.recsys.bpr import BPRMF
from tunesmith.recsys.models import EASE, ItemKNN, Popularity
from tunesmith.recsys.sequential import SeqConfig, TrainSettings

MODEL_KINDS = ("sasrec", "ease", "bpr", "itemknn", "popularity")
CLASSIC: dict[str, type[Any]] = {"ease": EASE, "bpr": BPRMF, "itemknn": ItemKNN, "popularity": Popularity}


class RecommenderSettings(BaseModel):
    """Every setting of a :class:`~tunesmith.recsys.recommender.Recommender`, defaults included."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field("sasrec", description="sasrec, ease, bpr, itemknn or popularity.")
    min_rating: float | None = Field(None, description="Ratings at least this are positives (needs a rating column).")
    pretrain: StrictBool = Field(True, description="SASRec: pre-train on every interaction first.")
    content_backbone: str | None = Field(None, description="SASRec: text backbone embedding each item's text.")
    k_core: StrictInt | dict[str, StrictInt] | None = Field(None, description="Keep users/items with this many rows.")
    seq: dict[str, Any] | None = Field(None, description="Fields of SeqConfig (SASRec network).")
    pretrain_settings: dict[str, Any] | None = Field(None, description="Fields of TrainSettings for pre-training.")
    finetune_settings: dict[str, Any] | None = Field(None, description="Fields of TrainSettings for fine-tuning.")
    model_params: dict[str, Any] | None = Field(None, description="Constructor arguments of a classic model.")
    seed: StrictInt = Field(0, description="Random seed.")
    threads: StrictInt | None = Field(None, ge=1, description="Compute threads (default: torch's).")
    runs_dir: str | None = Field(None, description="Where run records are written; null or '' writes none.")
    run_name: str | None = Field(None, description="Name of the run folder (default: recommender-<model>).")
    progress: StrictBool = Field(True, description="Show training progress (a bar, or log lines off a terminal).")


def _dataclass_settings(cls: type, values: Mapping[str, Any] | None, key: str) -> dict[str, Any]:
    """``values`` checked against the fields of ``cls`` (SeqConfig or TrainSettings)."""
    if values is None:
        return {}
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown field {unknown[0]!r}", key=key, hint=f"Known: {', '.join(sorted(known))}")
    cls(**values).check()
    return dict(values)


def _k_core(value: int | Mapping[str, int] | None) -> dict[str, int] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"min_user", "min_item"})
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r}; use min_user and min_item", key="k_core")
        return {"min_user": int(value.get("min_user", 0)), "min_item": int(value.get("min_item", 0))}
    if value >= 1:
        return {"min_user": value, "min_item": value}
    raise ConfigError(f"must be a whole number >= 1 or a dict, got {value!r}", key="k_core")


def check_settings(params: Mapping[str, Any]) -> RecommenderSettings:
    """``params`` validated into :class:`RecommenderSettings`, normalised (``k_core`` as a dict, the
    SASRec and model fields checked), or a :class:`ConfigError` naming the setting."""
    model = params.get("model", "sasrec")
    if model not in MODEL_KINDS:
        raise ConfigError(f"unknown model {model!r}", key="model", hint=f"Use one of: {', '.join(MODEL_KINDS)}")
    if isinstance(params.get("min_rating"), bool):
        raise ConfigError(f"must be a number, got {params['min_rating']!r}", key="min_rating")
    s = validate_settings(RecommenderSettings, params)
    if s.content_backbone is not None and s.model != "sasrec":
        raise ConfigError(
            f"content vectors are used by the sasrec model only, not {s.model!r}",
            key="content_backbone",
            hint="Use model='sasrec' or leave content_backbone unset",
        )
    updates: dict[str, Any] = {
        "k_core": _k_core(s.k_core),
        "seq": _dataclass_settings(SeqConfig, s.seq, "seq"),
        "pretrain_settings": _dataclass_settings(TrainSettings, s.pretrain_settings, "pretrain_settings"),
        "finetune_settings": _dataclass_settings(TrainSettings, s.finetune_settings, "finetune_settings"),
        "model_params": dict(s.model_params or {}),
    }
    if s.model in CLASSIC:
        try:
            CLASSIC[s.model](**updates["model_params"])
        except TypeError as exc:
            raise ConfigError(f"not accepted by {s.model}: {exc}", key="model_params") from None
    elif updates["model_params"]:
        raise ConfigError("sasrec takes seq and *_settings, not model_params", key="model_params")
    return s.model_copy(update=updates)


SETTING_NAMES = tuple(RecommenderSettings.model_fields)

__all__ = ["CLASSIC", "MODEL_KINDS", "SETTING_NAMES", "RecommenderSettings", "check_settings"]
