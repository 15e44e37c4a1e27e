"""Real-time serving benchmark: tunesmith's server (ONNX int8, ONNX fp32, torch) vs a plain
FastAPI endpoint around a Hugging Face ``pipeline``, all over HTTP on loopback, in one run.

Stages, each in its own process so no contender shares a thread pool with another:

1. ``train``: fine-tune all-MiniLM-L6-v2 on Rotten Tomatoes (the foundation benchmark's
   split), save it, export it to ONNX fp32 and int8 (the export measures int8's accuracy
   change on the test split), and write the same weights as a Hugging Face
   ``BertForSequenceClassification`` folder for the baseline. Reused on later runs unless
   ``--retrain``.
2. Start every contender's server on a free loopback port and wait for ``/ready``; then drive
   them in interleaved rounds with an asyncio HTTP/1.1 load generator (keep-alive
   connections, one request = one real test review): each round runs every server at
   concurrency 1 (latency), then every server at concurrency 32 (throughput), in alternating
   order. The judged figures are medians over the rounds; the throughput ratio is the median
   of the per-round ratios.
3. Overload: an open-loop burst at 4x the int8 server's measured concurrency-32 throughput;
   every request must get an answer (200, or 503 with ``Retry-After``), none may be lost.

Run with ``python bench/serving.py`` (or ``make bench-serving``); results go to
``bench/results/serving.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BENCH_DIR,
    RESULTS_DIR,
    check_targets,
    child_env,
    default_threads,
    environment_info,
    format_table,
    median,
    now_iso,
    print_summary,
    ratio,
    write_json,
    write_results,
)

BENCHMARK = "serving"
WORK = BENCH_DIR / "_work" / "serving"
SEED = 0
EPOCHS = 2
LR = 5e-5
BATCH_SIZE = 32
MAX_LENGTH = 128
CONTENDERS = ("onnx_int8", "onnx_fp32", "torch", "hf_pipeline")
TITLES = {
    "onnx_int8": "tunesmith serve, ONNX int8",
    "onnx_fp32": "tunesmith serve, ONNX fp32",
    "torch": "tunesmith serve, torch backend",
    "hf_pipeline": "FastAPI + HF pipeline, one request at a time",
}
TARGETS = {
    "p50_ms_c1_int8": ("<=", 5.0),
    "p99_ms_c1_int8": ("<=", 10.0),
    "throughput_ratio_vs_hf_pipeline": (">=", 5.0),
    "int8_accuracy_drop_points": ("<=", 0.5),
    "overload_lost_requests": ("<=", 0),
    "overload_p99_reject_ms": ("<=", 50.0),
}


# --- stage 1: the model ------------------------------------------------------------------------


def train_stage(work: Path, epochs: int, threads: int) -> dict[str, Any]:
    """Fine-tune, save, export (fp32 + int8) and write the Hugging Face baseline folder."""
    import torch

    from tunesmith import FineTuner
    from tunesmith.datasets import rotten_tomatoes_split
    from tunesmith.export import export_onnx

    torch.set_num_threads(threads)
    train, valid, test = (part[["text", "label"]] for part in rotten_tomatoes_split(seed=SEED))
    work.mkdir(parents=True, exist_ok=True)
    test_file = work / "test.csv"
    test.to_csv(test_file, index=False)
    started = time.perf_counter()
    ft = FineTuner(
        backbone="minilm-l6",
        epochs=epochs,
        lr=LR,
        batch_size=BATCH_SIZE,
        max_length=MAX_LENGTH,
        seed=SEED,
        baselines=False,
        progress=False,
        runs_dir=str(work / "runs"),
        num_threads=threads,
    ).fit(train, target="label", eval_set=valid, test_set=test)
    train_seconds = time.perf_counter() - started
    folder = ft.save(work / "model", overwrite=True)
    exported = export_onnx(folder, quantize="int8", data=test_file)
    hf_folder = write_hf_baseline(ft, work / "hf_model")
    return {
        "test_accuracy_torch": ft.test_metrics_["accuracy"],
        "train_seconds": train_seconds,
        # Paths inside the repository, not of this machine.
        "export": {**exported.to_dict(), "folder": str(Path(exported.folder).relative_to(BENCH_DIR.parent))},
        "hf_folder": str(hf_folder.relative_to(BENCH_DIR.parent)),
        "settings": {"epochs": epochs, "lr": LR, "batch_size": BATCH_SIZE, "max_length": MAX_LENGTH, "seed": SEED},
    }


def write_hf_baseline(ft: Any, folder: Path) -> Path:
    """The fine-tuned encoder as a ``BertForSequenceClassification`` folder for ``pipeline``.

    It carries the same encoder weights and the same head, so one request costs the same
    encoder forward pass as in tunesmith; its pooling (the [CLS] pooler) differs, so its
    labels are not compared, only its speed.
    """
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(**{k: v for k, v in ft.backbone_.hf_config.to_dict().items() if k != "model_type"})
    config.num_labels = ft.n_outputs_
    config.id2label = dict(enumerate(ft.schema_.labels))
    config.label2id = {v: k for k, v in config.id2label.items()}
    model = BertForSequenceClassification(config)
    encoder = ft.backbone_.base_model().state_dict()
    missing, _ = model.bert.load_state_dict(encoder, strict=False)
    assert all(k.startswith("pooler") for k in missing), missing
    model.classifier.load_state_dict(ft.model_.head.linear.state_dict())
    model.save_pretrained(folder, safe_serialization=True)
    ft.backbone_.tokenizer.save_pretrained(folder)
    return folder


# --- the baseline server -------------------------------------------------------------------------


def hf_server(folder: str, port: int, threads: int) -> None:
    """What most users write first: FastAPI, and the pipeline called once per request."""
    import torch
    import uvicorn
    from fastapi import FastAPI
    from pydantic import BaseModel
    from transformers import pipeline

    torch.set_num_threads(threads)
    classifier = pipeline("text-classification", model=folder, tokenizer=folder, device=-1, truncation=True)
    classifier("warm up")
    app = FastAPI()

    class Item(BaseModel):
        text: str

    async def predict(item: Item) -> dict[str, Any]:
        return {"predictions": classifier(item.text)}

    # This module postpones annotations, and FastAPI cannot resolve a class local to this
    # function from a string: hand it the real class.
    predict.__annotations__["item"] = Item
    app.post("/predict")(predict)

    @app.get("/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --- load generator ------------------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection; enough of the protocol for JSON request/response."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, path: str, body: bytes, timeout: float) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None and self.writer is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        try:
            return await asyncio.wait_for(self._response(), timeout)
        except BaseException:
            self.close()
            raise

    async def _response(self) -> tuple[int, dict[str, str], bytes]:
        assert self.reader is not None
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        data = await self.reader.readexactly(length) if length else b""
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


async def closed_loop(
    port: int, path: str, bodies: Sequence[bytes], concurrency: int, count: int, seconds: float
) -> dict[str, Any]:
    """``concurrency`` clients, each sending its next request when the last one is answered."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    issued = 0
    deadline = time.perf_counter() + seconds

    async def client(offset: int) -> None:
        nonlocal issued
        conn = Connection("127.0.0.1", port)
        while issued < count and time.perf_counter() < deadline:
            body = bodies[(issued + offset) % len(bodies)]
            issued += 1
            t0 = time.perf_counter()
            try:
                status, _, _ = await conn.request(path, body, timeout=60)
            except Exception as exc:  # a lost request is a result here, not a crash
                errors.append(type(exc).__name__)
                continue
            latencies.append(time.perf_counter() - t0)
            statuses[status] = statuses.get(status, 0) + 1
        conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(i * 7919) for i in range(concurrency)))
    wall = time.perf_counter() - started
    ok = statuses.get(200, 0)
    return {
        "concurrency": concurrency,
        "requests": issued,
        "ok": ok,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": len(errors),
        "seconds": wall,
        "rps": ok / wall if wall > 0 else None,
        "p50_ms": _ms(percentile(latencies, 50)),
        "p90_ms": _ms(percentile(latencies, 90)),
        "p99_ms": _ms(percentile(latencies, 99)),
        "max_ms": _ms(max(latencies) if latencies else None),
        "_latencies": latencies,
    }


