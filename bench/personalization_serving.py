"""Latency cost of per-user adapters in the server: ``serve --adapters`` vs the shared model alone.

Two servers of the same shared model, both on the torch backend, each on a free loopback
port, started together but loaded one at a time in alternating windows (so they never compete
for the cores, and a slow spell of the machine hits both):

* shared: ``tunesmith serve SHARED --backend torch``;
* adapters: ``tunesmith serve SHARED --backend torch --adapters STORE``.

Each gets the same single-row requests at the same load: an open loop at a fixed rate (by
default half the shared server's closed-loop throughput at ``--concurrency`` clients, measured
first), so both see the same arrivals whatever their speed. The adapter server's rows each
carry a user id drawn at random from the store's user adapters (``--unknown-fraction`` of them
an id the store does not hold, to exercise the fallback), so concurrent requests of different
users share micro-batches. The shared server gets the same rows without the user column,
which it would refuse as an unknown field. Before the timing, every user of the store gets one
request, so no adapter is first read from disk during the measurement. Reported: p50 and p99 latency of each and
``p99_ratio_adapter_vs_shared``, plus how the adapter server routed a sample of the rows.

Run: ``python bench/personalization_serving.py --shared MODEL --store STORE --data FILE``
(about 2.5 minutes with the defaults); results go to
``bench/results/personalization_serving.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BENCH_DIR,
    RESULTS_DIR,
    default_threads,
    environment_info,
    format_table,
    median,
    ratio,
    write_results,
)
from serving import closed_loop, free_port, open_loop, start, stop

BENCHMARK = "personalization_serving"
WORK = BENCH_DIR / "_work" / BENCHMARK
UNKNOWN_USER = "__not_in_the_store__"


def store_info(shared: Path, store: Path) -> dict[str, Any]:
    """The store's user ids (of adapters in use), its routing columns and the model's input columns.

    Opening the store with the shared model's fingerprint also refuses a store built for
    another model before any server starts.
    """
    from tunesmith.data.schema import Schema
    from tunesmith.export.runtime import model_version, read_meta
    from tunesmith.personalize.personalizer import load_settings
    from tunesmith.personalize.store import AdapterStore

    settings = load_settings(store)
    adapters = AdapterStore(store, "sha256:" + model_version(shared))
    users = [k.removeprefix("user:") for k in adapters if k.startswith("user:") and adapters.info(k).get("used", True)]
    schema = Schema.from_dict(read_meta(shared)["schema"])
    return {
        "users": users,
        "adapters": len(adapters),
        "user_column": settings["user_column"],
        "segment_column": settings.get("segment_column"),
        "item_column": settings.get("item_column"),
        "features": list(schema.feature_columns),
    }


def _plain(value: Any) -> Any:
    """JSON-ready cell: NaN becomes null, numpy scalars Python ones."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def request_bodies(
    rows: Sequence[Mapping[str, Any]], info: Mapping[str, Any], *, unknown_fraction: float, seed: int
) -> tuple[list[bytes], list[bytes]]:
    """``(shared bodies, adapter bodies)``: the same rows, the adapter server's with a random user each."""
    rng = random.Random(seed)
    users = info["users"] or [UNKNOWN_USER]
    features, user_col, seg_col = info["features"], info["user_column"], info["segment_column"]
    shared, adapted = [], []
    for row in rows:
        inputs = {c: _plain(row[c]) for c in features if c in row}
        shared.append(json.dumps({"inputs": inputs}).encode())
        mine = dict(inputs)
        mine[user_col] = UNKNOWN_USER if rng.random() < unknown_fraction else rng.choice(users)
        for col in (seg_col, info.get("item_column")):
            if col and col in row and col not in mine:
                mine[col] = _plain(row[col])
        adapted.append(json.dumps({"inputs": mine}).encode())
    return shared, adapted


def warm_bodies(rows: Sequence[Mapping[str, Any]], info: Mapping[str, Any], limit: int = 5000) -> list[bytes]:
    """One request per user of the store (up to ``limit``), so each adapter is loaded before the timing."""
    features, user_col = info["features"], info["user_column"]
    out = []
    for i, user in enumerate(info["users"][:limit]):
        row = rows[i % len(rows)]
        inputs = {c: _plain(row[c]) for c in features if c in row}
        out.append(json.dumps({"inputs": {**inputs, user_col: user}}).encode())
    return out


