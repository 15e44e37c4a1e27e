"""The refit benchmark's streams for tables, images and the recommender (text lives in refit.py).

Each maker returns a :class:`refit.Kind`: how to read its two-period stream, fit, refit and score.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from _monitoring_data import acs_ma
from refit import WORK, Kind, Stream, periods

# --- tables: ACS employment, Massachusetts, 2015 then 2016-2018 --------------------------------------

_ACS_DROP = ["year", "prediction", "predicted_probability", "id"]


def table_stream(quick: bool, seed: int) -> Stream:
    """NannyML's ACS employment data: the old period is 2015, the new one 2016-2018.

    Rows are drawn at random within each period (``seed``); the features are the 16 census
    columns, the label ``employed``.
    """
    reference, analysis = acs_ma(WORK)
    old = reference.drop(columns=_ACS_DROP).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    new = analysis.drop(columns=_ACS_DROP).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    sizes = (2000, 500, 600, 1000) if quick else (30000, 5000, 8000, 10000)
    return periods(old, new, sizes, {"split": "2015 (old) then 2016-2018 (new), random rows within each period"})


def table_kind() -> Kind:
    from tunesmith import TabularFineTuner

    def fit(train: pd.DataFrame, valid: pd.DataFrame, quick: bool) -> Any:
        params: dict[str, Any] = {"progress": False, "runs_dir": "", "seed": 0}
        if quick:
            params["n_estimators"] = 50
        return TabularFineTuner(**params).fit(train, target="employed", eval_set=valid)

    def refit(model: Any, new: pd.DataFrame, replay: pd.DataFrame, method: str) -> Any:
        return model.refit(new, replay=replay if method != "naive" else None, target="employed", method=method)

    def score(model: Any, test: pd.DataFrame) -> float:
        return 100.0 * model.score(test, target="employed")

    return Kind("table", table_stream, fit, refit, score, _concat, methods=("naive", "replay", "auto"))


def _concat(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([a, b], ignore_index=True)


# --- images: MNIST-5k, then a scanner that inverts the page -----------------------------------------


@dataclass
class Images:
    """Images ``(n, 28, 28)`` uint8 and their labels, sliceable like a frame."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, s: slice) -> Images:
        return Images(self.x[s], self.y[s])


def image_stream(quick: bool, seed: int) -> Stream:
    """MNIST-5k: the old period's digits as bundled, the new period's from a scanner that gives
    dark digits on a light page (inverted intensities, every digit class in both periods).

    The 5,000 digits are shuffled with ``seed`` and halved; the second half is inverted.
    """
    from tunesmith.datasets import mnist_5k

    images, labels = mnist_5k()
    order = np.random.default_rng(seed).permutation(len(labels))
    images, labels = images[order], labels[order]
    half = len(labels) // 2
    old = Images(images[:half], labels[:half])
    new = Images(255 - images[half:], labels[half:])
    # the old half's last 500 digits are its test split (what is left after train and valid)
    sizes = (300, 60, 120, 120) if quick else (1800, 200, 800, 1000)
    return periods(old, new, sizes, {"split": "MNIST-5k halves; the new half inverted (dark digits on a light page)"})


def image_kind() -> Kind:
    from tunesmith import ImageFineTuner

    def fit(train: Images, valid: Images, quick: bool) -> Any:
        base = {"progress": False, "runs_dir": "", "seed": 0, "baselines": False}
        if quick:
            params = {**base, "backbone": "tiny-image", "image_size": 32, "epochs": 2}
        else:
            params = {**base, "backbone": "efficientnet-lite0", "image_size": 64, "epochs": 3, "lr": 1e-3}
            params["batch_size"] = 64
        return ImageFineTuner(**params).fit(train.x, train.y, eval_set=(valid.x, valid.y))

    def refit(model: Any, new: Images, replay: Images, method: str) -> Any:
        old = (replay.x, replay.y) if method != "naive" else None
        return model.refit(new.x, new.y, replay=old, method=method)

    def score(model: Any, test: Images) -> float:
        return 100.0 * model.score(test.x, test.y)

    def combine(a: Images, b: Images) -> Images:
        return Images(np.concatenate([a.x, b.x]), np.concatenate([a.y, b.y]))

    return Kind("image", image_stream, fit, refit, score, combine, methods=("naive", "replay", "l2sp", "wise", "auto"))


