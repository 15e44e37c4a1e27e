"""Drift monitoring: false alarms, detection power against BBSD and Evidently, performance
estimation on ACS employment against NannyML's CBPE, alert precision, and speed.

    python bench/monitoring.py            # the full run (fits three models once, then caches them)
    python bench/monitoring.py --quick    # tiny models, few windows: a smoke test in a minute or two

Detection: every window is monitored on its own (``tunesmith.monitor`` with one window of
500 rows) against a reference of held-out labeled rows the model never trained on; a window
counts as detected when any signal drifts or the estimated performance alerts (no labels are
given). BBSD is the KS test per class on the same model's softmax outputs (Bonferroni over
classes, alpha 0.05), as in *Failing Loudly*; Evidently runs its default DataDriftPreset in
its own environment (pandas < 3) on the same windows (text: the text column; tables: the
columns; images: 7x7 mean-pooled pixels, a tabular view). Performance: ACS Massachusetts
employment, reference 2015, 21 chunks of 10,000 rows of 2016-2018, NannyML's CBPE run in the
same bench on the same chunks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BENCH_DIR,
    RESULTS_DIR,
    check_targets,
    environment_info,
    format_table,
    print_summary,
    write_results,
)
from _monitoring_data import Domain, acs_ma, all_domains, car_loans, fit_models, image_array, pixels_view
from _monitoring_peers_env import run_peer

WORK = BENCH_DIR / "_work" / "monitoring"
TARGETS = {
    "false_alarm_rate": ("<=", 0.05),
    "performance_estimate_mae": ("<=", 0.004),
    "alert_precision": (">=", 0.8),
    "monitor_seconds_per_1k_rows": ("<=", 1.0),
}


class CachedModel:
    """A fitted estimator whose outputs and embeddings are remembered per input row.

    Null and label-prior windows reuse pool rows again and again; computing each row once
    keeps the bench to minutes without changing any figure (the model is deterministic).
    """

    def __init__(self, est: Any, modality: str) -> None:
        self._est = est
        self._modality = modality
        self._cache: dict[str, dict[bytes, np.ndarray]] = {"proba": {}, "embed": {}}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._est, name)

    def _keys(self, data: Any) -> list[bytes]:
        if self._modality == "image":
            return [hashlib.sha1(np.ascontiguousarray(x).tobytes()).digest() for x in data]
        cols = [c for c in data.columns if c != "label"]
        return [hashlib.sha1(json.dumps([str(r[c]) for c in cols]).encode()).digest() for _, r in data.iterrows()]

    def _run(self, what: str, data: Any) -> np.ndarray:
        keys = self._keys(data)
        cache = self._cache[what]
        todo = [i for i, k in enumerate(keys) if k not in cache]
        if todo:
            part = data[todo] if self._modality == "image" else data.iloc[todo]
            fn = self._est.predict_proba if what == "proba" else self._est.embed
            out = np.asarray(fn(part))
            for i, row in zip(todo, out, strict=True):
                cache[keys[i]] = row
        return np.stack([cache[k] for k in keys])

    def predict_proba(self, data: Any) -> np.ndarray:
        return self._run("proba", data)

    def embed(self, data: Any) -> np.ndarray:
        return self._run("embed", data)

    def predict(self, data: Any) -> np.ndarray:
        return np.asarray(self._est.classes_)[self.predict_proba(data).argmax(axis=1)]


def monitor_input(domain: Domain, frame: pd.DataFrame) -> pd.DataFrame:
    """The window as the monitor reads it: images as one array per cell, no labels."""
    return frame.drop(columns=[domain.target]).reset_index(drop=True)


def evidently_view(domain: Domain, frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """What a user of Evidently would give it for this modality, and its column types."""
    if domain.modality == "image":
        view = pixels_view(frame)
        return view, {"numerical": list(view.columns), "categorical": [], "text": []}
    x = frame.drop(columns=[domain.target])
    if domain.modality == "text":
        return x, {"numerical": [], "categorical": [], "text": ["text"]}
    num = [c for c in x.columns if pd.api.types.is_numeric_dtype(x[c])]
    return x, {"numerical": num, "categorical": [c for c in x.columns if c not in num], "text": []}


def run_domain(domain: Domain, model: Any, n_null: int, n_case: int, n: int, seed: int) -> dict[str, Any]:
    """Monitor every null and shifted window; tunesmith's and BBSD's decisions, Evidently's inputs."""
    from tunesmith.monitor import build_reference, make_settings, monitor
    from tunesmith.monitor.reference import model_input
    from tunesmith.monitor.stats import bbsd_test

    settings = make_settings(window_rows=n, min_window_rows=min(100, n), seed=seed)
    t0 = time.perf_counter()
    ref = build_reference(model, domain.holdout, target=domain.target, settings=settings)
    ref_seconds = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    windows: list[tuple[str, pd.DataFrame]] = [("null", domain.null_window(rng, n)) for _ in range(n_null)]
    for case in domain.cases:
        windows += [(case.name, case.window(rng, n)) for _ in range(n_case)]
    rows = []
    for i, (name, frame) in enumerate(windows):
        cur = monitor_input(domain, frame)
        if domain.modality == "image":
            cur = pd.DataFrame({"image": list(image_array(frame))})
        res = monitor(model, ref, cur, settings=settings, progress_bar=False)
        w = res.result["windows"][0]
        # BBSD as Failing Loudly runs it: KS per class probability, Bonferroni, alpha 0.05.
        bbsd = bbsd_test(ref.outputs.scores, model.predict_proba(model_input(cur, ref.spec))).p_value
        fired = sorted(k.split(":")[0] for k, v in w["values"].items() if v["drift"] or v["alert"])
        rows.append(
            {
                "case": name,
                "tunesmith": bool(w["drift"] or w["alert"]),
                "bbsd": bool(bbsd < 0.05),
                "families": sorted(set(fired)),
            }
        )
        if (i + 1) % 25 == 0:
            print(f"  {domain.modality}: {i + 1}/{len(windows)} windows", flush=True)
    return {"rows": rows, "windows": windows, "reference_seconds": ref_seconds}


