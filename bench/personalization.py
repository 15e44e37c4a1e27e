"""Personalisation: one shared classifier vs per-user adapters vs collaborative filtering.

Two data sets, each split per user in time order (the last 20% of each user's rows are that
user's test rows), all contenders in one run:

* ``movielens``: will the user rate the movie >= 4, from the movie's text ("title (year):
  genres") and the user's features (age, gender, occupation); MovieLens-100K.
* ``reviewers``: Rotten Tomatoes snippets labeled by simulated reviewers whose groups label the
  same kind of review by different rules (critics, contrarians, comedy fans, drama fans; see
  ``bench/_reviewers.py``): a single model can at best learn the majority's rule.

Contenders, on the same training rows and labels:

* shared: all-MiniLM-L6-v2 fine-tuned on (a sample of) every user's training rows;
* user_head: a head adapter per user, each trained alone on its user's rows;
* user_lora: a LoRA adapter per user on the encoder's last block (every third user: they need
  each user's rows through the encoder again);
* joint: one rank-16 vector per user and per item learned together across all users on the
  shared model's features (collaborative filtering on top of the shared model), users placed
  near users who behave alike; penalty chosen on validation;
* joint_head: joint adapters, plus a head adapter for users with 50+ rows, the better kind
  per user on its own validation rows (``adapter_kind="joint,head"``);
* segment (movielens): head adapters per occupation;
* cf: the best of logistic matrix factorisation of like/dislike, EASE and BPR on the liked
  items, chosen on the same validation rows (:class:`tunesmith.personalize.baselines.CollaborativeBaseline`).

Per-user ROC AUC on each user's test rows (users whose test rows hold both classes), the mean
over users, and by the number of training rows. Adapter training time counts the shared
model's pass over every training row (bfloat16) and the adapters. Serving (movielens): the
shared model and the same model with the best variant's store behind ``tunesmith serve``, one user
per request, same load, p99 ratio. Run with ``python bench/personalization.py`` (about 45
minutes on 2 cores; ``--only movielens|reviewers``); results in
``bench/results/personalization.json``, report plots in ``bench/results/personalization/``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    RESULTS_DIR,
    check_targets,
    default_threads,
    environment_info,
    format_table,
    now_iso,
    print_summary,
    write_results,
)

BENCHMARK = "personalization"
SEED = 0
SHARED = {
    "backbone": "minilm-l6",
    "epochs": 1,
    "batch_size": 32,
    "lr": 5e-5,
    "max_length": 64,
    "baselines": False,
    "runs_dir": "",
    "valid_size": 0.05,
    "test_size": 0.0,
}
SHARED_TRAIN_ROWS = 16_000
COMMON = {"min_rows": 10, "valid_fraction": 0.2, "seed": SEED, "feature_dtype": "bfloat16", "progress": False}
HEAD = {"rank": 4, "l2": 1e-2, "steps": 100, "lr": 0.05}
LORA = {"lora_rank": 4, "lora_alpha": 8.0, "lora_steps": 40, "lora_lr": 0.02}
JOINT = {"joint_rank": 16, "joint_l2": [0.05, 0.1, 0.2], "joint_steps": 300, "joint_lr": 0.05, "local_min_rows": 50}
LORA_USER_STEP = 3
SMALL_USER_ROWS = 20
TARGETS = {
    "auc_gain_best_points": (">=", 3.0),
    "auc_gain_vs_cf_points": (">=", 1.0),
    "auc_gain_small_users": (">=", 0.0),
    "train_seconds_all_users": ("<=", 300.0),
    "adapter_kb_per_user": ("<=", 64.0),
    "p99_ratio_adapter_vs_shared": ("<=", 1.25),
}
DATASETS = ("movielens", "reviewers")


def load_movielens() -> tuple[Any, Any, dict[str, Any]]:
    import pandas as pd

    from tunesmith.datasets import movielens_100k
    from tunesmith.personalize.personalizer import time_ordered_holdout

    ratings, users, items = movielens_100k()
    df = ratings.merge(users, on="user_id").merge(items, on="item_id")
    genres = df["genres"].map(lambda g: ", ".join(g) if isinstance(g, (list, tuple, np.ndarray)) else str(g))
    frame = pd.DataFrame(
        {
            "user": df["user_id"].astype(str),
            "item": df["item_id"].astype(str),
            "timestamp": df["timestamp"],
            "movie": df["title"].astype(str) + " (" + df["year"].astype(str) + "): " + genres,
            "age": pd.to_numeric(df["age"], errors="coerce"),
            "gender": df["gender"],
            "occupation": df["occupation"],
            "liked": np.where(df["rating"] >= 4, "yes", "no"),
        }
    )
    held = time_ordered_holdout(frame, "user", 0.2, "timestamp")
    spec = {"text": "movie", "features": ["movie", "age", "gender", "occupation"], "segment": "occupation"}
    return frame.loc[~held].reset_index(drop=True), frame.loc[held].reset_index(drop=True), spec


def load_reviewers() -> tuple[Any, Any, dict[str, Any]]:
    from _reviewers import GROUPS, reviewer_panel

    train, test = reviewer_panel(seed=SEED)
    return train, test, {"text": "review", "features": ["review"], "segment": None, "groups": GROUPS}


def measure_serving(
    args: argparse.Namespace, work: Path, test: Any, spec: dict[str, Any], variant: str
) -> dict[str, Any]:
    """Serving latency, shared vs adapter routing (the store of ``variant``), same load."""
    from personalization_serving import measure

    print("serving: shared vs adapter routing", flush=True)
    rows = test.sample(n=min(2000, len(test)), random_state=SEED)
    records = rows[[*spec["features"], "user", "item"]].to_dict("records")
    return measure(
        work / "shared",
        work / f"store_{variant}",
        records,
        threads=args.threads,
        seconds=args.serve_seconds,
        rounds=args.serve_rounds,
        work=work / "serving",
    )


def per_user_auc(test: Any, score: np.ndarray) -> dict[str, float]:
    """ROC AUC of ``score`` on each user's test rows (users whose rows hold both classes)."""
    from sklearn.metrics import roc_auc_score

    y = (test["liked"] == "yes").to_numpy()
    out = {}
    for user, idx in test.groupby("user").indices.items():
        if len(np.unique(y[idx])) == 2:
            out[str(user)] = float(roc_auc_score(y[idx], score[idx]))
    return out


