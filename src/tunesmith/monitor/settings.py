"""The settings of drift monitoring, each with its default and what it is for.

A window is one slice of the current data (a number of rows, or a span of time); every signal
is tested per window against the reference. An input, representation or output signal
*drifts* in a window when its test stays significant after the false-discovery correction over
every test of the report (all signals of all windows, Benjamini-Hochberg) **and** its effect
size reaches the signal's threshold: in a large window every p-value is tiny, so the effect
size decides. A performance *alert* is raised when the accuracy (estimated, or measured where
labels arrived) falls below the reference's lower threshold.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tunesmith.config import validate_settings
from tunesmith.errors import ConfigError

# Exit statuses of ``tunesmith monitor`` a scheduler can act on (2 is a user error, as everywhere).
EXIT_OK = 0
EXIT_DRIFT = 3
EXIT_ALERT = 4


class MonitorSettings(BaseModel):
    """Every setting of :func:`tunesmith.monitor.monitor`, defaults included."""

    model_config = ConfigDict(extra="forbid")

    window_rows: int | None = Field(1000, ge=1, description="Rows per window (ignored when window_time is set).")
    window_time: str | None = Field(
        None, description="Span of time per window: 30min, 1h, 1D, 7D, W (weeks from Monday), M (months)."
    )
    timezone: str = Field("UTC", description="Time zone in which windows of time start (e.g. Europe/Berlin).")
    time_column: str | None = Field(
        None, description="Column of the current data holding each row's time (a prediction log has its own)."
    )
    min_window_rows: int = Field(100, ge=10, description="A window with fewer rows is joined to the one before.")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="False-discovery rate over every test of a report.")
    numeric_effect: float = Field(
        0.1, ge=0, description="Least shift of a numeric input, as Wasserstein distance over the reference's std."
    )
    categorical_effect: float = Field(
        0.1, ge=0, description="Least shift of a categorical input, as Jensen-Shannon distance (0-1)."
    )
    missing_effect: float = Field(0.05, ge=0, description="Least change in a column's share of missing values.")
    output_effect: float = Field(
        0.05, ge=0, description="Least shift of the model's outputs (Kolmogorov-Smirnov D of class probabilities)."
    )
    mean_effect: float = Field(
        0.1, ge=0, description="Least change of a class's mean probability, in reference standard deviations."
    )
    embedding_effect: float = Field(
        0.0, ge=0, description="Least MMD between embedding samples (samples are capped, so p-values stay honest)."
    )
    test_rows: int = Field(
        5000, ge=100, description="Rows of a window each univariate test draws at most (keeps p-values meaningful)."
    )
    reference_rows: int = Field(100_000, ge=100, description="Reference rows kept in the profile (a random sample).")
    embedding_rows: int = Field(
        200, ge=0, description="Rows per window embedded by the model for the representation test (0: no test)."
    )
    embedding_reference_rows: int = Field(1000, ge=50, description="Reference rows embedded once.")
    embedding_precision: str = Field(
        "auto",
        pattern="^(auto|fp32|bf16)$",
        description="Precision of the embeddings: auto (bf16 where the CPU computes it natively), fp32 or bf16.",
    )
    permutations: int = Field(500, ge=50, description="Permutations of the MMD test.")
    max_categories: int = Field(50, ge=2, description="Most frequent reference values a categorical test keeps.")
    performance_sigmas: float = Field(
        3.0, gt=0, description="The lower threshold is this many standard deviations of the reference chunks below."
    )
    performance_drop: float = Field(
        0.01, ge=0, description="The lower threshold is at least this far below the reference accuracy."
    )
    calibrate_on_inputs: bool = Field(
        True, description="Condition the performance estimate on the inputs too, not only on the confidence."
    )
    examples: int = Field(5, ge=0, le=50, description="Example rows shown per changed input.")
    seed: int = Field(0, description="Seed of the samples and permutations.")

    @model_validator(mode="after")
    def _one_windowing(self) -> MonitorSettings:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"timezone must be an IANA time zone such as UTC or Europe/Berlin, got {self.timezone!r}"
            ) from None
        if self.window_time is not None:
            import pandas as pd

            from tunesmith.monitor.timing import window_starts

            probe = pd.Series(pd.to_datetime(["2026-03-29T00:30:00", "2026-10-25T12:00:00"], utc=True))
            try:
                window_starts(probe, self.window_time, self.timezone)
            except (ValueError, TypeError):
                aliases = "30min, 1h, 1D, 7D, W (weeks from Monday) or M (months)"
                raise ValueError(
                    f"window_time must be a pandas offset alias such as {aliases}, got {self.window_time!r}"
                ) from None
        elif self.window_rows is None:
            raise ValueError("set window_rows or window_time")
        return self


def make_settings(settings: MonitorSettings | Mapping[str, Any] | None = None, **overrides: Any) -> MonitorSettings:
    """``settings`` (a :class:`MonitorSettings` or a mapping) with ``overrides`` applied, validated."""
    if isinstance(settings, MonitorSettings):
        base = settings.model_dump(exclude_unset=True)
    elif settings is None:
        base = {}
    elif isinstance(settings, Mapping):
        base = dict(settings)
    else:
        raise ConfigError(f"must be MonitorSettings or a mapping, got {type(settings).__name__}", key="settings")
    return validate_settings(MonitorSettings, {**base, **overrides})
