"""Settings of the prediction server, with their defaults and allowed ranges.

:class:`ServeSettings` is the one place where a server setting has a name, a type, a default
and a description: ``tunesmith serve`` flags, ``python -m tunesmith.serve`` flags and the
JSON handed to worker processes are views of these fields. Secrets (the API key and the
admin token) default to the ``TUNESMITH_API_KEY`` and ``TUNESMITH_ADMIN_TOKEN`` environment
variables so they need not appear on a command line, where ``ps`` shows them to every user.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from tunesmith.errors import ConfigError

API_KEY_ENV = "TUNESMITH_API_KEY"
ADMIN_TOKEN_ENV = "TUNESMITH_ADMIN_TOKEN"
# How run_server hands settings to worker processes (uvicorn starts them with "spawn").
SETTINGS_ENV = "TUNESMITH_SERVE_SETTINGS"

Backend = Literal["onnx", "torch"]
Precision = Literal["auto", "fp32", "int8"]
LogFormat = Literal["sqlite", "parquet"]
LogLevel = Literal["critical", "error", "warning", "info", "debug"]


def _secret_from_env(name: str) -> SecretStr | None:
    value = os.environ.get(name, "").strip()
    return SecretStr(value) if value else None


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, not the machine's core count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


class ServeSettings(BaseModel):
    """Every setting of ``tunesmith serve``, with its default.

    Unknown keys are rejected and every number is range-checked, so a typo fails at start-up
    with the setting's name instead of surfacing as odd behaviour under load. Build one with
    :meth:`from_options` to get a :class:`~tunesmith.errors.ConfigError` instead of pydantic's
    error.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- network -----------------------------------------------------------------------
    host: str = Field("127.0.0.1", min_length=1, description="Address to listen on; 0.0.0.0 exposes the server.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on (0 picks a free one).")
    workers: int = Field(1, ge=1, le=64, description="Server processes, each with its own copy of the model.")

    # --- model -------------------------------------------------------------------------
    backend: Backend = Field("onnx", description="onnx (needs `tunesmith export` first) or torch.")
    precision: Precision = Field("auto", description="ONNX graph to run: int8, fp32, or auto (int8 when exported).")
    threads: int | None = Field(
        None, ge=1, le=1024, description="Compute threads per worker; default: cores // workers (at least 1)."
    )
    model_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="Niceness added to the model's compute threads (Linux), so a busy model never delays "
        "accepting and refusing requests; 0 disables.",
    )
    model_version: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="Version reported with every prediction; default: a content hash of the weights.",
    )
    backbone: str | None = Field(
        None,
        max_length=4096,
        description="Local backbone folder of a head-only model (a path in the model folder is never opened); "
        "applies to reloads too.",
    )
    adapters: Path | None = Field(
        None,
        description="Adapter store (`tunesmith personalize`): route each row to its user's or segment's adapter "
        "on the torch backend (the default backend then); none = the shared model only.",
    )

    # --- batching and limits -----------------------------------------------------------
    max_batch_size: int = Field(32, ge=1, le=4096, description="Most rows the model runs in one micro-batch.")
    max_wait_ms: float = Field(
        2.0,
        ge=0.0,
        le=1000.0,
        description="Longest a batch waits for requests already on their way (never waits at concurrency 1).",
    )
    max_queue: int = Field(256, ge=1, description="Rows that may wait for the model; beyond that requests get 503.")
    max_rows_per_request: int = Field(256, ge=1, description="Most rows in one request; more is a 413.")
    max_body_bytes: int = Field(1 << 20, ge=64, description="Largest request body in bytes; larger is a 413.")
    request_timeout_s: float = Field(
        10.0, gt=0.0, le=3600.0, description="Seconds a prediction may take, queueing included; then 504."
    )
    graceful_timeout_s: float = Field(
        30.0, ge=0.0, le=3600.0, description="Seconds to finish admitted requests after SIGTERM before exiting."
    )

    # --- security ----------------------------------------------------------------------
    api_key: SecretStr | None = Field(
        default_factory=lambda: _secret_from_env(API_KEY_ENV),
        description=f"Key for /v1/* (X-API-Key or Authorization: Bearer); default: ${API_KEY_ENV}; none = open.",
    )
    admin_token: SecretStr | None = Field(
        default_factory=lambda: _secret_from_env(ADMIN_TOKEN_ENV),
        description=f"Bearer token for /admin/*; default: ${ADMIN_TOKEN_ENV}; none = no admin endpoints.",
    )

    # --- prediction log ----------------------------------------------------------------
    prediction_log: Path | None = Field(None, description="File that records every prediction request; none = off.")
    prediction_log_format: LogFormat = Field(
        "sqlite", description="sqlite or parquet; a .parquet file name picks parquet unless this is given."
    )
    prediction_log_rotate_rows: int = Field(
        100_000, ge=1, description="Records per log file; a full file is renamed with a timestamp and sequence."
    )
    prediction_log_buffer_rows: int = Field(
        50_000, ge=1, description="Input rows the log may hold in memory; records beyond it are dropped and counted."
    )
    prediction_log_buffer_bytes: int = Field(
        64 << 20,
        ge=1 << 16,
        description="Bytes of request bodies the log may hold in memory; records beyond it are dropped and counted.",
    )

    # --- live drift monitoring -----------------------------------------------------------
    monitor_reference: Path | None = Field(
        None,
        description="Labeled reference data (a data file with the model's input columns and the target) that "
        "turns on live drift gauges on /metrics; none = off.",
    )
    monitor_target: str | None = Field(
        None,
        min_length=1,
        max_length=1024,
        description="Target column of the monitoring reference; default: the model's own target.",
    )
    monitor_window_rows: int = Field(
        1000, ge=10, le=1_000_000, description="Most recent predicted rows each drift test compares with the reference."
    )
    monitor_min_rows: int = Field(
        200, ge=10, le=1_000_000, description="Fewest rows a drift test runs on; until then the gauges wait."
    )
    monitor_interval_s: float = Field(
        30.0, ge=0.05, le=86_400.0, description="Seconds between drift tests (run off the request path)."
    )

    # --- console -----------------------------------------------------------------------
    access_log: bool = Field(False, description="Print one line per request (off: it costs time under load).")
    log_level: LogLevel = Field("info", description="Console log level of the server.")

    @field_validator("api_key", "admin_token", mode="before")
    @classmethod
    def _blank_secret_is_none(cls, value: Any) -> Any:
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(raw, str):
            if not raw.strip():
                return None
            if raw != raw.strip():
                raise ValueError("must not start or end with whitespace")
        return value

    @model_validator(mode="before")
    @classmethod
    def _adapters_default_to_torch(cls, data: Any) -> Any:
        # Adapters run on the torch backend only, so asking for them without naming a backend
        # means torch; naming onnx is refused in _check.
        if isinstance(data, dict) and data.get("adapters") is not None and data.get("backend") is None:
            data = {**data, "backend": "torch"}
        return data

    @model_validator(mode="after")
    def _check(self) -> ServeSettings:
        if self.backend == "torch" and self.precision == "int8":
            raise ValueError("precision int8 runs on the onnx backend only; use backend onnx or precision fp32")
        if self.adapters is not None and self.backend != "torch":
            raise ValueError(
                "personalised serving (adapters) runs on the torch backend only; use backend torch "
                "(the ONNX graph holds the shared model alone)"
            )
        if (
            self.prediction_log is not None
            and "prediction_log_format" not in self.model_fields_set
            and self.prediction_log.suffix.lower() == ".parquet"
        ):
            # A file named *.parquet that holds SQLite would surprise every reader of it.
            object.__setattr__(self, "prediction_log_format", "parquet")
        if self.monitor_min_rows > self.monitor_window_rows:
            raise ValueError(
                f"monitor_min_rows ({self.monitor_min_rows}) must not exceed monitor_window_rows "
                f"({self.monitor_window_rows}): the window never holds that many rows"
            )
        if self.monitor_target is not None and self.monitor_reference is None:
            raise ValueError("monitor_target names a column of monitor_reference; set monitor_reference too")
        return self

    @classmethod
    def from_options(cls, **values: Any) -> ServeSettings:
        """Settings from keyword values; options left at ``None`` take their defaults.

        Raises:
            ConfigError: a value is out of range, of the wrong type or an unknown setting.
        """
        given = {k: v for k, v in values.items() if v is not None}
        try:
            return cls(**given)
        except ValidationError as exc:
            raise _config_error(exc) from None

    def threads_per_worker(self) -> int:
        """Compute threads of each worker's model: ``threads``, or the cores shared among workers."""
        return self.threads or max(1, cpu_count() // self.workers)

    def to_json(self) -> str:
        """JSON with the secrets in clear, for worker processes (never log it)."""
        data = self.model_dump(mode="json")
        for key in ("api_key", "admin_token"):
            secret = getattr(self, key)
            data[key] = secret.get_secret_value() if secret is not None else None
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        """The inverse of :meth:`to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"server settings are not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError("server settings must be a JSON object")
        try:
            return cls(**data)
        except ValidationError as exc:
            raise _config_error(exc) from None

    def limits(self) -> dict[str, Any]:
        """The limits a client needs to know (shown by ``/v1/metadata``)."""
        return {
            "max_rows_per_request": self.max_rows_per_request,
            "max_body_bytes": self.max_body_bytes,
            "max_batch_size": self.max_batch_size,
            "max_wait_ms": self.max_wait_ms,
            "max_queue": self.max_queue,
            "request_timeout_s": self.request_timeout_s,
            "api_key_required": self.api_key is not None,
        }


def _config_error(exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()) if not isinstance(p, int))
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        import difflib

        close = difflib.get_close_matches(loc, list(ServeSettings.model_fields), n=1)
        hint = f"Did you mean {close[0]!r}?" if close else None
        return ConfigError("unknown setting", key=loc, hint=hint)
    if loc:
        shown = "***" if loc in ("api_key", "admin_token") else repr(err.get("input"))
        return ConfigError(f"{msg} (got {shown})", key=loc)
    return ConfigError(msg)
