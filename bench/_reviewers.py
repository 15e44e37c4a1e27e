"""A reviewer panel on Rotten Tomatoes reviews where users differ in HOW they label the same kind of input.

Each simulated user belongs to a hidden reviewer group with its own rule for turning a critic's snippet into
``liked`` yes/no (see :data:`GROUPS`): critics agree with the Rotten Tomatoes label, contrarians invert it,
comedy fans like anything funny, serious viewers like good films that are not comedies. The same reviews are
shown to many users, so identical text gets opposite labels from different users. A single shared text model
can at best learn the majority rule; a model per user (or per group) can learn each user's own rule. That is
the case bench/personalization.py needs to show per-user models beating a shared classifier clearly.

Run ``python bench/_reviewers.py`` for a sanity check: per-group sizes and positive rates, and the per-user
mean ROC AUC of one global TF-IDF + logistic regression vs. one such model per group.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from tunesmith.datasets import rotten_tomatoes
from tunesmith.errors import ConfigError
from tunesmith.personalize.settings import time_ordered_holdout

GROUPS: dict[str, str] = {
    "critic": "liked iff the Rotten Tomatoes label is fresh",
    "contrarian": "liked iff the Rotten Tomatoes label is rotten",
    "funny": "liked iff the review mentions comedy or humour, whatever the Rotten Tomatoes label",
    "serious": "liked iff fresh and the review does not mention comedy or humour",
}

# About 16% of the reviews match; broad on purpose so that "funny" is a rule about the words, not one keyword.
_COMEDY = re.compile(
    r"\b(?:funn(?:y|ier|iest)|fun|comed(?:y|ies|ic)|comedians?|laugh\w*|hilarious\w*|humou?r\w*|comic\w*"
    r"|jok(?:e|es|ey|ing)|wit|witty|wittily|witticisms?|amus\w*|gags?|satir\w*|farc\w*|slapstick|spoof\w*"
    r"|parod\w*|zany|droll|goofy|sitcom\w*|rom-?coms?|chuckl\w*|giggl\w*|silly|silliness|screwball|deadpan"
    r"|wisecrack\w*|one-liners?|punchlines?|quirky|whimsical|irreverent|lampoon\w*)\b",
    re.IGNORECASE,
)
# Share of comedy-matching reviews in the shared pool: at the corpus' 16% the "funny" group would be ~85% "no".
_POOL_COMEDY = 0.35


def reviewer_panel(
    n_users: int = 300, rows_per_user: tuple[int, int] = (12, 60), *, noise: float = 0.05, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simulated users labelling Rotten Tomatoes reviews by their hidden group's rule (:data:`GROUPS`).

    Groups are dealt round-robin over a seeded permutation of users (sizes differ by at most one). Reviews
    come from a shared pool of about ``n_users * mean(rows_per_user) / 3`` reviews, 35% of them mentioning
    comedy, so each review is seen by several users; each user draws a seeded number of rows (uniform in
    ``rows_per_user``, inclusive) from the pool without replacement. Each label is flipped with probability
    ``noise``. The same arguments always give the same frames.

    Returns
    -------
    tuple of pandas.DataFrame
        ``(train, test)`` with columns ``user``, ``group`` (for analysis only, not a model input), ``item``
        (``"rt"`` + the row index in :func:`rotten_tomatoes`), ``review``, ``timestamp`` (increasing per
        user) and ``liked`` (``"yes"``/``"no"``); each user's rows in time order, the last 20% in ``test``.

    Raises
    ------
    tunesmith.errors.ConfigError
        If ``n_users`` < 1, ``rows_per_user`` is not ``(lo, hi)`` with ``1 <= lo <= hi``, or ``noise`` is
        outside ``[0, 0.5)``.
    """
    lo, hi = rows_per_user
    if n_users < 1:
        raise ConfigError(f"must be at least 1, got {n_users}", key="n_users")
    if not 1 <= lo <= hi:
        raise ConfigError(f"must be (lo, hi) with 1 <= lo <= hi, got {rows_per_user}", key="rows_per_user")
    if not 0 <= noise < 0.5:
        raise ConfigError(f"must be in [0, 0.5), got {noise}", key="noise")
    rt = rotten_tomatoes()
    if hi > len(rt):
        raise ConfigError(f"hi must be at most {len(rt)} (the reviews available), got {hi}", key="rows_per_user")
    rng = np.random.default_rng(seed)
    comedy = rt["text"].str.contains(_COMEDY).to_numpy()
    fresh = (rt["label"] == "fresh").to_numpy()

    size = min(max(round(n_users * (lo + hi) / 2 / 3), hi), len(rt))
    n_com = min(round(_POOL_COMEDY * size), int(comedy.sum()))
    n_com = max(n_com, size - int((~comedy).sum()))
    com_idx, other_idx = np.flatnonzero(comedy), np.flatnonzero(~comedy)
    pool = np.r_[rng.choice(com_idx, n_com, replace=False), rng.choice(other_idx, size - n_com, replace=False)]
    rules = {"critic": fresh, "contrarian": ~fresh, "funny": comedy, "serious": fresh & ~comedy}
    names = list(GROUPS)
    user_groups = [names[i % len(names)] for i in rng.permutation(n_users)]
    width = max(3, len(str(n_users - 1)))

    texts = rt["text"].to_numpy()
    frames = []
    for u, group in enumerate(user_groups):
        n = int(rng.integers(lo, hi + 1))
        items = rng.choice(pool, n, replace=False)
        liked = rules[group][items] ^ (rng.random(n) < noise)
        # Random gaps so timestamps look like event times, not row numbers.
        times = 1_000_000 + np.cumsum(rng.integers(60, 86_400, n))
        frames.append(
            pd.DataFrame(
                {
                    "user": f"r{u:0{width}d}",
                    "group": group,
                    "item": [f"rt{i:05d}" for i in items],
                    "review": texts[items],
                    "timestamp": times,
                    "liked": np.where(liked, "yes", "no"),
                }
            )
        )
    df = pd.concat(frames, ignore_index=True)
    held = time_ordered_holdout(df, "user", 0.2, time_column="timestamp")
    return df[~held].reset_index(drop=True), df[held].reset_index(drop=True)