FULL_VARIANTS = ("user_head", "joint", "joint_head")
"""Variants trained for every user: the best personalised model is one of them (LoRA covers every third user)."""


def summarize(frame: Any, results: dict[str, Any]) -> dict[str, Any]:
    """The summary figures of one data set from its per-user table (also fills ``results["by_train_rows"]``)."""
    import pandas as pd

    full = frame.dropna(subset=["shared", *FULL_VARIANTS, "cf"])
    on_lora = full.dropna(subset=["user_lora"])
    summary: dict[str, Any] = {
        "auc_shared": float(full["shared"].mean()),
        "auc_user_head": float(full["user_head"].mean()),
        "auc_user_lora": float(on_lora["user_lora"].mean()),
        "auc_joint": float(full["joint"].mean()),
        "auc_joint_head": float(full["joint_head"].mean()),
        "auc_cf": float(full["cf"].mean()),
        "cf_chosen": results.get("cf_chosen") or results.get("cf", {}).get("chosen"),
        # LoRA is trained for every third user: its comparison is on those users only.
        "auc_shared_on_lora_users": float(on_lora["shared"].mean()),
        "auc_gain_lora_points": 100 * float((on_lora["user_lora"] - on_lora["shared"]).mean()),
        "users_scored": len(full),
        "users_scored_lora": len(on_lora),
    }
    gains = {v: 100 * float((full[v] - full["shared"]).mean()) for v in FULL_VARIANTS}
    if "segment" in frame:
        summary["auc_segment"] = float(full["segment"].mean())
        summary["auc_gain_segment_points"] = 100 * float((full["segment"] - full["shared"]).mean())
    best = max(gains, key=lambda k: gains[k])
    small = full[full["train_rows"] < SMALL_USER_ROWS]
    summary.update(
        best_variant=best,
        auc_gain_best_points=gains[best],
        auc_gain_vs_cf_points=100 * float((full[best] - full["cf"]).mean()),
        auc_gain_small_users=100 * float((small[best] - small["shared"]).mean()) if len(small) else None,
        auc_gain_small_users_vs_cf=100 * float((small[best] - small["cf"]).mean()) if len(small) else None,
        small_users=len(small),
        train_seconds_all_users=results[best]["train_seconds_all_users"],
        adapter_kb_per_user=results[best]["store"]["mean_bytes"] / 1024.0,
        joint_shared_kb=results["joint_head"]["store"].get("joint_shared_bytes", 0) / 1024.0,
        p99_ratio_adapter_vs_shared=(results.get("serving") or {}).get("p99_ratio_adapter_vs_shared"),
        gains_points=gains,
    )
    bins = pd.cut(full["train_rows"], [0, 19, 49, 99, np.inf], labels=["<20", "20-49", "50-99", "100+"])
    columns = [c for c in ("shared", *FULL_VARIANTS, "cf", "segment") if c in full]
    results["by_train_rows"] = {
        str(b): {"users": len(g), **{c: float(g[c].mean()) for c in columns}}
        for b, g in full.groupby(bins, observed=True)
    }
    return summary