def run_evidently(domain: Domain, windows: list[tuple[str, pd.DataFrame]]) -> list[bool | None]:
    """Evidently's dataset-drift decision per window, in its own environment."""
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        folder = Path(tmp)
        (folder / "windows").mkdir()
        assert domain.holdout is not None
        ref, spec = evidently_view(domain, domain.holdout)
        ref.to_parquet(folder / "reference.parquet")
        (folder / "spec.json").write_text(json.dumps(spec))
        for i, (_, frame) in enumerate(windows):
            evidently_view(domain, frame)[0].to_parquet(folder / "windows" / f"{i:04d}.parquet")
        out = run_peer("evidently", folder, folder / "out.json", timeout=3600)
    decisions: dict[str, bool] = {w["name"]: bool(w["drift"]) for w in out["windows"]}
    return [decisions.get(f"{i:04d}") for i in range(len(windows))]


def performance(
    name: str,
    reference: pd.DataFrame,
    analysis: pd.DataFrame,
    *,
    target: str,
    proba: str,
    prediction: str,
    chunk: int,
    drop: list[str],
    seed: int,
) -> dict[str, Any]:
    """Label-free accuracy per chunk against the measured one, beside NannyML's CBPE on the same chunks.

    A chunk's accuracy really dropped when its measured accuracy is below the threshold for
    its rows (the realized signal's own alert); ``alert_precision`` is the share of the
    estimate's alerts that are such chunks.
    """
    from tunesmith.monitor import monitor

    t0 = time.perf_counter()
    res = monitor(
        None,
        reference.drop(columns=drop),
        analysis.drop(columns=drop),
        target=target,
        proba=proba,
        prediction=prediction,
        window_rows=chunk,
        embedding_rows=0,
        progress_bar=False,
        seed=seed,
    )
    seconds = time.perf_counter() - t0
    res.save(WORK / f"{name}_report")
    frame = res.windows()
    est = frame[frame.signal == "performance:estimated accuracy"].set_index("window")
    real = frame[frame.signal == "performance:realized accuracy"].set_index("window")
    errors = (est.value - real.value).abs()
    covered = ((real.value >= est.lower) & (real.value <= est.upper)).mean()
    alerts = est.index[est.alert].tolist()
    true_drop = real.index[real.alert].tolist()
    precision = (len(set(alerts) & set(true_drop)) / len(alerts)) if alerts else None
    recall = (len(set(alerts) & set(true_drop)) / len(true_drop)) if true_drop else None
    inputs = frame[frame.signal.str.startswith("input:")]
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        folder = Path(tmp)
        reference.to_parquet(folder / "reference.parquet")
        analysis.to_parquet(folder / "analysis.parquet")
        spec = {
            "y_pred_proba": proba,
            "y_pred": prediction,
            "y_true": target,
            "chunk_size": chunk,
            "metric": "accuracy",
        }
        (folder / "spec.json").write_text(json.dumps(spec))
        cbpe = run_peer("cbpe", folder, folder / "out.json", timeout=1800)
    cbpe_alerts = [c["chunk"] for c in cbpe["chunks"] if c.get("alert")]
    cbpe_precision = (len(set(cbpe_alerts) & set(true_drop)) / len(cbpe_alerts)) if cbpe_alerts else None
    return {
        "chunks": len(est),
        "chunk_rows": chunk,
        "mae": float(errors.mean()),
        "max_error": float(errors.max()),
        "interval_coverage": float(covered),
        "method": res.result["reference"]["performance"]["method"],
        "threshold": res.result["reference"]["performance"]["lower_threshold"],
        "estimated": est.value.round(5).tolist(),
        "realized": real.value.round(5).tolist(),
        "alerts": alerts,
        "chunks_really_below_threshold": true_drop,
        "alert_precision": precision,
        "alert_recall": recall,
        "univariate_drift_share": float(inputs.drift.mean()),
        "cbpe_mae": cbpe.get("mae"),
        "cbpe_alerts": cbpe_alerts,
        "cbpe_alert_precision": cbpe_precision,
        "seconds": seconds,
        "cbpe_seconds": cbpe.get("seconds"),
    }


