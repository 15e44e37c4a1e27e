"""Hyperparameter search: trials, pruning, cross-validation steps, storage, resume, results."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import optuna
import pandas as pd
import pytest

from tests.conftest import make_reviews
from tests.search.test_cv import _log, _stripes, _table
from tunesmith.cli import main
from tunesmith.errors import ConfigError
from tunesmith.search.tuner import PruneOnEpoch, make_storage, parse_duration, recover_stale_trials, tune
from tunesmith.train.callbacks import TrainState

BASE = {
    "backbone": "tiny-text",
    "strategy": "full",
    "epochs": 2,
    "batch_size": 8,
    "max_length": 32,
    "num_threads": 1,
    "test_size": 0.0,
}
SPACE = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.3},
}


def test_parse_duration():
    assert parse_duration("90s") == 90 and parse_duration("30m") == 1800 and parse_duration("1h30m") == 5400
    assert parse_duration(12) == 12
    for bad in ("soon", "", "-5m", "0s"):
        with pytest.raises(ConfigError, match="time_budget"):
            parse_duration(bad)


def test_search_writes_best_config_trials_and_report(tmp_path):
    out = tmp_path / "tune"
    result = tune(
        make_reviews(48),
        "label",
        base_params=BASE,
        space=SPACE,
        n_trials=4,
        sampler="random",
        pruner="none",
        out_dir=out,
        progress=False,
    )
    assert result.count("COMPLETE") == 4 and result.metric == "valid_f1_macro"
    assert result.best_value == max(t["value"] for t in result.trials)
    assert set(result.best_params) == {"lr", "dropout"}
    best = out / "best_config.yaml"
    import yaml

    cfg = yaml.safe_load(best.read_text())
    assert cfg["lr"] == pytest.approx(result.best_params["lr"]) and cfg["backbone"] == "tiny-text"
    assert len(pd.read_csv(out / "trials.csv")) == 4
    assert len((out / "trials.jsonl").read_text().splitlines()) == 4
    saved = json.loads((out / "result.json").read_text())
    assert saved["n_complete"] == 4 and "history" in saved["plots"]
    assert (out / saved["plots"]["history"]).read_bytes()[:4] == b"\x89PNG"
    assert "## Best" in (out / "report.md").read_text()
    # Each trial trained its 2 epochs; nothing was pruned.
    assert result.epochs_run == 8 and result.compute_saved_by_pruning == 0.0


def test_resume_keeps_finished_trials(tmp_path):
    store = tmp_path / "study.journal"
    first = tune(
        make_reviews(40),
        "label",
        base_params=BASE,
        space=SPACE,
        n_trials=2,
        sampler="random",
        pruner="none",
        storage=store,
        progress=False,
    )
    again = tune(
        make_reviews(40),
        "label",
        base_params=BASE,
        space=SPACE,
        n_trials=3,
        sampler="random",
        pruner="none",
        storage=store,
        progress=False,
    )
    assert [t["params"] for t in again.trials[:2]] == [t["params"] for t in first.trials]
    assert again.count("COMPLETE") == 3
    # Asking for no more than the study holds runs nothing new.
    done = tune(
        make_reviews(40),
        "label",
        base_params=BASE,
        space=SPACE,
        n_trials=3,
        sampler="random",
        pruner="none",
        storage=store,
        progress=False,
    )
    assert len(done.trials) == 3


def test_trial_of_a_dead_process_is_failed_and_requeued(tmp_path):
    store, _ = make_storage(tmp_path / "study.journal")
    study = optuna.create_study(study_name="tunesmith", storage=store, direction="maximize")
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{int(dead.stdout)}")
    lr = trial.params["lr"]
    assert recover_stale_trials(study) == 1
    states = [t.state for t in study.get_trials()]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]
    # Queued with the same settings: the next ask() runs them.
    assert study.get_trials()[1].system_attrs["fixed_params"] == {"lr": lr}
    # A live worker's trial is left alone.
    live = study.ask()
    live.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    assert recover_stale_trials(study) == 0


def test_pruning_callback_reports_and_prunes():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    good = study.ask()
    for step in range(3):
        good.report(0.9, step)
    study.tell(good, 0.9)
    bad = study.ask()
    cb = PruneOnEpoch(bad, "valid_f1_macro", offset=10)
    state = TrainState(model=None, epochs=3, steps_per_epoch=1)  # type: ignore[arg-type]
    state.epoch = 0
    # Step 10 has nothing to compare with yet: no pruning.
    cb.on_epoch_end(state, {"valid_f1_macro": 0.1})
    assert bad.storage.get_trial(bad._trial_id).intermediate_values == {10: 0.1}
    worse = study.ask()
    with pytest.raises(optuna.TrialPruned):
        PruneOnEpoch(worse, "valid_f1_macro", offset=0).on_epoch_end(state, {"valid_f1_macro": 0.1})


def test_cross_validated_trials_report_per_fold_steps(tmp_path):
    result = tune(
        make_reviews(48),
        "label",
        base_params={**BASE, "early_stopping": False},
        space=SPACE,
        n_trials=2,
        sampler="random",
        pruner="none",
        cv=2,
        storage=tmp_path / "s.journal",
        progress=False,
    )
    study = optuna.load_study(study_name="tunesmith", storage=make_storage(tmp_path / "s.journal")[0])
    for t in study.get_trials():
        assert set(t.intermediate_values) == {0, 1, 2, 3}  # fold 0: steps 0-1, fold 1: steps 2-3
        assert len(t.user_attrs["fold_scores"]) == 2
    assert all(t["epochs_budget"] == 4 for t in result.trials)


def test_grid_search_covers_the_grid_once(tmp_path):
    space = {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "grid": [1e-3, 1e-2]}, "batch_size": [8, 16]}
    result = tune(
        make_reviews(32),
        "label",
        base_params=BASE,
        space=space,
        n_trials=None,
        sampler="grid",
        pruner="none",
        progress=False,
    )
    seen = {(t["params"]["lr"], t["params"]["batch_size"]) for t in result.trials}
    assert len(result.trials) == 4 and seen == {(1e-3, 8), (1e-3, 16), (1e-2, 8), (1e-2, 16)}


def test_bad_settings_name_the_key():
    df = make_reviews(20)
    with pytest.raises(ConfigError, match="sampler"):
        tune(df, "label", base_params=BASE, space=SPACE, sampler="bayes")
    with pytest.raises(ConfigError, match="search_space.lr"):
        tune(df, "label", base_params=BASE, space={"lr": {"type": "float", "low": 0.0, "high": 1e-3, "log": True}})
    with pytest.raises(ConfigError, match="search_space.learning_rat"):
        tune(df, "label", base_params=BASE, space={"learning_rat": [1e-3]})


def test_cli_tune_and_errors(tmp_path, capsys):
    path = tmp_path / "reviews.csv"
    make_reviews(40).to_csv(path, index=False)
    space = tmp_path / "space.yaml"
    space.write_text("lr: {type: float, low: 1e-4, high: 1e-2, log: true}\n")
    out = tmp_path / "tuning"
    args = ["tune", str(path), "-t", "label", "backbone=tiny-text", "epochs=2", "max_length=32", "batch_size=8"]
    main([*args, "--space", str(space), "--trials", "3", "--sampler", "random", "-o", str(out), "-q"])
    printed = capsys.readouterr().out
    assert "3 trials" in printed and (out / "best_config.yaml").is_file()
    space.write_text("lr: {type: float, low: 1e-3, high: 1e-4}\n")
    with pytest.raises(SystemExit) as exc:
        main([*args, "--space", str(space), "--trials", "1", "-o", str(out), "-q"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "search_space.lr" in err and "Traceback" not in err


def test_two_worker_processes_share_one_study(tmp_path):
    result = tune(
        make_reviews(32),
        "label",
        base_params=BASE,
        space=SPACE,
        n_trials=4,
        sampler="random",
        pruner="none",
        workers=2,
        out_dir=tmp_path / "out",
        progress=False,
    )
    finished = [t for t in result.trials if t["state"] in ("COMPLETE", "PRUNED")]
    # Workers may each finish a trial at the moment the budget is reached: at most one extra per worker.
    assert 4 <= len(finished) <= 5
    assert len({t["worker"] for t in result.trials}) == 2
    assert len({json.dumps(t["params"], sort_keys=True) for t in finished}) == len(finished)


def test_finetuner_tune_sets_the_best_params(tmp_path):
    from tunesmith import FineTuner

    ft = FineTuner(**BASE, progress=False, runs_dir=None)
    result = ft.tune(
        make_reviews(40), target="label", space=SPACE, n_trials=3, sampler="random", pruner="none", progress=False
    )
    assert ft.get_params()["lr"] == pytest.approx(result.best_params["lr"])
    assert ft.get_params()["backbone"] == "tiny-text"


def test_halving_pruner_and_refit(tmp_path):
    result = tune(
        make_reviews(40),
        "label",
        base_params={**BASE, "epochs": 3, "early_stopping": False},
        space=SPACE,
        n_trials=6,
        sampler="random",
        pruner="halving",
        out_dir=tmp_path / "out",
        refit=True,
        progress=False,
    )
    assert result.count("PRUNED") >= 1, "successive halving stops some trials at a lower rung"
    pruned = [t for t in result.trials if t["state"] == "PRUNED"]
    assert all(t["epochs_run"] < t["epochs_budget"] for t in pruned)
    assert 0 < result.compute_saved_by_pruning < 1
    from tunesmith import load

    model = load(result.model_dir)
    assert model.get_params()["lr"] == pytest.approx(result.best_params["lr"])
    assert model.data_info_["rows"]["valid"] == 0  # refitted on training and validation rows together


def test_cli_fit_with_cross_validation(tmp_path, capsys):
    path = tmp_path / "reviews.csv"
    make_reviews(36).to_csv(path, index=False)
    main(
        [
            "fit",
            str(path),
            "-t",
            "label",
            "backbone=tiny-text",
            "epochs=1",
            "max_length=32",
            "batch_size=8",
            f"runs_dir={tmp_path / 'runs'}",
            "progress=false",
            "--cv",
            "3",
            "-o",
            str(tmp_path / "m"),
        ]
    )
    printed = capsys.readouterr().out
    assert "3-fold stratified cross-validation, valid_f1_macro" in printed and "(folds: " in printed


def test_database_storage_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = tune(
        make_reviews(32),
        "label",
        base_params=BASE,
        space=SPACE,
        n_trials=2,
        sampler="random",
        pruner="none",
        storage=url,
        progress=False,
    )
    again = tune(
        make_reviews(32),
        "label",
        base_params=BASE,
        space=SPACE,
        n_trials=3,
        sampler="random",
        pruner="none",
        storage=url,
        progress=False,
    )
    assert first.storage == url and again.count("COMPLETE") == 3
    with pytest.raises(ConfigError, match="storage"):
        tune(make_reviews(32), "label", base_params=BASE, space=SPACE, n_trials=1, storage="ftp://x/y")


def test_default_space_leaves_fixed_settings_alone():
    base = {**BASE, "strategy": "head_only"}
    result = tune(
        make_reviews(32), "label", base_params=base, n_trials=2, sampler="random", pruner="none", progress=False
    )
    drawn = set().union(*(t["params"] for t in result.trials))
    assert drawn and not drawn & {"strategy", "epochs", "batch_size", "lora_r", "freeze_layers"}
    assert result.best_config["strategy"] == "head_only" and result.best_config["epochs"] == 2


# --- every kind -------------------------------------------------------------------------------------


TABULAR = {
    "model": "lightgbm",
    "n_estimators": 60,
    "early_stopping_rounds": 20,
    "rounds_per_step": 10,
    "progress": False,
    "runs_dir": None,
}


def test_tune_a_tabular_model_reports_boosting_rounds_as_pruning_steps(tmp_path):
    journal = tmp_path / "study.journal"
    result = tune(
        _table(), "label", kind="tabular", base_params=TABULAR, n_trials=3, sampler="random", pruner="median",
        storage=str(journal), study_name="tab", progress=False,
    )  # fmt: skip
    assert result.details["kind"] == "tabular" and result.direction == "maximize"
    assert result.metric == "valid_accuracy" and 0.5 < (result.best_value or 0) <= 1.0
    assert set(result.best_params) <= {"num_leaves", "learning_rate", "min_child_samples"}
    assert result.best_config["n_estimators"] == 60 and result.best_config["model"] == "lightgbm"
    study = optuna.load_study(study_name="tab", storage=make_storage(str(journal))[0])
    for trial in study.trials:
        steps = sorted(trial.intermediate_values)
        assert steps and steps[0] == 0, "every rounds_per_step rounds is one pruning step"
        assert all(v < 0 for v in trial.intermediate_values.values()), "valid_loss, negated for a maximising study"
        assert trial.user_attrs["epochs_budget"] == 6
    # resume: the same storage and name go on to 5 finished trials, keeping the first 3
    again = tune(
        _table(), "label", kind="tabular", base_params=TABULAR, n_trials=5, sampler="random", pruner="median",
        storage=str(journal), study_name="tab", progress=False,
    )  # fmt: skip
    assert len(again.trials) == 5
    assert [t["params"] for t in again.trials[:3]] == [t["params"] for t in result.trials]


def test_tune_a_tabular_model_with_cross_validation_and_an_estimator():
    from tunesmith.tabular.estimator import TabularFineTuner

    est = TabularFineTuner(**TABULAR)
    result = tune(_table(), "label", estimator=est, n_trials=2, cv=2, sampler="random", progress=False)
    assert result.count("COMPLETE") == 2
    assert all(len(t["fold_scores"]) == 2 for t in result.trials)
    assert est.get_params()["num_leaves"] == 31, "the estimator passed in is never changed"


def test_tune_refuses_settings_another_kind_has():
    with pytest.raises(ConfigError, match="unknown setting") as err:
        tune(_table(), "label", kind="tabular", base_params=TABULAR, space={"lora_r": [4, 8]}, n_trials=1)
    assert err.value.key == "search_space.lora_r"


def test_tune_an_image_model(tmp_path):
    from tunesmith.estimators.image import ImageFineTuner

    x, y = _stripes()
    est = ImageFineTuner(backbone="tiny-image", image_size=16, batch_size=32, epochs=2, progress=False, runs_dir=None)
    result = tune(
        x, y=y, estimator=est, n_trials=2, sampler="random", progress=False, out_dir=tmp_path / "img", refit=True
    )
    assert result.details["kind"] == "image" and result.metric == "valid_accuracy"
    assert result.count("COMPLETE") == 2 and all(t["epochs_run"] == 2 for t in result.trials)
    assert set(result.best_params) <= {"strategy", "lr", "head_lr", "dropout", "weight_decay"}
    assert (tmp_path / "img" / "best_config.yaml").is_file() and (tmp_path / "img" / "model").is_dir()


def test_tune_a_recommender_by_validation_ndcg():
    result = tune(
        _log(), "rating", kind="recommender", base_params={"min_rating": 4, "progress": False}, n_trials=4,
        sampler="random", pruner="none", progress=False,
    )  # fmt: skip
    assert result.metric == "valid_ndcg@10" and result.direction == "maximize"
    assert result.count("COMPLETE") == 4
    assert result.best_params["model"] in ("ease", "itemknn", "bpr")
    drawn = {k.partition(".")[2] for k in result.best_params if k.startswith("model_params.")}
    assert drawn <= set(result.best_config["model_params"])


def test_auto_strategy_is_resolved_once_for_every_trial_and_the_refit():
    from tunesmith import FineTuner
    from tunesmith.search.cv import read_data
    from tunesmith.search.space import SearchSpace
    from tunesmith.search.tuner import _pin_auto_strategy

    space = SearchSpace.from_dict(SPACE)
    few = FineTuner(backbone="tiny-text")
    _pin_auto_strategy(few, "text", read_data(make_reviews(40), None, "label"), "binary", space)
    assert few.get_params()["strategy"] == "fewshot"
    many = FineTuner(backbone="tiny-text")
    _pin_auto_strategy(many, "text", read_data(make_reviews(400), None, "label"), "binary", space)
    assert many.get_params()["strategy"] == "full"
    chosen = FineTuner(backbone="tiny-text", strategy="lora")
    _pin_auto_strategy(chosen, "text", read_data(make_reviews(40), None, "label"), "binary", space)
    assert chosen.get_params()["strategy"] == "lora"
