"""Trust-boundary benchmark: every tampered folder of tests/tamper.py through every entry that loads it.

Stages:

1. Build the corpus (in a child process: this parent never imports torch): one good folder
   of every kind (text full and head-only, ONNX export, image, tabular, tabular with a text
   column, recommender, adapter store) fitted with tiny models, and the tampered copies.
2. Load every good folder through every entry (``python``, ``predict``, ``evaluate``,
   ``serve``, ``personalize``), each in a fresh process: the reference memory and time.
3. Load every tampered case through every entry that applies, each in a fresh process fed
   "y" on stdin, watching the corpus's ``outside/`` folder with inotify; then hot-reload
   every case into a server of its kind started with the good folder and an admin token.
4. Run the schemathesis API tests (``tests/serve/test_fuzz.py``) and count their failures.

Run with ``python bench/trust.py`` (or ``make bench-trust``); results go to
``bench/results/trust.json``. ``--cases`` and ``--entries`` narrow a run while developing.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.tamper import (
    ENTRIES,
    KILL_MARGIN_S,
    ROOT,
    TIMEOUT_S,
    Case,
    Corpus,
    Outcome,
    child_env,
    load_corpus,
    run_case,
    run_reloads,
)

from _common import (
    BENCH_DIR,
    RESULTS_DIR,
    check_targets,
    default_threads,
    environment_info,
    format_table,
    now_iso,
    print_summary,
    write_results,
)

BENCHMARK = "trust"
WORK = BENCH_DIR / "_work" / "trust"
FUZZ_TESTS = ROOT / "tests" / "serve" / "test_fuzz.py"
TARGETS = {
    "tampered_not_refused": ("<=", 0),
    "code_executed": ("<=", 0),
    "outside_reads": ("<=", 0),
    "outside_writes": ("<=", 0),
    "outside_served": ("<=", 0),
    "cli_tracebacks": ("<=", 0),
    "process_aborts": ("<=", 0),
    "hangs": ("<=", 0),
    "schemathesis_failures": ("<=", 0),
    "max_rss_ratio": ("<=", 1.5),
    "max_seconds": ("<=", TIMEOUT_S),
}


def build(work: Path) -> Corpus:
    """Fit the good folders and derive the cases, in a child process."""
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.tamper import main; main([{str(work)!r}])"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, check=False, cwd=ROOT
    )
    if proc.returncode != 0:
        sys.exit(f"building the corpus failed:\n{proc.stderr[-3000:]}")
    return load_corpus(work)


def run_fuzz() -> dict[str, Any]:
    """``pytest tests/serve/test_fuzz.py``: schemathesis against the served OpenAPI of a tiny model."""
    if not FUZZ_TESTS.is_file():
        return {"status": "absent", "failures": None, "detail": f"{FUZZ_TESTS.relative_to(ROOT)} does not exist yet"}
    report = WORK.parent / "trust-fuzz-junit.xml"
    report.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(FUZZ_TESTS), "-q", "-p", "no:cacheprovider", f"--junitxml={report}"],
        env=child_env(),
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=1800,
    )
    seconds = time.perf_counter() - started
    tail = (proc.stdout + proc.stderr)[-3000:]
    if not report.is_file():
        return {"status": "error", "failures": None, "returncode": proc.returncode, "log_tail": tail}
    suite = ET.parse(report).getroot()
    suites = [suite] if suite.tag == "testsuite" else list(suite.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = [
        f"{case.get('name')}: {(child.get('message') or '').splitlines()[0][:200] if child.get('message') else ''}"
        for case in suite.iter("testcase")
        for child in case
        if child.tag in ("failure", "error")
    ]
    return {
        "status": "ok" if proc.returncode == 0 else "failed",
        "failures": counts["failures"] + counts["errors"],
        **counts,
        "failed": failed[:20],
        "seconds": round(seconds, 1),
        "returncode": proc.returncode,
        "log_tail": tail if proc.returncode else "",
    }


def _applies(case: Case, entry: str, entries: set[str]) -> bool:
    return entry in case.entries and entry in entries and entry != "reload"


def _relative(obj: Any, work: Path) -> Any:
    """``obj`` with the corpus folder and the repository written as ``<corpus>`` and ``<repo>``.

    The result file is committed: it should say what happened, not where on whose machine.
    """
    if isinstance(obj, str):
        return obj.replace(str(Path(work).resolve()), "<corpus>").replace(str(ROOT), "<repo>")
    if isinstance(obj, dict):
        return {k: _relative(v, work) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_relative(v, work) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=WORK, help="Where the corpus is built.")
    parser.add_argument("--cases", default="", help="Regular expression: only cases whose name matches.")
    parser.add_argument("--entries", default=",".join(ENTRIES), help="Comma-separated entries to run.")
    parser.add_argument("--no-fuzz", action="store_true", help="Skip the schemathesis API tests.")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "trust.json")
    args = parser.parse_args(argv)
    entries = {e.strip() for e in args.entries.split(",") if e.strip()}
    started = time.perf_counter()

    print(f"building the corpus in {args.work} ...", flush=True)
    corpus = build(args.work)
    pattern = re.compile(args.cases) if args.cases else None
    cases = [c for c in corpus.cases if pattern is None or pattern.search(c.name)]
    print(f"{len(corpus.cases)} cases ({len(cases)} selected), built in {corpus.build_seconds:.1f}s", flush=True)

    # --- good folders: the reference --------------------------------------------------------
    reference: dict[tuple[str, str], Outcome] = {}
    kinds = {c.kind for c in cases}
    for kind, good in corpus.good.items():
        if kind not in kinds:
            continue
        for entry in good.entries:
            if not _applies(good, entry, entries):
                continue
            out = run_case(good, entry, corpus)
            reference[(kind, entry)] = out
            state = "loaded" if out.loaded else f"FAILED: {out.error}"
            print(
                f"  good {kind:13s} {entry:11s} {out.max_rss_mb or 0:7.0f} MB {out.seconds:5.1f}s  {state}", flush=True
            )

    # --- tampered cases ----------------------------------------------------------------------
    outcomes: list[Outcome] = []
    for case in cases:
        for entry in case.entries:
            if not _applies(case, entry, entries):
                continue
            out = run_case(case, entry, corpus)
            _relate(out, reference.get((case.kind, entry)))
            outcomes.append(out)
            _print_progress(out)
    if "reload" in entries:
        goods = [corpus.good[k] for k in sorted(kinds) if "reload" in corpus.good[k].entries]
        reloads = run_reloads([*goods, *cases], corpus)
        for out in reloads:
            if out.category == "good":
                reference[(out.kind, "reload")] = out
                state = "reloaded" if out.loaded else f"FAILED: {out.error}"
                print(f"  good {out.kind:13s} reload      {out.max_rss_mb or 0:7.0f} MB {out.seconds:5.1f}s  {state}")
        for out in reloads:
            if out.category != "good":
                _relate(out, reference.get((out.kind, "reload")), wall_is_load=True)
                outcomes.append(out)
                _print_progress(out)

    fuzz = {"status": "skipped", "failures": None} if args.no_fuzz else run_fuzz()
    summary = summarise(outcomes, reference, fuzz)
    results: dict[str, Any] = {f"{o.case}.{o.entry}": {"status": "ok", **o.to_dict()} for o in outcomes}
    results["_good"] = {f"{k}.{e}": o.to_dict() for (k, e), o in reference.items()}
    results["_schemathesis"] = fuzz
    results["_cases"] = [c.to_dict() for c in corpus.cases]
    settings = {
        "timeout_s": TIMEOUT_S,
        "kill_after_s": TIMEOUT_S + KILL_MARGIN_S,
        "entries": sorted(entries),
        "cases": args.cases or "all",
        "corpus": str(args.work),
        "build_seconds": round(corpus.build_seconds, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "created": now_iso(),
    }
    path = write_results(
        args.out,
        benchmark=BENCHMARK,
        environment=environment_info(default_threads()),
        settings=_relative(settings, args.work),
        results=_relative(results, args.work),
        summary=summary,
    )
    print()
    print(table(outcomes))
    print()
    print(
        format_table(
            [{"entry": e, **v} for e, v in summary["rss_by_entry"].items()],
            [
                ("entry", "entry", ""),
                ("good_mb", "good MB", ".0f"),
                ("max_tampered_mb", "max tampered MB", ".0f"),
                ("ratio", "ratio", ".2f"),
                ("worst_case", "worst case", ""),
            ],
        )
    )
    print()
    shown = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
    print_summary(shown, TARGETS, check_targets(shown, TARGETS))
    print(f"\nwrote {path}")


def _relate(out: Outcome, good: Outcome | None, *, wall_is_load: bool = False) -> None:
    """Time beyond the good folder's through the same entry (the child's imports cancel out)."""
    if out.load_seconds is not None or good is None:
        return
    if wall_is_load:
        out.excess_seconds = round(out.seconds, 2)
    else:
        out.excess_seconds = round(max(0.0, out.seconds - good.seconds), 2)


def _print_progress(out: Outcome) -> None:
    verdict = "ok" if out.ok else "FAIL " + ", ".join(out.failures)
    print(f"  {out.case:38s} {out.entry:11s} {out.seconds:5.1f}s  {verdict}", flush=True)


def _seconds(out: Outcome) -> float:
    if out.load_seconds is not None:
        return out.load_seconds
    if out.excess_seconds is not None:
        return out.excess_seconds
    return out.seconds


def summarise(outcomes: list[Outcome], reference: dict[tuple[str, str], Outcome], fuzz: dict[str, Any]) -> dict:
    cli = [o for o in outcomes if o.entry not in ("python", "reload")]
    rss_by_entry: dict[str, dict[str, Any]] = {}
    worst_ratio: float | None = None
    for o in outcomes:
        good = reference.get((o.kind, o.entry))
        if o.max_rss_mb is None or good is None or not good.max_rss_mb:
            continue
        ratio = o.max_rss_mb / good.max_rss_mb
        cur = rss_by_entry.get(o.entry)
        if cur is None or ratio > cur["ratio"]:
            rss_by_entry[o.entry] = {
                "good_mb": good.max_rss_mb,
                "max_tampered_mb": o.max_rss_mb,
                "ratio": round(ratio, 3),
                "worst_case": o.case,
            }
        worst_ratio = ratio if worst_ratio is None else max(worst_ratio, ratio)
    failing = sorted({o.case for o in outcomes if not o.ok})
    return {
        "tampered_total": len(outcomes),
        "tampered_refused": sum(o.refused for o in outcomes),
        "tampered_not_refused": sum(not o.refused for o in outcomes),
        "cases_total": len({o.case for o in outcomes}),
        "cases_failing": len(failing),
        "code_executed": sum(o.code_executed for o in outcomes),
        "outside_reads": sum(o.outside_reads for o in outcomes),
        "outside_writes": sum(o.outside_writes for o in outcomes),
        "outside_served": sum(o.outside_served for o in outcomes),
        "cli_tracebacks": sum(o.traceback for o in cli),
        "tracebacks_all_entries": sum(o.traceback for o in outcomes),
        "process_aborts": sum(o.process_abort for o in outcomes),
        "hangs": sum(o.timed_out for o in outcomes),
        "schemathesis_failures": fuzz.get("failures"),
        "schemathesis_status": fuzz.get("status"),
        "max_rss_mb": max((o.max_rss_mb or 0.0 for o in outcomes), default=None),
        "max_rss_ratio": round(worst_ratio, 3) if worst_ratio is not None else None,
        "max_seconds": round(max((_seconds(o) for o in outcomes), default=0.0), 2),
        "max_wall_seconds": round(max((o.seconds for o in outcomes), default=0.0), 2),
        "rss_by_entry": rss_by_entry,
        "failing_cases": failing,
    }


def table(outcomes: list[Outcome]) -> str:
    rows = []
    for o in outcomes:
        rows.append(
            {
                "case": o.case,
                "entry": o.entry,
                "refused": "yes" if o.refused else "NO",
                "code": "RAN" if o.code_executed else "-",
                "reads": o.outside_reads or "-",
                "writes": (o.outside_writes or len(o.outside_changed)) or "-",
                "tb": "TB" if o.traceback else "-",
                "abort": "ABORT" if o.process_abort else "-",
                "rss": o.max_rss_mb,
                "s": _seconds(o),
                "verdict": "ok" if o.ok else "; ".join(o.failures) + (f" | {o.error[:90]}" if o.error else ""),
            }
        )
    return format_table(
        rows,
        [
            ("case", "case", ""),
            ("entry", "entry", ""),
            ("refused", "refused", ""),
            ("code", "code", ""),
            ("reads", "reads", ""),
            ("writes", "writes", ""),
            ("tb", "tb", ""),
            ("abort", "abort", ""),
            ("rss", "RSS MB", ".0f"),
            ("s", "s", ".1f"),
            ("verdict", "verdict", ""),
        ],
    )


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