# --- recommender: MovieLens-100K by time -----------------------------------------------------------


def _last_positive(log: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each user's last rating of 4 or more, held out; the rest of the log."""
    pos = log[log["rating"] >= 4].sort_values(["user_id", "timestamp", "item_id"])
    last = pos.groupby("user_id").tail(1)
    return log.drop(index=last.index), last


def rec_stream(quick: bool, seed: int) -> Stream:
    """MovieLens-100K cut by time: the first 70% of the ratings are the old period, the rest new.

    Each user's last positive (rating >= 4) of each period is its test split; the old period's
    second-to-last positive is the old model's validation split. The new test split keeps only
    users and movies of the old period, so every contender ranks the same targets (new users
    and new movies still train the refit and the full retraining).
    """
    from tunesmith.datasets import movielens_100k

    ratings, _, _ = movielens_100k()
    ratings = ratings.sort_values(["timestamp", "user_id", "item_id"]).reset_index(drop=True)
    if quick:
        keep = ratings["user_id"].isin(sorted(ratings["user_id"].unique())[:150])
        ratings = ratings[keep].reset_index(drop=True)
    cut = ratings["timestamp"].quantile(0.7)
    old, new = ratings[ratings["timestamp"] <= cut], ratings[ratings["timestamp"] > cut]
    old_rest, old_test = _last_positive(old)
    old_train, old_valid = _last_positive(old_rest)
    new_train, new_test = _last_positive(new)
    known = old_train["user_id"].unique(), old_train["item_id"].unique()
    new_test = new_test[new_test["user_id"].isin(known[0]) & new_test["item_id"].isin(known[1])]
    return Stream(
        old_train=old_train,
        old_valid=old_valid,
        old_test=old_test,
        new_train=new_train,
        new_test=new_test,
        notes={
            "split": "by time at the 70% quantile; test = each user's last positive per period",
            "new_users": int((~new_train["user_id"].isin(known[0])).sum()),
            "new_items_rows": int((~new_train["item_id"].isin(known[1])).sum()),
        },
    )


def rec_kind() -> Kind:
    from tunesmith.recsys.recommender import Recommender

    columns = {"user": "user_id", "item": "item_id", "time": "timestamp", "rating": "rating"}

    def fit(train: pd.DataFrame, valid: pd.DataFrame, quick: bool) -> Any:
        # the recommender holds out each user's last positives itself; the validation rows
        # are the latest interactions of the log it is given
        log = pd.concat([train, valid]).sort_values(["timestamp", "user_id", "item_id"])
        # the default recommender: SASRec pre-trained on every interaction, fine-tuned on positives
        params: dict[str, Any] = {"min_rating": 4, "seed": 0, "progress": False, "runs_dir": "", "threads": 2}
        if quick:
            params["seq"] = {"dim": 16, "layers": 1, "heads": 1, "max_len": 20}
            params["pretrain_settings"] = {"epochs": 2}
            params["finetune_settings"] = {"epochs": 2}
        return Recommender(**params).fit(log, **columns)

    def refit(model: Any, new: pd.DataFrame, replay: pd.DataFrame, method: str) -> Any:
        return model.refit(new, replay=replay if method != "naive" else None, method=method)

    def score(model: Any, test: pd.DataFrame) -> float:
        return 100.0 * float(model.evaluate(test, ks=(10,))["ndcg@10"])

    return Kind("recommender", rec_stream, fit, refit, score, _concat, methods=("naive", "replay", "auto"))


MAKERS: dict[str, Callable[[], Kind]] = {
    "table": table_kind,
    "image": image_kind,
    "recommender": rec_kind,
}
