"""Native libraries run in a child process, so a bad file aborts or hangs the child, not tunesmith.

Part of the trust boundary (:mod:`tunesmith.runs.trust` re-exports every name here).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["ChildRun", "run_isolated", "signal_name"]


class ChildRun(NamedTuple):
    """What a child process made of a file: its exit status and error output, or why it never exited."""

    returncode: int | None
    stderr: str
    failure: str | None


def run_isolated(
    code: str, args: Sequence[str], data: bytes, *, timeout: float, what: str, threads: int = 1
) -> ChildRun:
    """Run ``code`` in a fresh Python (``-I``: nothing imported from the working folder) fed ``data``.

    For native libraries that may abort, hang or allocate without bound on a bad file: the
    child takes the blow and the caller reads its exit. ``what`` completes "…in a separate
    process did not finish" for the timeout message.
    """
    env = {**os.environ, **dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), str(threads))}
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-c", code, *args],
            input=data,
            capture_output=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return ChildRun(None, "", f"{what} in a separate process did not finish within {timeout:.0f} s")
    except OSError as exc:
        return ChildRun(None, "", f"no separate process could be started to check it ({exc.strerror or exc})")
    return ChildRun(proc.returncode, proc.stderr.decode("utf-8", "replace"), None)


def signal_name(returncode: int) -> str:
    """The name of the signal that ended a child (``returncode`` < 0), e.g. ``SIGABRT``."""
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"
