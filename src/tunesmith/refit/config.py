"""The settings of ``tunesmith loop``: one YAML file says where everything is and what to do.

::

    registry: registry/              # a model registry with a champion
    new_data: data/2016.csv          # labeled rows of the new period
    replay: data/2015_train.csv      # old labeled rows replayed beside them (optional)
    old_test: data/2015_test.csv     # the old test split the gate judges forgetting on
    new_test_size: 0.2               # carve the new test split from new_data (or new_test: FILE)
    when: drift                      # always | drift | alert
    refit: {method: auto, epochs: 2} # settings of RefitSettings
    margin: 0.01                     # largest loss on the old test split the gate allows

Unknown keys are refused, nested ones too (``refit.metod``), with the closest known name.
Relative paths in a file are read relative to that file's folder, so a crontab or a
Kubernetes job runs it from any working directory. See docs/loop.md.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunesmith.errors import ConfigError
from tunesmith.monitor.settings import MonitorSettings
from tunesmith.runs.versions import MLFLOW_SCHEME
from tunesmith.train.continual import RefitSettings

When = Literal["always", "drift", "alert"]


class MonitorStep(BaseModel):
    """What the loop monitors before it refits (used when ``when`` is ``drift`` or ``alert``)."""

    model_config = ConfigDict(extra="forbid")

    reference: str | None = Field(
        None, description="Labeled data the champion works on; default: the old test split (old_test)."
    )
    current: str | None = Field(
        None, description="Prediction log of tunesmith serve or a data file; default: the new data (new_data)."
    )
    labels: str | None = Field(None, description="Labels that arrived for the current rows, joined by key.")
    key: str | None = Field(None, description="Column joining labels to current rows (a log: request_id).")
    settings: MonitorSettings = Field(
        default_factory=MonitorSettings,  # type: ignore[arg-type]
        description="Settings of tunesmith monitor (window_rows, alpha, ...).",
    )
    report: str | None = Field(None, description="Folder for the monitor's report.html and report.json.")


class LoopConfig(BaseModel):
    """Every setting of one run of the refit loop (:func:`tunesmith.refit.run_loop`).

    Exactly one of ``new_test`` (a file) and ``new_test_size`` (a share of ``new_data``,
    carved with ``split_seed`` and never refitted on) gives the gate its new test split.
    """

    model_config = ConfigDict(extra="forbid")

    registry: str = Field(description="The model registry (a folder) whose champion is refitted.")
    new_data: str = Field(description="Labeled rows of the new period (CSV, Parquet, JSONL).")
    old_test: str = Field(description="The old test split: the gate checks the challenger forgot at most margin.")
    replay: str | None = Field(None, description="Old labeled rows replayed beside the new ones (best: old train).")
    new_test: str | None = Field(None, description="Labeled new rows held out for the gate (not in new_data).")
    new_test_size: float | None = Field(
        None, gt=0.0, lt=1.0, description="Share of new_data held out for the gate instead of a new_test file."
    )
    split_seed: int = Field(0, ge=0, description="Seed of the new_test_size carving (fixed: reruns see the same rows).")
    target: str | None = Field(None, description="Label column; default: the champion's.")
    when: When = Field("always", description="always refit, or only when the monitor reports drift (or an alert).")
    monitor: MonitorStep = Field(default_factory=MonitorStep, description="The monitor run before refitting.")  # type: ignore[arg-type]
    refit: RefitSettings = Field(
        default_factory=RefitSettings,  # type: ignore[arg-type]
        description="Settings of the refit: method, replay_ratio, penalty_weight, alphas, epochs, lr, ...",
    )
    margin: float = Field(0.01, ge=0.0, description="Largest loss on the old test split the gate lets through.")
    promote: bool = Field(True, description="Promote a challenger the gate accepts (false: leave it a candidate).")
    server: str | None = Field(None, description="A running tunesmith server to hot reload on promotion.")
    server_root: str | None = Field(None, description="Where the server sees the registry, if not at the same path.")
    state_dir: str | None = Field(None, description="Where the loop keeps its state; default: REGISTRY/loop.")

    @model_validator(mode="after")
    def _one_new_test(self) -> LoopConfig:
        if (self.new_test is None) == (self.new_test_size is None):
            raise ConfigError(
                "give new_test (a file of labeled new rows) or new_test_size (a share of new_data to hold "
                "out), exactly one" + (", not both" if self.new_test is not None else ""),
                key="new_test",
            )
        if self.state_dir is None and _is_uri(self.registry):
            # An MLflow registry's local folder is only a download cache: state kept there could vanish.
            raise ConfigError(
                "a registry that is not a local folder has no place for the loop's state",
                key="state_dir",
                hint="Set state_dir to a folder on a persistent volume",
            )
        return self


PATH_KEYS = ("registry", "new_data", "old_test", "replay", "new_test", "state_dir")
MONITOR_PATH_KEYS = ("reference", "current", "labels", "report")


def make_loop_config(
    data: Mapping[str, Any], *, base: str | os.PathLike[str] | None = None, source: str = ""
) -> LoopConfig:
    """Validate ``data`` into a :class:`LoopConfig`, raising :class:`ConfigError` on the first problem.

    ``base``: the folder relative paths are read from (a config file's folder); ``None`` keeps
    them as given. ``source`` names the file in messages.

    Raises:
        ConfigError: an unknown key (nested keys named with dots, ``refit.metod``), a value
            out of range, or settings in conflict.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source or 'the loop config'} must hold a mapping of settings, got {type(data).__name__}")
    _check_keys(data, LoopConfig, "", source)
    values = dict(data)
    if base is not None:
        values = _resolve_paths(values, Path(base))
    try:
        return LoopConfig.model_validate(values)
    except ValidationError as exc:
        raise _config_error(exc) from None