def performance_sets(seed: int) -> dict[str, Any]:
    """ACS employment (the target's data) and the synthetic car loans (a known drop)."""
    acs_ref, acs_an = acs_ma(WORK)
    car_ref, car_an = car_loans(WORK)
    return {
        "acs": performance(
            "acs",
            acs_ref,
            acs_an,
            target="employed",
            proba="predicted_probability",
            prediction="prediction",
            chunk=10_000,
            drop=["id", "year"],
            seed=seed,
        ),
        "car_loans": performance(
            "car_loans",
            car_ref,
            car_an,
            target="repaid",
            proba="y_pred_proba",
            prediction="y_pred",
            chunk=5_000,
            drop=["id", "timestamp"],
            seed=seed,
        ),
    }


def recommender_by_time(seed: int) -> dict[str, Any]:
    """MovieLens-100K by time: an EASE recommender trained on the first 60% of the ratings, the
    next 10% as reference, the last 30% monitored week by week (who asks, what they rate, what it
    recommends, NDCG@10 on each week's interactions)."""
    from tunesmith import Recommender
    from tunesmith.datasets import movielens_100k
    from tunesmith.monitor import monitor

    ratings = movielens_100k()[0].sort_values("timestamp", kind="stable").reset_index(drop=True)
    ratings["time"] = pd.to_datetime(ratings["timestamp"], unit="s", utc=True)
    a, b = int(len(ratings) * 0.6), int(len(ratings) * 0.7)
    train, ref, cur = ratings.iloc[:a], ratings.iloc[a:b], ratings.iloc[b:]
    rec = Recommender(model="ease", min_rating=4, runs_dir="", seed=seed)
    rec.fit(train.drop(columns=["time"]), target="rating")
    t0 = time.perf_counter()
    res = monitor(
        rec,
        ref.drop(columns=["time"]),
        cur,
        window_time="W",
        time_column="time",
        window_rows=2000,
        min_window_rows=200,
        progress_bar=False,
        seed=seed,
    )
    seconds = time.perf_counter() - t0
    res.save(WORK / "movielens_report")
    frame = res.windows()
    ndcg = frame[frame.signal == "performance:realized ndcg@10"]
    new_users = frame[frame.signal == "input:user.known"]
    return {
        "windows": len(res.result["windows"]),
        "status": res.status,
        "reference": res.result["reference"]["performance"],
        "ndcg_per_week": ndcg.value.round(4).tolist(),
        "ndcg_alerts": int(ndcg.alert.sum()),
        "user_known_drift_weeks": int(new_users.drift.sum()),
        "drifting_signals": sorted(frame[frame.drift].signal.unique().tolist()),
        "top_changes": [c["summary"] for c in res.result["top_changes"][:3]],
        "seconds": seconds,
    }


