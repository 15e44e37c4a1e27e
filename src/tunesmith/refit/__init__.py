"""Updating a model that serves: the champion/challenger gate and the refit loop.

:func:`gate` judges a challenger against the champion; :func:`run_loop` runs the whole cycle
once (monitor, refit, register, gate, promote), safe to repeat and to kill. See
docs/registry.md and docs/loop.md.
"""

from __future__ import annotations

from tunesmith.refit.config import LoopConfig, MonitorStep, load_loop_config, make_loop_config
from tunesmith.refit.gate import GateDecision, gate, gate_version
from tunesmith.refit.loop import EXIT_OK, EXIT_REJECTED, LoopResult, run_loop

__all__ = [
    "EXIT_OK",
    "EXIT_REJECTED",
    "GateDecision",
    "LoopConfig",
    "LoopResult",
    "MonitorStep",
    "gate",
    "gate_version",
    "load_loop_config",
    "make_loop_config",
    "run_loop",
]
