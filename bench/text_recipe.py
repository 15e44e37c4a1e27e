"""Benchmark: tunesmith's default text recipe against the previous one, on three text sets.

A default is adopted only where it helps beyond one data set. Each set is fitted twice with
``FineTuner`` on the same split and seed, once per recipe, and scored on its test split:

* ``rotten_tomatoes``: critic snippets, fresh vs rotten (``rotten_tomatoes_split(seed=0)``).
* ``subjectivity``: first sentences of plot synopses vs critic snippets
  (``rotten_tomatoes_subjectivity()``), 80/10/10 stratified, seed 0.
* ``debates``: 2016 debate statements, the speaker's party (``debates_2016()``), 80/10/10
  stratified, seed 0.

Recipes: ``previous`` (tunesmith's defaults before: lr 5e-5, 3 epochs, no warm-up, no weight
averaging, float32, PyTorch's fused attention) and ``default`` (whatever ``FineTuner()`` does
now). Both keep early stopping on validation.
Each difference comes with a 95% paired bootstrap interval over the test rows.

Usage::

    python bench/text_recipe.py                       # all three sets (~35 min on 2 cores)
    python bench/text_recipe.py --only debates,subjectivity
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    RESULTS_DIR,
    default_threads,
    environment_info,
    format_table,
    now_iso,
    read_results,
    write_results,
)

BENCHMARK = "text_recipe"
SEED = 0
SETS = ("rotten_tomatoes", "subjectivity", "debates")
RECIPES: dict[str, dict[str, Any]] = {
    # tunesmith's defaults before this recipe: float32, fused attention, no weight averaging.
    "previous": {
        "lr": 5e-5,
        "epochs": 3,
        "warmup_ratio": 0.0,
        "layer_lr_decay": 1.0,
        "ema_decay": 0.0,
        "mixed_precision": "no",
        "attention": "sdpa",
    },
    "default": {},
}
BOOTSTRAP = 2000


def load(name: str) -> tuple[Any, Any, Any]:
    """``(train, valid, test)`` frames with ``text`` and ``label``."""
    from sklearn.model_selection import train_test_split

    from tunesmith import datasets

    if name == "rotten_tomatoes":
        train, valid, test = datasets.rotten_tomatoes_split(seed=SEED)
        return train[["text", "label"]], valid[["text", "label"]], test[["text", "label"]]
    df = datasets.rotten_tomatoes_subjectivity(seed=SEED) if name == "subjectivity" else datasets.debates_2016()
    df = df[["text", "label"]]
    train, rest = train_test_split(df, test_size=0.2, stratify=df["label"], random_state=SEED)
    valid, test = train_test_split(rest, test_size=0.5, stratify=rest["label"], random_state=SEED)
    return train.reset_index(drop=True), valid.reset_index(drop=True), test.reset_index(drop=True)


def fit(recipe: str, data: tuple[Any, Any, Any], threads: int) -> dict[str, Any]:
    """One fit with ``recipe``; the test rows it got right, its accuracy and its training record."""
    from tunesmith import FineTuner

    train, valid, test = data
    params = {"seed": SEED, "baselines": False, "progress": False, "runs_dir": "", "num_threads": threads}
    ft = FineTuner(**{**params, **RECIPES[recipe]})
    started = time.perf_counter()
    ft.fit(train, target="label", text_column="text", eval_set=valid)
    seconds = time.perf_counter() - started
    predicted = np.asarray([str(p) for p in ft.predict(test[["text"]])])
    correct = predicted == test["label"].astype(str).to_numpy()
    return {
        "accuracy": float(correct.mean()),
        "correct": correct.astype(int).tolist(),
        "fit_seconds": seconds,
        "train_seconds": float(ft.train_seconds_),
        "epochs_run": int(ft.training_info_["epochs_run"]),
        "best_epoch": ft.training_info_.get("best_epoch"),
        "settings": {k: ft.get_params()[k] for k in ("lr", "epochs", "warmup_ratio", "ema_decay", "mixed_precision")},
    }


def paired_interval(a: list[int], b: list[int], seed: int = SEED) -> dict[str, float]:
    """Accuracy difference b - a in points, with a 95% paired bootstrap interval over the rows."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(BOOTSTRAP, len(x)))
    diffs = (y[idx] - x[idx]).mean(axis=1) * 100
    return {
        "gain_points": float((y - x).mean() * 100),
        "low": float(np.percentile(diffs, 2.5)),
        "high": float(np.percentile(diffs, 97.5)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--only", default=",".join(SETS), help=f"comma-separated sets among {','.join(SETS)}")
    p.add_argument("--threads", type=int, default=default_threads())
    p.add_argument("--out", type=Path, default=RESULTS_DIR / f"{BENCHMARK}.json")
    args = p.parse_args(argv)
    chosen = [s for s in SETS if s in args.only.split(",")]
    if not chosen:
        p.error(f"--only names none of {','.join(SETS)}")
    import torch

    torch.set_num_threads(args.threads)
    results: dict[str, Any] = read_results(args.out, BENCHMARK) if set(chosen) != set(SETS) else {}
    for name in chosen:
        data = load(name)
        entry: dict[str, Any] = {"rows": {k: len(v) for k, v in zip(("train", "valid", "test"), data, strict=True)}}
        for recipe in RECIPES:
            print(f"[{name}] {recipe} ...", flush=True)
            entry[recipe] = fit(recipe, data, args.threads)
            print(f"[{name}] {recipe}: accuracy {entry[recipe]['accuracy']:.4f}", flush=True)
        entry["default_vs_previous"] = paired_interval(entry["previous"]["correct"], entry["default"]["correct"])
        entry["created"] = now_iso()
        results[name] = entry
    summary: dict[str, Any] = {}
    rows = []
    for name in SETS:
        entry = results.get(name)
        if not entry:
            continue
        gain = entry["default_vs_previous"]
        summary[f"acc_{name}_previous"] = entry["previous"]["accuracy"]
        summary[f"acc_{name}_default"] = entry["default"]["accuracy"]
        summary[f"gain_{name}_points"] = gain["gain_points"]
        summary[f"gain_{name}_low"], summary[f"gain_{name}_high"] = gain["low"], gain["high"]
        rows.append(
            {
                "set": name,
                "previous": entry["previous"]["accuracy"],
                "default": entry["default"]["accuracy"],
                "gain": gain["gain_points"],
                "ci": f"[{gain['low']:+.2f}, {gain['high']:+.2f}]",
            }
        )
    path = write_results(
        args.out,
        benchmark=BENCHMARK,
        environment=environment_info(args.threads),
        settings={"seed": SEED, "recipes": RECIPES, "bootstrap": BOOTSTRAP},
        results=results,
        summary=summary,
    )
    print()
    print(
        format_table(
            rows,
            [
                ("set", "set", ""),
                ("previous", "previous acc", ".4f"),
                ("default", "default acc", ".4f"),
                ("gain", "gain (points)", "+.2f"),
                ("ci", "95% interval", ""),
            ],
        )
    )
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
