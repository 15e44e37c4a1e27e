"""Active-learning stage of bench/few_labels.py: labels each query strategy needs, against random sampling.

Rotten Tomatoes fresh/rotten: the pool is the training split of ``rotten_tomatoes_split(seed=0)``
(its labels play the person who answers), the score is accuracy on its test split. Every text
is embedded once with the frozen MiniLM encoder; each round fits a logistic regression on the
labeled rows' vectors (the cheap head update ``tunesmith label`` does between batches), scores
it, and asks :func:`tunesmith.data.query.query` for the next 25 rows. Per seed: 25 random
labels to start (the same for every strategy), then 20 rounds of 25.

``labels_to_95pct_full``: the first label count at which a strategy's accuracy reaches 95% of
the accuracy of the same model trained on the whole pool. small-text's BreakingTies runs on the
same vectors, starting rows and model in its own environment (bench/_few_labels_smalltext.py).

Usage::

    python bench/_few_labels_active.py --out FILE.json [--seeds 10] [--rounds 20] [--smalltext-python PY]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent


def embed_rt(threads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    import torch

    from tunesmith.backbones import create_backbone
    from tunesmith.backbones.embed import run_batches
    from tunesmith.datasets import rotten_tomatoes_split

    torch.set_num_threads(threads)
    train, _, test = rotten_tomatoes_split(seed=0)
    encoder = create_backbone("minilm-l6")

    def vectors(texts: list[str]) -> np.ndarray:
        ids = encoder.tokenize(texts, 128)
        return run_batches(encoder, ids, 128, encoder.pad_id, progress=True, description="embedding")

    classes = sorted(train["label"].unique())
    y = train["label"].map(classes.index).to_numpy()
    y_test = test["label"].map(classes.index).to_numpy()
    return vectors(train["text"].tolist()), y, vectors(test["text"].tolist()), y_test


def model(x: np.ndarray, y: np.ndarray) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000).fit(x, y)


def run_strategy(
    strategy: str,
    x: np.ndarray,
    y: np.ndarray,
    xt: np.ndarray,
    yt: np.ndarray,
    start: np.ndarray,
    rounds: int,
    batch: int,
    seed: int,
) -> list[tuple[int, float]]:
    from tunesmith.data.query import NEEDS_EMBEDDINGS, query

    labeled = list(start)
    curve = []
    for r in range(rounds + 1):
        clf = model(x[labeled], y[labeled])
        curve.append((len(labeled), float(np.mean(clf.predict(xt) == yt))))
        if r == rounds:
            break
        pool = np.setdiff1d(np.arange(len(y)), labeled)
        kwargs: dict[str, Any] = {"seed": seed + r}
        if strategy in NEEDS_EMBEDDINGS:
            kwargs["embeddings"] = x[pool]
            kwargs["labeled_embeddings"] = x[labeled]
        picked = query(strategy, clf.predict_proba(x[pool]), batch, **kwargs)
        labeled.extend(pool[np.asarray(picked)].tolist())
    return curve


def first_reaching(curve: list[tuple[int, float]], target: float) -> int | None:
    for labels, acc in curve:
        if acc >= target:
            return labels
    return None


def query_seconds(x: np.ndarray, y: np.ndarray, pool_size: int, repeats: int = 3) -> dict[str, float]:
    """Seconds to choose 25 of ``pool_size`` rows (median of ``repeats``), per strategy."""
    from tunesmith.data.query import NEEDS_EMBEDDINGS, STRATEGIES, query

    rng = np.random.default_rng(0)
    labeled = rng.choice(len(y), 500, replace=False)
    pool = np.setdiff1d(np.arange(len(y)), labeled)[:pool_size]
    proba = model(x[labeled], y[labeled]).predict_proba(x[pool])
    out = {}
    for strategy in STRATEGIES:
        times = []
        for i in range(repeats):
            kwargs: dict[str, Any] = {"seed": i}
            if strategy in NEEDS_EMBEDDINGS:
                kwargs |= {"embeddings": x[pool], "labeled_embeddings": x[labeled]}
            t = time.perf_counter()
            query(strategy, proba, 25, **kwargs)
            times.append(time.perf_counter() - t)
        out[strategy] = float(np.median(times))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--initial", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smalltext-python", default=None)
    args = parser.parse_args()

    from tunesmith.data.query import STRATEGIES

    x, y, xt, yt = embed_rt(args.threads)
    acc_full = float(np.mean(model(x, y).predict(xt) == yt))
    target = 0.95 * acc_full
    starts = {s: np.random.default_rng(1000 + s).choice(len(y), args.initial, replace=False) for s in range(args.seeds)}
    curves: dict[str, dict[int, list[tuple[int, float]]]] = {}
    for strategy in STRATEGIES:
        t = time.perf_counter()
        curves[strategy] = {
            s: run_strategy(strategy, x, y, xt, yt, start, args.rounds, args.batch, s) for s, start in starts.items()
        }
        print(f"{strategy}: {time.perf_counter() - t:.1f} s", flush=True)
    if args.smalltext_python:
        with tempfile.TemporaryDirectory() as tmp:
            np.savez(Path(tmp) / "data.npz", x=x, y=y, xt=xt, yt=yt, starts=np.stack(list(starts.values())))
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            cmd = [args.smalltext_python, str(BENCH_DIR / "_few_labels_smalltext.py"), str(Path(tmp) / "data.npz")]
            cmd += [str(Path(tmp) / "out.json"), str(args.rounds), str(args.batch)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if done.returncode == 0:
                found = json.loads((Path(tmp) / "out.json").read_text())
                curves["smalltext_breaking_ties"] = {int(k): [tuple(p) for p in v] for k, v in found.items()}
            else:
                print("small-text failed:", done.stderr[-2000:], flush=True)
    reached = {name: {s: first_reaching(c, target) for s, c in per_seed.items()} for name, per_seed in curves.items()}
    result = {
        "acc_full_pool": acc_full,
        "target_acc": target,
        "pool_rows": len(y),
        "test_rows": len(yt),
        "curves": {name: {str(s): c for s, c in per.items()} for name, per in curves.items()},
        "labels_to_95pct_full": {name: {str(s): v for s, v in per.items()} for name, per in reached.items()},
        "query_seconds_10k_pool": query_seconds(x, y, 10_000),
    }
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