def run_dataset(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every contender on one data set; its results and summary."""
    import pandas as pd

    from tunesmith import FineTuner
    from tunesmith.personalize.baselines import CollaborativeBaseline
    from tunesmith.personalize.personalizer import Personalizer, write_report

    train, test, spec = load_movielens() if name == "movielens" else load_reviewers()
    if args.max_users:
        # A smoke run on a few users; the committed figures always use all of them.
        keep = sorted(train["user"].unique())[: args.max_users]
        train, test = train[train["user"].isin(keep)], test[test["user"].isin(keep)]
    work = args.work / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sample = train.sample(n=min(args.shared_rows, len(train)), random_state=SEED)[[*spec["features"], "liked"]]
    print(f"[{name}] shared model: fine-tuning on {len(sample)} of {len(train)} training rows", flush=True)
    started = time.perf_counter()
    shared_ft = FineTuner(**SHARED, seed=SEED, num_threads=args.threads, text_column=spec["text"])
    shared_ft.fit(sample, target="liked").save(work / "shared")
    results: dict[str, Any] = {
        "rows": {"train": len(train), "test": len(test), "shared_train": len(sample)},
        "users": {"train": int(train["user"].nunique()), "test": int(test["user"].nunique())},
        "shared_train_seconds": time.perf_counter() - started,
    }
    cache: dict[str, Any] = {}
    lora_users = sorted(train["user"].unique())[::LORA_USER_STEP]
    variants: dict[str, dict[str, Any]] = {
        "user_head": {"user_column": "user", "adapter_kind": "head"},
        "joint": {"user_column": "user", "adapter_kind": "joint", "item_column": "item", **JOINT},
        "joint_head": {"user_column": "user", "adapter_kind": "joint,head", "item_column": "item", **JOINT},
        "user_lora": {"user_column": "user", "adapter_kind": "lora", **LORA},
    }
    if spec["segment"]:
        variants["segment"] = {"user_column": spec["segment"], "adapter_kind": "head"}
    personalizers: dict[str, Any] = {}
    print(f"[{name}] shared model's pass over {len(train)} training rows (bfloat16)", flush=True)
    first = Personalizer(work / "shared", work / "store_features", user_column="user", feature_cache=cache, **COMMON)
    started = time.perf_counter()
    first.shared_outputs(train, training=True)
    feature_seconds = time.perf_counter() - started
    results["feature_seconds"] = feature_seconds
    for variant, cols in variants.items():
        print(f"[{name}] {variant}: training adapters", flush=True)
        pers = Personalizer(
            work / "shared", work / f"store_{variant}", time_column="timestamp", feature_cache=cache,
            **COMMON, **HEAD, **cols,
        )  # fmt: skip
        started = time.perf_counter()
        pers.fit(train, users=lora_users if variant == "user_lora" else None)
        seconds = time.perf_counter() - started
        personalizers[variant] = pers
        results[variant] = {
            "fit_seconds": seconds,
            # The shared model's pass is counted once in each full variant's time (all of them use it).
            "train_seconds_all_users": seconds + (feature_seconds if variant != "user_lora" else 0.0),
            "store": pers.store.summary(),
            "joint": getattr(pers, "joint_info_", None),
        }
    print(f"[{name}] collaborative filtering baseline", flush=True)
    cf = CollaborativeBaseline("user", "item", "liked", "yes", time_column="timestamp", seed=SEED)
    cf.fit(train)
    results["cf"] = {"chosen": cf.chosen_, "validation": cf.validation_, "fit_seconds": cf.fit_seconds_}
    scores: dict[str, dict[str, float]] = {"cf": per_user_auc(test, cf.score_rows(test))}
    reports = {}
    for variant, pers in personalizers.items():
        print(f"[{name}] {variant}: evaluating", flush=True)
        rows = test[test["user"].isin(lora_users)] if variant == "user_lora" else test
        if variant == "segment":
            proba, _ = pers.predict_routed(rows)
            scores[variant] = per_user_auc(rows, proba[:, 1])
            continue
        report = pers.evaluate(rows)
        reports[variant] = report
        write_report(report, args.plots / name / variant)
        table = report["users"].dropna(subset=["auc_personal"])
        scores[variant] = dict(zip(table["user"].astype(str), table["auc_personal"], strict=True))
        if variant == "user_head":
            scores["shared"] = dict(zip(table["user"].astype(str), table["auc_shared"], strict=True))
    train_rows = train.groupby("user").size()
    frame = pd.DataFrame({k: pd.Series(v) for k, v in scores.items()})
    frame.index.name = "user"
    frame["train_rows"] = frame.index.map(train_rows).astype(int)
    frame = frame.reset_index()
    results["cf_chosen"] = cf.chosen_
    summary = summarize(frame, results)
    results["per_user"] = frame.to_dict("records")
    if name == "movielens" and not args.skip_serving:
        results["serving"] = {**measure_serving(args, work, test, spec, summary["best_variant"]),
                              "variant": summary["best_variant"]}  # fmt: skip
        summary["p99_ratio_adapter_vs_shared"] = results["serving"].get("p99_ratio_adapter_vs_shared")
    if spec.get("groups"):
        columns = [c for c in ("shared", "user_head", "joint", "joint_head", "cf", "user_lora") if c in frame]
        full = frame.dropna(subset=["shared", "user_head", "joint", "joint_head", "cf"])
        results["groups"] = spec["groups"]
        groups = test.groupby("user")["group"].first()
        results["by_group"] = {
            str(g): {c: float(part[c].mean()) for c in columns}
            for g, part in full.assign(group=full["user"].map(groups)).groupby("group")
        }
    results["targets_met"] = check_targets(summary, TARGETS)
    return {"results": results, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "personalization.json")
    p.add_argument("--threads", type=int, default=default_threads())
    p.add_argument("--plots", type=Path, default=RESULTS_DIR / "personalization")
    p.add_argument("--shared-rows", type=int, default=SHARED_TRAIN_ROWS, help="Training rows of the shared model.")
    p.add_argument("--max-users", type=int, default=0, help="Only the first N users (a smoke run; 0: all).")
    p.add_argument("--only", choices=DATASETS, action="append", help="Run only this data set (repeatable).")
    p.add_argument("--skip-serving", action="store_true", help="Do not measure serving latency.")
    p.add_argument("--serve-seconds", type=float, default=40.0, help="Load per server, over all rounds.")
    p.add_argument("--serve-rounds", type=int, default=4, help="Alternating load windows per server.")
    p.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "_work" / "personalization")
    p.add_argument(
        "--summarize",
        action="store_true",
        help="Recompute the summaries of --out from its per-user tables (no training); rewrites --out.",
    )
    args = p.parse_args(argv)
    if args.summarize:
        return resummarize(args)
    import torch

    torch.set_num_threads(args.threads)
    chosen = args.only or list(DATASETS)
    previous = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() and args.only else {}
    done: dict[str, Any] = dict(previous.get("results", {}).get("datasets", {})) if "datasets" in previous.get(
        "results", {}
    ) else {}  # fmt: skip
    for name in chosen:
        done[name] = {**run_dataset(name, args), "created": now_iso()}
        plot_contenders(name, done[name]["results"], args.plots)
        # Written after each data set: a long run that stops later keeps what it measured.
        write(args, done)
    summary = write(args, done)
    rows = []
    for name, d in done.items():
        s = d["summary"]
        for key in ("auc_shared", "auc_user_head", "auc_user_lora", "auc_joint", "auc_joint_head", "auc_cf"):
            rows.append({"data": name, "model": key.removeprefix("auc_"), "auc": s[key]})
    print()
    print(format_table(rows, [("data", "data", ""), ("model", "model", ""), ("auc", "mean per-user ROC AUC", ".4f")]))
    print()
    print_summary(summary, TARGETS, check_targets(summary, TARGETS))
    return 0


def plot_contenders(name: str, results: dict[str, Any], folder: Path) -> Path:
    """Mean per-user ROC AUC of every contender by the user's training rows, one bar per contender."""
    from tunesmith.runs.plots import plot_metric_by_group

    groups = results["by_train_rows"]
    names = {"shared": "shared", "user_head": "head", "joint": "joint", "joint_head": "joint+head", "cf": "CF"}
    models = {
        shown: {g: {"ROC AUC": v.get(key), "n_users": v["users"]} for g, v in groups.items()}
        for key, shown in names.items()
    }
    return plot_metric_by_group(
        models,
        folder / name / "contenders_by_train_rows.png",
        metric="ROC AUC",
        xlabel="training rows of the user",
        title=f"{name}: mean per-user ROC AUC by training rows",
    )


def resummarize(args: argparse.Namespace) -> int:
    """Recompute every data set's summary from the per-user table it saved, and write --out again."""
    import pandas as pd

    previous = json.loads(args.out.read_text(encoding="utf-8"))
    done = previous["results"]["datasets"]
    for d in done.values():
        d["summary"] = summarize(pd.DataFrame(d["results"]["per_user"]), d["results"])
        d["results"]["targets_met"] = check_targets(d["summary"], TARGETS)
    for name, d in done.items():
        print(f"plot written to {plot_contenders(name, d['results'], args.plots)}")
    summary = write(args, done, settings=previous["settings"])
    print_summary(summary, TARGETS, check_targets(summary, TARGETS))
    return 0


def write(args: argparse.Namespace, done: dict[str, Any], settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """bench/results/personalization.json: movielens' summary at the top (the targets), reviewers' beside it."""
    summary: dict[str, Any] = dict(done["movielens"]["summary"]) if "movielens" in done else {}
    if "reviewers" in done:
        summary["reviewers"] = done["reviewers"]["summary"]
    results = {"datasets": done, "targets_met": check_targets(summary, TARGETS) if "movielens" in done else {}}
    if "reviewers" in done:
        results["targets_met_reviewers"] = check_targets(done["reviewers"]["summary"], TARGETS)
    settings = settings or {
        "seed": SEED,
        "shared": SHARED,
        "shared_train_rows": args.shared_rows,
        "max_users": args.max_users,
        "common": COMMON,
        "head": HEAD,
        "lora": LORA,
        "lora_user_step": LORA_USER_STEP,
        "joint": JOINT,
        "serving": {"seconds": args.serve_seconds, "rounds": args.serve_rounds},
    }
    path = write_results(
        args.out,
        benchmark=BENCHMARK,
        environment=environment_info(args.threads),
        settings=settings,
        results=results,
        summary=summary,
    )
    print(f"results written to {path}", flush=True)
    return summary


if __name__ == "__main__":
    sys.exit(main())
