"""The user-facing Recommender and the `tunesmith recommend` commands, on tiny planted logs."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from tests.cli.test_cli import cli
from tunesmith.errors import ArtifactError, ConfigError, DataError, NotFittedError
from tunesmith.evaluate.intervals import LARGER, WITHIN
from tunesmith.recsys.recommender import Recommender
from tunesmith.runs.plots import plot_metric_by_group, plot_ranking_at_k

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

N_USERS, N_ITEMS, LENGTH = 40, 30, 8
SEQ = {"dim": 16, "layers": 1, "heads": 2, "max_len": 10, "dropout": 0.0}
FAST = {"epochs": 15, "lr": 1e-2, "patience": 5, "batch_size": 64}


def cycle_log(seed: int = 0) -> pd.DataFrame:
    """Each user walks the items in order from a random start: the next item is always code + 1."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(N_USERS):
        start = int(rng.integers(N_ITEMS))
        for t in range(LENGTH):
            rows.append({"user_id": f"u{u}", "item_id": f"i{(start + t) % N_ITEMS}", "timestamp": 1000 * u + t})
    return pd.DataFrame(rows)


def block_log(seed: int = 0) -> pd.DataFrame:
    """Three groups of users, each drawing only from its own third of the items; item 0 is popular."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(N_USERS):
        group = u % 3
        picks = rng.choice(np.arange(group * 10, group * 10 + 10), size=6, replace=False)
        for t, i in enumerate(picks):
            rows.append({"user_id": f"u{u}", "item_id": f"i{i}", "timestamp": t, "rating": 5 if t % 2 == 0 else 4})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def sasrec() -> Recommender:
    rec = Recommender("sasrec", seq=SEQ, pretrain_settings=FAST, finetune_settings=FAST, threads=1)
    return rec.fit(cycle_log())


def test_sasrec_beats_popularity_on_a_planted_sequence(sasrec):
    ours = sasrec.test_metrics_["overall"]
    pop = sasrec.baseline_metrics_["popularity"]["overall"]
    assert ours["ndcg@10"] > pop["ndcg@10"] + 0.2
    assert ours["hr@10"] > 0.8
    assert set(sasrec.test_metrics_["by_history_length"]) == {"<10", "10-29", "30-99", ">=100"}


def test_recommend_excludes_history_and_exclude(sasrec):
    history = sasrec.history_indices_[sasrec.history_indptr_[0] : sasrec.history_indptr_[1]]
    seen = {sasrec.items_[c] for c in history}
    recs = sasrec.recommend(sasrec.users_[0], k=N_ITEMS, exclude=["i0", "i1"])
    items = [r["item"] for r in recs]
    assert not (set(items) & (seen | {"i0", "i1"}))
    assert len(items) == N_ITEMS - len(seen | {"i0", "i1"})
    scores = [r["score"] for r in recs]
    assert scores == sorted(scores, reverse=True)


def test_known_user_and_same_raw_history_agree_and_follow_the_pattern(sasrec):
    log = cycle_log()
    user = "u5"
    history = log.loc[log["user_id"] == user, "item_id"].tolist()
    by_id = sasrec.recommend(user, k=5)
    by_history = sasrec.recommend(history=history, k=5)
    assert by_id == by_history
    last = int(history[-1][1:])
    assert by_id[0]["item"] == f"i{(last + 1) % N_ITEMS}"
    batch = sasrec.recommend_batch(users=[user, "u6"], k=5)
    # Batched scores may differ in the last float bits (other padding), not in the ranking.
    assert [r["item"] for r in batch[0]] == [r["item"] for r in by_id] and len(batch[1]) == 5
    assert [r["score"] for r in batch[0]] == pytest.approx([r["score"] for r in by_id], rel=1e-5)


def test_unknown_user_and_unknown_history_items(sasrec):
    with pytest.raises(DataError, match="unknown user 'nobody'.*history"):
        sasrec.recommend("nobody")
    with pytest.warns(UserWarning, match="1 item ids"):
        recs = sasrec.recommend(history=["i3", "ghost", "i4"], k=3)
    assert recs[0]["item"] == "i5"


def test_save_load_round_trip(sasrec, tmp_path):
    folder = sasrec.save(tmp_path / "model")
    assert {p.name for p in folder.iterdir()} == {
        "model.safetensors",
        "tunesmith.json",
        "card.md",
        "ranking_at_k.png",
        "ndcg_by_history.png",
    }
    meta = json.loads((folder / "tunesmith.json").read_text())
    assert meta["task"] == "recommendation" and meta["model"] == "sasrec" and meta["format_version"] == 2
    assert meta["kind"] == "recommender"
    assert "| sasrec |" in (folder / "card.md").read_text()
    loaded = Recommender.load(folder)
    assert loaded.recommend_batch(users=["u1", "u2"], k=7) == sasrec.recommend_batch(users=["u1", "u2"], k=7)
    assert loaded.test_metrics_["overall"]["ndcg@10"] == pytest.approx(sasrec.test_metrics_["overall"]["ndcg@10"])
    with pytest.raises(ArtifactError, match="already exists"):
        sasrec.save(folder)


def test_save_writes_plots_linked_from_the_card(sasrec, tmp_path):
    folder = sasrec.save(tmp_path / "model")
    card = (folder / "card.md").read_text()
    for name in ("ranking_at_k.png", "ndcg_by_history.png"):
        assert (folder / name).read_bytes()[:8] == PNG_SIGNATURE
        assert f"]({name})" in card
    loaded = Recommender.load(folder)
    assert loaded.recommend_batch(users=["u1"], k=5) == sasrec.recommend_batch(users=["u1"], k=5)
    assert "ranking_at_k.png" not in sasrec.card()


def test_recsys_plots_tolerate_missing_and_nan_values(tmp_path):
    nan = float("nan")
    models = {
        "model": {
            "overall": {"hr@5": 0.2, "ndcg@5": None, "hr@10": nan, "ndcg@10": 0.3, "hr@20": 0.5},
            "by_history_length": {
                "<10": {"ndcg@10": 0.1, "n_users": 4},
                "10-29": {"ndcg@10": None, "n_users": 0},
                ">=100": {"ndcg@10": nan, "n_users": 2},
            },
        },
        "popularity": {"overall": {}, "by_history_length": {"<10": {"ndcg@10": 0.05, "n_users": 4}}},
        "empty": {},
    }
    for path in (
        plot_ranking_at_k(models, tmp_path / "k.png"),
        plot_metric_by_group(models, tmp_path / "g.png"),
        plot_metric_by_group({"m": {"by_history_length": {"<10": {"n_users": 0}}}}, tmp_path / "none.png"),
    ):
        assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_load_refuses_other_models_and_pickles(tmp_path):
    other = tmp_path / "clf"
    other.mkdir()
    (other / "tunesmith.json").write_text(json.dumps({"task": "binary", "format_version": 1}))
    with pytest.raises(ArtifactError, match="not a recommendation model"):
        Recommender.load(other)
    (other / "weights.pkl").write_bytes(b"\x80\x04N.")
    with pytest.raises(ArtifactError, match="pickle"):
        Recommender.load(other)


def test_ease_end_to_end_with_ratings(tmp_path):
    rec = Recommender("ease", min_rating=5, model_params={"l2": 10.0}).fit(block_log(), rating="rating")
    assert rec.test_metrics_["overall"]["hr@10"] > rec.baseline_metrics_["popularity"]["overall"]["hr@10"]
    recs = rec.recommend("u0", k=3)
    # u0 is in group 0: its recommendations come from items i0..i9.
    assert all(int(r["item"][1:]) < 10 for r in recs)
    same = Recommender.load(rec.save(tmp_path / "ease"))
    assert same.recommend("u0", k=3) == recs


def test_settings_are_checked_up_front():
    with pytest.raises(ConfigError, match="unknown model"):
        Recommender("svd")
    with pytest.raises(ConfigError, match="dimension"):
        Recommender("sasrec", seq={"dimension": 8})
    with pytest.raises(ConfigError, match="sasrec"):
        Recommender("ease", content_backbone="tiny-text")
    with pytest.raises(NotFittedError):
        Recommender("ease").recommend("u0")
    with pytest.raises(ConfigError, match="content backbone"):
        Recommender("ease").fit(block_log()).add_items(pd.DataFrame({"item_id": ["new"], "title": ["x"]}))


def test_add_items_makes_a_cold_item_recommendable():
    log = cycle_log()
    items = pd.DataFrame(
        {"item_id": [f"i{i}" for i in range(N_ITEMS)], "title": [f"song number {i}" for i in range(N_ITEMS)]}
    )
    settings = {"epochs": 3, "lr": 1e-2, "patience": 0}
    rec = Recommender(
        "sasrec",
        pretrain=False,
        content_backbone="tiny-text",
        seq=SEQ,
        finetune_settings=settings,
        threads=1,
    ).fit(log, items=items, item_text=["title"])
    assert "new" not in [r["item"] for r in rec.recommend("u0", k=N_ITEMS)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec.add_items(pd.DataFrame({"item_id": ["new"], "title": ["song number 31"]}), item_text=["title"])
    assert rec.items_[-1] == "new" and rec.model_.n_items == N_ITEMS + 1
    recs = rec.recommend("u0", k=N_ITEMS + 1)
    assert "new" in [r["item"] for r in recs]
    assert all(np.isfinite(r["score"]) for r in recs)


def test_cli_fit_evaluate_predict(tmp_path, capsys):
    log = tmp_path / "log.csv"
    block_log().to_csv(log, index=False)
    model = tmp_path / "model"
    code, out, err = cli(
        capsys, "recommend", "fit", str(log), "--rating-column", "rating", "--min-rating", "5",
        "--model", "ease", "-o", str(model),
    )  # fmt: skip
    assert code == 0, err
    assert "popularity" in out and "ndcg@10" in out
    code, out, err = cli(capsys, "recommend", "evaluate", str(model))
    assert code == 0 and "ease" in out and "hr@10" in out
    out_csv = tmp_path / "recs.csv"
    code, out, err = cli(capsys, "recommend", "predict", str(model), "--users", "u0,u1", "-k", "3", "-o", str(out_csv))
    assert code == 0, err
    recs = pd.read_csv(out_csv)
    assert list(recs.columns) == ["user", "rank", "item", "score"]
    assert len(recs) == 6 and recs["rank"].tolist() == [1, 2, 3, 1, 2, 3]
    users_file = tmp_path / "users.csv"
    pd.DataFrame({"user_id": ["u2"]}).to_csv(users_file, index=False)
    code, _, err = cli(capsys, "recommend", "predict", str(model), "--users-file", str(users_file), "-o", str(out_csv))
    assert code == 0, err
    assert len(pd.read_csv(out_csv)) == 10


def test_cli_bad_column_is_one_line(tmp_path, capsys):
    log = tmp_path / "log.csv"
    block_log().to_csv(log, index=False)
    code, _, err = cli(capsys, "recommend", "fit", str(log), "--user-column", "usr", "-o", str(tmp_path / "m"))
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "usr" in lines[0] and "Traceback" not in err


# --- the one estimator contract ------------------------------------------------------------------


def test_contract_params_clone_and_bad_settings():
    from sklearn.base import clone

    rec = Recommender("ease", model_params={"l2": 10.0}, k_core=2)
    assert rec.get_params()["model_params"] == {"l2": 10.0} and rec.k_core == {"min_user": 2, "min_item": 2}
    twin = clone(rec)
    assert twin.get_params() == rec.get_params() and twin is not rec
    rec.set_params(model_params={"l2": 5.0})
    assert rec.config.model_params == {"l2": 5.0}
    with pytest.raises(ConfigError, match="not accepted by ease"):
        rec.set_params(model_params={"factors": 3})
    assert rec.get_params()["model_params"] == {"l2": 5.0}  # unchanged by the refused call
    with pytest.raises(ConfigError) as err:
        Recommender("ease", wizard=True)
    assert err.value.key == "wizard"
    with pytest.raises(ConfigError) as err:
        Recommender("ease", threads=0)
    assert err.value.key == "threads"


def test_contract_fit_predict_score_and_target(tmp_path):
    from tunesmith.estimators.base import NotSupportedError

    log = block_log()
    rec = Recommender("ease", min_rating=5, model_params={"l2": 10.0}, progress=False)
    with pytest.raises(ConfigError, match="not from y"):
        rec.fit(log, y=np.zeros(len(log)))
    with pytest.raises(NotSupportedError, match="eval_set"):
        rec.fit(log, target="rating", eval_set=log)
    rec.fit(log, target="rating")
    same = Recommender("ease", min_rating=5, model_params={"l2": 10.0}, progress=False).fit(log, rating="rating")
    assert rec.test_metrics_["overall"] == same.test_metrics_["overall"]
    lists = rec.predict(["u0", "u1"])
    assert lists.shape == (2,) and lists[0] == [r["item"] for r in rec.recommend("u0", k=10)]
    assert list(rec.predict(pd.DataFrame({"user_id": ["u1"]}))[0]) == lists[1]
    with pytest.raises(NotSupportedError, match="recommend"):
        rec.predict_proba(["u0"])
    # Later interactions of group 0 users with their own items score well above random.
    later = pd.DataFrame({"user_id": ["u0", "u3"], "item_id": ["i1", "i2"], "timestamp": [99, 99], "rating": [5, 5]})
    value = rec.score(later)
    assert 0.0 <= value <= 1.0
    assert rec.evaluate(later)["n_users"] == 2


def test_callbacks_hear_every_epoch_and_can_stop():
    from tunesmith.train.callbacks import Callback, StopTraining

    class Stop(Callback):
        def __init__(self) -> None:
            self.seen: list[dict] = []

        def on_epoch_end(self, state, metrics):
            self.seen.append(dict(metrics))
            if len(self.seen) == 2:
                raise StopTraining("enough")

    stop = Stop()
    rec = Recommender("bpr", model_params={"epochs": 30, "factors": 4}, progress=False)
    rec.fit(block_log(), callbacks=[stop])
    assert len(stop.seen) == 2 and all("valid_ndcg@10" in m for m in stop.seen)
    assert rec.training_["stop_reason"] == "enough" and len(rec.history_) == 2
    once = Stop()
    Recommender("popularity", progress=False).fit(block_log(), callbacks=[once])
    assert len(once.seen) == 1 and "valid_ndcg@10" in once.seen[0]
    seq = Stop()
    short = {"epochs": 3, "lr": 1e-2, "patience": 0}
    Recommender("sasrec", seq=SEQ, pretrain_settings=short, finetune_settings=short, threads=1, progress=False).fit(
        cycle_log(), callbacks=[seq]
    )
    assert [m["phase"] for m in seq.seen] == ["pretrain", "pretrain"]


def test_fit_writes_a_run_record(tmp_path):
    rec = Recommender("ease", runs_dir=str(tmp_path / "runs"), progress=False).fit(block_log())
    run = rec.run_dir_
    assert run is not None and run.parent == tmp_path / "runs"
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "data.json", "environment.json", "metrics.jsonl", "metrics.json", "report.md"} <= names
    assert {"ranking_at_k.png", "ndcg_by_history.png"} <= names
    data = json.loads((run / "data.json").read_text())
    assert len(data["sha256"]) == 64 and data["rows"]["read"] == len(block_log())
    assert "duplicate" in data["dropped"]
    assert "| ease |" in (run / "report.md").read_text()
    # A loaded model keeps no runs_dir of its own.
    assert Recommender.load(rec.save(tmp_path / "m")).get_params()["runs_dir"] is None


def test_registry_loads_new_and_version_1_folders(tmp_path):
    from tunesmith.estimators import registry

    rec = Recommender("popularity", progress=False).fit(block_log())
    folder = rec.save(tmp_path / "new")
    assert registry.kind_of_folder(folder).name == "recommender"
    loaded = registry.load(folder)
    assert isinstance(loaded, Recommender) and list(loaded.predict(["u0"])[0]) == list(rec.predict(["u0"])[0])
    # A folder saved before the common metadata fields: format_version 1, no kind, no format.
    meta = json.loads((folder / "tunesmith.json").read_text())
    for key in ("format", "kind", "labels"):
        meta.pop(key)
    meta["format_version"] = 1
    meta["created"] = "2024-01-01T00:00:00Z"
    (folder / "tunesmith.json").write_text(json.dumps(meta))
    old = registry.load(folder)
    assert old.recommend("u0", k=3) == rec.recommend("u0", k=3)
    with pytest.raises(ConfigError, match="content_backbone="):
        registry.load(folder, backbone="x")


def _small_log(n_users: int) -> pd.DataFrame:
    rows = []
    for u in range(n_users):
        group = u % 3
        for t in range(6):
            rows.append({"user_id": f"u{u}", "item_id": f"i{group * 10 + (u + t) % 10}", "timestamp": t})
    return pd.DataFrame(rows)


def test_test_metrics_carry_intervals_over_users_and_a_paired_gain(tmp_path):
    rec = Recommender("ease", runs_dir=str(tmp_path / "runs"), progress=False).fit(block_log())
    overall = rec.test_metrics_["overall"]
    for key in ("ndcg@10", "hr@10", "mrr"):
        lo, hi = overall[f"{key}_ci"]
        assert lo <= overall[key] <= hi
    assert "ndcg@10_ci" in rec.baseline_metrics_["popularity"]["overall"]
    gain = rec.test_metrics_["uncertainty"]["gains"]["popularity"]
    assert gain["metric"] == "ndcg@10" and gain["paired"] and gain["verdict"] in (LARGER, WITHIN)
    assert gain["gain"] == pytest.approx(overall["ndcg@10"] - rec.baseline_metrics_["popularity"]["overall"]["ndcg@10"])
    metrics = json.loads((rec.run_dir_ / "metrics.json").read_text())
    assert metrics["test"]["overall"]["ndcg@10_ci"] == overall["ndcg@10_ci"]
    assert metrics["gains"]["popularity"]["verdict"] == gain["verdict"]
    assert metrics["intervals"]["n_resamples"] == 1000 and metrics["intervals"]["n"] == N_USERS
    report = (rec.run_dir_ / "report.md").read_text()
    assert "95% bootstrap" in report and gain["verdict"] in report
    # The same seed gives the same intervals, and a loaded model's card keeps them.
    again = Recommender("ease", progress=False).fit(block_log())
    assert again.test_metrics_["overall"]["ndcg@10_ci"] == overall["ndcg@10_ci"]
    assert gain["verdict"] in Recommender.load(rec.save(tmp_path / "m")).card()


def test_fewer_than_30_test_users_are_called_out(tmp_path):
    rec = Recommender("popularity", runs_dir=str(tmp_path / "runs"), progress=False).fit(_small_log(12))
    warned = rec.test_metrics_["uncertainty"]["warnings"]
    assert any("only 12 users" in w for w in warned)
    assert "only 12 users" in (rec.run_dir_ / "report.md").read_text()
