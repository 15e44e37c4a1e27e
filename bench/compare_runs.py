"""Compare two runs of the benchmark suite: before and after a change to tunesmith's internals.

A restructuring of the code must leave every figure where it was. Each benchmark is run twice
with the same (reduced) settings, once against the earlier source tree and once against this
one, each writing its JSON into its own folder::

    git worktree add ../before <rev>
    for tree in ../before .; do
        PYTHONPATH=$tree/src python $tree/bench/text_classification.py --only full,hf,frozen \\
            --max-train 1000 --epochs 1 --out runs-$tree/text_classification.json
        ...   # the commands in bench/README.md, "Before and after a change"
    done
    python bench/compare_runs.py runs-before runs-after --old-src ../before/src --new-src src

This script reads both folders, lines up every summary figure of every benchmark, marks
which moved, and (with ``--old-src``/``--new-src``) measures MiniLM fine-tuning speed of both
trees interleaved in alternating processes, because throughput figures from two separate
runs on a shared machine differ by the machine's load more than by the code.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from _common import RESULTS_DIR, default_threads, environment_info, now_iso, write_json

BENCHMARK = "contract_refactor"

# Figures that measure speed or memory: they move with the machine's load, not only the code.
# Matched on whole words of the figure's name ("ms" must not match "items").
VOLATILE = {"seconds", "rss", "ms", "mb", "rps", "throughput", "speedup", "wall", "ratio"}


def _volatile(key: str) -> bool:
    words = key.lower().split("_")
    per_second = any(words[i] == "per" and words[i + 1] == "s" for i in range(len(words) - 1))
    return per_second or bool(VOLATILE & set(words))


SPEED_CHILD = r"""
import json, time
import torch
torch.set_num_threads(2)
from tunesmith.datasets import rotten_tomatoes_split
try:
    from tunesmith.estimators.text import FineTuner
except ImportError:  # a tree from before the estimators package
    from tunesmith.estimator import FineTuner
train, valid, _ = rotten_tomatoes_split(seed=0)
train = train.sample(640, random_state=0)
ft = FineTuner(backbone="minilm-l6", epochs=1, lr=5e-5, batch_size=32, baselines=False, runs_dir="",
               progress=False, early_stopping=False, num_threads=2, test_size=0.0)
ft.fit(train[["text", "label"]], target="label", eval_set=valid[["text", "label"]].head(64))
print(json.dumps({"examples_per_s": ft.training_info_["train_examples_per_s"]}))
"""


SERVE_CHILD = r"""
import json, statistics, sys, time
import pandas as pd
from tunesmith.export.runtime import load_predictor
folder, table = sys.argv[1], sys.argv[2]
texts = pd.read_csv(table)["text"].astype(str).tolist()[:400]
out = {}
for precision in ("int8", "fp32"):
    p = load_predictor(folder, backend="onnx", precision=precision, threads=1)
    for t in texts[:20]:
        p.predict_rows([t])
    lat = []
    for t in texts:
        s = time.perf_counter(); p.predict_rows([t]); lat.append((time.perf_counter() - s) * 1000)
    s = time.perf_counter(); p.predict_rows(texts); batch = len(texts) / (time.perf_counter() - s)
    out[precision] = {"p50_ms": statistics.median(lat), "rows_per_s": batch}
