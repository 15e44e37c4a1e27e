"""Image stage of bench/few_labels.py: few-shot against full fine-tuning on MNIST-5k.

EfficientNet-Lite0 (ImageNet weights) at 64x64, as bench/vision_tabular.py sets it up. The
digits are split 80/20 once (stratified, seed 0); for each N (images per class) and seed, N
images per class are drawn from the training part, and both contenders train on exactly those:

* ``fewshot``  ``ImageFineTuner(strategy="fewshot")``: its defaults (a logistic head on the
               frozen backbone's features);
* ``full``     ``ImageFineTuner(strategy="full")``: its defaults at this image size (5 epochs,
               BatchNorm recalibrated).

Accuracy on the 1,000 held-out digits; seconds are each fit's training time.

Usage::

    python bench/_few_labels_images.py --out FILE.json [--seeds 10] [--sizes 8,16,64]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SETTINGS: dict[str, Any] = {
    "backbone": "efficientnet-lite0",
    "image_size": 64,
    "test_size": 0.0,
    "valid_size": 0.0,
    "baselines": False,
    "progress": False,
    "runs_dir": None,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--sizes", default="8,16,64")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from sklearn.model_selection import train_test_split

    from tunesmith.datasets import mnist_5k
    from tunesmith.estimators.image import ImageFineTuner

    x, y = mnist_5k()
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            picked = np.concatenate([rng.choice(np.flatnonzero(y_train == c), n, replace=False) for c in range(10)])
            row: dict[str, Any] = {"data": "mnist_5k", "n": n, "seed": seed}
            for strategy in ("fewshot", "full"):
                started = time.perf_counter()
                ft = ImageFineTuner(**SETTINGS, strategy=strategy, seed=seed, num_threads=args.threads)
                ft.fit(x_train[picked], y_train[picked])
                row[f"seconds_{strategy}"] = float(ft.training_info_.get("train_seconds") or 0.0) or (
                    time.perf_counter() - started
                )
                row[f"acc_{strategy}"] = float(np.mean(np.asarray(ft.predict(x_test)) == y_test))
            rows.append(row)
            print(n, seed, {k: round(v, 3) for k, v in row.items() if k.startswith("acc")}, flush=True)
            Path(args.out).write_text(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
