"""What a cleaning did: one :class:`CleanAction` per step, gathered in a :class:`CleanReport`.

Kept apart from the cleaning steps so that every step (:mod:`~tunesmith.data.clean`,
:mod:`~tunesmith.data.balance`, the fit's :mod:`~tunesmith.data.quality`) can report
without importing the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_REPORTED_ROWS = 1000
ADDING_ACTIONS = ("oversample", "augment")
CHANGING_ACTIONS = ("impute_missing", "relabel_label_errors")


@dataclass
class CleanAction:
    """One cleaning step: what it did, to how many rows, and which (1-based data rows)."""

    action: str
    count: int
    rows: list[int]
    description: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, max_rows: int = MAX_REPORTED_ROWS) -> dict[str, Any]:
        """JSON-safe form, listing at most ``max_rows`` row numbers."""
        return {
            "action": self.action,
            "count": self.count,
            "description": self.description,
            "rows": self.rows[:max_rows],
            "rows_truncated": len(self.rows) > max_rows,
            "details": self.details,
        }


@dataclass
class CleanReport:
    """Everything the cleaning did: rows in and out, and one :class:`CleanAction` per step."""

    rows_in: int
    rows_out: int = 0
    actions: list[CleanAction] = field(default_factory=list)

    @property
    def added(self) -> int:
        """Rows added (oversampled copies, augmented copies)."""
        return sum(a.count for a in self.actions if a.action in ADDING_ACTIONS)

    @property
    def dropped(self) -> int:
        """Rows removed by any step."""
        return self.rows_in + self.added - self.rows_out

    @property
    def changed(self) -> int:
        """Rows kept but altered (relabelled or imputed)."""
        return sum(a.count for a in self.actions if a.action in CHANGING_ACTIONS)

    def count(self, action: str) -> int:
        """Rows affected by ``action`` (0 when it did not run)."""
        return sum(a.count for a in self.actions if a.action == action)

    def __bool__(self) -> bool:
        return any(a.count for a in self.actions)

    def summary(self) -> str:
        """One line per step that touched rows, e.g. ``dropped 56 exact duplicate rows (rows 10, 31, ...)``."""
        lines = []
        for a in self.actions:
            if not a.count:
                continue
            shown = ", ".join(map(str, a.rows[:5])) + (", ..." if len(a.rows) > 5 else "")
            lines.append(f"{a.description} (rows {shown})")
        if not lines:
            return f"cleaning changed nothing ({self.rows_in} rows)"
        return "\n".join([*lines, f"{self.rows_in} rows in, {self.rows_out} rows out"])

    def to_dict(self, max_rows: int = MAX_REPORTED_ROWS) -> dict[str, Any]:
        """JSON-safe form for run records and ``tunesmith clean``."""
        return {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "dropped": self.dropped,
            "added": self.added,
            "changed": self.changed,
            "actions": [a.to_dict(max_rows) for a in self.actions],
        }
