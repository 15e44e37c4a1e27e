"""small-text's BreakingTies on the active-learning stage's vectors, in small-text's own environment.

Run by bench/_few_labels_active.py with the embedded pool, test set and each seed's starting
rows; small-text's ``PoolBasedActiveLearner`` drives a scikit-learn logistic regression (the same
model tunesmith's stage fits) through ``SklearnClassifierFactory``. Writes ``{seed: [[labels, acc], ...]}``.

Usage::

    python bench/_few_labels_smalltext.py DATA.npz OUT.json ROUNDS BATCH
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from small_text import PoolBasedActiveLearner, SklearnClassifierFactory, SklearnDataset
    from small_text.query_strategies import BreakingTies

    data_path, out_path, rounds, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    data = np.load(data_path)
    x, y, xt, yt, starts = data["x"], data["y"], data["xt"], data["yt"], data["starts"]
    n_classes = int(y.max()) + 1
    train = SklearnDataset(x, y)
    out = {}
    for seed, start in enumerate(starts):
        factory = SklearnClassifierFactory(LogisticRegression(max_iter=2000), n_classes)
        learner = PoolBasedActiveLearner(factory, BreakingTies(), train)
        learner.initialize_data(np.asarray(start), y[start])
        curve = []
        for r in range(rounds + 1):
            acc = float(np.mean(learner.classifier.predict(SklearnDataset(xt, yt)) == yt))
            curve.append([len(learner.indices_labeled), acc])
            if r == rounds:
                break
            picked = learner.query(num_samples=batch)
            learner.update(y[picked])
        out[str(seed)] = curve
    Path(out_path).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
