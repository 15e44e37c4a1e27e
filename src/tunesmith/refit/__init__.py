"""Updating a model that serves: the champion/challenger gate (refitting methods build on it).

See docs/registry.md.
"""

from __future__ import annotations

from tunesmith.refit.gate import GateDecision, gate, gate_version

__all__ = ["GateDecision", "gate", "gate_version"]
