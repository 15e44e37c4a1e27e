"""Benchmark: random search vs TPE with pruning, on one fine-tuning problem, 3 seeds each.

The problem is small enough for hundreds of trials on a CPU: a classification head trained
on frozen all-MiniLM-L6-v2 features (``strategy="head_only"``, features computed once and
reused by every trial through tunesmith's feature cache) for the Rotten Tomatoes reviews.
Each trial trains up to 8 epochs without early stopping and is scored by its best
validation macro F1. The space (lr, batch size, dropout, weight decay, optimizer,
schedule, label smoothing) is the same for both searches.

* ``random``: ``sampler="random"``, no pruning, 60 trials per seed;
* ``tpe``: ``sampler="tpe"``, ``pruner="median"``, 60 trials per seed.

Summary (bench/results/search.json): ``best_random_60`` (mean over seeds of random
search's best score after 60 trials), ``trials_tpe_to_match_random`` (mean over seeds of
the trials TPE + pruning needed to reach that score; a seed that never reached it counts as
60 and the count of such seeds is reported), ``compute_saved_by_pruning`` (share of the
TPE searches' budgeted epochs that pruning spared) and ``cv_std`` (standard deviation of
the 5-fold cross-validated score of the best TPE configuration).

Usage::

    python bench/search.py                      # about 20 minutes on 2 cores (4,000 training rows)
    python bench/search.py --trials 10 --seeds 1 --max-train 1000 --out /tmp/search.json   # smoke test
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from _common import RESULTS_DIR, default_threads, environment_info, format_table, now_iso, write_results

BENCHMARK = "search"
DEFAULT_OUT = RESULTS_DIR / f"{BENCHMARK}.json"
SEED = 0
EPOCHS = 8
SPACE: dict[str, Any] = {
    "lr": {"type": "float", "low": 1e-4, "high": 3e-1, "log": True},
    "batch_size": {"type": "categorical", "choices": [16, 32, 64, 128]},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "weight_decay": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    "optimizer": {"type": "categorical", "choices": ["adamw", "sgd"]},
    "scheduler": {"type": "categorical", "choices": ["constant", "linear", "cosine"]},
    "label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
}
BASE: dict[str, Any] = {
    "backbone": "minilm-l6",
    "strategy": "head_only",
    "epochs": EPOCHS,
    "early_stopping": False,
    "max_length": 128,
    "seed": SEED,
}


def load_data(max_train: int | None) -> tuple[Any, Any]:
    """Training rows (optionally a stratified subsample) and the validation rows of the fixed split."""
    from sklearn.model_selection import train_test_split

    from tunesmith.datasets import rotten_tomatoes_split

    train, valid, _ = (part[["text", "label"]] for part in rotten_tomatoes_split(seed=SEED))
    if max_train is not None and max_train < len(train):
        train, _ = train_test_split(train, train_size=max_train, stratify=train["label"], random_state=SEED)
        train = train.reset_index(drop=True)
    return train, valid


def running_best(trials: list[dict[str, Any]]) -> list[float]:
    """Best score after each trial, in trial order (pruned and failed trials keep the previous best)."""
    best = float("-inf")
    out = []
    for t in sorted(trials, key=lambda t: t["number"]):
        if t["state"] == "COMPLETE" and t["value"] is not None:
            best = max(best, float(t["value"]))
        out.append(best)
    return out


def trials_to_reach(curve: list[float], goal: float) -> int | None:
    """1-based number of trials after which ``curve`` first reaches ``goal``; None if never."""
    for i, v in enumerate(curve, 1):
        if v >= goal - 1e-12:
            return i
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    from tunesmith.evaluate.cv import cross_validate
    from tunesmith.search.tuner import tune

    torch.set_num_threads(args.threads)
    train, valid = load_data(args.max_train or None)
    results: dict[str, Any] = {}
    for sampler, pruner in (("random", "none"), ("tpe", "median")):
        for seed in range(args.seeds):
            name = f"{sampler}_seed{seed}"
            print(f"[{name}] {args.trials} trials ...", flush=True)
            started = time.perf_counter()
            result = tune(
                train,
                "label",
                base_params={**BASE, "num_threads": args.threads},
                space=SPACE,
                n_trials=args.trials,
                sampler=sampler,
                pruner=pruner,
                text_column="text",
                eval_set=valid,
                study_name=name,
                # Distinct streams: TPE's random start-up trials must not replay random search's.
                seed=seed if sampler == "random" else 1000 + seed,
                progress=False,
            )
            curve = running_best(result.trials)
            results[name] = {
                "status": "ok",
                "sampler": sampler,
                "pruner": pruner,
                "seed": seed,
                "best_value": result.best_value,
                "best_params": result.best_params,
                "curve": curve,
                "n_complete": result.count("COMPLETE"),
                "n_pruned": result.count("PRUNED"),
                "n_failed": result.count("FAIL"),
                "epochs_run": result.epochs_run,
                "compute_saved_by_pruning": result.compute_saved_by_pruning,
                "seconds": time.perf_counter() - started,
            }
            print(
                f"[{name}] best {result.best_value:.4f}, {result.count('PRUNED')} pruned, "
                f"{time.perf_counter() - started:.0f} s",
                flush=True,
            )
    random_best = [results[f"random_seed{s}"]["best_value"] for s in range(args.seeds)]
    goal = float(np.mean(random_best))
    reach = [trials_to_reach(results[f"tpe_seed{s}"]["curve"], goal) for s in range(args.seeds)]
    tpe_best = max((results[f"tpe_seed{s}"] for s in range(args.seeds)), key=lambda r: r["best_value"])
    print("[cv] 5-fold cross-validation of the best TPE configuration ...", flush=True)
    started = time.perf_counter()
    cv = cross_validate(
        {**BASE, "num_threads": args.threads, **tpe_best["best_params"], "progress": False},
        train,
        target="label",
        text_column="text",
        k=5,
        seed=SEED,
        progress=False,
    )
    results["cv_best_tpe"] = {
        "status": "ok",
        "params": tpe_best["best_params"],
        "scores": [float(s) for s in cv.scores],
        "mean": float(cv.mean),
        "std": float(cv.std),
        "seconds": time.perf_counter() - started,
    }
    saved = [results[f"tpe_seed{s}"]["compute_saved_by_pruning"] for s in range(args.seeds)]
    summary = {
        "best_random_60": goal,
        "best_tpe_60": float(np.mean([results[f"tpe_seed{s}"]["best_value"] for s in range(args.seeds)])),
        "trials_tpe_to_match_random": float(np.mean([r if r is not None else args.trials for r in reach])),
        "tpe_seeds_not_reaching_random": sum(r is None for r in reach),
        "trials_tpe_to_match_random_per_seed": reach,
        "compute_saved_by_pruning": float(np.mean([s for s in saved if s is not None])) if any(saved) else None,
        "cv_std": float(cv.std),
        "cv_mean": float(cv.mean),
        "trials_per_search": args.trials,
        "seeds": args.seeds,
        "metric": "valid_f1_macro",
    }
    return {"results": results, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=60, help="trials per search (default 60)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per sampler (default 3)")
    parser.add_argument(
        "--max-train", type=int, default=4000, help="training rows, a stratified subsample (default 4000; 0: all)"
    )
    parser.add_argument("--threads", type=int, default=default_threads(), help="torch threads")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="result JSON")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    out = run(args)
    settings = {
        "dataset": "rotten_tomatoes_split(seed=0) train (optionally subsampled), scored on its validation split",
        "problem": "head_only on frozen all-MiniLM-L6-v2 features (cached once), up to 8 epochs, no early stopping",
        "space": SPACE,
        "trials": args.trials,
        "seeds": args.seeds,
        "max_train": args.max_train,
        "threads": args.threads,
        "seconds_total": time.perf_counter() - started,
        "created": now_iso(),
    }
    path = write_results(
        args.out,
        benchmark=BENCHMARK,
        environment=environment_info(args.threads),
        settings=settings,
        results=out["results"],
        summary=out["summary"],
    )
    rows = [
        {
            "run": name,
            "best": r.get("best_value"),
            "complete": r.get("n_complete"),
            "pruned": r.get("n_pruned"),
            "epochs": r.get("epochs_run"),
            "seconds": r.get("seconds"),
        }
        for name, r in out["results"].items()
        if "curve" in r
    ]
    print()
    print(
        format_table(
            rows,
            [
                ("run", "run", ""),
                ("best", "best F1", ".4f"),
                ("complete", "complete", "d"),
                ("pruned", "pruned", "d"),
                ("epochs", "epochs", "d"),
                ("seconds", "seconds", ".0f"),
            ],
        )
    )
    print()
    for key, value in out["summary"].items():
        print(f"{key}: {value}")
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
