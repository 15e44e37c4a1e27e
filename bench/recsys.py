"""Recommendation benchmark on MovieLens-100K: pre-train on interactions, fine-tune on ratings >= 4.

All in one run (the data is read from the ``recbole`` package's bundled files, never copied):

* Protocol A (leave-last-out on the target, full ranking over all items minus those already
  seen): the test target is each user's last rating >= 4, the history everything before it.
  Popularity, BPR-MF, EASE, SASRec from scratch (trained on the target only) and SASRec
  pre-trained on every interaction then fine-tuned on the target. HR@10, NDCG@10, and more.
* Protocol B (the one Microsoft Recommenders publishes for MovieLens-100K): a 75/25 per-user
  stratified random split, top-10 over the items a user has not rated in training, binary
  relevance. NDCG@10, Precision@10, Recall@10 of tunesmith's best model.
* Cold start: 10% of the items (seeded) are removed from training entirely. For every user
  with a rating >= 4 of a cold item, the last such rating is the target and the history is
  what came before it (cold items left out). HR@10 over all items, SASRec with content vectors
  (all-MiniLM-L6-v2 embeddings of "title (year): genres") vs the same model with ids only.

Run with ``python bench/recsys.py`` (``make bench-recsys``); results in
``bench/results/recsys.json``.
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
    check_targets,
    default_threads,
    environment_info,
    format_table,
    now_iso,
    print_summary,
    ratio,
    read_results,
    write_results,
)

BENCHMARK = "recsys"
SEED = 0
KS = (5, 10, 20)
SAS = {"dim": 64, "layers": 2, "heads": 2, "max_len": 50, "dropout": 0.2}
PRETRAIN = {"epochs": 200, "lr": 1e-3, "batch_size": 128, "patience": 10, "eval_every": 2}
FINETUNE = {"epochs": 200, "lr": 3e-4, "batch_size": 128, "patience": 10, "eval_every": 1}
SCRATCH = {"epochs": 200, "lr": 1e-3, "batch_size": 128, "patience": 10, "eval_every": 2}
TARGETS = {
    "finetune_gain_relative": (">=", 0.05),
    "ndcg10_protocol_b": (">", 0.475),
    "p99_ms_recommend": ("<=", 20.0),
}


def load() -> tuple[Any, Any]:
    from tunesmith.datasets import movielens_100k
    from tunesmith.recsys.data import read_interactions

    ratings, _, items = movielens_100k()
    inter = read_interactions(ratings, user="user_id", item="item_id", time="timestamp", rating="rating")
    return inter, items


def positive_flags(inter: Any) -> list[np.ndarray]:
    """Per user code, rating >= 4 for each interaction in time order (aligned with ``sequences()``)."""
    f = inter.frame
    pos = (f["rating"].to_numpy() >= 4.0).astype(bool)
    bounds = np.searchsorted(f["user"].to_numpy(), np.arange(inter.n_users + 1))
    return [pos[bounds[u] : bounds[u + 1]] for u in range(inter.n_users)]


def ranking(score_fn: Any, holdout: Any, popularity: np.ndarray) -> dict[str, Any]:
    from tunesmith.recsys.metrics import evaluate_ranking

    return evaluate_ranking(score_fn, holdout, ks=KS, item_popularity=popularity)


def matrix_scorer(model: Any, holdout: Any) -> Any:
    return lambda pos: model.score(holdout.exclude(pos))


def seq_scorer(model: Any, holdout: Any) -> Any:
    return lambda pos: model.score([holdout.sequences[i] for i in pos])


def train_sasrec(
    split: Any,
    *,
    pretrain: bool,
    content: np.ndarray | None = None,
    known: np.ndarray | None = None,
    threads: int,
    log: Any = print,
) -> tuple[Any, dict[str, Any]]:
    from tunesmith.recsys.metrics import evaluate_ranking
    from tunesmith.recsys.sequential import SeqConfig, SequentialRecommender, TrainSettings

    train = split.train
    seqs = train.sequences()
    positives = positive_flags(train)
    model = SequentialRecommender(
        train.n_items, SeqConfig(seed=SEED, **SAS), content=content, known_items=known, threads=threads
    )

    def valid(m: Any) -> float:
        return float(evaluate_ranking(seq_scorer(m, split.valid), split.valid, ks=(10,))["overall"]["ndcg@10"])

    started = time.perf_counter()
    info: dict[str, Any] = {}
    if pretrain:
        r = model.pretrain(seqs, TrainSettings(**PRETRAIN), valid_fn=valid)
        info["pretrain"] = {"best_epoch": r.best_epoch, "valid_ndcg10": r.best_score, "seconds": r.seconds}
        log(f"  pre-trained: valid NDCG@10 {r.best_score:.4f} at epoch {r.best_epoch} ({r.seconds:.0f} s)")
        r = model.finetune(seqs, positives, TrainSettings(**FINETUNE), valid_fn=valid)
    else:
        r = model.finetune(seqs, positives, TrainSettings(**SCRATCH), valid_fn=valid)
    info["finetune"] = {"best_epoch": r.best_epoch, "valid_ndcg10": r.best_score, "seconds": r.seconds}
    info["train_seconds"] = time.perf_counter() - started
    log(f"  trained: valid NDCG@10 {r.best_score:.4f} at epoch {r.best_epoch}; {info['train_seconds']:.0f} s in all")
    return model, info


def protocol_a(inter: Any, threads: int, only: set[str]) -> dict[str, Any]:
    from tunesmith.recsys.models import BPRMF, EASE, Popularity
    from tunesmith.recsys.split import leave_last_out

    split = leave_last_out(inter, positive=inter.positive_mask(min_rating=4.0))
    train_matrix = split.train.matrix()
    popularity = np.asarray(train_matrix.sum(axis=0)).ravel()
    out: dict[str, Any] = {"split": split.sizes(), "notes": list(split.notes)}
    models: dict[str, Any] = {}
    if "pop" in only:
        models["pop"] = lambda: (Popularity().fit(train_matrix), {})
    if "ease" in only:
        models["ease"] = lambda: (EASE(l2=500.0).fit(train_matrix), {})
    if "bpr" in only:
        models["bpr"] = lambda: (BPRMF(seed=SEED).fit(train_matrix), {})
    for name, build in models.items():
        started = time.perf_counter()
        model, info = build()
        seconds = time.perf_counter() - started
        res = ranking(matrix_scorer(model, split.test), split.test, popularity)
        out[name] = {"status": "ok", "train_seconds": seconds, **info, **res}
        print(f"[A] {name}: NDCG@10 {res['overall']['ndcg@10']:.4f} HR@10 {res['overall']['hr@10']:.4f}", flush=True)
    for name, pre in (("sasrec_scratch", False), ("sasrec_finetuned", True)):
        if name not in only:
            continue
        print(f"[A] {name} ...", flush=True)
        model, info = train_sasrec(split, pretrain=pre, threads=threads)
        res = ranking(seq_scorer(model, split.test), split.test, popularity)
        out[name] = {"status": "ok", **info, **res}
        print(f"[A] {name}: NDCG@10 {res['overall']['ndcg@10']:.4f} HR@10 {res['overall']['hr@10']:.4f}", flush=True)
    return out


def protocol_b(inter: Any) -> dict[str, Any]:
    from tunesmith.recsys.metrics import evaluate_ranking
    from tunesmith.recsys.models import BPRMF, EASE, ItemKNN
    from tunesmith.recsys.split import random_ratio

    split = random_ratio(inter, test_size=0.25, seed=SEED)
    # Settings are chosen on the validation hold-out carved from the training rows, then the
    # chosen model is refitted on all training rows and scored once on test.
    vt = (split.valid_train or split.train).matrix()
    candidates: dict[str, Any] = {
        f"ease_l2_{l2:g}": (lambda l2=l2: EASE(l2=l2)) for l2 in (100.0, 250.0, 500.0, 1000.0)
    }
    candidates.update({f"itemknn_k{k}": (lambda k=k: ItemKNN(k=k)) for k in (50, 200)})
    candidates["bpr"] = lambda: BPRMF(seed=SEED)
    valid_scores = {}
    for name, make in candidates.items():
        model = make().fit(vt)
        res = evaluate_ranking(matrix_scorer(model, split.valid), split.valid, ks=(10,))
        valid_scores[name] = res["overall"]["ndcg@10"]
        print(f"[B] {name}: valid NDCG@10 {valid_scores[name]:.4f}", flush=True)
    best = max(valid_scores, key=lambda k: valid_scores[k])
    model = candidates[best]().fit(split.train.matrix())
    res = evaluate_ranking(matrix_scorer(model, split.test), split.test, ks=(10,))
    print(f"[B] best {best}: test NDCG@10 {res['overall']['ndcg@10']:.4f}", flush=True)
    return {"status": "ok", "split": split.sizes(), "valid_ndcg10": valid_scores, "chosen": best, **res}


def item_texts(inter: Any, items: Any) -> list[str]:
    table = items.set_index(items["item_id"].astype(str))
    out = []
    for item in inter.items:
        row = table.loc[str(item)]
        genres = row["genres"]
        genre_text = ", ".join(genres) if isinstance(genres, (list, tuple, np.ndarray)) else str(genres)
        year = "" if row["year"] is None or str(row["year"]) in ("<NA>", "nan") else f" ({row['year']})"
        out.append(f"{row['title']}{year}: {genre_text}")
    return out


def cold_start(inter: Any, items: Any, threads: int) -> dict[str, Any]:
    from tunesmith.backbones.embed import embed_texts
    from tunesmith.recsys.split import leave_last_out

    rng = np.random.default_rng(SEED)
    n_items = inter.n_items
    cold = np.zeros(n_items, dtype=bool)
    cold[rng.choice(n_items, size=n_items // 10, replace=False)] = True
    f = inter.frame
    item_codes = f["item"].to_numpy()
    is_cold = cold[item_codes]
    warm = inter.take(~is_cold)
    # Warm-only split for training and validation (same protocol A rules)...
    split = leave_last_out(warm, positive=warm.positive_mask(min_rating=4.0))
    # ...and cold-item targets: each user's last rating >= 4 of a cold item, history before it.
    from tunesmith.recsys.split import HoldOut

    users, targets, seqs = [], [], []
    rows, cols = [], []
    pos = f["rating"].to_numpy() >= 4.0
    bounds = np.searchsorted(f["user"].to_numpy(), np.arange(inter.n_users + 1))
    for u in range(inter.n_users):
        lo, hi = bounds[u], bounds[u + 1]
        idx = np.flatnonzero(pos[lo:hi] & is_cold[lo:hi])
        if not len(idx):
            continue
        t = lo + idx[-1]
        before = item_codes[lo:t]
        seq = before[~cold[before]]
        if not len(seq):
            continue
        users.append(u)
        targets.append(np.array([item_codes[t]], dtype=np.int32))
        seqs.append(seq.astype(np.int32))
        rows.extend([u] * len(before))
        cols.extend(before.tolist())
    import scipy.sparse as sp

    history = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(inter.n_users, n_items))
    history.data[:] = 1.0
    holdout = HoldOut(users=np.asarray(users, dtype=np.int32), targets=targets, history=history, sequences=seqs)
    print(f"[cold] {cold.sum()} cold items, {len(holdout)} users with a cold target; embedding item texts ...")
    content = embed_texts(item_texts(inter, items), "minilm-l6", max_length=64, progress=False)
    popularity = np.asarray(split.train.matrix().sum(axis=0)).ravel()
    out: dict[str, Any] = {"cold_items": int(cold.sum()), "users": len(holdout)}
    for name, vectors in (("content", content), ("id_only", None)):
        print(f"[cold] SASRec {name} ...", flush=True)
        model, info = train_sasrec(split, pretrain=True, content=vectors, known=~cold, threads=threads)
        res = ranking(seq_scorer(model, holdout), holdout, popularity)
        out[name] = {"status": "ok", **info, **res}
        print(f"[cold] {name}: HR@10 {res['overall']['hr@10']:.4f}", flush=True)
    return out


def serve_latency(threads: int, requests: int = 500) -> dict[str, Any]:
    """p50/p99 of ``POST /v1/recommend`` over HTTP at concurrency 1, for a SASRec recommender.

    The recommender (the protocol A architecture, trained briefly: latency does not depend on
    how well it ranks) is saved, served by ``tunesmith serve`` on a free loopback port, and
    asked for the top 10 of real users, one request at a time.
    """
    import asyncio
    import json
    import tempfile

    from serving import closed_loop, free_port, start, stop
    from tunesmith.datasets import movielens_100k
    from tunesmith.recsys.recommender import Recommender

    ratings, _, _ = movielens_100k()
    with tempfile.TemporaryDirectory(prefix="bench-recsys-") as tmp:
        folder = Path(tmp) / "recommender"
        rec = Recommender(
            model="sasrec",
            min_rating=4,
            pretrain=False,
            seq=SAS,
            finetune_settings={"epochs": 3},
            seed=SEED,
            threads=threads,
        ).fit(ratings, user="user_id", item="item_id", time="timestamp", rating="rating")
        rec.save(folder)
        users = sorted(ratings["user_id"].astype(str).unique().tolist())
        bodies = [json.dumps({"user": u, "k": 10}).encode() for u in users]
        port = free_port()
        cmd = [sys.executable, "-m", "tunesmith.cli", "serve", str(folder), "--port", str(port)]
        cmd += ["--backend", "torch", "--threads", str(threads)]
        proc = start(cmd, port, threads, Path(tmp) / "server.log")
        try:
            asyncio.run(closed_loop(port, "/v1/recommend", bodies, 1, 30, 30))
            c1 = asyncio.run(closed_loop(port, "/v1/recommend", bodies, 1, requests, 60))
        finally:
            code = stop(proc)
    print(f"[serve] /v1/recommend c1: p50 {c1['p50_ms']:.2f} ms, p99 {c1['p99_ms']:.2f} ms", flush=True)
    return {"status": "ok", "c1": c1, "exit_code_after_sigterm": code}


def summarise(
    a: dict[str, Any], b: dict[str, Any] | None, cold: dict[str, Any] | None, serve: dict[str, Any] | None = None
) -> dict[str, Any]:
    def get(d: dict[str, Any] | None, name: str, key: str) -> float | None:
        entry = (d or {}).get(name) or {}
        value = (entry.get("overall") or {}).get(key)
        return float(value) if isinstance(value, (int, float)) else None

    scratch, tuned = get(a, "sasrec_scratch", "ndcg@10"), get(a, "sasrec_finetuned", "ndcg@10")
    gain = ratio(tuned, scratch)
    return {
        "ndcg10_pop": get(a, "pop", "ndcg@10"),
        "ndcg10_bpr": get(a, "bpr", "ndcg@10"),
        "ndcg10_ease": get(a, "ease", "ndcg@10"),
        "ndcg10_sasrec_scratch": scratch,
        "ndcg10_sasrec_finetuned": tuned,
        "finetune_gain_relative": None if gain is None else gain - 1.0,
        "hr10_sasrec_finetuned": get(a, "sasrec_finetuned", "hr@10"),
        "ndcg10_protocol_b": ((b or {}).get("overall") or {}).get("ndcg@10"),
        "precision10_protocol_b": ((b or {}).get("overall") or {}).get("precision@10"),
        "recall10_protocol_b": ((b or {}).get("overall") or {}).get("recall@10"),
        "hr10_cold_items_content": get(cold, "content", "hr@10"),
        "hr10_cold_items_id_only": get(cold, "id_only", "hr@10"),
        "train_seconds_finetuned": ((a.get("sasrec_finetuned") or {}).get("train_seconds")),
        "p99_ms_recommend": ((serve or {}).get("c1") or {}).get("p99_ms"),
        "p50_ms_recommend": ((serve or {}).get("c1") or {}).get("p50_ms"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "recsys.json")
    p.add_argument("--threads", type=int, default=default_threads())
    p.add_argument("--only", default="pop,bpr,ease,sasrec_scratch,sasrec_finetuned,protocol_b,cold,serve")
    p.add_argument(
        "--merge", action="store_true", help="Keep the parts of an earlier result file that this run does not redo."
    )
    args = p.parse_args(argv)
    only = set(args.only.split(","))
    import torch

    torch.set_num_threads(args.threads)
    inter, items = load()
    earlier = read_results(args.out, BENCHMARK) if args.merge else {}
    a = protocol_a(inter, args.threads, only)
    if args.merge:
        a = {**(earlier.get("protocol_a") or {}), **a}
    b = protocol_b(inter) if "protocol_b" in only else earlier.get("protocol_b")
    cold = cold_start(inter, items, args.threads) if "cold" in only else earlier.get("cold_start")
    serve = serve_latency(args.threads) if "serve" in only else earlier.get("serve")
    summary = summarise(a, b, cold, serve)
    checks = check_targets(summary, TARGETS)
    path = write_results(
        args.out,
        benchmark=BENCHMARK,
        environment=environment_info(args.threads),
        settings={
            "seed": SEED,
            "ks": list(KS),
            "sasrec": SAS,
            "pretrain": PRETRAIN,
            "finetune": FINETUNE,
            "scratch": SCRATCH,
            "created": now_iso(),
        },
        results={"protocol_a": a, "protocol_b": b, "cold_start": cold, "serve": serve, "targets_met": checks},
        summary=summary,
    )
    rows = [
        {
            "model": name,
            **{k: (a[name].get("overall") or {}).get(k) for k in ("hr@10", "ndcg@10", "mrr", "coverage@10")},
        }
        for name in ("pop", "bpr", "ease", "sasrec_scratch", "sasrec_finetuned")
        if name in a
    ]
    print()
    print(
        format_table(
            rows,
            [
                ("model", "protocol A", ""),
                ("hr@10", "HR@10", ".4f"),
                ("ndcg@10", "NDCG@10", ".4f"),
                ("mrr", "MRR", ".4f"),
                ("coverage@10", "coverage@10", ".3f"),
            ],
        )
    )
    print()
    print_summary(summary, TARGETS, checks)
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
