"""The champion/challenger gate: better on new data, no worse than a margin on old data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tunesmith import TabularFineTuner
from tunesmith.errors import ConfigError, DataError
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


def test_the_gate_refuses_unlabeled_rows_and_a_recommender_against_a_classifier(tmp_path: Path) -> None:
    from tests.estimators.test_contract import _log
    from tunesmith import Recommender

    model = fit(period(600, 0, shift=0.0), tmp_path)
    bad = period(100, 1, shift=0.0)
    bad.loc[5, "label"] = None
    with pytest.raises(DataError, match="row 6.*no label"):
        gate(model, model, bad, period(100, 2, shift=0.0))
    rec = Recommender(model="ease", min_rating=5, runs_dir="").fit(_log(), target="rating")
    with pytest.raises(ConfigError, match="champion is a recommender and the challenger a classification model"):
        gate(rec, model, _log(), _log())


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


# --- recommenders: per user NDCG@10 on interaction logs ---------------------------------------

A = [f"a{i}" for i in range(32)]  # old tastes: four groups of eight items
B = [f"b{i}" for i in range(32)]  # new tastes: four other groups of eight
MOVERS = [f"u{k}" for k in range(40)]  # turn from A items to B items in the new period
STAYERS = [f"u{k}" for k in range(40, 80)]  # keep to their A group (one visit in the new period)
REC = {"model": "ease", "model_params": {"l2": 10.0}, "threads": 1, "progress": False, "runs_dir": ""}


def group(items: list[str], g: int) -> list[str]:
    return items[8 * g : 8 * g + 8]


def logs() -> dict[str, pd.DataFrame]:
    """Old: five items of each user's A group, and one B item (so the champion knows them all).
    New: five items of each mover's B group (independent of their A group) and one A item; one
    more item of each stayer's A group. Tests, later still: a mover's two last B items, a
    stayer's two last A items."""
    rng = np.random.default_rng(0)
    rows: dict[str, list[tuple[str, str, int]]] = {"old": [], "old_test": [], "new": [], "new_test": []}
    for k, u in enumerate(MOVERS + STAYERS):
        a = [group(A, k % 4)[i] for i in rng.permutation(8)]
        rows["old"] += [(u, B[k % 32], 0)] + [(u, item, 1 + t) for t, item in enumerate(a[:5])]
        if u in STAYERS:
            rows["new"] += [(u, a[5], 100)]
            rows["old_test"] += [(u, item, 200 + t) for t, item in enumerate(a[6:8])]
            continue
        b = [i for i in group(B, (k // 4) % 4) if i != B[k % 32]]
        b = [b[i] for i in rng.permutation(len(b))]
        rows["new"] += [(u, A[(k + 8) % 32], 100)] + [(u, item, 101 + t) for t, item in enumerate(b[:5])]
        rows["new_test"] += [(u, item, 200 + t) for t, item in enumerate(b[5:7])]
    return {name: pd.DataFrame(r, columns=["user_id", "item_id", "timestamp"]) for name, r in rows.items()}


@pytest.fixture(scope="module")
def recommenders() -> dict[str, Any]:
    """The champion fitted on the old log, its refit on the new one, and a fresh fit on the new log alone."""
    from tunesmith import Recommender

    data = logs()
    champion = Recommender(**REC).fit(data["old"])
    return {
        **data,
        "champion": champion,
        "refit": champion.refit(data["new"], replay=data["old"]),
        "forgets": Recommender(**REC).fit(data["new"]),
    }


def test_a_recommender_refitted_on_the_new_period_passes_and_one_that_forgets_fails(recommenders) -> None:
    r = recommenders
    champion, new_test, old_test = r["champion"], r["new_test"], r["old_test"]
    # Rows no user both models know can be judged on: a stranger, an item never seen, a stayer
    # whose only new interaction is with that item.
    extra = pd.DataFrame(
        [("stranger", "b1", 300), ("u0", "zz", 300), ("u45", "zz", 300)], columns=list(new_test.columns)
    )
    decision = gate(champion, r["refit"], pd.concat([new_test, extra]), old_test, margin=0.02, n_resamples=300)
    assert decision.accepted, decision.reasons
    assert decision.metric == "ndcg@10" and decision.new["unit"] == "users"
    assert decision.new["rows"] == decision.old["rows"] == 40
    assert decision.new["left_out"] == {
        "rows_not_positive": 0,
        "rows_unknown_user": 1,
        "rows_unknown_item": 2,
        "users_without_positive": 0,
        "users_unknown": 1,
        "users_without_known_item": 1,
    }
    assert decision.new["gain"] > 0.15 and decision.new["interval"][0] > 0.05
    # The champion's per-user figures average to what evaluate() reports on the same users.
    assert decision.new["champion"] == pytest.approx(champion.evaluate(new_test, ks=(10,))["ndcg@10"])
    assert decision.old["champion"] == pytest.approx(champion.evaluate(old_test, ks=(10,))["ndcg@10"])

    # Trained on the new log alone, it knows the stayers but no longer their old tastes.
    forgets = gate(champion, r["forgets"], new_test, old_test, margin=0.02, n_resamples=300)
    assert forgets.new["interval"][0] > 0 and not forgets.accepted
    assert forgets.old["interval"][1] < -0.5
    assert [x.split(":")[0] for x in forgets.reasons] == ["forgets the old test split"]


def test_a_recommender_log_without_users_both_models_know_is_refused(recommenders) -> None:
    r = recommenders
    strangers = r["new_test"].assign(user_id=lambda f: "new-" + f["user_id"])
    with pytest.raises(DataError, match=r"no user of the new test log is known to both models .*40 users unknown"):
        gate(r["champion"], r["refit"], strangers, r["old_test"])
    few = r["old_test"][r["old_test"]["user_id"].isin(STAYERS[:10])]
    with pytest.raises(DataError, match="old test log has 10 users both models know .* needs at least 30"):
        gate(r["champion"], r["refit"], r["new_test"], few)


def test_the_loop_refits_gates_and_promotes_a_recommender_given_a_later_log(tmp_path: Path, recommenders) -> None:
    from tunesmith.refit import run_loop
    from tunesmith.runs.versions import ModelRegistry

    r = recommenders
    for name in ("old", "new", "new_test", "old_test"):
        r[name].to_csv(tmp_path / f"{name}.csv", index=False)
    reg = ModelRegistry(tmp_path / "registry")
    reg.promote(reg.register(r["champion"].save(tmp_path / "champion")).number)
    config = {
        "registry": str(tmp_path / "registry"),
        "new_data": str(tmp_path / "new.csv"),
        "replay": str(tmp_path / "old.csv"),
        "old_test": str(tmp_path / "old_test.csv"),
        "margin": 0.02,
    }
    # Random interactions of the refit's own log are no later log: refused before anything trains.
    with pytest.raises(ConfigError, match="needs new_test, an interaction log later than new_data"):
        run_loop({**config, "new_test_size": 0.25})
    assert len(reg.versions()) == 1
    result = run_loop({**config, "new_test": str(tmp_path / "new_test.csv")})
    assert result.outcome == "promoted" and result.steps == ["refit", "register", "gate", "promote"], result.decision
    assert result.decision is not None and result.decision["metric"] == "ndcg@10"
    assert result.decision["new_test"]["rows"] == 40 and result.decision["new_test"]["gain"] > 0.15
    assert reg.champion().number == 2  # type: ignore[union-attr]
