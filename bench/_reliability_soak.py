"""Soak test of ``tunesmith serve``: steady load at ~70% of capacity, memory, p99 drift, worker kills.

:func:`run` serves the int8 ONNX MiniLM classifier of ``bench/serving.py`` (copied into
``bench/_work/soak/``, or fine-tuned for one epoch when there is none) with
``tunesmith serve --workers N`` on a loopback port, and:

1. measures its capacity with a short closed-loop ramp (median of the best level, measured
   three times);
2. holds open-loop Poisson arrivals at 70% of it for ``minutes``, one Rotten Tomatoes review
   per request, each timed, none retried; any non-2xx, connection error or 30 s timeout is a
   failure. The RSS of every process of the server's tree is sampled every 2 s;
3. sends SIGTERM to the oldest worker at 35% of the soak and SIGKILL to its replacement at
   65%, each at a moment with requests in flight on the victim; the victim's connections,
   read from the kernel (psutil), are matched to the client's, so what became of each
   request in flight on it is known. The other worker lives through the whole soak;
4. measures the rate again after the soak.

The summary keys and what is fair about each (the RSS of the processes alive the whole soak,
p99 windows away from the kills, SIGKILL losses in a field of their own) are documented in
``docs/reliability.md`` (section Soak). ``python bench/_reliability_soak.py --minutes 1`` is a
quick pass; ``bench/reliability.py`` calls :func:`run` with the 10-minute default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BENCH_DIR, child_env, format_table, now_iso, write_json
from serving import Connection, closed_loop, free_port, percentile, start, stop

WORK = BENCH_DIR / "_work" / "soak"
SERVING_WORK = BENCH_DIR / "_work" / "serving"
PATH = "/v1/predict"
LOAD_FRACTION = 0.70
REQUEST_TIMEOUT_S = 30.0
RSS_EVERY_S = 2.0
MAX_OPEN_REQUESTS = 1024
RAMP = (1, 2, 4, 8, 16, 32)
RAMP_SECONDS = 4.0
# A connection is closed by the client after this many requests or seconds, as proxies do
# (nginx's keepalive_requests and keepalive_time): new connections keep spreading over the
# workers, a replacement worker included, instead of staying on whichever worker accepted
# them first.
REQUESTS_PER_CONNECTION = 100
CONNECTION_MAX_AGE_S = 5.0


# --- model ------------------------------------------------------------------------------------


def prepare_model(work: Path = WORK) -> Path:
    """A folder with the int8 MiniLM classifier and ``test.csv`` of reviews, reused when there."""
    model = work / "model"
    if (model / "onnx" / "model.int8.onnx").is_file() and (work / "test.csv").is_file():
        return model
    work.mkdir(parents=True, exist_ok=True)
    source = SERVING_WORK / "model"
    if not (source / "onnx" / "model.int8.onnx").is_file() or not (SERVING_WORK / "test.csv").is_file():
        print("[soak] no exported MiniLM model yet: fine-tuning one (1 epoch) ...", flush=True)
        code = "import sys; sys.path.insert(0, 'bench'); import serving; from pathlib import Path; "
        code += f"serving.train_stage(Path({str(work)!r}), 1, 1)"
        subprocess.run([sys.executable, "-c", code], cwd=BENCH_DIR.parent, env=child_env(1), check=True)
        return model
    # The fp32 graph is not served here; the int8 one, the weights and the metadata are.
    tmp = work / "model.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("model.onnx"))
    shutil.copy2(SERVING_WORK / "test.csv", work / "test.csv")
    shutil.rmtree(model, ignore_errors=True)
    tmp.rename(model)
    return model


def request_bodies(work: Path = WORK) -> list[bytes]:
    import csv

    with (work / "test.csv").open(newline="", encoding="utf-8") as fh:
        texts = [row["text"] for row in csv.DictReader(fh)]
    return [json.dumps({"inputs": {"text": t}}).encode() for t in texts]


# --- the server's processes -------------------------------------------------------------------


def workers_of(supervisor: int) -> list[int]:
    """Pids of the supervisor's worker processes (spawned children, not helpers), oldest first."""
    import psutil

    found = []
    for child in psutil.Process(supervisor).children():
        try:
            cmd = " ".join(child.cmdline())
            if "spawn_main" in cmd and "resource_tracker" not in cmd:
                found.append((child.create_time(), child.pid))
        except psutil.Error:
            continue
    return [pid for _, pid in sorted(found)]


