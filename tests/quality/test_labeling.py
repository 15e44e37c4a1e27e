"""LabelingSession: answers on disk at once and replayed, crash safety, undo/skip, review rows, retraining."""

from __future__ import annotations

import json
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression

from tests.conftest import make_reviews
from tunesmith import FineTuner
from tunesmith.data.io import DataWarning, read_table
from tunesmith.errors import ConfigError, DataError
from tunesmith.quality import labeling_store
from tunesmith.quality.labeling import LabelingSession, NotCurrentError, UnknownRowError
from tunesmith.tabular import TabularFineTuner


class Logistic(BaseEstimator):
    """A tiny estimator of the tunesmith contract: logistic regression on the columns x1 and x2.

    ``gate`` (class-wide, set by a test) makes every fit wait for it; ``threads`` records the
    thread each fit ran on.
    """

    gate: threading.Event | None = None
    threads: list[str] = []  # noqa: RUF012 - shared on purpose: clones must report to the test

    def __init__(self, C: float = 1.0) -> None:
        self.C = C

    def fit(self, data: pd.DataFrame, y: Any = None, *, target: str, eval_set: Any = None) -> Logistic:
        Logistic.threads.append(threading.current_thread().name)
        if Logistic.gate is not None:
            assert Logistic.gate.wait(10)
        self.model_ = LogisticRegression(C=self.C).fit(data[["x1", "x2"]].to_numpy(), data[target].astype(str))
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, data: pd.DataFrame) -> np.ndarray:
        return self.model_.predict_proba(data[["x1", "x2"]].to_numpy())

    def score(self, data: pd.DataFrame, *, target: str) -> float:
        return float((self.model_.predict(data[["x1", "x2"]].to_numpy()) == data[target].astype(str)).mean())


@pytest.fixture(autouse=True)
def _fresh_logistic() -> Any:
    Logistic.gate, Logistic.threads = None, []
    yield
    if Logistic.gate is not None:
        Logistic.gate.set()
    Logistic.gate = None