def _command(shared: Path, store: Path | None, port: int, threads: int) -> list[str]:
    cmd = [sys.executable, "-m", "tunesmith.cli", "serve", str(shared), "--port", str(port)]
    cmd += ["--backend", "torch", "--threads", str(threads)]
    return cmd + (["--adapters", str(store)] if store is not None else [])


def _routes(port: int, bodies: Sequence[bytes], n: int) -> dict[str, int]:
    """How the adapter server answered the first ``n`` bodies (user, segment or shared)."""
    counts: dict[str, int] = {}
    for body in bodies[:n]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/predict", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            level = json.loads(resp.read())["predictions"][0]["served_by"]["level"]
        counts[level] = counts.get(level, 0) + 1
    return counts


def measure(
    shared: Path,
    store: Path,
    rows: list[dict[str, Any]],
    *,
    threads: int,
    seconds: float,
    concurrency: int = 8,
    rate: float | None = None,
    load_fraction: float = 0.5,
    unknown_fraction: float = 0.0,
    seed: int = 0,
    rounds: int = 4,
    work: Path = WORK,
) -> dict[str, Any]:
    """p50/p99 latency of the shared server and the adapter server under the same open-loop load.

    Both servers are started and warmed up, then loaded in turn, never at the same time: the
    load runs in ``rounds`` windows of ``seconds / rounds`` per server, the order alternating
    (shared first, then adapters first, ...) so that a slow spell of this shared machine hits
    both alike. A server's p50 and p99 are the medians of its windows'; the ratio is that of
    the medians. ``rate`` (requests per second) defaults to ``load_fraction`` times the shared
    server's throughput with ``concurrency`` closed-loop clients, measured first.
    """
    if not rows:
        raise ValueError("no rows to send")
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    work.mkdir(parents=True, exist_ok=True)
    info = store_info(shared, store)
    shared_bodies, adapter_bodies = request_bodies(rows, info, unknown_fraction=unknown_fraction, seed=seed)
    servers = {"shared": (None, shared_bodies), "adapters": (store, adapter_bodies)}
    procs: dict[str, Any] = {}
    ports: dict[str, int] = {}
    startup: dict[str, float] = {}
    routes = None
    windows: dict[str, list[dict[str, Any]]] = {"shared": [], "adapters": []}
    calibration = None
    codes: dict[str, int | None] = {}
    try:
        for name, (folder, bodies) in servers.items():
            ports[name] = port = free_port()
            t0 = time.perf_counter()
            procs[name] = start(_command(shared, folder, port, threads), port, threads, work / f"{name}.log")
            startup[name] = time.perf_counter() - t0
            asyncio.run(closed_loop(port, "/v1/predict", bodies, 1, 30, 30))  # warm-up, not measured
            if folder is not None and info["users"]:
                # Steady state: adapters are read from disk on a user's first request; that
                # one-off cost is not what the comparison is about.
                warm = warm_bodies(rows, info)
                asyncio.run(closed_loop(port, "/v1/predict", warm, concurrency, len(warm), 120))
                routes = _routes(port, bodies, min(200, len(bodies)))
        if rate is None:
            # Calibrated on the shared server only: both then see exactly the same arrivals.
            calibration = asyncio.run(
                closed_loop(ports["shared"], "/v1/predict", shared_bodies, concurrency, 10**9, max(2.0, seconds / 4))
            )
            rate = load_fraction * float(calibration["rps"] or 1.0)
        for r in range(rounds):
            order = ["shared", "adapters"] if r % 2 == 0 else ["adapters", "shared"]
            for name in order:
                load = asyncio.run(open_loop(ports[name], "/v1/predict", servers[name][1], rate, seconds / rounds))
                windows[name].append(load)
                print(
                    f"[{name} round {r + 1}] {rate:.1f} req/s: p50 {load['p50_ms_ok']} ms, p99 {load['p99_ms_ok']} ms",
                    flush=True,
                )
    finally:
        for name, proc in procs.items():
            codes[name] = stop(proc)
    results: dict[str, Any] = {}
    for name in servers:
        loads = windows[name]
        results[name] = {
            "startup_seconds": round(startup[name], 2),
            "rate_rps": rate,
            "p50_ms": median([w["p50_ms_ok"] for w in loads]),
            "p99_ms": median([w["p99_ms_ok"] for w in loads]),
            "p99_ms_per_round": [w["p99_ms_ok"] for w in loads],
            "ok": sum(w["ok"] for w in loads),
            "requests": sum(w["requests"] for w in loads),
            "rejected_503": sum(w["rejected_503"] for w in loads),
            "lost": sum(w["lost"] for w in loads),
            "routes_of_sample": routes if name == "adapters" else None,
            "exit_code_after_sigterm": codes.get(name),
        }
    return {
        "shared": results["shared"],
        "adapters": results["adapters"],
        "rounds": rounds,
        "p50_ratio_adapter_vs_shared": ratio(results["adapters"]["p50_ms"], results["shared"]["p50_ms"]),
        "p99_ratio_adapter_vs_shared": ratio(results["adapters"]["p99_ms"], results["shared"]["p99_ms"]),
        "calibration": calibration,
        "store": {k: v for k, v in info.items() if k != "users"} | {"user_adapters_used": len(info["users"])},
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, required=True, help="Shared model folder (tunesmith fit).")
    p.add_argument("--store", type=Path, required=True, help="Adapter store of that model (tunesmith personalize).")
    p.add_argument("--data", type=Path, required=True, help="Rows to send: CSV, TSV, Parquet or JSONL.")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / f"{BENCHMARK}.json")
    p.add_argument("--threads", type=int, default=default_threads(), help="Compute threads of each server.")
    p.add_argument("--seconds", type=float, default=40.0, help="Open-loop load per server, over all rounds.")
    p.add_argument("--rounds", type=int, default=4, help="Alternating load windows per server.")
    p.add_argument("--concurrency", type=int, default=8, help="Clients of the calibration run.")
    p.add_argument("--rate", type=float, default=None, help="Requests per second (default: calibrated).")
    p.add_argument("--load-fraction", type=float, default=0.5, help="Share of the calibrated throughput.")
    p.add_argument("--unknown-fraction", type=float, default=0.0, help="Rows with a user the store lacks.")
    p.add_argument("--max-rows", type=int, default=2000, help="Distinct rows sent (sampled, seed 0).")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tunesmith.data.io import read_table

    frame = read_table(args.data)
    if len(frame) > args.max_rows:
        frame = frame.sample(args.max_rows, random_state=0)
    rows = frame.to_dict(orient="records")
    out = measure(
        args.shared,
        args.store,
        rows,
        threads=args.threads,
        seconds=args.seconds,
        concurrency=args.concurrency,
        rate=args.rate,
        load_fraction=args.load_fraction,
        unknown_fraction=args.unknown_fraction,
        rounds=args.rounds,
    )
    table_rows = [{"server": name, **out[name]} for name in ("shared", "adapters")]
    columns = [
        ("server", "server", ""),
        ("rate_rps", "req/s", ".1f"),
        ("p50_ms", "p50 ms", ".2f"),
        ("p99_ms", "p99 ms", ".2f"),
        ("ok", "ok", "d"),
        ("rejected_503", "503", "d"),
        ("lost", "lost", "d"),
    ]
    print()
    print(format_table(table_rows, columns))
    print(f"p99 adapters / shared: {out['p99_ratio_adapter_vs_shared']}")
    settings = {
        "shared": str(args.shared),
        "store": str(args.store),
        "data": str(args.data),
        "rows": len(rows),
        "threads": args.threads,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "rate": args.rate,
        "load_fraction": args.load_fraction,
        "unknown_fraction": args.unknown_fraction,
        "server": "tunesmith serve --backend torch defaults (max_batch_size 32, max_wait_ms 2); both started, "
        "loaded one at a time in alternating windows",
        "load_generator": "open loop, single-row requests, asyncio HTTP/1.1 in the parent process",
    }
    summary = {
        "p50_ms_shared": out["shared"]["p50_ms"],
        "p50_ms_adapters": out["adapters"]["p50_ms"],
        "p99_ms_shared": out["shared"]["p99_ms"],
        "p99_ms_adapters": out["adapters"]["p99_ms"],
        "p99_ratio_adapter_vs_shared": out["p99_ratio_adapter_vs_shared"],
    }
    path = write_results(
        args.out,
        benchmark=BENCHMARK,
        environment=environment_info(args.threads),
        settings=settings,
        results=out,
        summary=summary,
    )
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
