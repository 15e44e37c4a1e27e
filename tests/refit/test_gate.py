"""The champion/challenger gate: better on new data, no worse than a margin on old data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tunesmith import TabularFineTuner
from tunesmith.errors import DataError
from tunesmith.estimators.base import NotSupportedError
from tunesmith.refit import gate


def period(n: int, seed: int, *, shift: float) -> pd.DataFrame:
    """One concept, two periods: x2 moves by ``shift`` into a region where the label turns on x2."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n) + shift
    logit = 3 * x1 + 4 * np.sin(1.5 * x2)
    y = np.where(logit + rng.normal(scale=0.3, size=n) > 0, "yes", "no")
    return pd.DataFrame({"x1": x1, "x2": x2, "label": y})


def fit(data: pd.DataFrame, tmp: Path) -> TabularFineTuner:
    params = {"model": "lightgbm", "n_estimators": 60, "progress": False, "runs_dir": str(tmp / "runs")}
    return TabularFineTuner(**params).fit(data, target="label")


def test_a_challenger_better_on_new_data_that_keeps_the_old_passes(tmp_path: Path) -> None:
    old_train, old_test = period(1500, 0, shift=0.0), period(800, 1, shift=0.0)
    new_train, new_test = period(1500, 2, shift=2.5), period(800, 3, shift=2.5)
    champion = fit(old_train, tmp_path)
    both = fit(pd.concat([old_train, new_train]), tmp_path)
    decision = gate(champion, both, new_test, old_test, margin=0.03, n_resamples=300)
    assert decision.new["gain"] > 0.05 and decision.new["interval"][0] > 0
    assert decision.accepted, decision.reasons
    assert set(decision.fingerprints) == {"new_test", "old_test"}
    assert decision.to_dict()["old_test"]["rows"] == 800


def test_a_challenger_that_forgets_the_old_period_is_rejected(tmp_path: Path) -> None:
    old_train, old_test = period(1500, 0, shift=0.0), period(800, 1, shift=0.0)
    new_train, new_test = period(1500, 2, shift=2.5), period(800, 3, shift=2.5)
    # Trained on the new period alone: it never saw the old region of x2.
    naive = fit(new_train, tmp_path)
    champion = fit(old_train, tmp_path)
    decision = gate(champion, naive, new_test, old_test, margin=0.01, n_resamples=300)
    assert not decision.accepted
    assert any(r.startswith("forgets the old test split") for r in decision.reasons)
    same = gate(champion, champion, new_test, old_test, n_resamples=100)
    assert not same.accepted and same.reasons[0].startswith("not better on the new test split")


def test_the_gate_refuses_unlabeled_rows_and_recommenders(tmp_path: Path) -> None:
    from tests.estimators.test_contract import _log
    from tunesmith import Recommender

    model = fit(period(600, 0, shift=0.0), tmp_path)
    bad = period(100, 1, shift=0.0)
    bad.loc[5, "label"] = None
    with pytest.raises(DataError, match="row 6.*no label"):
        gate(model, model, bad, period(100, 2, shift=0.0))
    rec = Recommender(model="ease", min_rating=5, runs_dir="").fit(_log(), target="rating")
    with pytest.raises(NotSupportedError, match="evaluate"):
        gate(rec, rec, _log(), _log())


def test_gating_a_registry_version_records_the_decision_and_rejects_a_forgetful_one(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tunesmith.cli import app
    from tunesmith.runs.versions import ModelRegistry

    old_train, old_test = period(1500, 0, shift=0.0), period(800, 1, shift=0.0)
    new_train, new_test = period(1500, 2, shift=2.5), period(800, 3, shift=2.5)
    reg = ModelRegistry(tmp_path / "reg")
    reg.promote(reg.register(fit(old_train, tmp_path).save(tmp_path / "champion")).number)
    good = reg.register(fit(pd.concat([old_train, new_train]), tmp_path).save(tmp_path / "both"))
    naive = reg.register(fit(new_train, tmp_path).save(tmp_path / "naive"))
    old_test.to_csv(tmp_path / "old.csv", index=False)
    new_test.to_csv(tmp_path / "new.csv", index=False)
    args = ["--new-test", str(tmp_path / "new.csv"), "--old-test", str(tmp_path / "old.csv"), "--margin", "0.03"]
    out = CliRunner().invoke(app, ["gate", str(tmp_path / "reg"), str(good.number), *args])
    assert out.exit_code == 0 and "passes" in out.output, out.output
    out = CliRunner().invoke(app, ["gate", str(tmp_path / "reg"), str(naive.number), *args])
    assert out.exit_code == 3 and "rejected: forgets the old test split" in out.output, out.output
    assert reg.get(naive.number).status == "rejected"
    record = reg.get(good.number).notes["gate"]
    assert record["accepted"] and record["champion"] == 1
    assert record["fingerprints"]["new_test"].startswith("sha256:")


def test_labels_compare_as_training_named_them_and_tiny_splits_are_refused(tmp_path: Path) -> None:
    model = fit(period(600, 0, shift=0.0), tmp_path)
    test = period(200, 1, shift=0.0)
    padded = test.assign(label=" " + test["label"])  # as a hand-edited CSV may have it
    same = gate(model, model, padded, test, n_resamples=50)
    assert same.new["champion"] == same.old["champion"] > 0.8
    with pytest.raises(DataError, match="has 10 rows; the gate needs at least 30"):
        gate(model, model, test.head(10), test)
