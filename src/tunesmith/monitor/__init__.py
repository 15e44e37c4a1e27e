"""Watch a model in production: input, representation and output drift, and performance.

:func:`monitor` compares current data (a prediction log of ``tunesmith serve``, or any data
file) with reference data, window by window, and returns a :class:`MonitorResult` whose
``save()`` writes an HTML report with a plot per signal and a JSON with every figure. It works
for every kind of model through the estimator contract. See docs/monitoring.md.
"""

from __future__ import annotations

from tunesmith.monitor.reference import Reference, build_reference
from tunesmith.monitor.run import MonitorResult, monitor
from tunesmith.monitor.settings import EXIT_ALERT, EXIT_DRIFT, EXIT_OK, MonitorSettings, make_settings

__all__ = [
    "EXIT_ALERT",
    "EXIT_DRIFT",
    "EXIT_OK",
    "MonitorResult",
    "MonitorSettings",
    "Reference",
    "build_reference",
    "make_settings",
    "monitor",
]
