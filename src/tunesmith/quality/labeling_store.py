"""The answers file of a labeling session: append-only JSON Lines, each event on disk before it counts.

One event per line::

    {"event": "label", "row": 17, "label": "spam", "kind": "query", "time": 1700000000.123}
    {"event": "skip", "row": 4, "kind": "review", "time": 1700000003.5}
    {"event": "undo", "row": 4, "time": 1700000004.0}      # takes back the last label or skip
    {"event": "score", "labels": 50, "answers": 61, "score": 0.81, "time": 1700000010.2}  # a curve point
    {"event": "keep_going", "time": 1700000020.0}          # labeling went on after a stop

``row`` is the pool's row id, ``kind`` says whether the row was asked for (``query``) or shown
for review of the label it came with (``review``), ``time`` is seconds since the epoch. A
``score`` event's ``labels`` is the number of labels the fit saw (the curve's x axis) and
``answers`` the number of label, skip and undo events the fit came after (what tells one point
from the next; without it, as in files from before it came in, the events above its line).

Every event is written with one ``write``, then flushed and ``fsync``-ed before the call that
made it returns, so a crash (power cut, killed process) loses nothing acknowledged. A crash in
the middle of a write can only leave the last line cut off: :meth:`AnswersFile.read` removes it
from the file (so the next event starts on a line of its own) and says so in a
:class:`~tunesmith.data.io.DataWarning`. A line that does not parse before the end was not made
by a crash; it is a :class:`~tunesmith.errors.DataError` naming the file and line. The file is
held under an exclusive lock (POSIX ``flock``): a second session on it is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import warnings
from pathlib import Path
from typing import Any

from tunesmith.data.io import DataWarning
from tunesmith.errors import DataError
from tunesmith.runs.artifacts import fsync_dir, json_safe

EVENTS = ("label", "skip", "undo", "score", "keep_going")
"""The events of an answers file."""


class AnswersFile:
    """An answers file opened for a session: locked, replayable, appended to durably."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._fh = open(self.path, "a+b")  # noqa: SIM115 - held open (and locked) for the session's life
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.close()
            raise DataError(
                "another labeling session has this answers file open",
                file=self.path,
                hint="Close that session (or its page) first, or pass another answers file",
            ) from None
        if created:
            # the new name must survive a crash too, not only the bytes written into the file
            fsync_dir(self.path.parent)

    def read(self) -> list[tuple[int, dict[str, Any]]]:
        """Every event with its 1-based line number; a damaged last line is cut off with a warning.

        Raises:
            DataError: a line before the last that is not a JSON object.
        """
        self._fh.seek(0)
        data = self._fh.read()
        lines = data.split(b"\n")
        events: list[tuple[int, dict[str, Any]]] = []
        offset = 0
        for number, raw in enumerate(lines, 1):
            start, offset = offset, offset + len(raw) + 1
            if not raw.strip():
                continue
            try:
                event = json.loads(raw.decode("utf-8"))
                if not isinstance(event, dict):
                    raise ValueError("not an object")
            except ValueError:
                if any(rest.strip() for rest in lines[number:]):
                    raise DataError(
                        f"line {number} is not a JSON event", file=self.path, hint="Fix or delete that line"
                    ) from None
                # What a crash in the middle of a write leaves; removed so that new events start clean.
                self._fh.truncate(start)
                self._sync()
                warnings.warn(
                    DataWarning(
                        f"ignored 1 incomplete event on the last line ({number}), most likely cut off by a crash: "
                        f"{raw[:80].decode('utf-8', 'replace')!r}",
                        file=self.path,
                        hint="That answer was not saved; give it again",
                    ),
                    stacklevel=3,
                )
                return events
            events.append((number, event))
        if data and not data.endswith(b"\n"):
            self._fh.write(b"\n")  # a whole last event without its newline: the next one needs a line of its own
            self._sync()
        return events

    def append(self, event: dict[str, Any]) -> None:
        """Write one event and make it durable before returning (a failed write leaves no half line)."""
        if self._fh.closed:
            raise DataError("the labeling session is closed", file=self.path, hint="Open a new session to go on")
        line = (json.dumps(json_safe(event), ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        self._fh.seek(0, os.SEEK_END)
        size = self._fh.tell()
        try:
            self._fh.write(line)
            self._sync()
        except OSError:
            with contextlib.suppress(OSError):
                self._fh.truncate(size)
            raise

    def _sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._fh.closed

    def close(self) -> None:
        """Release the lock and the file."""
        if not self._fh.closed:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
