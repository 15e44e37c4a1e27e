"""Benchmark: reliability. Resume after SIGKILL, fuzzed readers and server, a 10-minute soak.

Parts (each can run alone with ``--only``; the others keep their last figures in the JSON):

* ``resume`` (:mod:`_reliability_resume`): for text (MiniLM), image (EfficientNet-Lite0) and
  tabular (the neural net), a fit killed twice with SIGKILL at seeded random moments and resumed
  with ``tunesmith fit --resume`` against the same fit never stopped: are the final weights
  bit-identical?
* ``fuzz`` (:mod:`_reliability_fuzz`): 10,000 mutated files (CSV, TSV, gzip CSV, JSONL, JSON,
  Parquet, image folders) through the readers, counting anything but a clean typed error or a
  fully counted read; then schemathesis against the OpenAPI document of a served tiny model,
  counting 5xx answers and schema violations.
* ``soak`` (:mod:`_reliability_soak`): ``tunesmith serve`` with 2 workers held at about 70% of
  its measured capacity for 10 minutes; memory growth, p99 drift, failed requests, and a worker
  killed mid-run (SIGTERM, then SIGKILL) replaced.

Summary (bench/results/reliability.json): ``resume_bit_identical`` (per kind),
``fuzz_cases_readers``, ``fuzz_tracebacks_readers``, ``schemathesis_server_errors``,
``schemathesis_schema_violations``, ``soak_rss_growth_fraction``, ``soak_failed_requests`` and
the soak's other figures.

Usage::

    python bench/reliability.py                       # about 25 minutes on 2 cores
    python bench/reliability.py --only fuzz --cases 500 --out /tmp/reliability.json   # smoke test
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from _common import RESULTS_DIR, default_threads, environment_info, write_results

BENCHMARK = "reliability"
DEFAULT_OUT = RESULTS_DIR / f"{BENCHMARK}.json"
PARTS = ("resume", "fuzz", "soak")
TARGETS = {
    "fuzz_cases_readers": ">= 10000",
    "fuzz_tracebacks_readers": "0",
    "schemathesis_server_errors": "0",
    "soak_rss_growth_fraction": "<= 0.05",
    "soak_failed_requests": "0",
    "resume_bit_identical": "true for text, image and tabular",
}


def _part(name: str, args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    if name == "resume":
        import _reliability_resume

        out: dict[str, Any] = _reliability_resume.run(seed=args.seed)
        summary = {"resume_bit_identical": out["resume_bit_identical"]}
    elif name == "fuzz":
        import _reliability_fuzz

        readers = _reliability_fuzz.run_readers(args.cases, seed=args.seed)
        api = _reliability_fuzz.run_api(args.api_examples, seed=args.seed)
        out = {"readers": readers, "api": api}
        summary = {
            "fuzz_cases_readers": readers["fuzz_cases_readers"],
            "fuzz_tracebacks_readers": readers["fuzz_tracebacks_readers"],
            "schemathesis_cases": api["schemathesis_cases"],
            "schemathesis_server_errors": api["schemathesis_server_errors"],
            "schemathesis_schema_violations": api["schemathesis_schema_violations"],
        }
    else:
        import _reliability_soak

        out = _reliability_soak.run(minutes=args.minutes, workers=2, seed=args.seed)
        summary = {k: v for k, v in out.get("summary", out).items() if k.startswith("soak_")}
    out["seconds"] = round(time.perf_counter() - started, 1)
    return {"results": out, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts: " + ", ".join(PARTS))
    parser.add_argument("--cases", type=int, default=10000, help="mutated files through the readers")
    parser.add_argument("--api-examples", type=int, default=100, help="schemathesis examples per operation")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    parts = [p for p in args.only.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {sorted(unknown)}; choose from {', '.join(PARTS)}")
    previous: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    results = dict(previous.get("results") or {})
    summary = dict(previous.get("summary") or {})
    for name in parts:
        print(f"--- {name}", flush=True)
        got = _part(name, args)
        results[name] = got["results"]
        summary.update(got["summary"])
        # Written after every part, so a long run keeps what it measured.
        write_results(
            args.out,
            benchmark=BENCHMARK,
            environment=environment_info(default_threads()),
            settings={
                "cases": args.cases,
                "api_examples": args.api_examples,
                "minutes": args.minutes,
                "seed": args.seed,
            },
            results=results,
            summary={**summary, "targets": TARGETS},
        )
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
