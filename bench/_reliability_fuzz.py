"""The fuzzing figures of the reliability benchmark: mutated files through the data readers, and
schemathesis against a served tiny model.

:func:`run_readers` runs seeded mutation cases (the engine of ``tests/data/test_fuzz_readers.py``:
a valid CSV, TSV, gzip CSV, JSON Lines, JSON, Parquet file or image folder, 1 to 3 random
mutations, then the property: a clean typed error naming the file, or a read with every row
counted) and counts any case that breaks it as a traceback. :func:`run_api` runs schemathesis'
engine the way ``tests/serve/test_fuzz.py`` does and counts 5xx answers and responses the
document does not describe. ``python bench/_reliability_fuzz.py --cases N`` prints both.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

# The engines live in the test suite; bench scripts run with bench/ (not the repo root) on sys.path.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

_EXAMPLES_KEPT = 5


def run_readers(cases: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Run ``cases`` mutation cases over the readers, spread evenly over the formats.

    Returns ``fuzz_cases_readers``, ``fuzz_tracebacks_readers`` (cases that ended in anything
    but a clean typed error or a fully counted read), ``per_format`` (cases, reads, clean
    errors, failures and dropped-and-counted rows per format), ``examples_of_failures`` (the
    first few, short) and ``seconds``.
    """
    from tests.data.test_fuzz_readers import FORMATS, RandomChooser, check_case

    keys = ("cases", "reads", "clean_errors", "failures", "rows_dropped_and_counted")
    per_format: dict[str, Counter[str]] = {fmt: Counter(dict.fromkeys(keys, 0)) for fmt in FORMATS}
    failures: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fuzz-readers-") as scratch:
        for i in range(cases):
            fmt = FORMATS[i % len(FORMATS)]
            case_seed = seed * 1_000_003 + i
            counts = per_format[fmt]
            counts["cases"] += 1
            folder = Path(scratch) / str(i)
            folder.mkdir()
            try:
                outcome, _ = check_case(fmt, RandomChooser(case_seed), folder)
            except Exception as exc:  # FuzzFailure, or anything the engine itself tripped on
                counts["failures"] += 1
                if len(failures) < _EXAMPLES_KEPT:
                    message = str(exc).replace(str(folder), "")
                    failures.append({"format": fmt, "seed": case_seed, "problem": message[:300]})
            else:
                counts["reads" if outcome.kind == "read" else "clean_errors"] += 1
                counts["rows_dropped_and_counted"] += outcome.dropped
            finally:
                _remove(folder)
    return {
        "fuzz_cases_readers": cases,
        "fuzz_tracebacks_readers": sum(c["failures"] for c in per_format.values()),
        "per_format": {fmt: dict(c) for fmt, c in per_format.items() if c["cases"]},
        "examples_of_failures": failures,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _remove(folder: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(folder, topdown=False):
        for name in filenames:
            os.unlink(os.path.join(dirpath, name))
        for name in dirnames:
            os.rmdir(os.path.join(dirpath, name))
    folder.rmdir()


def run_api(max_examples: int, seed: int = 0) -> dict[str, Any]:
    """Run schemathesis (examples, coverage, fuzzing; every check) against a served tiny text model.

    ``max_examples`` bounds the fuzzing examples per operation; ``seed`` 0 is the test suite's
    seed. Returns ``schemathesis_server_errors`` (5xx answers), ``schemathesis_schema_violations``
    (answers the document does not describe), ``schemathesis_cases``, ``cases_per_operation``,
    ``failures`` (the first few, short) and ``seconds``.
    """
    from tests.serve._schemathesis_engine import SEED, config, fit_text_model, run, served_schema, text_settings

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fuzz-api-") as scratch:
        model = fit_text_model(Path(scratch))
        run_config = config(max_examples=max_examples, seed=seed or SEED)
        with served_schema(model, text_settings(), run_config) as schema:
            result = run(schema)
    return {
        "schemathesis_server_errors": result.server_errors,
        "schemathesis_schema_violations": result.schema_violations,
        "schemathesis_cases": sum(result.cases.values()),
        "cases_per_operation": dict(result.cases),
        "failed_checks": dict(result.failed_checks),
        "failures": [f[:500] for f in result.failures[:_EXAMPLES_KEPT]],
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> None:
    """Print the readers' and (unless ``--no-api``) the API's figures as tables."""
    from _common import format_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cases", type=int, default=10000, help="mutation cases over the readers")
    parser.add_argument("--api-examples", type=int, default=40, help="schemathesis examples per operation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-api", action="store_true", help="skip the schemathesis run")
    args = parser.parse_args(argv)
    readers = run_readers(args.cases, args.seed)
    rows = [{"format": fmt, **counts} for fmt, counts in readers["per_format"].items()]
    columns = [
        ("format", "format", ""),
        ("cases", "cases", "d"),
        ("reads", "reads", "d"),
        ("clean_errors", "clean errors", "d"),
        ("rows_dropped_and_counted", "dropped (counted)", "d"),
        ("failures", "tracebacks", "d"),
    ]
    print(format_table(rows, columns))
    print(
        f"readers: {readers['fuzz_cases_readers']} cases, {readers['fuzz_tracebacks_readers']} tracebacks, "
        f"{readers['seconds']} s"
    )
    for failure in readers["examples_of_failures"]:
        print(f"  {failure}")
    if not args.no_api:
        api = run_api(args.api_examples, args.seed)
        print(
            f"api: {api['schemathesis_cases']} cases, {api['schemathesis_server_errors']} server errors, "
            f"{api['schemathesis_schema_violations']} schema violations, {api['seconds']} s"
        )
        for failure in api["failures"]:
            print(f"  {failure}")


if __name__ == "__main__":
    main()