def speed(domain: Domain, model: Any, rows: int, seed: int) -> dict[str, Any]:
    """Seconds per 1,000 rows to monitor a prediction log of the text model, embeddings included."""
    from tunesmith.monitor import build_reference, make_settings, monitor
    from tunesmith.serve.predlog import LogRecord, PredictionLog

    est = model._est if isinstance(model, CachedModel) else model
    rng = np.random.default_rng(seed)
    # Pool and training texts alike: speed does not depend on which rows they are.
    texts = pd.concat([domain.pool, domain.reference], ignore_index=True)
    frame = texts.iloc[rng.choice(len(texts), rows, replace=False)].reset_index(drop=True)
    proba = est.predict_proba(frame)
    classes = [str(c) for c in est.classes_]
    log_path = WORK / "speed" / "predictions.sqlite"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for old in log_path.parent.glob("predictions*"):
        old.unlink()
    from tunesmith.runs.fingerprint import model_version

    version = model_version(Path(est.model_path_))
    log = PredictionLog(log_path)
    log.start()
    for i, (text, p) in enumerate(zip(frame["text"], proba, strict=True)):
        out = {"label": classes[int(np.argmax(p))], "probabilities": dict(zip(classes, map(float, p), strict=True))}
        log.write(LogRecord(time.time() + i * 1e-3, f"r{i}", version, "onnx", 200, 5.0, [text], [out]))
    log.close()
    settings = make_settings(seed=seed)
    t0 = time.perf_counter()
    ref = build_reference(est, domain.holdout, target=domain.target, settings=settings)
    ref_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = monitor(est, ref, log_path, settings=settings, progress_bar=False)
    seconds = time.perf_counter() - t0
    n = res.result["current"]["rows"]
    return {
        "rows": n,
        "seconds": seconds,
        "seconds_per_1k_rows": 1000 * seconds / n,
        "reference_seconds": ref_seconds,
        "reference_rows": ref.rows,
        "windows": len(res.result["windows"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and few windows (smoke test)")
    parser.add_argument(
        "--null-text", type=int, default=40, help="null text windows (Evidently's text test: ~8 s each)"
    )
    parser.add_argument("--null-image", type=int, default=80, help="null image windows")
    parser.add_argument("--null-tabular", type=int, default=80, help="null tabular windows")
    parser.add_argument("--per-case", type=int, default=6, help="windows per shift case")
    parser.add_argument("--rows", type=int, default=500, help="rows per window")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--only", choices=["recommender"], help="run one part and merge it into the existing results file"
    )
    parser.add_argument("--skip-peers", action="store_true", help="no Evidently/NannyML (they need their own venv)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(2)
    from tunesmith.kinds import load

    WORK.mkdir(parents=True, exist_ok=True)
    if args.only == "recommender":
        path = RESULTS_DIR / "monitoring.json"
        data = json.loads(path.read_text())
        data["results"]["recommender_by_time"] = recommender_by_time(args.seed)
        write_results(
            path,
            benchmark="monitoring",
            results=data["results"],
            summary=data["summary"],
            settings=data["settings"],
            environment=data["environment"],
        )
        print(json.dumps(data["results"]["recommender_by_time"], indent=1))
        return
    n_case = 2 if args.quick else args.per_case
    nulls = {"text": args.null_text, "image": args.null_image, "tabular": args.null_tabular}
    if args.quick:
        nulls = {"text": 6, "image": 6, "tabular": 6}
    holdouts = {"text": 1000, "image": 1000, "tabular": 5000}
    domains = {k: d.with_holdout(holdouts[k], seed=args.seed) for k, d in all_domains(args.seed).items()}
    folders = fit_models(WORK, quick=args.quick)
    per_domain: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for modality, domain in domains.items():
        n_null = nulls[modality]
        print(f"{modality}: {n_null} null windows, {len(domain.cases)} cases x {n_case}", flush=True)
        model = CachedModel(load(folders[modality]), modality)
        out = run_domain(domain, model, n_null, n_case, args.rows, args.seed)
        if not args.skip_peers:
            evid = run_evidently(domain, out["windows"])
            for r, e in zip(out["rows"], evid, strict=True):
                r["evidently"] = e
        for r in out["rows"]:
            r["modality"] = modality
        rows += out["rows"]
        per_domain[modality] = {"reference_seconds": out["reference_seconds"]}
        if modality == "text":
            per_domain["speed"] = speed(domain, model, 5000 if not args.quick else 600, args.seed)
    frame = pd.DataFrame(rows)
    null = frame[frame.case == "null"]
    shifted = frame[frame.case != "null"]
    contenders = ["tunesmith", "bbsd"] + ([] if args.skip_peers else ["evidently"])
    by_case = shifted.groupby("case")[contenders].mean()
    power = {c: float(by_case[c].mean()) for c in contenders}
    far = {c: float(null[c].mean()) for c in contenders}
    sets = performance_sets(args.seed) if not args.skip_peers else None
    acs = None if sets is None else sets["acs"]
    best_peer = max(power["bbsd"], power.get("evidently", 0.0))
    summary = {
        "false_alarm_rate": far["tunesmith"],
        "null_windows": len(null),
        "detection_power_n500": power["tunesmith"],
        "detection_power_n500_bbsd": power["bbsd"],
        "detection_power_n500_evidently": power.get("evidently"),
        "detection_power_margin_over_best_peer": power["tunesmith"] - best_peer,
        "false_alarm_rate_bbsd": far["bbsd"],
        "false_alarm_rate_evidently": far.get("evidently"),
        "performance_estimate_mae": None if acs is None else acs["mae"],
        "performance_estimate_mae_cbpe": None if acs is None else acs["cbpe_mae"],
        "alert_precision": None if acs is None else acs["alert_precision"],
        "alert_precision_cbpe": None if acs is None else acs["cbpe_alert_precision"],
        "performance_estimate_mae_car_loans": None if sets is None else sets["car_loans"]["mae"],
        "performance_estimate_mae_car_loans_cbpe": None if sets is None else sets["car_loans"]["cbpe_mae"],
        "monitor_seconds_per_1k_rows": per_domain["speed"]["seconds_per_1k_rows"],
    }
    targets = {
        **TARGETS,
        "detection_power_margin_over_best_peer": (">=", 0.10),
    }
    results = {
        "per_case": by_case.reset_index().to_dict(orient="records"),
        "families_fired": shifted.explode("families")
        .groupby("case")["families"]
        .value_counts()
        .unstack(fill_value=0)
        .reset_index()
        .to_dict(orient="records"),
        "per_domain": per_domain,
        "performance": sets,
        "recommender_by_time": recommender_by_time(args.seed),
        "windows": frame.drop(columns=["families"]).to_dict(orient="records"),
    }
    settings = {
        "rows_per_window": args.rows,
        "null_windows_per_modality": nulls,
        "windows_per_case": n_case,
        "quick": args.quick,
        "seed": args.seed,
        "holdout_rows": holdouts,
    }
    name = "monitoring_quick" if args.quick else "monitoring"
    checks = check_targets(summary, targets)
    settings["targets"] = {k: f"{op} {bound}" for k, (op, bound) in targets.items()}
    results = {**results, "targets_met": checks}
    out_dir = WORK if args.quick else RESULTS_DIR
    write_results(
        out_dir / f"{name}.json",
        benchmark="monitoring",
        results=results,
        summary=summary,
        settings=settings,
        environment=environment_info(2),
    )
    print(
        format_table(
            by_case.reset_index().to_dict(orient="records"),
            [("case", "case", "s"), *[(c, c, ".2f") for c in contenders]],
        )
    )
    print_summary(summary, targets, checks)


if __name__ == "__main__":
    main()
