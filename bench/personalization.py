"""Personalisation on MovieLens-100K: one shared classifier vs per-user and per-segment adapters.

Task: will the user rate the movie >= 4, from the movie's text ("title (year): genres") and
the user's features (age, gender, occupation). Each user's ratings are split in time order:
the last 20% are that user's test rows. All in one run:

* shared: all-MiniLM-L6-v2 fine-tuned on a sample of every user's training rows (the same
  model serves every user);
* user_head: a head adapter per user (bias + rank-4 correction of the shared logits over the
  shared model's features), trained on the user's earlier training rows, kept only where it
  beats the shared model on the user's latest training rows;
* user_lora: a LoRA adapter per user on the last feed-forward projection of the shared
  encoder, validated the same way;
* segment: head adapters per occupation.

Per-user ROC AUC on each user's test rows (users whose test rows hold both classes), the mean
over users, and by the number of training rows; plots per variant in
``bench/results/personalization/``. Serving: the shared model and the same model with adapter
routing behind ``tunesmith serve``, one user per request, same load, p99 ratio. Run with
``python bench/personalization.py``; results in ``bench/results/personalization.json``.
"""

from __future__ import annotations

import argparse
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
HEAD = {"rank": 4, "l2": 1e-2, "steps": 100, "lr": 0.05, "min_rows": 10, "valid_fraction": 0.2}
LORA = {"lora_rank": 4, "lora_alpha": 8.0, "lora_steps": 40, "lora_lr": 0.02}
# LoRA adapters need each user's rows through the encoder again (about 15 minutes for all 943
# users here), so the run trains them for every third user and compares on those users.
LORA_USER_STEP = 3
TARGETS = {
    "auc_gain_best_points": (">=", 3.0),
    "auc_gain_small_users": (">=", 0.0),
    "adapter_kb_per_user": ("<=", 64.0),
    "train_seconds_all_users": ("<=", 600.0),
    "p99_ratio_adapter_vs_shared": ("<=", 1.25),
}


def load() -> Any:
    import pandas as pd

    from tunesmith.datasets import movielens_100k
    from tunesmith.personalize.personalizer import time_ordered_holdout

    ratings, users, items = movielens_100k()
    df = ratings.merge(users, on="user_id").merge(items, on="item_id")
    genres = df["genres"].map(lambda g: ", ".join(g) if isinstance(g, (list, tuple, np.ndarray)) else str(g))
    frame = pd.DataFrame(
        {
            "user": df["user_id"].astype(str),
            "timestamp": df["timestamp"],
            "movie": df["title"].astype(str) + " (" + df["year"].astype(str) + "): " + genres,
            "age": pd.to_numeric(df["age"], errors="coerce"),
            "gender": df["gender"],
            "occupation": df["occupation"],
            "liked": np.where(df["rating"] >= 4, "yes", "no"),
        }
    )
    held = time_ordered_holdout(frame, "user", 0.2, "timestamp")
    return frame.loc[~held].reset_index(drop=True), frame.loc[held].reset_index(drop=True)