async def open_loop(port: int, path: str, bodies: Sequence[bytes], rate: float, seconds: float) -> dict[str, Any]:
    """Requests arrive on a fixed schedule whatever the server does (an overload burst)."""
    idle: list[Connection] = []
    results: list[tuple[int, float, float, str | None]] = []
    lost: list[str] = []
    n = int(rate * seconds)
    started = time.perf_counter()

    async def one(i: int, scheduled: float) -> None:
        conn = idle.pop() if idle else Connection("127.0.0.1", port)
        t0 = time.perf_counter()
        try:
            status, headers, _ = await conn.request(path, bodies[i % len(bodies)], timeout=60)
        except Exception as exc:  # counted as lost: the server never answered
            lost.append(type(exc).__name__)
            return
        done = time.perf_counter()
        results.append((status, done - t0, done - scheduled, headers.get("retry-after")))
        idle.append(conn)

    tasks = []
    for i in range(n):
        scheduled = started + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    for conn in idle:
        conn.close()
    wall = time.perf_counter() - started
    ok = [r for r in results if r[0] == 200]
    rejected = [r for r in results if r[0] == 503]
    other = [r for r in results if r[0] not in (200, 503)]
    return {
        "rate_rps": rate,
        "seconds": seconds,
        "requests": n,
        "answered": len(results),
        "ok": len(ok),
        "rejected_503": len(rejected),
        "rejected_with_retry_after": sum(1 for r in rejected if r[3]),
        "other_status": len(other),
        "lost": len(lost) + (n - len(results) - len(lost)),
        "lost_errors": sorted(set(lost)),
        "wall_seconds": wall,
        "ok_rps": len(ok) / wall if wall > 0 else None,
        "p50_ms_ok": _ms(percentile([r[1] for r in ok], 50)),
        "p99_ms_ok": _ms(percentile([r[1] for r in ok], 99)),
        "p50_ms_reject": _ms(percentile([r[1] for r in rejected], 50)),
        "p99_ms_reject": _ms(percentile([r[1] for r in rejected], 99)),
        "p99_ms_reject_from_schedule": _ms(percentile([r[2] for r in rejected], 99)),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


# --- servers -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(cmd: list[str], port: int, threads: int, log: Path, timeout: float = 300) -> subprocess.Popen[bytes]:
    """Start a server and wait until ``/ready`` answers 200."""
    env = child_env(threads)
    fh = log.open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes]) -> int | None:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None