def load_loop_config(path: str | os.PathLike[str]) -> LoopConfig:
    """Read a loop config file (YAML); relative paths in it are read from its folder.

    Raises:
        ConfigError: the file is missing, is not YAML, or holds a bad setting (named).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"loop config file {str(p)!r} does not exist", hint="Check the path (see examples/loop/)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"loop config file {str(p)!r} is not valid YAML: {exc}") from None
    return make_loop_config(data, base=p.resolve().parent, source=p.name)


def _is_uri(value: str) -> bool:
    """A registry location that is no folder (``mlflow:<tracking URI>#<name>``)."""
    return value.startswith(MLFLOW_SCHEME) or "://" in value


SQLITE = f"{MLFLOW_SCHEME}sqlite:///"


def _resolve_paths(values: dict[str, Any], base: Path) -> dict[str, Any]:
    def resolve(value: Any, allow_uri: bool = False) -> Any:
        if allow_uri and isinstance(value, str) and value.startswith(SQLITE):
            # mlflow:sqlite:///mlflow.db#name names a database file relative to the working
            # directory, which a scheduler does not choose: read it from the config's folder too.
            database = value[len(SQLITE) :]
            if database and not database.startswith("/"):
                return SQLITE + (base / database).as_posix()
            return value
        if not isinstance(value, str) or not value or (allow_uri and _is_uri(value)):
            return value
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else base / p)

    out = {k: resolve(v, allow_uri=k == "registry") if k in PATH_KEYS else v for k, v in values.items()}
    mon = out.get("monitor")
    if isinstance(mon, Mapping):
        out["monitor"] = {k: resolve(v) if k in MONITOR_PATH_KEYS else v for k, v in mon.items()}
    return out


def _nested(model: type[BaseModel], key: str) -> type[BaseModel] | None:
    annotation = model.model_fields[key].annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _check_keys(data: Mapping[str, Any], model: type[BaseModel], prefix: str, source: str) -> None:
    """Refuse the first unknown key, nested keys included, with the closest known name."""
    names = list(model.model_fields)
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in model.model_fields:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean {prefix + close[0]!r}?" if close else f"known: {', '.join(prefix + n for n in names)}"
            raise ConfigError(f"unknown setting{f' in {source}' if source else ''}; {hint}", key=name)
        sub = _nested(model, key)
        if sub is not None and isinstance(value, Mapping):
            _check_keys(value, sub, f"{name}.", source)


def _config_error(exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    original = (err.get("ctx") or {}).get("error")
    if isinstance(original, ConfigError):
        return original  # a check of ours, already worded
    loc = ".".join(str(p) for p in err.get("loc", ()) if not isinstance(p, int))
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if err.get("type") == "missing":
        return ConfigError("is required", key=loc or None, hint="Add it to the loop config")
    return ConfigError(f"{msg} (got {err.get('input')!r})", key=loc or None)
