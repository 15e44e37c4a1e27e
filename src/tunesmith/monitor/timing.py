"""Where windows of time start, in the user's time zone."""

from __future__ import annotations

import pandas as pd

CALENDAR = {"W": "W-SUN", "1W": "W-SUN", "M": "M", "1M": "M", "MS": "M", "ME": "M"}
"""Calendar spans: weeks from Monday to Sunday, calendar months."""


def window_starts(times: pd.Series, alias: str, timezone: str) -> pd.Series:
    """Each time's window start in ``timezone``.

    ``alias`` is a fixed span (``30min``, ``1h``, ``1D``, ``7D``: counted on the local wall
    clock from midnight) or a calendar span (``W``: weeks from Monday; ``M``: months).

    Raises:
        ValueError: ``alias`` is neither.
    """
    local = times.dt.tz_convert(timezone).dt.tz_localize(None)
    period = CALENDAR.get(alias.strip().upper())
    if period is not None:
        starts = local.dt.to_period(period).dt.start_time
    else:
        text = alias.strip()
        span = pd.Timedelta(f"1{text}" if text.isalpha() else text)
        if span <= pd.Timedelta(0):
            raise ValueError(f"a window of time must be longer than zero, got {alias!r}")
        # Floor from midnight of the first day, so days and hours start where people expect.
        origin = local.min().normalize() if len(local) else pd.Timestamp("1970-01-01")
        starts = origin + ((local - origin) // span) * span
    return starts.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="shift_forward")