def server_command(name: str, work: Path, port: int, threads: int) -> tuple[list[str], str, bool]:
    """``(command, predict path, tunesmith body shape)`` of a contender."""
    if name == "hf_pipeline":
        cmd = [sys.executable, __file__, "--hf-server", str(work / "hf_model"), "--port", str(port)]
        return [*cmd, "--threads", str(threads)], "/predict", False
    backend, precision = {"onnx_int8": ("onnx", "int8"), "onnx_fp32": ("onnx", "fp32"), "torch": ("torch", "fp32")}[
        name
    ]
    cmd = [sys.executable, "-m", "tunesmith.cli", "serve", str(work / "model"), "--port", str(port)]
    cmd += ["--backend", backend, "--threads", str(threads)]
    if backend == "onnx":
        cmd += ["--precision", precision]
    return cmd, "/v1/predict", True


def bodies_for(texts: Sequence[str], tunesmith: bool) -> list[bytes]:
    if tunesmith:
        return [json.dumps({"inputs": {"text": t}}).encode() for t in texts]
    return [json.dumps({"text": t}).encode() for t in texts]


def _combined(phases: list[dict[str, Any]]) -> dict[str, Any]:
    """One load phase's rounds as one figure: per-round medians, pooled percentiles beside them."""
    latencies = [x for phase in phases for x in phase.pop("_latencies")]
    statuses: dict[str, int] = {}
    for phase in phases:
        for code, count in phase["statuses"].items():
            statuses[code] = statuses.get(code, 0) + count
    return {
        "concurrency": phases[0]["concurrency"],
        "rounds": len(phases),
        "requests": sum(p["requests"] for p in phases),
        "ok": sum(p["ok"] for p in phases),
        "errors": sum(p["errors"] for p in phases),
        "statuses": statuses,
        # The judged figures: medians over the interleaved rounds.
        "rps": median([p["rps"] for p in phases]),
        "p50_ms": median([p["p50_ms"] for p in phases]),
        "p90_ms": median([p["p90_ms"] for p in phases]),
        "p99_ms": median([p["p99_ms"] for p in phases]),
        "p50_ms_pooled": _ms(percentile(latencies, 50)),
        "p99_ms_pooled": _ms(percentile(latencies, 99)),
        "max_ms": _ms(max(latencies) if latencies else None),
        "per_round": phases,
    }