print(json.dumps(out))
"""


def _numbers(summary: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in summary.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    }


def compare(old_dir: Path, new_dir: Path) -> dict[str, Any]:
    """Every numeric summary figure of every benchmark found in both folders, side by side."""
    out: dict[str, Any] = {}
    for new_file in sorted(new_dir.glob("*.json")):
        old_file = old_dir / new_file.name
        if not old_file.is_file():
            continue
        old = _numbers(json.loads(old_file.read_text()).get("summary") or {})
        new = _numbers(json.loads(new_file.read_text()).get("summary") or {})
        rows = {}
        for key in sorted(set(old) & set(new)):
            a, b = old[key], new[key]
            volatile = _volatile(key)
            rows[key] = {
                "before": a,
                "after": b,
                "difference": b - a,
                "identical": a == b,
                "volatile": volatile,
            }
        out[new_file.stem] = rows
    return out


def speed(old_src: Path, new_src: Path, rounds: int) -> dict[str, Any]:
    """MiniLM training examples/s of both trees, alternating old and new processes ``rounds`` times."""
    found: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(rounds):
        for name, src in (("before", old_src), ("after", new_src)):
            env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
            proc = subprocess.run(
                [sys.executable, "-c", SPEED_CHILD], capture_output=True, text=True, env=env, timeout=1200, check=True
            )
            found[name].append(float(json.loads(proc.stdout.strip().splitlines()[-1])["examples_per_s"]))
    before, after = statistics.median(found["before"]), statistics.median(found["after"])
    return {**found, "median_before": before, "median_after": after, "ratio_after_to_before": after / before}


def serving(old_src: Path, new_src: Path, folder: Path, table: Path, rounds: int) -> dict[str, Any]:
    """ONNX prediction of one exported model folder by both trees, alternating processes ``rounds`` times.

    The folder must be one the earlier tree can read (saved by it): the later tree reads both formats.
    """
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for _ in range(rounds):
        for name, src in (("before", old_src), ("after", new_src)):
            env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
            proc = subprocess.run(
                [sys.executable, "-c", SERVE_CHILD, str(folder), str(table)],
                capture_output=True,
                text=True,
                env=env,
                timeout=1200,
                check=True,
            )
            runs[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    out: dict[str, Any] = {"runs": runs}
    for precision in ("int8", "fp32"):
        for figure in ("p50_ms", "rows_per_s"):
            before = statistics.median(r[precision][figure] for r in runs["before"])
            after = statistics.median(r[precision][figure] for r in runs["after"])
            out[f"{precision}_{figure}"] = {"before": before, "after": after, "ratio_after_to_before": after / before}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old", type=Path, help="folder of result JSON files from the earlier tree")
    p.add_argument("new", type=Path, help="folder of result JSON files from this tree")
    p.add_argument("--old-src", type=Path, help="the earlier tree's src/ folder, for the interleaved speed check")
    p.add_argument("--new-src", type=Path, default=Path(__file__).resolve().parents[1] / "src")
    p.add_argument("--rounds", type=int, default=3, help="alternations of the speed checks (default 3)")
    p.add_argument("--serving-model", type=Path, help="an exported text model folder the earlier tree saved")
    p.add_argument("--serving-rows", type=Path, help="a CSV with a text column to predict, one row per call")
    p.add_argument("--settings", default="", help="a note of the reduced settings used, kept in the JSON")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / f"{BENCHMARK}.json")
    args = p.parse_args()

    figures = compare(args.old, args.new)
    result: dict[str, Any] = {
        "benchmark": BENCHMARK,
        "created": now_iso(),
        "environment": environment_info(default_threads()),
        "settings": {"reduced": args.settings, "old": str(args.old.name), "new": str(args.new.name)},
        "results": dict(figures),
    }
    if args.old_src is not None:
        result["results"]["interleaved_speed"] = speed(args.old_src, args.new_src, args.rounds)
        if args.serving_model is not None and args.serving_rows is not None:
            result["results"]["interleaved_serving"] = serving(
                args.old_src, args.new_src, args.serving_model, args.serving_rows, args.rounds
            )
    moved = {
        f"{bench}.{key}": row
        for bench, rows in figures.items()
        for key, row in rows.items()
        if not row["identical"] and not row["volatile"]
    }
    result["summary"] = {
        "benchmarks_compared": len(figures),
        "figures_compared": sum(len(r) for r in figures.values()),
        "quality_figures_identical": sum(
            1 for r in figures.values() for row in r.values() if row["identical"] and not row["volatile"]
        ),
        "quality_figures_moved": len(moved),
        "speed_ratio_after_to_before": (result["results"].get("interleaved_speed") or {}).get("ratio_after_to_before"),
        "serving_int8_p50_ratio_after_to_before": (
            (result["results"].get("interleaved_serving") or {}).get("int8_p50_ms") or {}
        ).get("ratio_after_to_before"),
    }
    write_json(args.out, result)
    print(f"{'benchmark.figure':58s} {'before':>12s} {'after':>12s}")
    for bench, rows in figures.items():
        for key, row in rows.items():
            mark = "" if row["identical"] else (" (speed/memory)" if row["volatile"] else " MOVED")
            print(f"{bench + '.' + key:58.58s} {row['before']:12.4f} {row['after']:12.4f}{mark}")
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