def blobs(n: int, seed: int) -> pd.DataFrame:
    """Two classes split by a line: ``truth`` holds every label, ``label`` none yet."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    truth = np.where(x1 + 0.5 * x2 > 0, "yes", "no")
    return pd.DataFrame({"x1": x1, "x2": x2, "label": pd.Series([None] * n, dtype=object), "truth": truth})


def pool_with(n: int, given: int, seed: int = 0) -> pd.DataFrame:
    pool = blobs(n, seed)
    pool.loc[: given - 1, "label"] = pool.loc[: given - 1, "truth"]
    return pool


def session(pool: pd.DataFrame, path: Path, **kwargs: Any) -> LabelingSession:
    settings: dict[str, Any] = {"batch_size": 5, "review_share": 0.0, "background": False, **kwargs}
    return LabelingSession(Logistic(), pool.drop(columns=["truth"]), target="label", answers=path, **settings)


def answer_current(s: LabelingSession, truth: pd.Series, n: int) -> list[Any]:
    done = []
    for _ in range(n):
        row = s.current()
        assert row is not None
        s.answer(row.row, truth[row.row])
        done.append(row.row)
    return done


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_each_answer_is_on_disk_when_the_call_returns_and_replays_byte_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool, path = pool_with(60, 10), tmp_path / "answers.jsonl"
    s = session(pool, path)
    synced: list[int] = []
    real_fsync = labeling_store.os.fsync
    monkeypatch.setattr(labeling_store.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    lines = len(events(path))
    for _ in range(3):
        (row,) = answer_current(s, pool["truth"], 1)
        lines += 1
        assert len(synced) == lines - 1  # fsync-ed before answer() returned
        # read through another handle: written and flushed, not waiting in a buffer
        assert len(events(path)) == lines
        assert {k: events(path)[-1][k] for k in ("event", "row", "label", "kind")} == {
            "event": "label", "row": row, "label": pool["truth"][row], "kind": "query"
        }  # fmt: skip
    skipped = s.current()
    assert skipped is not None
    s.skip(skipped.row)
    s.undo()
    s.skip(skipped.row)
    labels, progress = s.labels(), s.progress()
    s.close()
    before = path.read_bytes()
    assert [e["event"] for e in events(path)][-6:] == ["label", "label", "label", "skip", "undo", "skip"]

    again = session(pool, path)
    pd.testing.assert_series_equal(again.labels(), labels)
    assert again.progress()["skipped"] == 1 and again.progress()["answered"] == 3
    assert again.progress()["curve"][0] == progress["curve"][0]
    assert again.current() is not None and again.current().row not in {*labels.index, skipped.row}
    again.close()
    after = path.read_bytes()
    assert after.startswith(before)  # replayed, never rewritten; the fit on opening adds its curve point
    assert [json.loads(line)["event"] for line in after[len(before) :].splitlines()] == ["score"]
    session(pool, path).close()
    assert path.read_bytes() == after  # nothing new to say: opening writes nothing


def test_a_crash_mid_line_loses_only_that_event(tmp_path: Path) -> None:
    pool, path = pool_with(60, 10), tmp_path / "answers.jsonl"
    s = session(pool, path)
    kept = answer_current(s, pool["truth"], 3)
    s.close()
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) - 20])  # the last event cut off mid-write
    with pytest.warns(DataWarning, match=r"ignored 1 incomplete event on the last line \(4\)"):
        s = session(pool, path)
    assert set(s.labels().index) == set(pool.index[:10]) | set(kept[:2])  # only the cut event is lost
    s.answer(kept[2], pool["truth"][kept[2]], only_current=False)
    s.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = session(pool, path)
    assert not [w for w in caught if issubclass(w.category, DataWarning)]  # the cut line was removed
    assert set(kept) <= set(s.labels().index)
    s.close()


def test_a_damaged_line_before_the_end_is_an_error_naming_it(tmp_path: Path) -> None:
    pool, path = pool_with(60, 10), tmp_path / "answers.jsonl"
    s = session(pool, path)
    answer_current(s, pool["truth"], 2)
    s.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[1] = lines[1][:-3]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"answers.jsonl: line 2 is not a JSON event"):
        session(pool, path)
    lines[1] = json.dumps({"event": "label", "row": 10_000, "label": "yes"})
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"answers.jsonl: line 2: row 10000 is not in the pool"):
        session(pool, path)


def test_undo_and_skip(tmp_path: Path) -> None:
    pool = pool_with(60, 10)
    s = session(pool, tmp_path / "a.jsonl", batch_size=50)
    first, second = answer_current(s, pool["truth"], 2)
    assert s.undo() == second
    assert s.current().row == second and second not in s.labels().index
    s.skip(second)
    assert s.current().row != second and s.progress()["skipped"] == 1
    assert s.undo() == second  # the skip is undone: the row is back
    assert s.current().row == second and s.progress()["skipped"] == 0
    assert s.undo() == first and s.current().row == first  # the label before it too
    with pytest.raises(DataError, match="nothing to undo"):
        s.undo()
    shown = s.current()
    other = next(r for r in pool.index[10:] if r != shown.row)
    with pytest.raises(NotCurrentError, match=f"row {other} is not the row on show"):
        s.answer(other, "yes")
    with pytest.raises(UnknownRowError, match="row 999 is not in the pool"):
        s.answer(999, "yes")
    with pytest.raises(DataError, match=r"the answer 'maybe' is not one of the classes \['no', 'yes'\]"):
        s.answer(shown.row, "maybe")
    assert s.answer(other, "yes", only_current=False) and not s.answer(other, "yes", only_current=False)
    s.close()


def test_review_rows_get_their_share_and_a_review_answer_relabels(tmp_path: Path) -> None:
    pool = pool_with(200, 60, seed=3)
    margin = (pool["x1"] + 0.5 * pool["x2"]).abs()
    wrong = [r for r in pool.index[:60] if margin[r] > 1.0][:6]
    pool.loc[wrong, "label"] = np.where(pool.loc[wrong, "truth"] == "yes", "no", "yes")
    s = session(pool, tmp_path / "a.jsonl", batch_size=10, review_share=0.3)
    batch = s.batch()
    reviews = [r for r in batch if r.kind == "review"]
    assert len(batch) == 10 and len(reviews) == 3
    assert {r.row for r in reviews} <= set(wrong)  # the model doubts exactly the planted errors
    assert all(r.given != r.guess and r.given == pool.loc[r.row, "label"] for r in reviews)
    for row in batch:
        assert s.current() == row
        s.answer(row.row, pool["truth"][row.row])
    labels = s.labels()
    assert len(labels) == 60 + 7  # relabeled, never dropped
    assert all(labels[r.row] == pool["truth"][r.row] for r in reviews)
    assert s.progress()["reviewed"] == 3 and s.progress()["relabeled"] == 3
    # the next batch offers the rest of the planted errors, never a row reviewed already
    later = {r.row for r in s.batch() if r.kind == "review"}
    assert later and later <= set(wrong) - {r.row for r in reviews}
    s.close()


def test_retraining_runs_in_a_background_thread_while_rows_keep_coming(tmp_path: Path) -> None:
    pool = pool_with(80, 10)
    s = session(pool, tmp_path / "a.jsonl", background=True)
    assert s.progress()["fits"] == 1 and len(s.progress()["curve"]) == 1
    Logistic.gate = threading.Event()
    answer_current(s, pool["truth"], 5)  # the batch is done: a fit starts and waits at the gate
    assert s.progress()["retraining"] and s.progress()["fits"] == 1
    during = answer_current(s, pool["truth"], 2)  # the previous ranking goes on serving
    shown = s.current()
    Logistic.gate.set()
    assert s.wait(10)
    progress = s.progress()
    assert not progress["retraining"] and progress["fits"] == 2 and progress["last_error"] is None
    assert [n for n, _ in progress["curve"]] == [10, 15]  # the fit saw the labels of its batch
    assert any(name.startswith("tunesmith-labeling-fit") for name in Logistic.threads)
    assert s.current() == shown  # the row on show stays on show
    assert not set(during) & {r.row for r in s.batch(100)}
    assert progress["batch"]["done"] == 0
    s.close()


def test_a_failed_background_fit_keeps_the_previous_model(tmp_path: Path) -> None:
    pool = pool_with(80, 10)
    s = session(pool, tmp_path / "a.jsonl", background=True)
    model = s.model
    s.estimator.set_params(C=-1.0)  # every later clone fails to fit
    answer_current(s, pool["truth"], 5)
    assert s.wait(10)
    assert s.model is model and "InvalidParameterError" in s.progress()["last_error"]
    assert s.current() is not None
    s.close()


def test_it_stops_when_the_score_stops_improving_and_can_go_on(tmp_path: Path) -> None:
    pool, path = pool_with(200, 12), tmp_path / "a.jsonl"
    s = session(pool, path, eval_set=blobs(100, 9).drop(columns=["label"]).rename(columns={"truth": "label"}),
                patience=2, min_delta=0.5)  # fmt: skip
    answer_current(s, pool["truth"], 10)
    progress = s.progress()
    assert len(progress["curve"]) == 3 and progress["score_on"] == "eval_set"
    assert "has not improved by more than 0.5 for 2 fits" in progress["stop_reason"]
    assert s.current() is None and s.batch() == [] and progress["done"]
    s.close()
    s = session(pool, path, patience=2, min_delta=0.5)
    assert s.progress()["stop_reason"] and s.current() is None  # remembered across a restart
    s.keep_going()
    assert s.current() is not None and s.progress()["stop_reason"] is None
    s.close()
    assert events(path)[-1]["event"] == "keep_going"


def test_without_two_classes_rows_come_in_a_seeded_random_order(tmp_path: Path) -> None:
    pool = blobs(40, 1)
    orders = []
    for name in ("a", "b"):
        s = session(pool, tmp_path / f"{name}.jsonl", classes=["no", "yes"], batch_size=4, seed=7)
        orders.append([r.row for r in s.batch()])
        assert s.current().guess is None and s.model is None
        s.close()
    assert orders[0] == orders[1] and orders[0] != list(range(4))
    s = session(pool, tmp_path / "c.jsonl", classes=["no", "yes"], batch_size=4, seed=7)
    yes, no = pool.index[pool["truth"] == "yes"][0], pool.index[pool["truth"] == "no"][0]
    s.answer(yes, "yes", only_current=False)
    s.answer(no, "no", only_current=False)
    answer_current(s, pool["truth"], 2)
    assert s.model is not None and s.current().guess in ("no", "yes")
    s.close()


def test_with_one_class_so_far_batches_go_on_in_random_order_and_say_why(tmp_path: Path) -> None:
    pool = blobs(40, 1)
    settings: dict[str, Any] = {"classes": ["no", "yes"], "batch_size": 4, "seed": 7}
    with session(pool, tmp_path / "order.jsonl", **settings) as fresh:
        order = [r.row for r in fresh.batch(12)]
    # a round of the batch files: every answer merged is "yes", so no fit can start
    s = session(pool, tmp_path / "a.jsonl", auto_retrain=False, initial_fit=False, **settings)
    first = s.batch()
    for row in first:
        s.answer(row.row, "yes", only_current=False)
    assert not s.retrain(background=False)
    second = s.batch()
    assert [r.row for r in first + second] == order[:8]  # the next rows of the seeded order, not nothing
    assert s.progress()["batch"] == {"done": 0, "size": 4} and s.model is None
    assert s.progress()["cannot_fit"] == (
        "only class 'yes' has labels so far: rows come in a seeded random order until two classes have labels"
    )
    s.close()
    # on the page the batch ends too (no fit), and the rows keep coming
    s = session(pool, tmp_path / "b.jsonl", **settings)
    for _ in range(6):
        row = s.current()
        assert row is not None and row.guess is None
        s.answer(row.row, "yes")
    assert s.progress()["batch"]["done"] == 2 and [r.row for r in s.batch()] == order[6:8]
    s.answer(order[6], "no")
    answer_current(s, pool["truth"], 1)  # the batch of 4 is answered with two classes: the first fit
    assert s.model is not None and s.progress()["cannot_fit"] is None and s.progress()["fits"] == 1
    s.close()


def test_rounds_of_review_answers_add_curve_points_and_can_stop(tmp_path: Path) -> None:
    pool, path = pool_with(60, 60, seed=3), tmp_path / "a.jsonl"  # every row labeled: nothing new to ask
    margin = (pool["x1"] + 0.5 * pool["x2"]).abs()
    wrong = [r for r in pool.index if margin[r] > 1.0][:8]
    pool.loc[wrong, "label"] = np.where(pool.loc[wrong, "truth"] == "yes", "no", "yes")
    settings: dict[str, Any] = {"batch_size": 4, "review_share": 0.5, "patience": 2, "min_delta": 0.5}
    s = session(pool, path, **settings)
    assert s.progress()["unlabeled"] == 0 and len(s.progress()["curve"]) == 1
    rounds = 0
    while s.progress()["stop_reason"] is None and rounds < 4:
        batch = s.batch()
        assert batch and {r.kind for r in batch} == {"review"}
        for row in batch:  # the last answer leaves nothing to show: that ends the batch, and it refits
            s.answer(row.row, pool["truth"][row.row])
        rounds += 1
    progress = s.progress()
    assert rounds == 2 and progress["fits"] == 3 and progress["relabeled"] == 4
    assert [n for n, _ in progress["curve"]] == [60, 60, 60]  # one point a round, at the same labels
    assert "for 2 fits" in progress["stop_reason"]
    s.close()
    points = [e for e in events(path) if e["event"] == "score"]
    assert [e["answers"] for e in points] == [0, 2, 4]
    s = session(pool, path, **settings)  # reopened: no new answer, so no new point
    assert s.progress()["curve"] == progress["curve"] and s.progress()["stop_reason"] == progress["stop_reason"]
    s.close()
    assert len([e for e in events(path) if e["event"] == "score"]) == 3
    # a file from before points had "answers" replays the same, and reopening it adds no point either
    old = [{k: v for k, v in e.items() if k != "answers"} for e in events(path)]
    path.write_text("".join(json.dumps(e) + "\n" for e in old), encoding="utf-8")
    s = session(pool, path, **settings)
    assert s.progress()["curve"] == progress["curve"] and s.progress()["stop_reason"]
    s.keep_going()
    answer_current(s, pool["truth"], len(s.batch()))
    assert len(s.progress()["curve"]) == 4  # and answers after it do
    s.close()


def test_bad_settings_and_data_are_refused(tmp_path: Path) -> None:
    pool = pool_with(30, 6).drop(columns=["truth"])
    path = tmp_path / "a.jsonl"
    with pytest.raises(ConfigError, match="unknown query strategy 'bald'"):
        LabelingSession(Logistic(), pool, target="label", answers=path, strategy="bald")
    with pytest.raises(ConfigError, match="review_share.*below 1"):
        LabelingSession(Logistic(), pool, target="label", answers=path, review_share=1.0)
    with pytest.raises(ConfigError, match="batch_size.*at least 1"):
        LabelingSession(Logistic(), pool, target="label", answers=path, batch_size=0)
    with pytest.raises(DataError, match="no column 'y'"):
        LabelingSession(Logistic(), pool, target="y", answers=path)
    with pytest.raises(DataError, match="row ids.*repeat"):
        LabelingSession(Logistic(), pool.set_index(pd.Index([0] * 30)), target="label", answers=path)
    with pytest.raises(ConfigError, match="at least two label choices"):
        LabelingSession(Logistic(), pool.assign(label=None), target="label", answers=path)
    with pytest.raises(DataError, match="the label of row 0 'no' is not one of the classes"):
        LabelingSession(Logistic(), pool, target="label", answers=path, classes=["yes", "maybe"])
    with pytest.raises(ConfigError, match="needs the model's embeddings"):
        LabelingSession(TabularFineTuner(**TREES), pool, target="label", answers=path, strategy="coreset")
    s = LabelingSession(Logistic(), pool, target="label", answers=path, background=False)
    with pytest.raises(DataError, match="another labeling session has this answers file open"):
        LabelingSession(Logistic(), pool, target="label", answers=path)
    s.close()


def test_export_writes_every_label_gathered(tmp_path: Path) -> None:
    pool = pool_with(40, 8)
    s = session(pool, tmp_path / "a.jsonl")
    answered = answer_current(s, pool["truth"], 3)
    out = s.export(tmp_path / "labeled.csv")
    s.close()
    with pytest.raises(DataError, match="the labeling session is closed"):
        s.answer(s.current().row, "yes")
    back = read_table(out)
    assert len(back) == 40 and list(back.columns) == ["x1", "x2", "label"]
    assert back["label"].notna().sum() == 11
    assert all(back.loc[r, "label"] == pool["truth"][r] for r in answered)


def test_image_paths_never_leave_the_root(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    (root / "img" / "a.png").write_bytes(b"\x89PNG")
    (tmp_path / "secret.png").write_bytes(b"secret")
    (root / "img" / "link.png").symlink_to(tmp_path / "secret.png")
    pool = pd.DataFrame({
        "path": ["img/a.png", "../secret.png", "img/link.png", "img/missing.png"],
        "label": ["cat", "dog", None, None],
    })  # fmt: skip
    s = LabelingSession(Logistic(), pool, target="label", answers=tmp_path / "a.jsonl", image_column="path",
                        root=root, initial_fit=False)  # fmt: skip
    assert s.image_path(0) == root / "img" / "a.png"
    for row, problem in ((1, "outside"), (2, "outside"), (3, "not a file")):
        with pytest.raises(DataError, match=problem):
            s.image_path(row)
    assert s.current().image and set(s.current().fields) == {"path"}
    s.close()


TREES = {"model": "lightgbm", "bagging_folds": 0, "n_estimators": 30, "min_child_samples": 3, "progress": False,
         "runs_dir": ""}  # fmt: skip


def test_tunesmith_estimators_drive_a_session(tmp_path: Path, fast_params: dict) -> None:
    pool = pool_with(80, 16).drop(columns=["truth"])
    s = LabelingSession(TabularFineTuner(**TREES), pool, target="label", answers=tmp_path / "t.jsonl",
                        batch_size=6, background=False)  # fmt: skip
    assert len(s.batch()) == 6 and s.current().guess in ("no", "yes")
    s.close()
    reviews = make_reviews(40).astype(object)
    reviews.loc[12:, "label"] = None
    text = FineTuner(**{**fast_params, "strategy": "head_only", "runs_dir": None, "baselines": False})
    s = LabelingSession(text, reviews, target="label", answers=tmp_path / "x.jsonl", strategy="badge",
                        batch_size=5, background=False)  # fmt: skip
    row = s.current()
    assert row.text is not None and row.fields == {} and row.guess in ("neg", "pos")
    assert len(s.batch()) == 5
    s.close()
