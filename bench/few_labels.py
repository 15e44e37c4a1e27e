"""Benchmark: how far a few labels go. Few-shot fine-tuning, active learning and label review, one command.

Stages, each in its own process (``--only`` picks some; a stage's raw output is kept under
bench/_work/few_labels/ and ``--reuse`` combines earlier stage outputs instead of rerunning):

* ``fewshot``  tunesmith few-shot vs SetFit 1.2 (its default settings, installed in an overlay
               environment) vs tunesmith full fine-tuning vs frozen MiniLM + logistic regression,
               N = 8, 16, 64 labeled examples per class, a different draw per seed
               (bench/_few_labels_fewshot.py);
* ``images``   few-shot against full fine-tuning on MNIST-5k, EfficientNet-Lite0
               (bench/_few_labels_images.py);
* ``active``   query strategies from 25 labels, 20 rounds of 25, against random sampling and
               small-text's BreakingTies (bench/_few_labels_active.py);
* ``review``   label review under 20% class-conditional noise with a 10% review budget, and the
               ranking's precision under 10% random noise (bench/_few_labels_review.py).

SetFit and small-text are not tunesmith dependencies. The first run creates
``bench/_work/setfit-venv``: a virtual environment that sees this environment's packages (a
``.pth`` file) and adds ``setfit==1.2.0`` and ``small-text==1.4.1`` (from PyPI) on top, so they
run with the same torch and transformers as tunesmith.

Usage::

    python bench/few_labels.py                         # everything (about 2 hours on 2 cores)
    python bench/few_labels.py --only active           # a few minutes
    python bench/few_labels.py --reuse                 # recombine the stage outputs already there
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    BENCH_DIR,
    RESULTS_DIR,
    check_targets,
    child_env,
    environment_info,
    format_table,
    print_summary,
    write_results,
)

WORK = BENCH_DIR / "_work" / "few_labels"
OVERLAY = BENCH_DIR / "_work" / "setfit-venv"
PEERS = ("setfit==1.2.0", "small-text==1.4.1")
SIZES = (8, 16, 64)

TARGETS: dict[str, tuple[str, float]] = {
    "fewshot_minus_setfit_n8_points": (">=", 1.0),
    "fewshot_minus_full_ft_all_n8_points": (">=", 10.0),
    "fewshot_minus_setfit_n64_points": (">=", 1.0),
    "fewshot_seconds_vs_setfit": ("<=", 0.5),
    "labels_to_95pct_full_vs_random": ("<=", 0.7),
    "query_seconds_10k_pool": ("<=", 2.0),
    "review_recovered_fraction": (">=", 0.7),
    "precision_at_n_flipped_thorough": (">=", 0.7),
}


def overlay_python() -> str:
    """The overlay environment's python, created (with SetFit and small-text) on first use."""
    python = OVERLAY / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(OVERLAY)], check=True)
        here = subprocess.run(
            [sys.executable, "-c", "import site; print(site.getsitepackages()[0])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        there = subprocess.run(
            [str(python), "-c", "import site; print(site.getsitepackages()[0])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        # The overlay sees every package of this environment; pip then adds only what is missing.
        (Path(there) / "tunesmith-base.pth").write_text(here + "\n")
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PEERS], check=True)
    return str(python)


def run_stage(name: str, args: list[str], threads: int) -> Path:
    out = WORK / f"{name}.json"
    script = BENCH_DIR / f"_few_labels_{name}.py"
    started = time.perf_counter()
    log = WORK / f"{name}.log"
    with open(log, "w", encoding="utf-8") as fh:
        done = subprocess.run(
            [sys.executable, str(script), "--out", str(out), *args],
            env=child_env(threads),
            stdout=fh,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        raise SystemExit(f"stage {name} failed (exit {done.returncode}); see {log}")
    print(f"stage {name}: {time.perf_counter() - started:.0f} s", flush=True)
    return out


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def fewshot_summary(raw: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Per (data set, N) means over seeds; per N means over data sets; the time ratio.

    A row without a SetFit figure (a SetFit fit that did not finish) counts for the other
    contenders only; the SetFit comparison and the time ratio use the rows that have both.
    """
    rows = raw["rows"]
    table = []
    summary: dict[str, Any] = {}
    for n in SIZES:
        at_n = [r for r in rows if r["n"] == n]
        if not at_n:
            continue
        per_set = {}
        for data in sorted({r["data"] for r in at_n}):
            mine = [r for r in at_n if r["data"] == data]
            entry: dict[str, Any] = {"data": data, "n": n, "seeds": len(mine)}
            for c in ("fewshot", "setfit", "full", "frozen"):
                entry[f"acc_{c}"] = mean([r[f"acc_{c}"] for r in mine if r.get(f"acc_{c}") is not None])
            both = [r for r in mine if r.get("acc_setfit") is not None]
            entry["wins_vs_setfit"] = sum(r["acc_fewshot"] > r["acc_setfit"] for r in both) if both else None
            per_set[data] = entry
            table.append(entry)
        for c, key in (("fewshot", "fewshot"), ("setfit", "setfit"), ("full", "full_ft"), ("frozen", "frozen_lr")):
            values = [e[f"acc_{c}"] for e in per_set.values() if e[f"acc_{c}"] is not None]
            summary[f"acc_{key}_n{n}"] = mean(values) if len(values) == len(per_set) else None
        if summary[f"acc_setfit_n{n}"] is not None:
            gap = summary[f"acc_fewshot_n{n}"] - summary[f"acc_setfit_n{n}"]
            summary[f"fewshot_minus_setfit_n{n}_points"] = 100 * gap
        else:
            summary[f"fewshot_minus_setfit_n{n}_points"] = None
        summary[f"fewshot_minus_full_ft_n{n}_points"] = 100 * (
            summary[f"acc_fewshot_n{n}"] - summary[f"acc_full_ft_n{n}"]
        )
        summary[f"data_sets_n{n}"] = len(per_set)
        timed = [r for r in at_n if r.get("seconds_setfit")]
        summary[f"seconds_ratio_vs_setfit_n{n}"] = (
            sum(r["seconds_fewshot"] for r in timed) / sum(r["seconds_setfit"] for r in timed) if timed else None
        )
    timed = [r for r in rows if r.get("seconds_setfit")]
    summary["fewshot_seconds_vs_setfit"] = sum(r["seconds_fewshot"] for r in timed) / sum(
        r["seconds_setfit"] for r in timed
    )
    return summary, table


def image_summary(raw: dict[str, Any], text: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """MNIST few-shot against full fine-tuning per N, and the few-shot vs full gap over every data set.

    SetFit runs on text only, so the SetFit comparison stays over the text sets; the gap to full
    fine-tuning is the mean over all data sets, text and images (``*_all``).
    """
    summary: dict[str, Any] = {}
    table = []
    for n in SIZES:
        mine = [r for r in raw["rows"] if r["n"] == n]
        if not mine:
            continue
        entry = {"data": "mnist_5k", "n": n, "seeds": len(mine)}
        for c in ("fewshot", "full"):
            entry[f"acc_{c}"] = mean([r[f"acc_{c}"] for r in mine])
            entry[f"seconds_{c}"] = mean([r[f"seconds_{c}"] for r in mine])
        table.append(entry)
        summary[f"acc_fewshot_image_n{n}"] = entry["acc_fewshot"]
        summary[f"acc_full_ft_image_n{n}"] = entry["acc_full"]
        sets = text.get(f"data_sets_n{n}")
        if sets and text.get(f"acc_fewshot_n{n}") is not None:
            few = (text[f"acc_fewshot_n{n}"] * sets + entry["acc_fewshot"]) / (sets + 1)
            full = (text[f"acc_full_ft_n{n}"] * sets + entry["acc_full"]) / (sets + 1)
            summary[f"acc_fewshot_all_n{n}"] = few
            summary[f"acc_full_ft_all_n{n}"] = full
            summary[f"fewshot_minus_full_ft_all_n{n}_points"] = 100 * (few - full)
    return summary, table


def active_summary(raw: dict[str, Any], budget: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Mean labels to 95% of full-pool accuracy per strategy.

    A seed that never gets there within the budget counts as the budget plus one batch (a lower
    bound on what it would need), and the table says how many seeds got there.
    """
    table = []
    means = {}
    for name, per_seed in raw["labels_to_95pct_full"].items():
        values = list(per_seed.values())
        reached = [v for v in values if v is not None]
        censored = [v if v is not None else budget + 25 for v in values]
        means[name] = mean([float(v) for v in censored])
        final = mean([c[-1][1] for c in raw["curves"][name].values()])
        table.append(
            {
                "strategy": name,
                "labels_to_95": means[name],
                "seeds_reaching": f"{len(reached)}/{len(values)}",
                "final_acc": final,
                "query_s_10k": raw["query_seconds_10k_pool"].get(name),
            }
        )
    ours = {k: v for k, v in means.items() if k not in ("random", "smalltext_breaking_ties")}
    best = min(ours, key=lambda k: ours[k])
    # The same at 90% of the full-pool accuracy, where the budget does not cut the curves off.
    at90 = {}
    for name, per_seed in raw["curves"].items():
        firsts = [
            next((lab for lab, acc in c if acc >= 0.9 * raw["acc_full_pool"]), budget + 25) for c in per_seed.values()
        ]
        at90[name] = mean([float(v) for v in firsts])
    for row in table:
        row["labels_to_90"] = at90[row["strategy"]]
    best90 = min((k for k in at90 if k not in ("random", "smalltext_breaking_ties")), key=lambda k: at90[k])
    summary = {
        "acc_full_pool": raw["acc_full_pool"],
        "best_strategy": best,
        "labels_to_95pct_full_best": means[best],
        "labels_to_95pct_full_random": means["random"],
        "labels_to_95pct_full_vs_random": means[best] / means["random"],
        "labels_to_95pct_full_smalltext_breaking_ties": means.get("smalltext_breaking_ties"),
        "query_seconds_10k_pool": max(raw["query_seconds_10k_pool"].values()),
        "best_strategy_90pct": best90,
        "labels_to_90pct_full_vs_random": at90[best90] / at90["random"],
    }
    return summary, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="fewshot,images,active,review")
    parser.add_argument("--reuse", action="store_true", help="combine the stage outputs already in bench/_work")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--out", default=str(RESULTS_DIR / "few_labels.json"))
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    stages = args.only.split(",")
    if not args.reuse:
        python = overlay_python()
        if "fewshot" in stages:
            run_stage("fewshot", ["--seeds", str(args.seeds), "--setfit-python", python], args.threads)
        if "active" in stages:
            run_stage("active", ["--seeds", str(args.seeds), "--smalltext-python", python], args.threads)
        if "images" in stages:
            run_stage("images", ["--seeds", str(args.seeds)], args.threads)
        if "review" in stages:
            run_stage("review", [], args.threads)
    summary: dict[str, Any] = {}
    results: dict[str, Any] = {}
    tables: dict[str, list[dict[str, Any]]] = {}
    if (WORK / "fewshot.json").is_file():
        raw = json.loads((WORK / "fewshot.json").read_text())
        part, tables["fewshot"] = fewshot_summary(raw)
        summary.update(part)
        results["fewshot"] = {"status": "ok", "per_set": tables["fewshot"], "rows": raw["rows"]}
    if (WORK / "images.json").is_file():
        raw = json.loads((WORK / "images.json").read_text())
        part, tables["images"] = image_summary(raw, summary)
        summary.update(part)
        results["images"] = {"status": "ok", "per_n": tables["images"], "rows": raw["rows"]}
    if (WORK / "active.json").is_file():
        raw = json.loads((WORK / "active.json").read_text())
        budget = max(c[-1][0] for per in raw["curves"].values() for c in per.values())
        part, tables["active"] = active_summary(raw, budget)
        summary.update(part)
        results["active"] = {"status": "ok", "strategies": tables["active"], **raw}
    if (WORK / "review.json").is_file():
        raw = json.loads((WORK / "review.json").read_text())
        summary.update(raw.get("summary", {}))
        results["review"] = {"status": "ok", **raw}
    checks = check_targets(summary, TARGETS)
    summary["targets"] = {k: f"{op} {bound}" for k, (op, bound) in TARGETS.items()}
    summary["targets_met"] = checks
    write_results(
        args.out,
        benchmark="few_labels",
        environment=environment_info(args.threads),
        settings={"stages": stages, "seeds": args.seeds, "threads": args.threads, "peers": list(PEERS)},
        results=results,
        summary=summary,
    )
    if "fewshot" in tables:
        cols = [("data", "data", ""), ("n", "N", "d"), ("seeds", "seeds", "d")]
        cols += [(f"acc_{c}", c, ".3f") for c in ("fewshot", "setfit", "full", "frozen")]
        cols.append(("wins_vs_setfit", "wins", "d"))
        print(format_table(tables["fewshot"], cols))
    if "images" in tables:
        cols = [("data", "data", ""), ("n", "N", "d"), ("seeds", "seeds", "d"), ("acc_fewshot", "fewshot", ".3f")]
        cols += [
            ("acc_full", "full", ".3f"),
            ("seconds_fewshot", "fewshot s", ".1f"),
            ("seconds_full", "full s", ".1f"),
        ]
        print(format_table(tables["images"], cols))
    if "active" in tables:
        cols = [("strategy", "strategy", ""), ("labels_to_95", "labels to 95%", ".0f")]
        cols.append(("labels_to_90", "labels to 90%", ".0f"))
        cols += [
            ("seeds_reaching", "reached", ""),
            ("final_acc", "final acc", ".3f"),
            ("query_s_10k", "query s", ".3f"),
        ]
        print(format_table(tables["active"], cols))
    print_summary({k: v for k, v in summary.items() if not isinstance(v, dict)}, TARGETS, checks)


if __name__ == "__main__":
    main()
