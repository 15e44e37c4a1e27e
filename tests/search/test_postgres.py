"""Search across processes and machines: a study shared through a real PostgreSQL server, started
and stopped by the tests themselves, and what sharing needs (each worker's share of the cores, a
compute budget that holds for the whole study).

The server comes from the pgserver wheel of the dev extra (see tests/search/_postgres.py); the
tests skip, saying why, only where no server can be started on the platform. The URL handling
of a database storage is tested without a server.
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import make_reviews
from tests.search._postgres import PostgresServer, PostgresUnavailable, free_port
from tests.search.test_search import BASE, SPACE
from tunesmith.errors import ConfigError
from tunesmith.search import study as study_module
from tunesmith.search.space import SearchSpace
from tunesmith.search.study import database_url, make_sampler, make_storage
from tunesmith.search.tuner import _trial_estimator, tune
from tunesmith.train.threads import default_threads


@pytest.fixture(scope="module")
def postgres():
    server = PostgresServer()
    try:
        server.start()
    except PostgresUnavailable as exc:
        pytest.skip(f"no PostgreSQL server on this platform: {exc}")
    try:
        yield server
    finally:
        server.stop()


def test_two_clients_share_one_study_through_postgresql(postgres):
    """Two searches at once, each with its own connection, as two machines would run them."""
    url = postgres.create_database("clients")
    results: dict[int, Any] = {}

    def client(i: int) -> None:
        results[i] = tune(
            make_reviews(24, seed=i), "label", base_params=BASE, space=SPACE, n_trials=4, sampler="random",
            pruner="none", storage=url, study_name="two", seed=i, progress=False,
        )  # fmt: skip

    threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert set(results) == {0, 1}, "both clients finished"
    study = optuna.load_study(study_name="two", storage=database_url(url))
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert 4 <= len(done) <= 5 and len(done) == len(study.trials)
    assert sorted(t.number for t in study.trials) == list(range(len(study.trials))), "no number given twice"
    assert all(len(r.trials) >= 4 for r in results.values()), "each client saw the other's trials"


@pytest.mark.slow
def test_two_workers_share_one_study_through_postgresql(postgres, tmp_path):
    url = postgres.create_database("shared")
    result = tune(
        make_reviews(32), "label", base_params=BASE, space=SPACE, n_trials=4, sampler="random", pruner="none",
        storage=url, study_name="pg", workers=2, out_dir=tmp_path / "out", progress=False,
    )  # fmt: skip
    finished = [t for t in result.trials if t["state"] in ("COMPLETE", "PRUNED")]
    # Each worker may finish one trial at the moment the budget is reached.
    assert 4 <= len(finished) <= 5 and all(t["state"] == "COMPLETE" for t in result.trials)
    assert len({t["worker"] for t in result.trials}) == 2, "both processes ran trials"
    assert len({json.dumps(t["params"], sort_keys=True) for t in finished}) == len(finished)
    assert result.storage == url
    share = max(1, default_threads() // 2)
    assert {t["threads"] for t in result.trials} == {share}, "each worker trains on its share of the cores"
    # The trials are in the database: a fresh Optuna client reads the same study back.
    study = optuna.load_study(study_name="pg", storage=database_url(url))
    assert [(t.number, t.value) for t in study.trials] == [(t["number"], t["value"]) for t in result.trials]
    rows = postgres.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'", database="shared")
    assert rows == [(len(finished),)]


def test_a_trial_left_running_by_a_dead_machine_is_requeued_by_its_heartbeat(postgres, monkeypatch):
    url = postgres.create_database("heartbeat")
    monkeypatch.setattr(study_module, "HEARTBEAT_SECONDS", 1)
    store, _ = make_storage(url)
    study = optuna.create_study(study_name="hb", storage=store, direction="maximize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "heartbeat is meant for optimize": this trial is to be lost
        lost = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
    lost.set_user_attr("worker", "another-machine:1")
    store.record_heartbeat(lost._trial_id)
    time.sleep(3.5)  # past the grace period (three beats) with no heartbeat
    result = tune(
        make_reviews(32), "label", base_params=BASE, space={"lr": SPACE["lr"]}, n_trials=2, sampler="random",
        pruner="none", storage=url, study_name="hb", progress=False,
    )  # fmt: skip
    states = {t["number"]: t["state"] for t in result.trials}
    assert states[lost.number] == "FAIL"
    rerun = [t for t in result.trials if t["number"] != lost.number and t["params"] == {"lr": lost.params["lr"]}]
    assert len(rerun) == 1 and rerun[0]["state"] == "COMPLETE", "the lost trial's settings ran again"
    assert result.count("COMPLETE") == 2


def test_postgres_urls_get_an_installed_driver(monkeypatch):
    assert database_url("postgres://u@h:5/db") == "postgresql+psycopg://u@h:5/db"
    assert database_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert database_url("sqlite:///x.db") == "sqlite:///x.db"
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "psycopg" else real(name))
    if real("psycopg2") is not None:
        assert database_url("postgresql://u@h/db") == "postgresql+psycopg2://u@h/db"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name.startswith("psycopg") else real(name))
    with pytest.raises(ConfigError, match="driver") as exc:
        database_url("postgresql://u@h/db")
    assert exc.value.key == "storage"


def test_a_database_password_stays_out_of_results_and_errors(tmp_path):
    url = f"sqlite:///{tmp_path / 'pw.db'}"
    assert make_storage(url)[1] == url
    port = free_port()
    with pytest.raises(ConfigError, match="cannot open the database") as exc:
        tune(
            make_reviews(16), "label", base_params=BASE, space=SPACE, n_trials=1, progress=False,
            storage=f"postgresql://ana:s3cret@127.0.0.1:{port}/nowhere",
        )  # fmt: skip
    message = str(exc.value)
    assert exc.value.key == "storage" and "s3cret" not in message and f"ana:***@127.0.0.1:{port}" in message


def test_the_server_is_stopped_and_its_folder_removed():
    server = PostgresServer()
    try:
        server.start()
    except PostgresUnavailable as exc:
        pytest.skip(f"no PostgreSQL server on this platform: {exc}")
    root, proc = server.root, server.process
    assert root is not None and root.is_dir() and proc is not None
    assert server.execute("SELECT 1") == [(1,)]
    server.stop()
    assert proc.poll() is not None and not root.exists()
    server.stop()  # twice is harmless


def test_a_worker_trains_on_its_share_of_the_cores():
    from tunesmith import FineTuner
    from tunesmith.search.tuner import _Problem

    def problem(**params: Any) -> _Problem:
        est = FineTuner(**{**BASE, "num_threads": None, **params})
        return _Problem(
            est, "text", None, None, None, {}, "valid_f1_macro", "max", None, "stratified", None, None, 1, 0
        )

    assert _trial_estimator(problem(), {"lr": 1e-3}, threads=1).get_params()["num_threads"] == 1
    assert _trial_estimator(problem(), {"lr": 1e-3}).get_params()["num_threads"] is None, "one worker: all cores"
    fixed = _trial_estimator(problem(num_threads=2), {"lr": 1e-3}, threads=1)
    assert fixed.get_params()["num_threads"] == 2, "a thread count the user set is kept"


def test_an_epoch_budget_counts_pruned_and_complete_epochs(tmp_path):
    base = {**BASE, "epochs": 3}
    result = tune(
        make_reviews(24), "label", base_params=base, space=SPACE, n_trials=None, epoch_budget=7, sampler="tpe",
        startup_trials=2, pruner="none", storage=tmp_path / "s.journal", progress=False,
    )  # fmt: skip
    # 3 epochs a trial: 2 trials spend 6 < 7, the third crosses the budget and is finished, not cut.
    assert result.count("COMPLETE") == 3 and result.epochs_run == 9
    again = tune(
        make_reviews(24), "label", base_params=base, space=SPACE, n_trials=None, epoch_budget=9,
        storage=tmp_path / "s.journal", progress=False,
    )  # fmt: skip
    assert len(again.trials) == 3, "a resumed study whose budget is spent runs nothing more"
    with pytest.raises(ConfigError, match="epoch_budget"):
        tune(make_reviews(24), "label", base_params=base, space=SPACE, epoch_budget=0, progress=False)
    sampler = make_sampler("tpe", SearchSpace.from_dict(SPACE), 0, startup_trials=3)
    assert sampler._n_startup_trials == 3