def measure_serving(args: argparse.Namespace, test: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Serving latency, shared vs adapter routing, for the head and the LoRA stores in ``args.work``."""
    from personalization_serving import measure

    print("serving: shared vs adapter routing", flush=True)
    rows = test.sample(n=min(2000, len(test)), random_state=SEED)
    records = rows[["movie", "age", "gender", "occupation", "user"]].to_dict("records")
    results = {}
    for name in ("user_head", "user_lora"):
        results[f"serving_{name}"] = measure(
            args.work / "shared",
            args.work / f"store_{name}",
            records,
            threads=args.threads,
            seconds=args.serve_seconds,
            rounds=args.serve_rounds,
            work=args.work / f"serving_{name}",
        )
    summary = {
        "p99_ratio_adapter_vs_shared": results["serving_user_head"].get("p99_ratio_adapter_vs_shared"),
        "p99_ratio_lora_vs_shared": results["serving_user_lora"].get("p99_ratio_adapter_vs_shared"),
    }
    return results, summary


def serving_only(args: argparse.Namespace, test: Any) -> int:
    """Re-measure serving on the last full run's model and stores; keep its other figures."""
    import json

    previous = json.loads(args.out.read_text(encoding="utf-8"))
    serving_results, serving_summary = measure_serving(args, test)
    results = {**previous["results"], **serving_results}
    summary = {**previous["summary"], **serving_summary}
    results["targets_met"] = check_targets(summary, TARGETS)
    settings = {
        **previous["settings"],
        "serving": {"seconds": args.serve_seconds, "rounds": args.serve_rounds, "measured": now_iso()},
    }
    path = write_results(
        args.out,
        benchmark=BENCHMARK,
        environment=environment_info(args.threads),
        settings=settings,
        results=results,
        summary=summary,
    )
    for key in ("p99_ratio_adapter_vs_shared", "p99_ratio_lora_vs_shared"):
        print(f"{key}: {summary[key]}")
    print(f"results written to {path}")
    return 0


def retime_head(args: argparse.Namespace, train: Any) -> int:
    """Time the head variant's training again (features of every row + all adapters) on the last
    full run's shared model, into a new store; check that every adapter equals the one that run
    wrote, and update ``train_seconds_all_users``. The other figures stay those of that run."""
    import json

    import torch

    from tunesmith.personalize.personalizer import Personalizer
    from tunesmith.personalize.store import AdapterStore

    previous = json.loads(args.out.read_text(encoding="utf-8"))
    torch.set_num_threads(args.threads)
    folder = args.work / "store_user_head_retimed"
    shutil.rmtree(folder, ignore_errors=True)
    head = {k: HEAD[k] for k in ("rank", "l2", "steps", "lr")}
    pers = Personalizer(
        args.work / "shared",
        folder,
        user_column="user",
        time_column="timestamp",
        min_rows=HEAD["min_rows"],
        valid_fraction=HEAD["valid_fraction"],
        seed=SEED,
        **head,
    )
    started = time.perf_counter()
    pers.shared_outputs(train)
    feature_seconds = time.perf_counter() - started
    pers.fit(train)
    seconds = time.perf_counter() - started
    old = AdapterStore(args.work / "store_user_head", pers.base_fingerprint)
    same = sum(
        1
        for key in pers.store
        if all(torch.equal(a, b) for a, b in zip(pers.store.load(key).values(), old.load(key).values(), strict=True))
    )
    print(f"head adapters: {seconds:.1f} s ({feature_seconds:.1f} s features); {same}/{len(pers.store)} identical")
    results = {
        **previous["results"],
        "user_head_retimed": {
            "fit_seconds": seconds,
            "feature_seconds": feature_seconds,
            "adapters_identical_to_full_run": same,
            "adapters": len(pers.store),
        },
    }
    summary = {**previous["summary"], "train_seconds_all_users": seconds}
    results["targets_met"] = check_targets(summary, TARGETS)
    path = write_results(
        args.out,
        benchmark=BENCHMARK,
        environment=environment_info(args.threads),
        settings={**previous["settings"], "head_retimed": now_iso()},
        results=results,
        summary=summary,
    )
    print(f"results written to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "personalization.json")
    p.add_argument("--threads", type=int, default=default_threads())
    p.add_argument("--plots", type=Path, default=RESULTS_DIR / "personalization")
    p.add_argument("--shared-rows", type=int, default=SHARED_TRAIN_ROWS, help="Training rows of the shared model.")
    p.add_argument("--max-users", type=int, default=0, help="Only the first N users (a smoke run; 0: all).")
    p.add_argument("--skip-serving", action="store_true", help="Do not measure serving latency.")
    p.add_argument("--serve-seconds", type=float, default=40.0, help="Load per server, over all rounds.")
    p.add_argument("--serve-rounds", type=int, default=4, help="Alternating load windows per server.")
    p.add_argument(
        "--retime-head",
        action="store_true",
        help="Train the head adapters again on the last full run's shared model (in --work), check they are "
        "identical, and update train_seconds_all_users in --out.",
    )
    p.add_argument(
        "--serving-only",
        action="store_true",
        help="Measure serving again on the shared model and stores of the last full run (in --work) and "
        "update --out; the accuracy figures stay those of that run.",
    )
    p.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "_work" / "personalization")
    args = p.parse_args(argv)
    import torch

    from tunesmith import FineTuner
    from tunesmith.personalize.personalizer import Personalizer

    torch.set_num_threads(args.threads)
    train, test = load()
    if args.serving_only:
        return serving_only(args, test)
    if args.retime_head:
        return retime_head(args, train)
    if args.max_users:
        # A smoke run on a few users; the committed figures always use all of them.
        keep = sorted(train["user"].unique(), key=int)[: args.max_users]
        train, test = train[train["user"].isin(keep)], test[test["user"].isin(keep)]
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    features = ["movie", "age", "gender", "occupation", "liked"]
    sample = train.sample(n=min(args.shared_rows, len(train)), random_state=SEED)[features]
    print(f"shared model: fine-tuning on {len(sample)} of {len(train)} training rows", flush=True)
    started = time.perf_counter()
    FineTuner(**SHARED, seed=SEED, num_threads=args.threads, text_column="movie").fit(sample, target="liked").save(
        args.work / "shared"
    )
    shared_seconds = time.perf_counter() - started
    results: dict[str, Any] = {"rows": {"train": len(train), "test": len(test), "shared_train": len(sample)}}
    results["shared_train_seconds"] = shared_seconds

    head = {k: HEAD[k] for k in ("rank", "l2", "steps", "lr")}
    variants = {
        "user_head": {"user_column": "user", "adapter_kind": "head"},
        "user_lora": {"user_column": "user", "adapter_kind": "lora", **LORA},
        "segment": {"user_column": "occupation", "adapter_kind": "head"},
    }
    personalizers: dict[str, Any] = {}
    # The shared model's features are computed once per run and reused by the head variants.
    cache: dict[str, Any] = {}
    for name, cols in variants.items():
        print(f"{name}: training adapters", flush=True)
        pers = Personalizer(
            args.work / "shared",
            args.work / f"store_{name}",
            time_column="timestamp",
            min_rows=HEAD["min_rows"],
            valid_fraction=HEAD["valid_fraction"],
            seed=SEED,
            feature_cache=cache,
            **cols,
            **head,
        )
        if cols["adapter_kind"] == "head":
            # Counted in the head variant's training time: the shared model's features of every row.
            started = time.perf_counter()
            pers.shared_outputs(train)
            feature_seconds = time.perf_counter() - started if name == "user_head" else 0.0
        else:
            feature_seconds = 0.0
        started = time.perf_counter()
        chosen = None
        if cols["adapter_kind"] == "lora":
            chosen = sorted(train["user"].unique(), key=int)[::LORA_USER_STEP]
        pers.fit(train, users=chosen)
        fit_seconds = time.perf_counter() - started + feature_seconds
        personalizers[name] = pers
        results[name] = {"fit_seconds": fit_seconds, "feature_seconds": feature_seconds, "store": pers.store.summary()}
    # Per-user scores of every variant on the same users and rows. The segment variant (grouped by
    # occupation) is scored per user from its routed probabilities.
    from sklearn.metrics import roc_auc_score

    from tunesmith.personalize.personalizer import write_report

    y = (test["liked"] == "yes").to_numpy()
    reports = {}
    lora_users = set(sorted(train["user"].unique(), key=int)[::LORA_USER_STEP])
    for name in ("user_head", "user_lora"):
        print(f"{name}: evaluating", flush=True)
        rows = test if name == "user_head" else test[test["user"].isin(lora_users)]
        reports[name] = personalizers[name].evaluate(rows)
        write_report(reports[name], args.plots / name)
    user_eval = reports["user_head"]["users"].rename(columns={"auc_personal": "auc_user_head"})
    lora_auc = reports["user_lora"]["users"].set_index("user")["auc_personal"]
    proba_seg, _ = personalizers["segment"].predict_routed(test)
    seg_auc = {}
    for user, idx in test.groupby("user").indices.items():
        if len(np.unique(y[idx])) == 2:
            seg_auc[user] = float(roc_auc_score(y[idx], proba_seg[idx, 1]))
    user_eval = user_eval.assign(
        auc_user_lora=user_eval["user"].map(lora_auc), auc_segment=user_eval["user"].map(seg_auc)
    )
    valid = user_eval.dropna(subset=["auc_shared", "auc_user_head"])
    on_lora = valid.dropna(subset=["auc_user_lora"])
    summary: dict[str, Any] = {
        "auc_shared": float(valid["auc_shared"].mean()),
        "auc_user_head": float(valid["auc_user_head"].mean()),
        "auc_user_lora": float(on_lora["auc_user_lora"].mean()),
        "auc_segment": float(valid["auc_segment"].mean()),
        # LoRA is trained for every third user: its comparison is on those users only.
        "auc_shared_on_lora_users": float(on_lora["auc_shared"].mean()),
        "auc_user_head_on_lora_users": float(on_lora["auc_user_head"].mean()),
        "auc_gain_lora_points": 100 * float((on_lora["auc_user_lora"] - on_lora["auc_shared"]).mean()),
        "users_scored_lora": len(on_lora),
        "adapter_kb_per_user": results["user_head"]["store"]["mean_bytes"] / 1024.0,
        "adapter_kb_per_user_lora": results["user_lora"]["store"]["mean_bytes"] / 1024.0,
        "train_seconds_all_users": results["user_head"]["fit_seconds"],
        "train_seconds_lora_users": results["user_lora"]["fit_seconds"],
        "p99_ratio_adapter_vs_shared": None,
        "users_scored": len(valid),
        "users_with_used_adapter": int(results["user_head"]["store"]["user"]["used"]),
        "users_with_used_lora_adapter": int(results["user_lora"]["store"]["user"]["used"]),
    }
    gains = {
        "auc_user_head": 100 * (summary["auc_user_head"] - summary["auc_shared"]),
        "auc_segment": 100 * (summary["auc_segment"] - summary["auc_shared"]),
        "auc_user_lora": summary["auc_gain_lora_points"],
    }
    best_name = max(gains, key=lambda k: gains[k])
    summary["best_variant"] = best_name
    summary["auc_gain_best_points"] = gains[best_name]
    scored = on_lora if best_name == "auc_user_lora" else valid
    small = scored[scored["train_rows"] < 20]
    summary["auc_gain_small_users"] = float((small[best_name] - small["auc_shared"]).mean()) if len(small) else None
    summary["small_users"] = len(small)
    if not args.skip_serving:
        serving_results, serving_summary = measure_serving(args, test)
        results.update(serving_results)
        summary.update(serving_summary)
    checks = check_targets(summary, TARGETS)
    results["by_train_rows"] = {name: r["summary"]["by_train_rows"] for name, r in reports.items()}
    results["per_user"] = valid.to_dict("records")
    results["targets_met"] = checks
    path = write_results(
        args.out,
        benchmark=BENCHMARK,
        environment=environment_info(args.threads),
        settings={
            "seed": SEED,
            "shared": SHARED,
            "shared_train_rows": args.shared_rows,
            "max_users": args.max_users,
            "head": HEAD,
            "lora": LORA,
            "created": now_iso(),
            "serving": {"seconds": args.serve_seconds, "rounds": args.serve_rounds},
        },
        results=results,
        summary=summary,
    )
    rows = [
        {"model": "shared (fine-tuned on all users)", "auc": summary["auc_shared"]},
        {"model": "per-user head adapters", "auc": summary["auc_user_head"]},
        {"model": "per-user LoRA adapters", "auc": summary["auc_user_lora"]},
        {"model": "per-occupation head adapters", "auc": summary["auc_segment"]},
    ]
    print()
    print(format_table(rows, [("model", "model", ""), ("auc", "mean per-user ROC AUC", ".4f")]))
    print()
    print_summary(summary, TARGETS, checks)
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
