"""Progress for long work: a live bar on a terminal, plain lines in a log.

Where output goes to a terminal, :func:`progress` draws a rich bar with an ETA. Where it
does not (``nohup``, CI, a scheduler, output sent to a file), a bar would print nothing
useful, so plain lines are written instead: one at the start, one at least every
``interval`` seconds (60 by default) with the items done, the rate and an ETA, every line
passed to :meth:`Progress.note` (the training loop notes each epoch) and one at the end.
"""

from __future__ import annotations

import os
import sys
import time
from types import TracebackType
from typing import IO, Any

LOG_INTERVAL_S = 60.0
"""Seconds between plain progress lines when output is not a terminal (at least one a minute)."""


def is_terminal(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (standard error by default) is an interactive terminal.

    ``TUNESMITH_PROGRESS=plain`` forces plain lines and ``TUNESMITH_PROGRESS=bar`` a bar,
    for schedulers that attach a terminal to a log file or terminals that hide it.
    """
    forced = os.environ.get("TUNESMITH_PROGRESS", "").strip().lower()
    if forced in ("plain", "log", "lines"):
        return False
    if forced in ("bar", "rich", "terminal"):
        return True
    s = stream if stream is not None else sys.stderr
    try:
        return bool(s.isatty())
    except (AttributeError, ValueError):
        return False


def format_duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3725`` -> ``1h02m``; short and stable for log lines."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, sec = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """One piece of long work: ``with progress("embedding", n, unit="rows") as bar: bar.advance(k)``.

    ``enabled=False`` makes every call a no-op (a library call asked to stay quiet).
    """

    def __init__(
        self,
        description: str,
        total: int | None,
        *,
        unit: str = "items",
        enabled: bool = True,
        stream: IO[str] | None = None,
        interval: float = LOG_INTERVAL_S,
        terminal: bool | None = None,
    ) -> None:
        self.description = description
        self.total = total
        self.unit = unit
        self.enabled = enabled
        self.stream = stream
        self.interval = interval
        self.terminal = is_terminal(stream) if terminal is None else terminal
        self.done = 0
        self.info = ""
        self._start = 0.0
        self._last_line = 0.0
        self._rich: Any = None
        self._task: Any = None

    # --- context ---------------------------------------------------------------------------------

    def __enter__(self) -> Progress:
        self._start = self._last_line = time.monotonic()
        if not self.enabled:
            return self
        if self.terminal:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            console = Console(file=self.stream) if self.stream is not None else None
            self._rich = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                transient=True,
                console=console,
            )
            self._rich.start()
            self._task = self._rich.add_task(self.description, total=self.total, info="")
        else:
            self._line(f"started, {self._count()}")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
            return
        elapsed = time.monotonic() - self._start
        if exc_type is None:
            self._line(f"done, {self.done:,} {self.unit} in {format_duration(elapsed)}")
        else:
            self._line(f"stopped after {self.done:,} {self.unit} ({format_duration(elapsed)}): {exc_type.__name__}")

    # --- updates ---------------------------------------------------------------------------------

    def __call__(self, n: int = 1) -> None:
        """Same as :meth:`advance`, so the object can stand where a bare callback is expected."""
        self.advance(n)

    def advance(self, n: int = 1, info: str | None = None) -> None:
        """``n`` more items done; ``info`` (e.g. the loss) is shown beside the bar or in the next line."""
        self.done += n
        if info is not None:
            self.info = info
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.update(self._task, advance=n, info=self.info)
            return
        now = time.monotonic()
        if now - self._last_line >= self.interval:
            self._line(self._count() + (f", {self.info}" if self.info else ""))

    def set_total(self, total: int) -> None:
        """Change the total (an epoch stopped early, a count learned late)."""
        self.total = total
        if self._rich is not None:
            self._rich.update(self._task, total=total, completed=min(self.done, total))

    def note(self, text: str) -> None:
        """A line worth keeping (an epoch's metrics): printed above a bar, or as a plain line."""
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.console.print(f"{self.description}: {text}")
            return
        self._line(f"{text}; {self._count()}")

    # --- plain lines ------------------------------------------------------------------------------

    def _count(self) -> str:
        elapsed = time.monotonic() - self._start
        if self.total:
            pct = 100.0 * self.done / self.total
            text = f"{self.done:,}/{self.total:,} {self.unit} ({pct:.0f}%)"
            if self.done and elapsed > 0:
                rate = self.done / elapsed
                text += f", {rate:,.1f} {self.unit}/s, eta {format_duration((self.total - self.done) / rate)}"
            return text
        return f"{self.done:,} {self.unit}"

    def _line(self, text: str) -> None:
        self._last_line = time.monotonic()
        stream = self.stream if self.stream is not None else sys.stderr
        stamp = time.strftime("%H:%M:%S")
        print(f"[{stamp}] {self.description}: {text}", file=stream, flush=True)


def progress(
    description: str,
    total: int | None,
    *,
    unit: str = "items",
    enabled: bool = True,
    stream: IO[str] | None = None,
    interval: float = LOG_INTERVAL_S,
) -> Progress:
    """A :class:`Progress` for ``total`` items; a bar on a terminal, plain log lines otherwise."""
    return Progress(description, total, unit=unit, enabled=enabled, stream=stream, interval=interval)