def _user_auc(test: pd.DataFrame, scores: np.ndarray) -> pd.Series:
    """ROC AUC per user over the users whose test rows hold both classes."""
    from sklearn.metrics import roc_auc_score

    y = (test["liked"] == "yes").to_numpy()
    aucs = {
        u: roc_auc_score(y[idx], scores[idx])
        for u, idx in test.groupby("user").indices.items()
        if 0 < y[idx].sum() < len(idx)
    }
    return pd.Series(aucs, dtype=float)


if __name__ == "__main__":
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    def _fit_score(tr: pd.DataFrame, te: pd.DataFrame) -> np.ndarray:
        model = make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True), LogisticRegression(C=4.0)
        )
        model.fit(tr["review"], tr["liked"] == "yes")
        return np.asarray(model.predict_proba(te["review"])[:, 1])

    train, test = reviewer_panel()
    rows = pd.concat([train, test])
    print(f"{len(train)} train + {len(test)} test rows, {rows['item'].nunique()} distinct reviews")
    shared = _user_auc(test, _fit_score(train, test))
    by_group = [
        _user_auc(test[test.group == g], _fit_score(train[train.group == g], test[test.group == g])) for g in GROUPS
    ]
    per_group = pd.concat(by_group)
    print(f"{'group':<11}{'users':>6}{'rows':>7}{'pos rate':>9}{'shared AUC':>11}{'group AUC':>10}")
    for g in [*GROUPS, "all"]:
        r = rows if g == "all" else rows[rows.group == g]
        users = r["user"].unique()
        print(
            f"{g:<11}{len(users):>6}{len(r):>7}{(r['liked'] == 'yes').mean():>9.3f}"
            f"{shared.reindex(users).mean():>11.3f}{per_group.reindex(users).mean():>10.3f}"
        )