def measure(names: Sequence[str], work: Path, texts: Sequence[str], args: argparse.Namespace) -> dict[str, Any]:
    """Every contender's server at once, driven in interleaved rounds.

    All servers start first and stay up. Each round runs the concurrency-1 phase of every
    contender, then the concurrency-32 phase of every contender, in alternating order (A B C,
    then C B A, ...), so each round compares the contenders at one moment of this shared
    machine. A server that is not being driven is idle. The overload burst follows the rounds.
    """
    servers: dict[str, dict[str, Any]] = {}
    results: dict[str, Any] = {}
    try:
        for name in names:
            port = free_port()
            cmd, path, shaped = server_command(name, work, port, args.threads)
            started = time.perf_counter()
            try:
                proc = start(cmd, port, args.threads, work / f"{name}.log")
            except Exception as exc:  # one failing contender must not hide the others' figures
                print(f"[{name}] FAILED to start: {exc}", file=sys.stderr, flush=True)
                results[name] = {"status": "failed", "error": str(exc)[-2000:], "created": now_iso()}
                continue
            bodies = bodies_for(texts, shaped)
            servers[name] = {"proc": proc, "port": port, "path": path, "bodies": bodies}
            servers[name]["startup"] = time.perf_counter() - started
            asyncio.run(closed_loop(port, path, bodies, 1, 30, 30))  # warm-up, not measured
        live = list(servers)
        phases: dict[str, dict[str, list[dict[str, Any]]]] = {n: {"c1": [], "c32": []} for n in live}
        for r in range(args.rounds):
            order = live if r % 2 == 0 else live[::-1]
            for level, count in (("c1", args.requests_c1), ("c32", args.requests_c32)):
                for name in order:
                    server = servers[name]
                    phase = asyncio.run(
                        closed_loop(
                            server["port"],
                            server["path"],
                            server["bodies"],
                            1 if level == "c1" else 32,
                            max(1, count // args.rounds),
                            args.seconds / args.rounds,
                        )
                    )
                    phases[name][level].append(phase)
                    shown = (
                        f"p50 {phase['p50_ms']:.2f} ms, p99 {phase['p99_ms']:.2f} ms, {phase['rps']:.1f} req/s"
                        if phase["p50_ms"] is not None and phase["rps"] is not None
                        else f"no answers ({phase['errors']} errors, statuses {phase['statuses']})"
                    )
                    print(f"[round {r + 1}] {name} {level}: {shown}", flush=True)
        for name in live:
            server = servers[name]
            c32 = _combined(phases[name]["c32"])
            overload = None
            if name == "onnx_int8" and not args.skip_overload:
                rate = 4 * float(c32["rps"] or 1.0)
                overload = asyncio.run(
                    open_loop(server["port"], server["path"], server["bodies"], rate, args.overload_seconds)
                )
                print(
                    f"[{name}] overload at {rate:.0f} req/s: {overload['ok']} ok, "
                    f"{overload['rejected_503']} rejected, {overload['lost']} lost, "
                    f"reject p99 {overload['p99_ms_reject']} ms",
                    flush=True,
                )
            results[name] = {
                "status": "ok",
                "name": TITLES[name],
                "created": now_iso(),
                "startup_seconds": server["startup"],
                "c1": _combined(phases[name]["c1"]),
                "c32": c32,
                "overload": overload,
            }
        if "onnx_int8" in live and "hf_pipeline" in live:
            per_round = [
                a["rps"] / b["rps"]
                for a, b in zip(phases["onnx_int8"]["c32"], phases["hf_pipeline"]["c32"], strict=True)
                if a["rps"] and b["rps"]
            ]
            med = median(per_round)
            results["ratio_int8_vs_hf_pipeline"] = {
                "per_round": per_round,
                "median": med,
                "spread": (max(per_round) - min(per_round)) / med if med else None,
            }
    finally:
        for name, server in servers.items():
            code = stop(server["proc"])
            if isinstance(results.get(name), dict):
                results[name]["exit_code_after_sigterm"] = code
    return results


# --- parent --------------------------------------------------------------------------------------


def summarise(results: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    def get(name: str, part: str, key: str) -> float | None:
        entry = results.get(name) or {}
        value = (entry.get(part) or {}).get(key) if entry.get("status") == "ok" else None
        return float(value) if isinstance(value, (int, float)) else None

    int8 = (model.get("export") or {}).get("int8") or {}
    overload = (results.get("onnx_int8") or {}).get("overload") or {}
    rps_int8, rps_hf = get("onnx_int8", "c32", "rps"), get("hf_pipeline", "c32", "rps")
    paired = results.get("ratio_int8_vs_hf_pipeline") or {}
    return {
        "p50_ms_c1_int8": get("onnx_int8", "c1", "p50_ms"),
        "p99_ms_c1_int8": get("onnx_int8", "c1", "p99_ms"),
        "rps_c32_int8": rps_int8,
        "p99_ms_c32_int8": get("onnx_int8", "c32", "p99_ms"),
        "rps_c32_fp32": get("onnx_fp32", "c32", "rps"),
        "rps_c32_torch": get("torch", "c32", "rps"),
        "rps_c32_hf_pipeline": rps_hf,
        "p50_ms_c1_hf_pipeline": get("hf_pipeline", "c1", "p50_ms"),
        # The median of the per-round ratios (each round drives both servers at one moment).
        "throughput_ratio_vs_hf_pipeline": paired.get("median"),
        "throughput_ratio_spread": paired.get("spread"),
        "p50_ms_c1_int8_pooled": get("onnx_int8", "c1", "p50_ms_pooled"),
        "p99_ms_c1_int8_pooled": get("onnx_int8", "c1", "p99_ms_pooled"),
        "throughput_ratio_torch_backend_vs_hf_pipeline": ratio(get("torch", "c32", "rps"), rps_hf),
        "int8_accuracy_drop_points": int8.get("accuracy_drop_points"),
        "accuracy_fp32": int8.get("accuracy_fp32"),
        "accuracy_int8": int8.get("accuracy_int8"),
        "overload_lost_requests": overload.get("lost"),
        "overload_p99_reject_ms": overload.get("p99_ms_reject"),
        "overload_rejected_503": overload.get("rejected_503"),
        "overload_requests": overload.get("requests"),
    }


def table(results: dict[str, Any]) -> str:
    rows = []
    for name in CONTENDERS:
        entry = results.get(name)
        if entry is None:
            continue
        if entry.get("status") != "ok":
            rows.append({"name": name, "p50": entry.get("status", "not run")})
            continue
        c1, c32 = entry["c1"], entry["c32"]
        rows.append(
            {
                "name": name,
                "p50": c1["p50_ms"],
                "p99": c1["p99_ms"],
                "rps": c32["rps"],
                "p99_32": c32["p99_ms"],
                "errors": c1["errors"] + c32["errors"] + sum(v for k, v in c32["statuses"].items() if k != "200"),
            }
        )
    columns = [
        ("name", "contender", ""),
        ("p50", "p50 ms c1", ".2f"),
        ("p99", "p99 ms c1", ".2f"),
        ("rps", "req/s c32", ".1f"),
        ("p99_32", "p99 ms c32", ".1f"),
        ("errors", "errors", "d"),
    ]
    return format_table(rows, columns)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "serving.json")
    p.add_argument("--threads", type=int, default=default_threads(), help="Compute threads of every server.")
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--retrain", action="store_true", help="Fine-tune again even if a model is in bench/_work.")
    p.add_argument("--requests-c1", type=int, default=1500, help="Concurrency-1 requests, over all rounds.")
    p.add_argument("--requests-c32", type=int, default=3000, help="Concurrency-32 requests, over all rounds.")
    p.add_argument("--seconds", type=float, default=90.0, help="Time limit of each load phase, over all rounds.")
    p.add_argument("--rounds", type=int, default=3, help="Interleaved rounds (at least 1).")
    p.add_argument("--overload-seconds", type=float, default=5.0)
    p.add_argument("--skip-overload", action="store_true")
    p.add_argument("--only", type=lambda s: [x for x in s.split(",") if x], default=list(CONTENDERS))
    # internal modes
    p.add_argument("--stage", choices=["train"], help=argparse.SUPPRESS)
    p.add_argument("--hf-server", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.hf_server:
        hf_server(args.hf_server, args.port, args.threads)
        return 0
    if args.stage == "train":
        write_json(args.result, train_stage(WORK, args.epochs, args.threads))
        return 0

    WORK.mkdir(parents=True, exist_ok=True)
    model_info = WORK / "model_info.json"
    settings_now = {"epochs": args.epochs, "lr": LR, "batch_size": BATCH_SIZE, "max_length": MAX_LENGTH, "seed": SEED}
    model: dict[str, Any] = json.loads(model_info.read_text()) if model_info.is_file() else {}
    if args.retrain or model.get("settings") != settings_now or not (WORK / "model" / "onnx").is_dir():
        print(f"[train] fine-tuning MiniLM on Rotten Tomatoes ({args.epochs} epochs) and exporting ...", flush=True)
        cmd = [sys.executable, __file__, "--stage", "train", "--result", str(model_info)]
        cmd += ["--epochs", str(args.epochs), "--threads", str(args.threads)]
        subprocess.run(cmd, env=child_env(args.threads), check=True)
        model = json.loads(model_info.read_text())
    int8 = model["export"]["int8"]
    print(
        f"[model] test accuracy fp32 {int8['accuracy_fp32']:.4f}, int8 {int8['accuracy_int8']:.4f} "
        f"({int8['accuracy_drop_points']:.2f} points)",
        flush=True,
    )
    import pandas as pd

    texts = pd.read_csv(WORK / "test.csv")["text"].astype(str).tolist()
    print(f"[servers] starting {', '.join(args.only)}; {args.rounds} interleaved rounds", flush=True)
    results = measure(args.only, WORK, texts, args)
    summary = summarise(results, model)
    checks = check_targets(summary, TARGETS)
    settings = {
        **settings_now,
        "dataset": "rotten_tomatoes_split(seed=0) test reviews as requests",
        "threads": args.threads,
        "rounds": args.rounds,
        "requests_c1": args.requests_c1,
        "requests_c32": args.requests_c32,
        "seconds_limit": args.seconds,
        "overload": "open loop at 4x the int8 server's c32 throughput",
        "overload_seconds": args.overload_seconds,
        "server": "tunesmith serve defaults (max_batch_size 32, max_wait_ms 2, max_queue 256)",
        "load_generator": "asyncio HTTP/1.1 keep-alive clients in the parent process, same machine",
    }
    path = write_results(
        args.out,
        benchmark=BENCHMARK,
        environment=environment_info(args.threads),
        settings=settings,
        results={"model": model, **results, "targets_met": checks},
        summary=summary,
    )
    print()
    print(table(results))
    print()
    print_summary(summary, TARGETS, checks, digits=3)
    print(f"results written to {path}")
    return 0 if all((results.get(name) or {}).get("status") == "ok" for name in args.only) else 1


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