def tree_rss(supervisor: int) -> dict[int, int]:
    """Resident bytes of each process of the server's tree."""
    import psutil

    out: dict[int, int] = {}
    try:
        root = psutil.Process(supervisor)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return out
    for proc in procs:
        try:
            out[proc.pid] = proc.memory_info().rss
        except psutil.Error:
            continue
    return out


def client_ports_of(pid: int) -> set[int]:
    """Client-side ports of the established loopback connections the process ``pid`` holds."""
    import psutil

    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return set()
    return {c.raddr.port for c in conns if c.raddr and c.status == psutil.CONN_ESTABLISHED}


def ready_lines(log: Path) -> int:
    """How many times a worker logged its model ready."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return 0
    return sum(1 for line in text.splitlines() if "tunesmith: model" in line and " ready " in line)


# --- load -------------------------------------------------------------------------------------


class _Conn(Connection):
    """A kept-alive connection that knows its own client port (to match it to a worker)."""

    port_local: int | None = None
    uses = 0
    opened = 0.0

    def reusable(self) -> bool:
        """Open, not closed by the server while idle (its keep-alive timeout), not used up."""
        if self.reader is None or self.writer is None or self.writer.is_closing():
            return False
        young = time.perf_counter() - self.opened < CONNECTION_MAX_AGE_S
        return young and not self.reader.at_eof() and self.uses < REQUESTS_PER_CONNECTION

    async def request(self, path: str, body: bytes, timeout: float) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), timeout)
            assert self.writer is not None
            self.opened = time.perf_counter()
            self.port_local = int(self.writer.get_extra_info("sockname")[1])
        self.uses += 1
        return await super().request(path, body, timeout)


class Soak:
    """Open-loop Poisson load with per-request records, RSS samples and the two worker kills."""

    def __init__(
        self, port: int, supervisor: int, log: Path, bodies: Sequence[bytes], rate: float, seconds: float, seed: int
    ) -> None:
        self.port, self.supervisor, self.log = port, supervisor, log
        self.bodies, self.rate, self.seconds = bodies, rate, seconds
        self.rng = random.Random(seed)
        # Per request: [sent at, latency s, status, error, client port, connection while open]
        self.records: list[list[Any]] = []
        self.rss: list[tuple[float, dict[int, int]]] = []
        self.load: list[float] = []
        self.connections: list[dict[str, int]] = []
        self.kills: list[dict[str, Any]] = []
        self.idle: deque[_Conn] = deque()
        self.open_requests = 0
        self.t0 = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.t0

    async def one(self, i: int) -> None:
        conn = None
        # Oldest idle connection first, as a pool that spreads requests over its connections
        # does; one the server closed meanwhile is dropped, as HTTP client pools do.
        while self.idle and conn is None:
            conn = self.idle.popleft()
            if not conn.reusable():
                conn.close()
                conn = None
        conn = conn or _Conn("127.0.0.1", self.port)
        # The connection rides along until the answer: a new one learns its port only once open.
        rec: list[Any] = [self.now(), None, None, None, conn.port_local, conn]
        self.records.append(rec)
        self.open_requests += 1
        t = time.perf_counter()
        try:
            status, _, data = await conn.request(PATH, self.bodies[i % len(self.bodies)], timeout=REQUEST_TIMEOUT_S)
        except Exception as exc:  # a failure is a result here, never retried
            rec[3] = type(exc).__name__ or "error"
            return
        finally:
            self.open_requests -= 1
            rec[4], rec[5] = conn.port_local, None
        rec[1], rec[2] = time.perf_counter() - t, status
        if not 200 <= status < 300:
            rec[3] = _reason(data)
        if conn.reusable():
            self.idle.append(conn)
        else:
            conn.close()

    async def sample_rss(self) -> None:
        while True:
            self.rss.append((self.now(), tree_rss(self.supervisor)))
            self.load.append(os.getloadavg()[0])
            # Kept-alive client connections each worker holds: a replacement that took no
            # share of the load would show 0 throughout.
            self.connections.append({str(p): len(client_ports_of(p)) for p in workers_of(self.supervisor)})
            if self.now() >= self.seconds:
                return
            await asyncio.sleep(min(RSS_EVERY_S, max(0.0, self.seconds - self.now())))

    async def kill(self, at: float, sig: signal.Signals, victim: int) -> None:
        await asyncio.sleep(max(0.0, at - self.now()))
        before = set(workers_of(self.supervisor))
        ready_before = ready_lines(self.log)
        # The signal goes when requests are in flight on the victim (within 10 s), so that
        # what becomes of them is seen; the client cannot change state between the count and
        # the signal (one thread, no await in between).
        wait_until = self.now() + 10
        while True:
            ports = client_ports_of(victim)
            inflight = [k for k, r in enumerate(self.records) if r[5] is not None and r[5].port_local in ports]
            if len(inflight) >= 2 or self.now() > wait_until:
                break
            await asyncio.sleep(0.005)
        t_kill = self.now()
        os.kill(victim, sig)
        event: dict[str, Any] = {
            "signal": sig.name,
            "at_s": round(t_kill, 3),
            "victim_pid": victim,
            "victim_connections": len(ports),
            "inflight_on_victim": len(inflight),
            "_inflight": inflight,
            "_ports": ports,
            "replacement_pid": None,
            "replacement_pid_after_s": None,
            "replacement_ready_after_s": None,
        }
        self.kills.append(event)
        deadline = t_kill + 120
        while self.now() < deadline:
            await asyncio.sleep(0.1)
            new = set(workers_of(self.supervisor)) - before
            if new and event["replacement_pid"] is None:
                event["replacement_pid"] = min(new)
                event["replacement_pid_after_s"] = round(self.now() - t_kill, 3)
            if event["replacement_pid"] is not None and ready_lines(self.log) > ready_before:
                event["replacement_ready_after_s"] = round(self.now() - t_kill, 3)
                return

    async def drive(self) -> None:
        self.t0 = time.perf_counter()
        tasks: set[asyncio.Task[None]] = set()
        side = [asyncio.create_task(self.sample_rss())]
        first = workers_of(self.supervisor)
        side.append(asyncio.create_task(self._kills(first)))
        next_at, i = 0.0, 0
        while next_at < self.seconds:
            delay = next_at - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.open_requests >= MAX_OPEN_REQUESTS:
                # The server stalled: a request the client could not even send is a failure too.
                self.records.append([self.now(), None, None, "client_backlog_full", None, None])
            else:
                task = asyncio.create_task(self.one(i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            i += 1
            next_at += self.rng.expovariate(self.rate)
        await asyncio.gather(*tasks)
        await asyncio.gather(*side)
        for conn in self.idle:
            conn.close()

    async def _kills(self, first: list[int]) -> None:
        # The oldest worker gets SIGTERM, then its replacement gets SIGKILL; the other worker
        # lives through the whole soak, so its memory shows growth over the full run.
        await self.kill(0.35 * self.seconds, signal.SIGTERM, first[0])
        replacement = self.kills[-1]["replacement_pid"]
        if replacement is not None:
            await self.kill(0.65 * self.seconds, signal.SIGKILL, replacement)


# --- figures ----------------------------------------------------------------------------------


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def windows(records: Sequence[Sequence[Any]], seconds: float, width: float, kills: Sequence[float]) -> list[dict]:
    out = []
    for w in range(math.ceil(seconds / width)):
        lo, hi = w * width, min(seconds, (w + 1) * width)
        rows = [r for r in records if lo <= r[0] < hi]
        ok = [r[1] for r in rows if r[2] is not None and 200 <= r[2] < 300]
        out.append(
            {
                "start_s": lo,
                "end_s": hi,
                "requests": len(rows),
                "ok": len(ok),
                "failed": len(rows) - len(ok),
                "p50_ms": _ms(percentile(ok, 50)),
                "p99_ms": _ms(percentile(ok, 99)),
                # A window overlapping the 30 s after a kill: the replacement's start-up and
                # the catch-up after it are not steady state.
                "holds_kill": any(lo < k + 30 and k < hi for k in kills),
                "_ok": ok,
            }
        )
    return out


def rss_growth(samples: Sequence[tuple[float, dict[int, int]]], pids: set[int] | None, warm: float, end: float) -> dict:
    """Median RSS (MiB) in [warm, warm + 30 s] and in the last 30 s, of ``pids`` (None: all)."""

    def total(sample: dict[int, int]) -> float:
        return sum(v for p, v in sample.items() if pids is None or p in pids) / 2**20

    first = [total(s) for t, s in samples if warm <= t <= warm + 30]
    last = [total(s) for t, s in samples if t >= end - 30]
    a, b = percentile(first, 50), percentile(last, 50)
    return {
        "rss_mib_after_warmup": None if a is None else round(a, 1),
        "rss_mib_end": None if b is None else round(b, 1),
        "growth_fraction": None if not a or b is None else round(b / a - 1, 4),
    }


def analyse(soak: Soak, rate: float, warmup: float, width: float) -> dict[str, Any]:
    records = soak.records
    ok = [r for r in records if r[2] is not None and 200 <= r[2] < 300]
    failed_ids = [k for k, r in enumerate(records) if not (r[2] is not None and 200 <= r[2] < 300)]
    failed = set(failed_ids)
    kills_out: list[dict[str, Any]] = []
    sigkill_caused: set[int] = set()
    ends = [e["at_s"] for e in soak.kills[1:]] + [soak.seconds]
    for event in soak.kills:
        inflight = event.pop("_inflight")
        ports = event.pop("_ports")
        lost = [k for k in inflight if k in failed]
        # Sent on one of the victim's connections after the signal, before the client saw it close.
        after = [k for k in failed if records[k][0] >= event["at_s"] and records[k][4] in ports and k not in inflight]
        event["_lost"], event["_after"] = lost, after
        if event["signal"] == "SIGKILL":
            sigkill_caused.update(lost)
            sigkill_caused.update(after)
    for event, until in zip(soak.kills, ends, strict=True):
        lost, after = event.pop("_lost"), event.pop("_after")
        near = [k for k in failed_ids if event["at_s"] - 1 <= records[k][0] < until and k not in sigkill_caused]
        if event["signal"] == "SIGKILL":
            near = sorted(set(near) | sigkill_caused)
        event.update(
            {
                "inflight_on_victim_lost": len(lost),
                "sent_on_victim_connections_after_kill_failed": len(after),
                # Every failure from 1 s before this kill to the next kill (or the end), whatever
                # its cause, except those of a later SIGKILL: the capacity dip while the
                # replacement starts shows here.
                "failed_until_next_kill": len(near),
                "failure_kinds_until_next_kill": _kinds(records, near),
                "replaced": event["replacement_pid"] is not None and event["replacement_ready_after_s"] is not None,
            }
        )
        kills_out.append(event)
    other_failed = [k for k in failed_ids if k not in sigkill_caused]
    kill_times = [e["at_s"] for e in kills_out]
    wins = windows(records, soak.seconds, width, kill_times)
    clean = [w for w in wins if not w["holds_kill"] and w["requests"]]
    # Two windows each side; a short run has fewer clean windows, then one each side.
    side = 2 if len(clean) >= 4 else 1
    first = [x for w in clean[:side] for x in w["_ok"]]
    last = [x for w in clean[-side:] for x in w["_ok"]]
    for w in wins:
        w.pop("_ok")
    p99_first, p99_last = percentile(first, 99), percentile(last, 99)
    survivors = {soak.supervisor}
    killed = {e["victim_pid"] for e in kills_out} | {e["replacement_pid"] for e in kills_out}
    if soak.rss:
        survivors |= {p for p in soak.rss[0][1] if p not in killed and all(p in s for _, s in soak.rss)}
    survivors &= {p for p in soak.rss[0][1]} if soak.rss else survivors
    end = soak.rss[-1][0] if soak.rss else soak.seconds
    return {
        "rate_rps": round(rate, 2),
        "seconds": soak.seconds,
        "requests_sent": len(records),
        "requests_answered": sum(1 for r in records if r[2] is not None),
        "requests_ok": len(ok),
        "failed_total": len(failed_ids),
        "failed_not_caused_by_sigkill": len(other_failed),
        "failed_caused_by_sigkill": len(sigkill_caused),
        "failure_kinds_not_caused_by_sigkill": _kinds(records, other_failed),
        "p50_ms": _ms(percentile([r[1] for r in ok], 50)),
        "p99_ms": _ms(percentile([r[1] for r in ok], 99)),
        "p99_ms_first_windows": _ms(p99_first),
        "p99_ms_last_windows": _ms(p99_last),
        "p99_drift_fraction": None if not p99_first or p99_last is None else round(p99_last / p99_first - 1, 4),
        "window_s": width,
        "windows": wins,
        "kills": kills_out,
        # Worker pid -> client connections it held, at each RSS sample.
        "client_connections_per_worker": soak.connections,
        "rss_survivors": {**rss_growth(soak.rss, survivors, warmup, end), "pids": sorted(survivors)},
        "rss_whole_tree": rss_growth(soak.rss, None, warmup, end),
        "rss_samples_mib": [
            {
                "t_s": round(t, 1),
                "total": round(sum(sample.values()) / 2**20, 1),
                "per_pid": {str(p): round(v / 2**20, 1) for p, v in sample.items()},
            }
            for t, sample in soak.rss
        ],
        # The machine's 1-minute load average at each RSS sample: other work on a shared machine
        # shows here, and so does a capacity dip it caused.
        "load_average_1min": [round(x, 2) for x in soak.load],
    }


def _reason(body: bytes) -> str:
    """The ``reason`` of a tunesmith error body (``queue_full``, ``shutting_down``, ...), if any."""
    try:
        out = json.loads(body)
    except ValueError:
        return "unreadable body"
    return str(out.get("reason") or out.get("detail") or "")[:60] if isinstance(out, dict) else ""


def _kinds(records: Sequence[Sequence[Any]], ids: Sequence[int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in ids:
        r = records[k]
        kind = f"status {r[2]} {r[3] or ''}".strip() if r[2] is not None else str(r[3])
        out[kind] = out.get(kind, 0) + 1
    return out


def capacity(port: int, bodies: Sequence[bytes], levels: Sequence[int] = RAMP) -> dict[str, Any]:
    """Closed-loop ramp, then the best level twice more: capacity = median rate of those three.

    A level counts only when every request got a 2xx; the ramp stops after two levels that
    do not raise the rate by 3%. The repeats temper the upward bias of taking the best of
    several short, noisy measurements.
    """
    steps: list[dict[str, Any]] = []

    def step(c: int) -> dict[str, Any]:
        phase = asyncio.run(closed_loop(port, PATH, bodies, c, 10**9, RAMP_SECONDS))
        phase.pop("_latencies")
        phase["clean"] = phase["errors"] == 0 and phase["ok"] == phase["requests"]
        steps.append({k: phase[k] for k in ("concurrency", "requests", "ok", "errors", "rps", "p50_ms", "p99_ms")})
        return phase

    best: dict[str, Any] | None = None
    stale = 0
    for c in levels:
        phase = step(c)
        if phase["clean"] and (best is None or phase["rps"] > best["rps"] * 1.03):
            best, stale = phase, 0
        else:
            stale += 1
            if stale >= 2:
                break
    if best is None:
        return {"capacity_rps": None, "best_concurrency": None, "steps": steps}
    rates = [best["rps"]] + [p["rps"] if p["clean"] else 0.0 for p in (step(best["concurrency"]) for _ in range(2))]
    return {
        "capacity_rps": round(float(sorted(rates)[1]), 2),
        "best_concurrency": best["concurrency"],
        "rates_at_best": [round(r, 2) for r in rates],
        "steps": steps,
    }


# --- entry point ------------------------------------------------------------------------------


def run(minutes: float = 10.0, workers: int = 2, seed: int = 0) -> dict[str, Any]:
    """Soak ``tunesmith serve --workers N`` at 70% of its capacity for ``minutes``; see the module doc.

    Returns a dict with ``summary`` (the judged figures), ``settings`` and ``details``.
    """
    if workers < 2:
        raise ValueError("the soak kills a worker and needs another one to keep serving: workers >= 2")
    model = prepare_model()
    bodies = request_bodies()
    random.Random(seed).shuffle(bodies)
    port = free_port()
    log = WORK / "server.log"
    cmd = [sys.executable, "-m", "tunesmith.cli", "serve", str(model), "--port", str(port)]
    cmd += ["--workers", str(workers), "--backend", "onnx", "--precision", "int8", "--no-access-log"]
    started = now_iso()
    proc = start(cmd, port, 1, log)
    try:
        asyncio.run(closed_loop(port, PATH, bodies, workers, 40, 20))  # warm-up, not measured
        cap = capacity(port, bodies)
        if not cap["capacity_rps"]:
            raise RuntimeError(f"no clean capacity step: {cap['steps']}")
        rate = LOAD_FRACTION * cap["capacity_rps"]
        seconds = 60.0 * minutes
        warmup = min(60.0, 0.2 * seconds)
        width = 30.0 if minutes >= 5 else 10.0
        print(
            f"[soak] capacity {cap['capacity_rps']:.1f} req/s; holding {rate:.1f} req/s for {seconds:.0f} s", flush=True
        )
        soak = Soak(port, proc.pid, log, bodies, rate, seconds, seed)
        asyncio.run(soak.drive())
        details = analyse(soak, rate, warmup, width)
        best = cap["best_concurrency"]
        after = asyncio.run(closed_loop(port, PATH, bodies, best, 10**9, 2 * RAMP_SECONDS))
        after.pop("_latencies")
        workers_end = workers_of(proc.pid)
    finally:
        exit_code = stop(proc)
    kills = {e["signal"]: e for e in details["kills"]}
    term, kill = kills.get("SIGTERM", {}), kills.get("SIGKILL", {})
    cap_ratio = after["rps"] / cap["capacity_rps"] if after["rps"] else None
    summary = {
        "soak_minutes": minutes,
        "soak_workers": workers,
        "soak_capacity_rps": cap["capacity_rps"],
        "soak_load_rps": details["rate_rps"],
        "soak_requests_sent": details["requests_sent"],
        "soak_requests_answered": details["requests_answered"],
        "soak_requests_ok": details["requests_ok"],
        "soak_failed_requests": details["failed_not_caused_by_sigkill"],
        "soak_sigkill_lost_requests": details["failed_caused_by_sigkill"],
        "soak_rss_growth_fraction": details["rss_survivors"]["growth_fraction"],
        "soak_rss_growth_fraction_whole_tree": details["rss_whole_tree"]["growth_fraction"],
        "soak_p99_ms_first": details["p99_ms_first_windows"],
        "soak_p99_ms_last": details["p99_ms_last_windows"],
        "soak_p99_drift_fraction": details["p99_drift_fraction"],
        # Failures of any cause from the SIGTERM to the SIGKILL (included in soak_failed_requests).
        "soak_failed_requests_sigterm_to_sigkill": term.get("failed_until_next_kill"),
        "soak_sigterm_inflight_requests": term.get("inflight_on_victim"),
        "soak_sigterm_lost_admitted_requests": term.get("inflight_on_victim_lost"),
        "soak_worker_replaced_after_sigterm": term.get("replaced"),
        "soak_sigkill_inflight_requests": kill.get("inflight_on_victim"),
        "soak_worker_replaced_after_sigkill": kill.get("replaced"),
        "soak_capacity_after_fraction": None if cap_ratio is None else round(cap_ratio, 3),
        "soak_workers_at_end": len(workers_end),
        "soak_server_exit_code": exit_code,
    }
    settings = {
        "started": started,
        "finished": now_iso(),
        "seed": seed,
        "load_fraction": LOAD_FRACTION,
        "arrivals": "open loop, Poisson",
        "request": "one Rotten Tomatoes test review, POST /v1/predict",
        "model": "all-MiniLM-L6-v2 fine-tuned (bench/serving.py), ONNX int8",
        "server": f"tunesmith serve --workers {workers} --backend onnx --precision int8 --no-access-log",
        "request_timeout_s": REQUEST_TIMEOUT_S,
        "rss_every_s": RSS_EVERY_S,
        "warmup_s": warmup,
        "kills": "SIGTERM to the oldest worker at 35%; SIGKILL to its replacement at 65%",
        "client": "asyncio HTTP/1.1 keep-alive pool in the benchmark process, same machine, no retries",
    }
    return {
        "summary": summary,
        "settings": settings,
        "details": {
            "capacity": cap,
            "capacity_after": after,
            "soak": details,
            "workers_at_end": workers_end,
        },
    }


def table(result: dict[str, Any]) -> str:
    rows = [
        {**w, "window": f"{w['start_s']:.0f}-{w['end_s']:.0f} s" + (" (kill)" if w["holds_kill"] else "")}
        for w in result["details"]["soak"]["windows"]
    ]
    columns = [("window", "window", ""), ("requests", "requests", "d"), ("failed", "failed", "d")]
    columns += [("p50_ms", "p50 ms", ".1f"), ("p99_ms", "p99 ms", ".1f")]
    return format_table(rows, columns)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="Also write the result as JSON here.")
    args = p.parse_args(argv)
    result = run(args.minutes, args.workers, args.seed)
    print()
    print(table(result))
    print()
    for event in result["details"]["soak"]["kills"]:
        shown = {k: v for k, v in event.items() if not k.startswith("_")}
        print(f"kill: {json.dumps(shown)}")
    print()
    for key, value in result["summary"].items():
        print(f"{key:42s} {value}")
    if args.out is not None:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
