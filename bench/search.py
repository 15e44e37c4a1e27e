"""Benchmark: search across processes and machines, and a search whose choices matter.

Three parts, each run in fresh child processes (``--only`` picks some):

* ``speedup``: the same study (a fixed number of trials of a small all-MiniLM-L6-v2 fine-tune,
  one strategy and a fixed amount of work per trial, journal file storage) run with
  ``workers=1`` and ``workers=2``, in interleaved rounds (``_common.interleaved``).
  ``parallel_speedup_2_workers`` is the median per-round ratio of their trials per
  wall-clock second of ``tune()`` (spawning the workers and their imports included). The
  tuner gives each worker cores / workers threads: ``workers=1`` trains on 2 threads,
  ``workers=2`` on 1 thread each. A third contender, one worker pinned to 1 thread, shows how
  much of the gain is the second core and how much is what one process leaves idle.
* ``postgres``: a 2-worker study through a PostgreSQL server that the benchmark starts and
  stops itself (the test suite's starter, tests/search/_postgres.py);
  ``postgres_trials_completed`` counts the complete trials read back from the database.
* ``search``: search the transfer-learning strategy (full fine-tune, LoRA adapters or the
  head alone), learning rate, frozen layers (full) and LoRA rank (lora) of real
  all-MiniLM-L6-v2 fine-tuning on the Rotten Tomatoes reviews, with successive-halving
  pruning at epoch ends, each trial scored by validation macro F1. Compute is counted in
  examples processed in training (example-epochs, pruned trials' partial runs included):
  each search gets the compute of 3 default fits on the final training subset, spent on a
  smaller search subsample so that it runs many trials. The best settings of each search
  (chosen on validation) are refitted on the final training subset and scored once on the
  test split, beside the default settings fitted on the same rows. TPE (5 random start-up
  trials) and random search each run with 3 seeds at that equal compute.

Summary (bench/results/search.json): ``parallel_speedup_2_workers`` (target >= 1.6),
``postgres_trials_completed``, ``best_vs_default_points`` (test accuracy of the refitted best
TPE settings minus the default settings, percentage points, mean over seeds; target >= 1.0),
``tpe_vs_random_equal_compute_points`` (TPE's refitted best minus random search's, test
accuracy, mean over seeds, with the per-seed values and their spread; target > 0), and the
validation scores that chose them. The test split is never used to choose anything.

The old benchmark (TPE vs random on a head-only problem over frozen features) is dropped: every
sampler landed within noise there, which is what this one replaces.

Usage::

    python bench/search.py                                   # about 30 minutes on 2 cores
    python bench/search.py --only speedup,postgres
    python bench/search.py --smoke --out /tmp/search.json    # a few minutes, tiny sizes
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    BENCH_DIR,
    RESULTS_DIR,
    default_threads,
    environment_info,
    format_table,
    interleaved,
    now_iso,
    read_results,
    run_child,
    write_results,
)

BENCHMARK = "search"
DEFAULT_OUT = RESULTS_DIR / f"{BENCHMARK}.json"
PARTS = ("speedup", "postgres", "search")
SEED = 0
# The search space: the strategy, and what each strategy makes matter.
SPACE: dict[str, Any] = {
    "strategy": {"type": "categorical", "choices": ["full", "lora", "head_only"]},
    "lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
    "freeze_layers": {"type": "int", "low": 0, "high": 5, "when": {"strategy": ["full"]}},
    "lora_r": {"type": "int", "low": 4, "high": 32, "log": True, "when": {"strategy": ["lora"]}},
}
# Every fit of the search part; the default settings are these and nothing else.
BASE: dict[str, Any] = {
    "backbone": "minilm-l6",
    "test_size": 0.0,
    "baselines": False,
    "runs_dir": None,
    "progress": False,
    "seed": SEED,
}
# The speed-up study: one strategy and a fixed amount of work per trial, so that every trial costs the same.
SPEED_BASE: dict[str, Any] = {**BASE, "strategy": "full", "epochs": 1, "early_stopping": False}
SPEED_SPACE: dict[str, Any] = {"lr": {"type": "float", "low": 2e-5, "high": 2e-4, "log": True}}
SIZES = {
    # final training subset, search subsample, validation rows, speed-up rows per trial, speed-up trials
    "full": {"final": 800, "search": 200, "valid": 300, "speed_rows": 320, "speed_trials": 8, "rounds": 2},
    "smoke": {"final": 120, "search": 60, "valid": 80, "speed_rows": 48, "speed_trials": 4, "rounds": 1},
}


def _postgres_module() -> Any:
    """tests/search/_postgres.py, loaded by path: another installed package may own the name ``tests``."""
    path = BENCH_DIR.parent / "tests" / "search" / "_postgres.py"
    spec = importlib.util.spec_from_file_location("_tunesmith_postgres", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_data(sizes: dict[str, int]) -> dict[str, Any]:
    """The fixed split; stratified subsamples for the final fits, the search, and validation."""
    from sklearn.model_selection import train_test_split

    from tunesmith.datasets import rotten_tomatoes_split

    train, valid, test = (part[["text", "label"]] for part in rotten_tomatoes_split(seed=SEED))

    def sample(frame: Any, n: int) -> Any:
        if n >= len(frame):
            return frame
        part, _ = train_test_split(frame, train_size=n, stratify=frame["label"], random_state=SEED)
        return part.reset_index(drop=True)

    final = sample(train, sizes["final"])
    # The search sees a part of the final training rows, never other ones.
    search = sample(final, sizes["search"])
    return {"final": final, "search": search, "valid": sample(valid, sizes["valid"]), "test": test}


# --- children -------------------------------------------------------------------------------------


def child_speedup(args: argparse.Namespace) -> dict[str, Any]:
    """One run of the speed-up study: ``--workers`` processes, a fresh journal, a fixed number of trials."""
    from tunesmith.search.tuner import tune

    sizes = SIZES[args.size]
    data = load_data({**sizes, "final": sizes["speed_rows"], "search": sizes["speed_rows"], "valid": 64})
    base = {**SPEED_BASE, **({"num_threads": args.pin_threads} if args.pin_threads else {})}
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        started = time.perf_counter()
        result = tune(
            data["search"], "label", base_params=base, space=SPEED_SPACE, n_trials=sizes["speed_trials"],
            sampler="random", pruner="none", eval_set=data["valid"], text_column="text",
            storage=Path(tmp) / "study.journal", workers=args.workers, seed=SEED, progress=False,
        )  # fmt: skip
        seconds = time.perf_counter() - started
    finished = [t for t in result.trials if t["state"] == "COMPLETE"]
    return {
        "workers": args.workers,
        "trials": len(finished),
        "failed": result.count("FAIL"),
        "seconds": seconds,
        "trial_seconds": [t["seconds"] for t in finished],
        "threads_per_trial": sorted({t["threads"] for t in finished}),
        "worker_processes": len({t["worker"] for t in finished}),
    }


def child_postgres(args: argparse.Namespace) -> dict[str, Any]:
    """A 2-worker study through a PostgreSQL server started (and stopped) here."""
    import optuna

    from tunesmith.search.study import database_url
    from tunesmith.search.tuner import tune

    pg = _postgres_module()
    sizes = SIZES[args.size]
    data = load_data({**sizes, "final": sizes["speed_rows"], "search": sizes["speed_rows"], "valid": 64})
    n_trials = 6 if args.size == "full" else 4
    started = time.perf_counter()
    with pg.PostgresServer() as server:
        server_seconds = time.perf_counter() - started
        url = server.create_database("bench")
        result = tune(
            data["search"], "label", base_params=SPEED_BASE, space=SPEED_SPACE, n_trials=n_trials, sampler="tpe",
            pruner="none", eval_set=data["valid"], text_column="text", storage=url, study_name="bench",
            workers=2, seed=SEED, progress=False,
        )  # fmt: skip
        study = optuna.load_study(study_name="bench", storage=database_url(url))
        stored = study.get_trials(deepcopy=False)
        version = server.execute("SHOW server_version")[0][0]
    return {
        "n_trials": n_trials,
        "trials_in_database": len(stored),
        "trials_completed": sum(t.state == optuna.trial.TrialState.COMPLETE for t in stored),
        "trials_failed": sum(t.state == optuna.trial.TrialState.FAIL for t in stored),
        "worker_processes": len({t.user_attrs.get("worker") for t in stored}),
        "server_version": version,
        "server_start_seconds": server_seconds,
        "seconds": time.perf_counter() - started,
        "storage": "postgresql://postgres@127.0.0.1:PORT/bench",
        "result_matches_database": [t["number"] for t in result.trials] == [t.number for t in stored],
    }


def _final_fit(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """``params`` fitted on the final training rows (early stopping on validation); its scores."""
    from tunesmith import FineTuner
    from tunesmith.train.callbacks import Callback

    class EpochCounter(Callback):
        """Counts the epochs the fit trained (early stopping may end it before ``epochs``)."""

        def __init__(self) -> None:
            self.epochs = 0

        def on_epoch_end(self, state: Any, metrics: dict[str, Any]) -> None:
            self.epochs += 1

    counter = EpochCounter()
    started = time.perf_counter()
    est = FineTuner(**{**BASE, **params})
    est.fit(data["final"], target="label", text_column="text", eval_set=data["valid"], callbacks=[counter])
    valid = est.evaluate(data["valid"], target="label")
    test = est.evaluate(data["test"], target="label")
    return {
        "params": params,
        "epochs": counter.epochs,
        "example_epochs": counter.epochs * len(data["final"]),
        "valid_accuracy": float(valid["accuracy"]),
        "valid_f1_macro": float(valid["f1_macro"]),
        "test_accuracy": float(test["accuracy"]),
        "seconds": time.perf_counter() - started,
    }


def child_search(args: argparse.Namespace) -> dict[str, Any]:
    """Default fit, then TPE and random search at equal compute for each seed, each best refitted."""
    import torch

    from tunesmith.search.tuner import tune

    torch.set_num_threads(args.threads)
    sizes = SIZES[args.size]
    data = load_data(sizes)
    print(f"[default] fit on {len(data['final'])} rows ...", flush=True)
    default = _final_fit(data, {})
    budget_examples = 3 * default["example_epochs"]
    epoch_budget = max(1, budget_examples // len(data["search"]))
    print(f"[default] test accuracy {default['test_accuracy']:.4f}; search budget {epoch_budget} epochs", flush=True)
    refits: dict[str, dict[str, Any]] = {}
    searches: dict[str, Any] = {}
    for seed in range(args.seeds):
        for sampler in ("tpe", "random"):
            name = f"{sampler}_seed{seed}"
            started = time.perf_counter()
            result = tune(
                data["search"], "label", base_params=BASE, space=SPACE, n_trials=None, epoch_budget=epoch_budget,
                sampler=sampler, pruner="halving", startup_trials=5 if sampler == "tpe" else None,
                eval_set=data["valid"], text_column="text", study_name=name,
                # Distinct streams: TPE's random start-up trials must not replay random search's.
                seed=seed if sampler == "random" else 1000 + seed, progress=False,
            )  # fmt: skip
            key = json.dumps(result.best_params, sort_keys=True)
            if key not in refits:
                refits[key] = _final_fit(data, dict(result.best_params))
            refit = refits[key]
            searches[name] = {
                "sampler": sampler,
                "seed": seed,
                "best_valid_f1_macro": result.best_value,
                "best_params": result.best_params,
                "n_complete": result.count("COMPLETE"),
                "n_pruned": result.count("PRUNED"),
                "n_failed": result.count("FAIL"),
                "epochs_run": result.epochs_run,
                "example_epochs": result.epochs_run * len(data["search"]),
                "strategies_tried": _count(t["params"].get("strategy") for t in result.trials),
                "search_seconds": time.perf_counter() - started,
                "refit": refit,
            }
            print(
                f"[{name}] {len(result.trials)} trials ({result.count('PRUNED')} pruned), valid F1 "
                f"{result.best_value:.4f}, best {result.best_params}; refit test accuracy "
                f"{refit['test_accuracy']:.4f}",
                flush=True,
            )
    return {
        "sizes": {k: len(v) for k, v in data.items()},
        "default": default,
        "budget_example_epochs": budget_examples,
        "epoch_budget": epoch_budget,
        "searches": searches,
    }


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return out


# --- parent ---------------------------------------------------------------------------------------


def _child_args(args: argparse.Namespace, *extra: str) -> list[str]:
    return ["--size", args.size, "--seeds", str(args.seeds), "--threads", str(args.threads), *extra]


def run_speedup(args: argparse.Namespace) -> dict[str, Any]:
    script = Path(__file__)
    runs: dict[str, list[dict[str, Any]]] = {"workers_1": [], "workers_2": [], "workers_1_pinned_1_thread": []}

    def contender(name: str, *extra: str) -> Any:
        def once() -> tuple[float, float]:
            out = run_child(script, "speedup", _child_args(args, *extra), threads=args.threads, timeout=900)
            runs[name].append(out)
            if out.get("status") != "ok":
                raise RuntimeError(f"{name} failed: {out.get('log_tail', '')[-2000:]}")
            print(f"[speedup] {name}: {out['trials']} trials in {out['seconds']:.1f} s", flush=True)
            return float(out["trials"]), float(out["seconds"])

        return once

    timing = interleaved(
        {
            "workers_1": contender("workers_1", "--workers", "1"),
            "workers_2": contender("workers_2", "--workers", "2"),
            "workers_1_pinned_1_thread": contender("workers_1_pinned_1_thread", "--workers", "1", "--pin-threads", "1"),
        },
        baseline="workers_1",
        rounds=SIZES[args.size]["rounds"],
    )
    return {"status": "ok", "timing": timing, "runs": runs}


def run_part(args: argparse.Namespace, part: str) -> dict[str, Any]:
    if part == "speedup":
        try:
            return run_speedup(args)
        except RuntimeError as exc:
            return {"status": "failed", "error": str(exc)}
    return run_child(Path(__file__), part, _child_args(args), threads=args.threads, verbose=args.verbose, timeout=3600)


def _steady_state(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Speed-up once every worker runs trials, and what starting the workers cost (medians over rounds).

    A run's trials per second of trial time, times its worker processes, is its rate with
    start-up left out; what is left of its wall time is the workers' start.
    """

    def rate(run: dict[str, Any]) -> float:
        return run["worker_processes"] * len(run["trial_seconds"]) / sum(run["trial_seconds"])

    def start(run: dict[str, Any]) -> float:
        return run["seconds"] - sum(run["trial_seconds"]) / run["worker_processes"]

    one = [r for r in runs.get("workers_1", []) if r.get("status") == "ok"]
    two = [r for r in runs.get("workers_2", []) if r.get("status") == "ok"]
    if not one or not two:
        return {}
    return {
        "parallel_speedup_2_workers_steady_state": statistics.median(rate(r) for r in two)
        / statistics.median(rate(r) for r in one),
        "workers_2_start_seconds": statistics.median(start(r) for r in two),
    }


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    speed = results.get("speedup", {})
    if speed.get("status") == "ok":
        ratios = speed["timing"]["ratios"]
        summary["parallel_speedup_2_workers"] = ratios["workers_2"]["median"]
        summary["parallel_speedup_2_workers_per_round"] = ratios["workers_2"]["per_round"]
        pinned = ratios["workers_1_pinned_1_thread"]["median"]
        summary["speedup_workers_1_2_threads_over_1_thread"] = 1 / pinned if pinned else None
        summary["parallel_speedup_2_workers_over_1_thread_worker"] = (
            ratios["workers_2"]["median"] / pinned if pinned else None
        )
        summary.update(_steady_state(speed["runs"]))
    pg = results.get("postgres", {})
    if pg.get("status") == "ok":
        summary["postgres_trials_completed"] = pg["trials_completed"]
        summary["postgres_trials_in_database"] = pg["trials_in_database"]
    search = results.get("search", {})
    if search.get("status") == "ok":
        runs = search["searches"]
        default = search["default"]
        seeds = sorted({r["seed"] for r in runs.values()})
        tpe = [runs[f"tpe_seed{s}"] for s in seeds]
        rnd = [runs[f"random_seed{s}"] for s in seeds]
        vs_default = [100 * (r["refit"]["test_accuracy"] - default["test_accuracy"]) for r in tpe]
        pairs = list(zip(tpe, rnd, strict=True))
        vs_random = [100 * (t["refit"]["test_accuracy"] - r["refit"]["test_accuracy"]) for t, r in pairs]
        summary.update(
            {
                "best_vs_default_points": statistics.mean(vs_default),
                "best_vs_default_points_per_seed": vs_default,
                "tpe_vs_random_equal_compute_points": statistics.mean(vs_random),
                "tpe_vs_random_equal_compute_points_per_seed": vs_random,
                "tpe_vs_random_spread_points": max(vs_random) - min(vs_random),
                "tpe_vs_random_std_points": statistics.stdev(vs_random) if len(vs_random) > 1 else None,
                "tpe_vs_random_valid_f1_points_per_seed": [
                    100 * (t["best_valid_f1_macro"] - r["best_valid_f1_macro"]) for t, r in pairs
                ],
                "default_test_accuracy": default["test_accuracy"],
                "default_valid_accuracy": default["valid_accuracy"],
                "tpe_refit_test_accuracy_per_seed": [r["refit"]["test_accuracy"] for r in tpe],
                "random_refit_test_accuracy_per_seed": [r["refit"]["test_accuracy"] for r in rnd],
                "tpe_refit_valid_accuracy_per_seed": [r["refit"]["valid_accuracy"] for r in tpe],
                "random_refit_valid_accuracy_per_seed": [r["refit"]["valid_accuracy"] for r in rnd],
                "tpe_best_valid_f1_per_seed": [r["best_valid_f1_macro"] for r in tpe],
                "random_best_valid_f1_per_seed": [r["best_valid_f1_macro"] for r in rnd],
                "search_budget_example_epochs": search["budget_example_epochs"],
                "search_example_epochs_per_run": {k: r["example_epochs"] for k, r in runs.items()},
                "seeds": seeds,
            }
        )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--only", default=",".join(PARTS), help=f"parts to run, comma-separated: {','.join(PARTS)}")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that everything runs")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per sampler (default 3)")
    parser.add_argument("--threads", type=int, default=default_threads(), help="cores for the benchmark")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="result JSON")
    parser.add_argument("--verbose", action="store_true", help="show the children's output")
    parser.add_argument("--note", action="append", default=[], help="a note recorded in the JSON")
    parser.add_argument(
        "--summarize-only", action="store_true", help="recompute the summary of the results in --out; run nothing"
    )
    # Children.
    parser.add_argument("--contender", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--size", choices=sorted(SIZES), default="full", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--pin-threads", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.contender:
        child = {"speedup": child_speedup, "postgres": child_postgres, "search": child_search}[args.contender]
        out = child(args)
        args.out.write_text(json.dumps({**out, "status": "ok", "created": now_iso()}), encoding="utf-8")
        return 0
    if args.summarize_only:
        return _resummarize(args.out, args.note)
    if args.smoke:
        args.size = "smoke"
        args.seeds = min(args.seeds, 2)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; use {', '.join(PARTS)}")
    started = time.perf_counter()
    # A run of some parts keeps the other parts' results of the last run in the same file.
    kept = {k: v for k, v in read_results(args.out, BENCHMARK).items() if k in PARTS and k not in parts}
    results: dict[str, Any] = dict(kept)
    for part in parts:
        print(f"[{part}] ...", flush=True)
        t0, load0 = time.perf_counter(), os.getloadavg()[0]
        results[part] = run_part(args, part)
        results[part]["part_seconds"] = time.perf_counter() - t0
        # Other work on the machine slows every contender; the load says how much there was.
        results[part]["load_average_1min"] = {"start": load0, "end": os.getloadavg()[0]}
        results[part]["finished"] = now_iso()
        if results[part].get("status") != "ok":
            print(f"[{part}] FAILED: {results[part].get('error')}\n{results[part].get('log_tail', '')}", flush=True)
    summary = summarize(results)
    settings = {
        "parts": parts,
        "parts_kept_from_last_run": sorted(kept),
        "size": args.size,
        "sizes": SIZES[args.size],
        "seeds": args.seeds,
        "threads": args.threads,
        "dataset": "rotten_tomatoes_split(seed=0): stratified subsamples of train (final fits; the search's "
        "subsample is part of it) and of valid (scoring trials, early stopping); the whole test split, reported only",
        "search_space": SPACE,
        "default_settings": "FitConfig defaults (strategy full, lr 5e-5, 3 epochs, batch 32, early stopping)",
        "base": BASE,
        "speedup_study": {"base": SPEED_BASE, "space": SPEED_SPACE, "storage": "journal file"},
        "pruner": "halving (successive halving, min_resource 1, reduction factor 3) at epoch ends",
        "threads_assignment": "workers=1: one process, 2 threads; workers=2: 2 processes, 1 thread each "
        "(cores // workers); pinned reference: workers=1 with num_threads=1",
        "notes": [
            "The machine (2 cores) is shared with other work that ran at the same time; wall times and the "
            "speed-up vary with its load, which interleaved rounds only partly cancel.",
            *args.note,
        ],
        "seconds_total": time.perf_counter() - started,
        "created": now_iso(),
    }
    path = write_results(
        args.out,
        # Only repo-relative paths in the results (a failed child's log may name machine folders).
        results=_relative(results),
        benchmark=BENCHMARK,
        environment=environment_info(args.threads),
        settings=settings,
        summary=summary,
    )
    _print_tables(results, summary)
    print(f"results written to {path}")
    return 0


def _resummarize(path: Path, notes: list[str]) -> int:
    data = json.loads(path.read_text(encoding="utf-8"))
    summary = summarize(data["results"])
    data["settings"]["notes"] = [*data["settings"].get("notes", []), *notes]
    write_results(path, benchmark=BENCHMARK, environment=data["environment"], settings=data["settings"],
                  results=data["results"], summary=summary)  # fmt: skip
    _print_tables(data["results"], summary)
    return 0


def _relative(value: Any) -> Any:
    root = str(BENCH_DIR.parent)
    if isinstance(value, str):
        return value.replace(root + "/", "").replace(root, ".").replace(tempfile.gettempdir(), "TMP")
    if isinstance(value, dict):
        return {k: _relative(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v) for v in value]
    return value


def _print_tables(results: dict[str, Any], summary: dict[str, Any]) -> None:
    search = results.get("search", {})
    if search.get("status") == "ok":
        rows = [{"run": "default", "valid": None, **_refit_row(search["default"])}]
        for name, r in search["searches"].items():
            done = r["n_complete"] + r["n_pruned"]
            rows.append({"run": name, "valid": r["best_valid_f1_macro"], "trials": done, "pruned": r["n_pruned"],
                         "ex_epochs": r["example_epochs"], **_refit_row(r["refit"])})  # fmt: skip
        print()
        print(
            format_table(
                rows,
                [
                    ("run", "run", ""),
                    ("trials", "trials", "d"),
                    ("pruned", "pruned", "d"),
                    ("ex_epochs", "example-epochs", "d"),
                    ("valid", "search valid F1", ".4f"),
                    ("strategy", "best strategy", ""),
                    ("valid_acc", "refit valid acc", ".4f"),
                    ("test_acc", "refit test acc", ".4f"),
                ],
            )
        )
    print()
    for key, value in summary.items():
        print(f"{key}: {value}")


def _refit_row(fit: dict[str, Any]) -> dict[str, Any]:
    return {
        "strategy": fit["params"].get("strategy", "full (default)"),
        "valid_acc": fit["valid_accuracy"],
        "test_acc": fit["test_accuracy"],
    }


if __name__ == "__main__":
    sys.exit(main())
