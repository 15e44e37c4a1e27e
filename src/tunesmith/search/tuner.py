"""Hyperparameter search over the settings of any kind of model, with Optuna.

One trial is one fit (or one cross-validation) of a :func:`sklearn.base.clone` of the
estimator with settings drawn from a :class:`~tunesmith.search.space.SearchSpace` and set with
``set_params``. Every kind reports a validation metric to its training callbacks after each
epoch (text, images, the tabular network, SASRec and BPR recommenders) or every
``rounds_per_step`` boosting rounds (LightGBM), so a pruner (median or successive halving)
can stop a hopeless trial early instead of letting it run to the end.

Trials are scored on validation: text by its best monitored metric (``valid_f1_macro``,
``valid_rmse``); the other kinds by their ``score`` on held-out rows (``eval_set``, or a
fifth of the data held out once for all trials), which is higher-is-better (accuracy, R²,
NDCG@10).

Under cross-validation each fold reports at its own steps (``fold * stride + epoch``,
with one stride for every trial), so the pruner compares a trial's fold 2, epoch 1 with
other trials' fold 2, epoch 1, never with another fold: folds differ in difficulty, and
comparing across them prunes good trials that happen to start on a hard fold.

Finished and pruned trials count toward the trial budget; a search that was killed resumes
where it stopped (same storage and study name), and a trial that was running when its
process died is marked failed and queued again with the same settings.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
import pandas as pd
import yaml
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState
from sklearn.base import clone

from tunesmith.config import config_to_yaml, make_config, validate_settings
from tunesmith.data.schema import _infer_task, infer_schema
from tunesmith.errors import ConfigError
from tunesmith.estimators import registry
from tunesmith.estimators.text.fewshot import resolve_strategy
from tunesmith.evaluate.metrics import metric_direction
from tunesmith.progress import progress
from tunesmith.runs.artifacts import atomic_write_text
from tunesmith.search.cv import (
    QUIET_SETTINGS,
    Table,
    cross_validate,
    fit_with_eval,
    holdout,
    read_data,
    validation_score,
)
from tunesmith.search.report import write_search_report
from tunesmith.search.space import SearchSpace, nest, space_for
from tunesmith.search.study import (
    PRUNERS,
    SAMPLERS,
    PruneOnEpoch,
    TuneResult,
    _finished,
    _worker_id,
    make_pruner,
    make_sampler,
    make_storage,
    parse_duration,
    recover_stale_trials,
    trial_rows,
    tune_summary,
)
from tunesmith.train.callbacks import Callback
from tunesmith.train.threads import default_threads

CV_STRATEGIES: tuple[str, ...] = ("stratified", "group", "time")
# The metric each kind reports to its callbacks while it trains (text and images: their monitor).
_REPORTED = {"tabular": "valid_loss", "recommender": "valid_ndcg@10"}
# Steps of a kind with no epoch setting (a recommender's phases): each fold gets this many.
_DEFAULT_STRIDE = 1000
# Seconds the workers of a search wait for each other to start.
_START_TIMEOUT = 300.0


@dataclass
class _Problem:
    """Everything a worker process needs to run trials (picklable)."""

    estimator: Any
    kind: str
    table: Table
    eval_set: Any
    holdout: tuple[Any, Any] | None
    space: dict[str, Any]
    key: str
    direction: str
    cv: int | None
    cv_strategy: str
    group_column: str | None
    time_column: str | None
    stride: int
    seed: int


def _step_budget(settings: Mapping[str, Any]) -> int | None:
    """Steps a fit with ``settings`` reports at most: epochs, plus boosting rounds / rounds per step."""
    model = settings.get("model")
    steps = 0
    boosts = "n_estimators" in settings and "rounds_per_step" in settings
    if boosts and model in (None, "auto", "lightgbm", "ensemble"):
        steps += math.ceil(int(settings["n_estimators"]) / max(1, int(settings["rounds_per_step"])))
    if "epochs" in settings and (not boosts or model in (None, "auto", "neural", "ensemble")):
        steps += int(settings["epochs"])
    return steps or None


def _trial_estimator(problem: _Problem, drawn: Mapping[str, Any], threads: int | None = None) -> Any:
    """A clone of the base estimator with the drawn settings, quiet (no baselines, runs, bars).

    ``threads`` is the worker's share of the cores: a kind that sets its own thread count when
    it fits (text, images: all cores unless ``num_threads`` is set) gets it too, or every
    worker would use every core.
    """
    est = clone(problem.estimator)
    current = est.get_params()
    quiet = {k: v for k, v in {**QUIET_SETTINGS, "progress": False}.items() if k in current}
    if threads and "num_threads" in current and not current["num_threads"] and "num_threads" not in drawn:
        quiet["num_threads"] = threads
    return est.set_params(**nest(drawn, current), **quiet)


def _objective(problem: _Problem, threads: int | None = None) -> Callable[[optuna.Trial], float]:
    settings = type(problem.estimator).settings_model
    space = SearchSpace.from_dict(problem.space, settings=settings)

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", _worker_id())
        started = time.perf_counter()
        try:
            est = _trial_estimator(problem, space.suggest(trial), threads)
        except ConfigError as exc:
            trial.set_user_attr("error", str(exc))
            raise
        folds = problem.cv or 1
        budget = _step_budget(est.get_params())
        if budget:
            trial.set_user_attr("epochs_budget", budget * folds)
        pruners: list[PruneOnEpoch] = []

        def fold_callbacks(i: int) -> list[Callback]:
            cb = PruneOnEpoch(trial, problem.key, offset=i * problem.stride, direction=problem.direction)
            pruners.append(cb)
            return [cb]

        table = problem.table
        try:
            if problem.cv:
                data, y = (table.frame, None) if table.frame is not None else (table.arrays, table.y)
                result = cross_validate(
                    est, data, y, target=table.target, k=problem.cv, strategy=problem.cv_strategy,
                    group_column=problem.group_column, time_column=problem.time_column, seed=problem.seed,
                    fold_callbacks=fold_callbacks, progress=False,
                )  # fmt: skip
                trial.set_user_attr("fold_scores", [float(s) for s in result.scores])
                value, metric = float(result.mean), result.metric
            else:
                value, metric = _fit_once(problem, est, fold_callbacks(0))
            trial.set_user_attr("metric", metric)
        finally:
            import torch

            trial.set_user_attr("epochs_run", sum(p.epochs for p in pruners))
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 3))
            trial.set_user_attr("threads", torch.get_num_threads())
        return value

    return objective


def _fit_once(problem: _Problem, est: Any, callbacks: list[Callback]) -> tuple[float, str]:
    """Fit one trial on the training rows; (its validation value, the metric's name)."""
    table = problem.table
    if problem.holdout is None:
        data, y = (table.frame, None) if table.frame is not None else (table.arrays, table.y)
        fit_with_eval(est, data, y, target=table.target, eval_set=problem.eval_set, callbacks=callbacks)
        valid = problem.eval_set
        valid_y = None
        if isinstance(valid, tuple) and len(valid) == 2:
            valid, valid_y = valid
    else:
        train_idx, valid_idx = problem.holdout
        data, y = table.rows(train_idx)
        valid, valid_y = table.rows(valid_idx)
        fit_with_eval(est, data, y, target=table.target, eval_set=table.as_eval_set(valid_idx), callbacks=callbacks)
    result = validation_score(est, valid, valid_y, target=table.target)
    if not math.isfinite(result.value):
        raise ConfigError(
            "the search needs a validation split to score trials",
            key="valid_size",
            hint="Set valid_size > 0 or pass eval_set",
        )
    return result.value, result.metric


@dataclass
class _Run:
    """How a worker runs its share of a study (picklable, for spawned workers)."""

    study_name: str
    sampler: str
    pruner: str
    n_trials: int | None
    timeout: float | None
    progress: bool
    epoch_budget: int | None = None
    startup_trials: int | None = None


def _run_worker(problem: _Problem, storage: Any, run: _Run, worker_index: int, threads: int | None) -> None:
    """One process's share of the search: ask, fit, tell, until the budget is spent."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace.from_dict(problem.space, settings=type(problem.estimator).settings_model)
    study = optuna.load_study(
        study_name=run.study_name,
        storage=storage,
        sampler=make_sampler(run.sampler, space, problem.seed + worker_index, startup_trials=run.startup_trials),
        pruner=make_pruner(run.pruner),
    )
    n_trials = run.n_trials
    callbacks: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = []
    if n_trials is not None:
        if _finished(study) >= n_trials:
            return
        callbacks.append(MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    limit = max(10, n_trials or 10)

    def stop_on_failures(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        # A space whose every draw is refused (conflicting settings) must not loop forever.
        if len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))) >= limit:
            study.stop()

    callbacks.append(stop_on_failures)
    if run.epoch_budget is not None:
        if _epochs_spent(study) >= run.epoch_budget:
            return
        callbacks.append(_EpochBudget(run.epoch_budget))
    # tunesmith's own progress, not Optuna's bar: it also prints plain lines (one per trial)
    # where output goes to a log, and counts trials of every worker sharing the study.
    shown = run.progress and worker_index == 0
    with progress("search", n_trials, unit="trials", enabled=shown) as bar:

        def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            done = _finished(study)
            bar.advance(done - bar.done)
            value = f"{trial.value:.4f}" if trial.value is not None else "-"
            bar.note(f"trial {trial.number} {trial.state.name.lower()}: {value}")

        study.optimize(
            _objective(problem, threads),
            n_trials=None,
            timeout=run.timeout,
            callbacks=[*callbacks, report],
            catch=(ConfigError,),
            show_progress_bar=False,
        )


def _epochs_spent(study: optuna.Study) -> int:
    """Epochs trained by the study's finished trials (pruned and failed ones count what they ran)."""
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(int(t.user_attrs.get("epochs_run") or 0) for t in study.get_trials(deepcopy=False, states=done))


class _EpochBudget:
    """Stops the study once its trials trained ``budget`` epochs in all (the trial that crosses it ends first)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if _epochs_spent(study) >= self.budget:
            study.stop()


def _check_options(
    sampler: str, pruner: str, cv: int | None, cv_strategy: str, eval_set: Any, n_trials: int | None, workers: int
) -> None:
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}", key="sampler")
    if pruner not in PRUNERS:
        raise ConfigError(f"unknown pruner {pruner!r}; use one of {', '.join(PRUNERS)}", key="pruner")
    if cv_strategy not in CV_STRATEGIES:
        raise ConfigError(f"unknown cv strategy {cv_strategy!r}; use one of {', '.join(CV_STRATEGIES)}", key="cv")
    if cv is not None and cv < 2:
        raise ConfigError(f"must be at least 2, got {cv}", key="cv")
    if cv is not None and eval_set is not None:
        raise ConfigError("cross-validation makes its own validation folds; drop eval_set", key="cv")
    if n_trials is not None and n_trials < 1:
        raise ConfigError(f"must be at least 1, got {n_trials}", key="trials")
    if workers < 1:
        raise ConfigError(f"must be at least 1, got {workers}", key="workers")


def _base_estimator(kind: str, estimator: Any, base_params: Mapping[str, Any] | None) -> tuple[Any, str, dict]:
    """(the estimator trials clone, its kind, the settings the caller fixed)."""
    base = dict(base_params or {})
    if estimator is None:
        return registry.estimator(kind)(**base), kind, base
    found = registry.of(estimator).name
    if kind not in ("text", found):
        raise ConfigError(f"kind={kind!r} but the estimator is a {found} model", key="kind", hint="Drop kind=")
    fixed = {**getattr(estimator, "_params", {}), **base}
    est = clone(estimator).set_params(**base) if base else clone(estimator)
    return est, found, fixed


def _stride(space: SearchSpace, settings: Mapping[str, Any]) -> int:
    """Steps one fold may report at most, over every draw of ``space``."""
    if "epochs" not in settings and "n_estimators" not in settings:
        return _DEFAULT_STRIDE
    upper = {k: max(int(settings.get(k) or 0), int(space.upper_bound(k) or 0)) for k in ("epochs", "n_estimators")}
    return max(1, _step_budget({**settings, **upper, "model": None}) or 1)


def tune(
    data: str | os.PathLike[str] | pd.DataFrame | Any,
    target: str | None = None,
    *,
    kind: str = "text",
    estimator: Any = None,
    y: Any = None,
    base_params: Mapping[str, Any] | None = None,
    space: SearchSpace | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    n_trials: int | None = 20,
    time_budget: str | float | None = None,
    epoch_budget: int | None = None,
    sampler: str = "tpe",
    pruner: str = "median",
    startup_trials: int | None = None,
    cv: int | None = None,
    cv_strategy: str = "stratified",
    group_column: str | None = None,
    time_column: str | None = None,
    text_column: str | list[str] | None = None,
    eval_set: Any = None,
    storage: str | os.PathLike[str] | None = None,
    study_name: str = "tunesmith",
    workers: int = 1,
    out_dir: str | os.PathLike[str] | None = None,
    refit: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> TuneResult:
    """Search the settings of a model of any kind; return the best and every trial.

    Parameters
    ----------
    data, target, y, text_column, eval_set:
        As for the kind's ``fit`` (a file or DataFrame holding ``target``; arrays with ``y``
        for images). Without ``cv`` a text trial is scored on its own validation split (or
        ``eval_set``); any other kind on ``eval_set``, or on a fifth of the rows held out
        once for all trials (cut by ``cv_strategy``, ``group_column``, ``time_column``).
    kind, estimator:
        The kind of model (``text``, ``image``, ``tabular``, ``recommender``: see
        :mod:`tunesmith.estimators.registry`), or an estimator whose settings are the base
        of every trial (each trial is a ``clone`` with the drawn settings ``set_params``'d).
    base_params:
        Settings every trial shares (a config file's content); the space overrides them.
    space:
        A :class:`SearchSpace`, its dict/YAML form, or a YAML file path, naming settings of
        the kind's ``settings_model``. Default: the kind's space
        (:func:`~tunesmith.search.space.space_for`), less the settings the caller fixed.
    n_trials, time_budget, epoch_budget:
        Stop after this many finished (complete or pruned) trials in the study, after this
        long (``"30m"``), or once the study's trials trained ``epoch_budget`` epochs in all
        (folds included; a pruned trial counts the epochs it ran), whichever comes first. A
        budget in epochs is one in compute, the same for every sampler and machine; the trial
        that crosses it is finished, not cut. Grid search also stops when the grid is exhausted.
    sampler, pruner:
        ``tpe`` | ``random`` | ``grid``; ``median`` | ``halving`` | ``none``.
    startup_trials:
        Random trials TPE draws before it models the results (default 10): a short search
        wants fewer, or it is mostly random.
    cv, cv_strategy, group_column, time_column:
        Score each trial by ``cv``-fold cross-validation (``stratified``, ``group`` or
        ``time``-ordered folds) instead of one split.
    storage, study_name:
        Where the study lives: a journal file path or a database URL. Default: a journal
        in ``out_dir`` (or memory when there is no ``out_dir``). Rerunning with the same
        storage and name resumes.
    workers:
        Processes that share the study on this machine (each gets cores / workers threads).
        More machines: run the same command on each with one database URL.
    out_dir:
        Where ``best_config.yaml``, ``trials.csv``, ``trials.jsonl``, the plots and
        ``report.md`` go (and ``model/`` with ``refit``).
    refit:
        Fit the best settings once more on all the rows (text: training and validation
        together) and save the model under ``out_dir/model``.
    """
    started = time.perf_counter()
    # Optuna logs a line per trial at INFO; tunesmith reports progress and results itself.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _check_options(sampler, pruner, cv, cv_strategy, eval_set, n_trials, workers)
    timeout = parse_duration(time_budget) if time_budget is not None else None
    if epoch_budget is not None and epoch_budget < 1:
        raise ConfigError(f"must be at least 1, got {epoch_budget}", key="epoch_budget")
    if startup_trials is not None and startup_trials < 1:
        raise ConfigError(f"must be at least 1, got {startup_trials}", key="startup_trials")
    if n_trials is None and timeout is None and epoch_budget is None and sampler != "grid":
        raise ConfigError("give a number of trials, a time budget or an epoch budget", key="trials")
    base_est, kind, fixed = _base_estimator(kind, estimator, base_params)
    settings_cls = type(base_est).settings_model
    settings = base_est.get_params()
    if text_column is not None and "text_column" in settings:
        base_est.set_params(text_column=text_column)
        settings["text_column"] = text_column
    table = read_data(data, y, target if target is not None else settings.get("target"))

    task, monitor = _task_and_monitor(kind, table, settings, group_column, time_column)
    if isinstance(space, (str, os.PathLike)):
        search_space = SearchSpace.from_yaml(space, settings=settings_cls)
    elif isinstance(space, Mapping):
        search_space = SearchSpace.from_dict(space, settings=settings_cls)
    elif space is None:
        # Settings the caller fixed are not searched: the default space yields to them.
        search_space = space_for(kind, task, fixed)
    else:
        search_space = space
    if sampler == "grid" and n_trials is None:
        n_trials = search_space.n_grid_points()
    _pin_auto_strategy(base_est, kind, table, task, search_space)
    mode = metric_direction(monitor, task) if monitor else "max"
    key = f"valid_{monitor}" if monitor else _REPORTED.get(kind, "valid_loss")

    split = None
    if cv is None and eval_set is None and kind != "text":
        split = holdout(table, cv_strategy, group_column, time_column, seed)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    if storage is None and out is not None:
        storage = out / "study.journal"
    if workers > 1 and storage is None:
        raise ConfigError("several workers need a shared storage", key="storage", hint="Give out_dir or storage")
    store, store_text = make_storage(storage)
    direction: Literal["maximize", "minimize"] = "maximize" if mode == "max" else "minimize"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(study_name=study_name, storage=store, direction=direction, load_if_exists=True)
    recovered = recover_stale_trials(study)
    problem = _Problem(
        estimator=base_est, kind=kind, table=table, eval_set=eval_set, holdout=split,
        space=search_space.to_dict(), key=key, direction=mode, cv=cv, cv_strategy=cv_strategy,
        group_column=group_column, time_column=time_column, stride=_stride(search_space, settings), seed=seed,
    )  # fmt: skip
    run = _Run(study_name, sampler, pruner, n_trials, timeout, progress, epoch_budget, startup_trials)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if workers == 1:
            _run_worker(problem, store, run, 0, None)
        else:
            # The storage as given: store_text hides a database password, which workers need.
            _spawn_workers(problem, str(storage), run, workers, store)
    study = optuna.load_study(study_name=study_name, storage=store)
    rows = trial_rows(study)
    best_value: float | None = None
    best_params: dict[str, Any] = {}
    metric_name = key if monitor else "valid_score"
    if any(r["state"] == "COMPLETE" and r["value"] is not None for r in rows):
        best = study.best_trial
        best_value = float(best.value) if best.value is not None else None
        best_params = dict(best.params)
        # Kinds scored by score() name their metric once a trial has run (valid_accuracy, valid_r2).
        metric_name = metric_name if monitor else str(best.user_attrs.get("metric") or metric_name)
    # Fixed entries of the space are used by every trial but never drawn: put them back.
    chosen = nest(search_space.with_fixed(best_params), settings)
    best_settings = validate_settings(settings_cls, {**settings, **chosen})
    result = TuneResult(
        study_name=study_name,
        storage=store_text,
        metric=metric_name,
        direction=direction,
        best_value=best_value,
        best_params=best_params,
        best_config=best_settings.model_dump(mode="json"),
        trials=rows,
        seconds=time.perf_counter() - started,
        out_dir=out,
        details={
            "kind": kind,
            "sampler": sampler,
            "pruner": pruner,
            "cv": cv,
            "cv_strategy": cv_strategy if cv else None,
            "space": search_space.to_dict(),
            "recovered_trials": recovered,
            "workers": workers,
            "epoch_budget": epoch_budget,
        },
    )
    if out is not None:
        if kind == "text":
            text = config_to_yaml(make_config({**settings, **chosen}))
        else:
            text = yaml.safe_dump(result.best_config, sort_keys=False)
        atomic_write_text(out / "best_config.yaml", text)
        if refit and best_params:
            result.model_dir = _refit(result, base_est, chosen, table, eval_set, out / "model", progress)
        write_search_report(result, study)
    return result


def _task_and_monitor(
    kind: str, table: Table, settings: Mapping[str, Any], group_column: str | None, time_column: str | None
) -> tuple[str | None, str | None]:
    """(the task, the monitored metric) of a search: text reads its schema; other kinds their target."""
    frame = table.frame
    if kind == "text":
        assert frame is not None and table.target is not None
        ignore = [c for c in (settings.get("group_column"), settings.get("split_column"), group_column, time_column)]
        schema = infer_schema(
            frame,
            table.target,
            text_column=settings.get("text_column"),
            task=None if settings.get("task") == "auto" else settings.get("task"),
            ignore=list(dict.fromkeys(c for c in ignore if c)),
            file=table.file,
        )
        monitor = settings.get("monitor", "auto")
        return schema.task, monitor if monitor != "auto" else ("rmse" if schema.task == "regression" else "f1_macro")
    task = settings.get("task")
    if task in (None, "auto"):
        if frame is not None and table.target is not None and table.target in frame.columns:
            task = _infer_task(frame[table.target])
        elif table.y is not None:
            task = _infer_task(pd.Series(list(table.y)))
    return task, None


def _pin_auto_strategy(base: Any, kind: str, table: Table, task: str | None, space: SearchSpace) -> None:
    """Resolve a text model's ``strategy="auto"`` once, on the whole table, for every trial and the refit.

    Each fit would otherwise choose on its own training rows: trials (on part of the rows) could
    run few-shot while the final fit on every row runs full fine-tuning, a model no trial scored.
    """
    params = base.get_params()
    if kind != "text" or params.get("strategy") != "auto" or "strategy" in space.names:
        return
    frame = table.frame
    labels = frame[table.target] if frame is not None and table.target in frame.columns else table.y
    if labels is None:
        return
    codes = pd.Series(list(labels)).astype(str).to_numpy()
    chosen = resolve_strategy(make_config(params), task or "auto", codes)
    base.set_params(strategy=chosen.strategy)


def _refit(
    result: TuneResult, base: Any, chosen: Mapping[str, Any], table: Table, eval_set: Any, path: Path, progress: bool
) -> Path | None:
    """The best settings, fitted on every row (text: training + validation rows), saved under ``path``."""
    est = clone(base).set_params(**chosen)
    if "progress" in est.get_params():
        est.set_params(progress=progress)
    best = next((t for t in result.trials if t["params"] == result.best_params and t["state"] == "COMPLETE"), None)
    if table.frame is not None:
        data = table.frame if eval_set is None else pd.concat([table.frame, eval_set], ignore_index=True)
        y = None
    else:
        data, y = table.arrays, table.y
    if result.details.get("kind") == "text":
        est.set_params(valid_size=0.0, early_stopping=False)
    est.fit(data, y, target=table.target)
    est.save(path, overwrite=True)
    result.details["refit"] = {"rows": len(data), "trial": best["number"] if best else None}
    return path


def _spawn_workers(problem: _Problem, storage: str, run: _Run, workers: int, store: Any) -> None:
    """Run ``workers`` workers: this process is worker 0, the others are spawned processes.

    This process has imported torch and the estimators already: spawning a process in its
    place would cost seconds of imports (a core's worth, on a small machine) for nothing.
    """
    import torch

    threads = max(1, default_threads() // workers)
    ctx = mp.get_context("spawn")
    ready, go = ctx.Value("i", 0), ctx.Event()
    procs = [
        ctx.Process(target=_spawned, args=(problem, storage, run, i, threads, ready, go)) for i in range(1, workers)
    ]
    for p in procs:
        p.start()
    before = torch.get_num_threads()
    try:
        # Every spawned worker imports torch and the estimators first (seconds each); all start
        # trials together so that this one does not take a short search alone. A worker that
        # died while starting holds nobody back.
        deadline = time.monotonic() + _START_TIMEOUT
        while ready.value < len(procs) and time.monotonic() < deadline and all(p.is_alive() for p in procs):
            time.sleep(0.05)
        go.set()
        torch.set_num_threads(threads)
        _run_worker(problem, store, run, 0, threads)
        for p in procs:
            p.join()
    except BaseException:
        for p in procs:
            with contextlib.suppress(Exception):
                p.terminate()
        raise
    finally:
        torch.set_num_threads(before)


def _spawned(problem: _Problem, storage: str, run: _Run, index: int, threads: int, ready: Any, go: Any) -> None:
    store, _ = make_storage(storage)
    with ready.get_lock():
        ready.value += 1
    go.wait(timeout=_START_TIMEOUT)
    _run_worker(problem, store, run, index, threads)


# The estimators' own ``tune`` doors (FineTuner.tune) find the search here: search lives a
# layer above them, so they cannot import it.
for _name in registry.names():
    registry.get(_name).extras["tune"] = tune


__all__: Sequence[str] = (
    "PruneOnEpoch",
    "TuneResult",
    "make_pruner",
    "make_sampler",
    "parse_duration",
    "tune",
    "tune_summary",
)
