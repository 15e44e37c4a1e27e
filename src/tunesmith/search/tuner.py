"""Hyperparameter search over :class:`~tunesmith.FineTuner` settings with Optuna.

One trial is one fit (or one cross-validation) with settings drawn from a
:class:`~tunesmith.search.space.SearchSpace`. The monitored validation metric is
reported to Optuna after every epoch, so a pruner (median or successive halving) can stop
a hopeless trial after an epoch or two instead of letting it run to the end.

Under cross-validation each fold reports at its own steps (``fold * stride + epoch``,
with one stride for every trial), so the pruner compares a trial's fold 2, epoch 1 with
other trials' fold 2, epoch 1, never with another fold: folds differ in difficulty, and
comparing across them prunes good trials that happen to start on a hard fold.

A study lives in an Optuna storage: a journal file by default (several processes on one
machine or a shared file system may append to it), or any database URL
(``sqlite:///study.db``, ``postgresql://...``) for many machines. Finished and pruned
trials count toward the trial budget; a search that was killed resumes where it stopped,
and a trial that was running when its process died is marked failed and queued again with
the same settings, so no finished trial is lost or repeated.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.errors import ConfigError
from tunesmith.train.callbacks import Callback, TrainState

if TYPE_CHECKING:
    import optuna
    import pandas as pd

    from tunesmith.search.space import SearchSpace

SAMPLERS: tuple[str, ...] = ("tpe", "random", "grid")
PRUNERS: tuple[str, ...] = ("median", "halving", "none")
CV_STRATEGIES: tuple[str, ...] = ("stratified", "group", "time")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([hms]?)", re.I)
_RDB_PREFIXES = ("sqlite://", "postgresql", "postgres://", "mysql", "oracle", "mssql")


def parse_duration(text: str | float | int) -> float:
    """Seconds in ``"90s"``, ``"30m"``, ``"2h"``, ``"1h30m"`` or a plain number of seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        raw = str(text).strip().lower().replace(" ", "")
        parts = _DURATION.findall(raw)
        if not raw or "".join(a + b for a, b in parts) != raw:
            raise ConfigError(
                f"cannot read {text!r} as a duration", key="time_budget", hint="Write it like 90s, 30m, 2h or 1h30m"
            )
        scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}
        seconds = sum(float(a) * scale[b] for a, b in parts)
    if not seconds > 0:
        raise ConfigError(f"must be positive, got {text!r}", key="time_budget")
    return seconds


class PruneOnEpoch(Callback):
    """Reports the monitored validation metric after each epoch and prunes when told to.

    ``offset`` shifts the step (``offset + epoch``): cross-validation gives each fold its
    own range of steps so the pruner compares like with like.
    """

    # Before early stopping (order 20): a StopTraining raised there ends the epoch's callbacks,
    # and the pruner must still see (and count) that last epoch.
    order = 10

    def __init__(self, trial: optuna.Trial, key: str, offset: int = 0) -> None:
        self.trial = trial
        self.key = key
        self.offset = offset
        self.epochs = 0

    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        import optuna

        self.epochs += 1
        value = metrics.get(self.key)
        if not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            return
        step = self.offset + state.epoch
        self.trial.report(float(value), step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} ({self.key} = {float(value):.4f})")


@dataclass
class TuneResult:
    """What a search found, and what it cost."""

    study_name: str
    storage: str
    metric: str
    direction: str
    best_value: float | None
    best_params: dict[str, Any]
    best_config: dict[str, Any]
    trials: list[dict[str, Any]]
    seconds: float
    out_dir: Path | None = None
    model_dir: Path | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def count(self, state: str) -> int:
        """Trials in ``state`` (``COMPLETE``, ``PRUNED``, ``FAIL``, ``RUNNING``, ``WAITING``)."""
        return sum(1 for t in self.trials if t["state"] == state)

    @property
    def epochs_run(self) -> int:
        """Epochs trained over all trials (folds included)."""
        return sum(int(t.get("epochs_run") or 0) for t in self.trials)

    @property
    def compute_saved_by_pruning(self) -> float | None:
        """Share of the epochs the pruned trials were set to run that pruning spared.

        Over all finished trials: (budget - run) of the pruned ones / budget of all, where a
        trial's budget is its ``epochs`` times its folds.
        """
        done = [t for t in self.trials if t["state"] in ("COMPLETE", "PRUNED")]
        budget = sum(int(t.get("epochs_budget") or 0) for t in done)
        if not budget:
            return None
        saved = sum(
            int(t.get("epochs_budget") or 0) - int(t.get("epochs_run") or 0) for t in done if t["state"] == "PRUNED"
        )
        return saved / budget

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary with every trial."""
        return {
            "study_name": self.study_name,
            "storage": self.storage,
            "metric": self.metric,
            "direction": self.direction,
            "best_value": self.best_value,
            "best_params": self.best_params,
            "best_config": self.best_config,
            "n_trials": len(self.trials),
            "n_complete": self.count("COMPLETE"),
            "n_pruned": self.count("PRUNED"),
            "n_failed": self.count("FAIL"),
            "epochs_run": self.epochs_run,
            "compute_saved_by_pruning": self.compute_saved_by_pruning,
            "seconds": self.seconds,
            "model_dir": str(self.model_dir) if self.model_dir else None,
            "details": self.details,
            "trials": self.trials,
        }


# --- building blocks ------------------------------------------------------------------------


def make_sampler(name: str, space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    """Optuna sampler for ``tpe``, ``random`` or ``grid``."""
    import optuna

    if name == "tpe":
        # Multivariate TPE models parameters jointly; group handles the conditional ones.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=10)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    raise ConfigError(f"unknown sampler {name!r}; use one of {', '.join(SAMPLERS)}", key="sampler")


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """Optuna pruner for ``median``, ``halving`` (successive halving) or ``none``."""
    import optuna

    if name == "median":
        # Five finished trials before judging any; no judgement before a trial's first report.
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"unknown pruner {name!r}; use one of {', '.join(PRUNERS)}", key="pruner")


def make_storage(storage: str | os.PathLike[str] | None) -> tuple[Any, str]:
    """(Optuna storage, its description). A path is a journal file; a URL is a database."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if storage is None:
        return optuna.storages.InMemoryStorage(), "memory"
    text = str(storage)
    if text.startswith(_RDB_PREFIXES):
        return text, text
    if "://" in text:
        raise ConfigError(
            f"unknown storage URL {text!r}", key="storage", hint="Give a journal file path or a database URL"
        )
    path = Path(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path))), str(path)


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_stale_trials(study: optuna.Study) -> int:
    """Fail trials left RUNNING by dead processes of this machine and queue their settings again.

    A trial records the worker (``host:pid``) that runs it; one whose process on this host
    is gone was killed mid-trial. Returns how many were recovered.
    """
    from optuna.trial import TrialState

    host = socket.gethostname()
    recovered = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(trial.user_attrs.get("worker", ""))
        name, _, pid = worker.rpartition(":")
        if name != host or not pid.isdigit() or _alive(int(pid)):
            continue
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        study.enqueue_trial(dict(trial.params), user_attrs={"requeued_from": trial.number})
        recovered += 1
    return recovered


def _finished(study: optuna.Study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """Every trial as a flat JSON-safe dict."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        value = t.value if t.value is not None and math.isfinite(t.value) else None
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": value,
                "params": dict(t.params),
                "epochs_run": t.user_attrs.get("epochs_run"),
                "epochs_budget": t.user_attrs.get("epochs_budget"),
                "fold_scores": t.user_attrs.get("fold_scores"),
                "seconds": t.user_attrs.get("seconds"),
                "error": t.user_attrs.get("error"),
                "worker": t.user_attrs.get("worker"),
            }
        )
    return rows


# --- the search -----------------------------------------------------------------------------


@dataclass
class _Problem:
    """Everything a worker process needs to run trials (picklable)."""

    data: Any
    target: str
    text_column: str | list[str] | None
    eval_set: Any
    base_params: dict[str, Any]
    space: dict[str, Any]
    key: str
    cv: int | None
    cv_strategy: str
    group_column: str | None
    time_column: str | None
    stride: int
    seed: int


def _objective(problem: _Problem) -> Callable[[optuna.Trial], float]:
    from tunesmith.config import make_config
    from tunesmith.estimator import FineTuner
    from tunesmith.search.space import SearchSpace

    space = SearchSpace.from_dict(problem.space)

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", _worker_id())
        started = time.perf_counter()
        params = {
            **problem.base_params,
            **space.suggest(trial),
            # Trials are compared on validation only: no baselines, no run folder per trial.
            "baselines": False,
            "runs_dir": None,
            "progress": False,
        }
        try:
            cfg = make_config(params)
        except ConfigError as exc:
            trial.set_user_attr("error", str(exc))
            raise
        folds = problem.cv or 1
        trial.set_user_attr("epochs_budget", cfg.epochs * folds)
        pruners: list[PruneOnEpoch] = []

        def fold_callbacks(i: int) -> list[Callback]:
            cb = PruneOnEpoch(trial, problem.key, offset=i * problem.stride)
            pruners.append(cb)
            return [cb]

        try:
            if problem.cv:
                from tunesmith.evaluate.cv import cross_validate

                result = cross_validate(
                    params,
                    problem.data,
                    target=problem.target,
                    text_column=problem.text_column,
                    k=problem.cv,
                    strategy=problem.cv_strategy,
                    group_column=problem.group_column,
                    time_column=problem.time_column,
                    seed=problem.seed,
                    fold_callbacks=fold_callbacks,
                    progress=False,
                )
                trial.set_user_attr("fold_scores", [float(s) for s in result.scores])
                value = float(result.mean)
            else:
                ft = FineTuner(**params).fit(
                    problem.data,
                    target=problem.target,
                    text_column=problem.text_column,
                    eval_set=problem.eval_set,
                    callbacks=fold_callbacks(0),
                )
                if ft.best_score_ is None:
                    raise ConfigError(
                        "the search needs a validation split to score trials",
                        key="valid_size",
                        hint="Set valid_size > 0 or pass eval_set",
                    )
                value = float(ft.best_score_)
        finally:
            trial.set_user_attr("epochs_run", sum(p.epochs for p in pruners))
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 3))
        return value

    return objective


@dataclass
class _Run:
    """How a worker runs its share of a study (picklable, for spawned workers)."""

    study_name: str
    sampler: str
    pruner: str
    n_trials: int | None
    timeout: float | None
    progress: bool


def _run_worker(problem: _Problem, storage: Any, run: _Run, worker_index: int, threads: int | None) -> None:
    """One process's share of the search: ask, fit, tell, until the budget is spent."""
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from tunesmith.search.space import SearchSpace

    if threads:
        import torch

        torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace.from_dict(problem.space)
    study = optuna.load_study(
        study_name=run.study_name,
        storage=storage,
        sampler=make_sampler(run.sampler, space, problem.seed + worker_index),
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
    study.optimize(
        _objective(problem),
        n_trials=None,
        timeout=run.timeout,
        callbacks=callbacks,
        catch=(ConfigError,),
        show_progress_bar=run.progress and worker_index == 0 and n_trials is not None,
    )


def tune(
    data: str | os.PathLike[str] | pd.DataFrame,
    target: str,
    *,
    base_params: Mapping[str, Any] | None = None,
    space: SearchSpace | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    n_trials: int | None = 20,
    time_budget: str | float | None = None,
    sampler: str = "tpe",
    pruner: str = "median",
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
    """Search fine-tuning settings; return the best and every trial.

    Parameters
    ----------
    data, target, text_column, eval_set:
        As for :meth:`FineTuner.fit`. Without ``cv`` each trial fits on ``data`` and is
        scored on its validation split (or ``eval_set``).
    base_params:
        Settings every trial shares (a config file's content); the space overrides them.
    space:
        A :class:`SearchSpace`, its dict/YAML form, or a YAML file path. Default:
        :func:`~tunesmith.search.space.default_space` for the task.
    n_trials, time_budget:
        Stop after this many finished (complete or pruned) trials in the study, or after
        this long (``"30m"``); whichever comes first. Grid search also stops when the
        grid is exhausted.
    sampler, pruner:
        ``tpe`` | ``random`` | ``grid``; ``median`` | ``halving`` | ``none``.
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
        Fit the best settings once more on the training and validation rows together and
        save the model under ``out_dir/model``.
    """
    import optuna

    from tunesmith.config import config_to_yaml, make_config
    from tunesmith.data.io import read_table
    from tunesmith.data.schema import infer_schema
    from tunesmith.evaluate.metrics import metric_direction
    from tunesmith.search.space import SearchSpace, default_space

    started = time.perf_counter()
    # Optuna logs a line per trial at INFO; tunesmith reports progress and results itself.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
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
    timeout = parse_duration(time_budget) if time_budget is not None else None
    if n_trials is None and timeout is None and sampler != "grid":
        raise ConfigError("give a number of trials or a time budget", key="trials")
    base = dict(base_params or {})
    base_cfg = make_config(base)

    frame = read_table(data) if isinstance(data, (str, os.PathLike)) else data
    file = str(data) if isinstance(data, (str, os.PathLike)) else None
    ignore = [c for c in (base_cfg.group_column, base_cfg.split_column, group_column, time_column) if c]
    schema = infer_schema(
        frame,
        target,
        text_column=text_column or base_cfg.text_column,
        task=None if base_cfg.task == "auto" else base_cfg.task,
        ignore=list(dict.fromkeys(ignore)),
        file=file,
    )
    if isinstance(space, (str, os.PathLike)):
        search_space = SearchSpace.from_yaml(space)
    elif isinstance(space, Mapping):
        search_space = SearchSpace.from_dict(space)
    elif space is None:
        # Settings the caller fixed are not searched: the default space yields to them.
        fixed_strategy = base.get("strategy")
        search_space = default_space(schema.task, strategy=fixed_strategy).without(base)
    else:
        search_space = space
    if sampler == "grid" and n_trials is None:
        n_trials = search_space.n_grid_points()
    monitor = (
        base_cfg.monitor if base_cfg.monitor != "auto" else ("rmse" if schema.task == "regression" else "f1_macro")
    )
    mode = metric_direction(monitor, schema.task)
    key = f"valid_{monitor}"
    max_epochs = max(base_cfg.epochs, int(search_space.upper_bound("epochs") or 0))

    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    if storage is None and out is not None:
        storage = out / "study.journal"
    if workers > 1 and storage is None:
        raise ConfigError("several workers need a shared storage", key="storage", hint="Give out_dir or storage")
    store, store_text = make_storage(storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(
            study_name=study_name,
            storage=store,
            direction="maximize" if mode == "max" else "minimize",
            load_if_exists=True,
        )
    recovered = recover_stale_trials(study)
    problem = _Problem(
        data=frame,
        target=target,
        text_column=text_column,
        eval_set=eval_set,
        base_params=base,
        space=search_space.to_dict(),
        key=key,
        cv=cv,
        cv_strategy=cv_strategy,
        group_column=group_column,
        time_column=time_column,
        stride=max_epochs,
        seed=seed,
    )
    run = _Run(study_name, sampler, pruner, n_trials, timeout, progress)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if workers == 1:
            _run_worker(problem, store, run, 0, None)
        else:
            _spawn_workers(problem, store_text, run, workers)
    study = optuna.load_study(study_name=study_name, storage=store)
    rows = trial_rows(study)
    complete = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    best_value: float | None = None
    best_params: dict[str, Any] = {}
    if complete:
        best = study.best_trial
        best_value = float(best.value) if best.value is not None else None
        best_params = dict(best.params)
    # Fixed entries of the space are used by every trial but never drawn: put them back.
    chosen = search_space.with_fixed(best_params)
    best_config = make_config({**base, **chosen}).model_dump(mode="json")
    result = TuneResult(
        study_name=study_name,
        storage=store_text,
        metric=key,
        direction="maximize" if mode == "max" else "minimize",
        best_value=best_value,
        best_params=best_params,
        best_config=best_config,
        trials=rows,
        seconds=time.perf_counter() - started,
        out_dir=out,
        details={
            "sampler": sampler,
            "pruner": pruner,
            "cv": cv,
            "cv_strategy": cv_strategy if cv else None,
            "space": search_space.to_dict(),
            "recovered_trials": recovered,
            "workers": workers,
        },
    )
    if out is not None:
        from tunesmith.runs.artifacts import atomic_write_text

        atomic_write_text(out / "best_config.yaml", config_to_yaml(make_config({**base, **chosen})))
        if refit and best_params:
            result.model_dir = _refit(result, frame, target, text_column, eval_set, out / "model", progress)
        from tunesmith.search.report import write_search_report

        write_search_report(result, study)
    return result


def _refit(
    result: TuneResult, frame: Any, target: str, text_column: Any, eval_set: Any, path: Path, progress: bool
) -> Path | None:
    """The best settings, fitted on training + validation rows, saved under ``path``."""
    import pandas as pd

    from tunesmith.estimator import FineTuner

    params = {**result.best_config, "valid_size": 0.0, "early_stopping": False, "progress": progress}
    best = next((t for t in result.trials if t["params"] == result.best_params and t["state"] == "COMPLETE"), None)
    data = frame if eval_set is None else pd.concat([frame, eval_set], ignore_index=True)
    ft = FineTuner(**params).fit(data, target=target, text_column=text_column)
    ft.save(path, overwrite=True)
    result.details["refit"] = {"rows": len(data), "trial": best["number"] if best else None}
    return path


def _spawn_workers(problem: _Problem, storage: str, run: _Run, workers: int) -> None:
    import multiprocessing as mp

    from tunesmith.estimator import default_threads

    threads = max(1, default_threads() // workers)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_spawned, args=(problem, storage, run, i, threads)) for i in range(workers)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            with contextlib.suppress(Exception):
                p.terminate()
        raise


def _spawned(problem: _Problem, storage: str, run: _Run, index: int, threads: int) -> None:
    store, _ = make_storage(storage)
    _run_worker(problem, store, run, index, threads)


def tune_summary(result: TuneResult, top: int = 10) -> list[dict[str, Any]]:
    """The best ``top`` complete trials, best first."""
    done = [t for t in result.trials if t["state"] == "COMPLETE" and t["value"] is not None]
    done.sort(key=lambda t: t["value"], reverse=result.direction == "maximize")
    return done[:top]


__all__: Sequence[str] = ("PruneOnEpoch", "TuneResult", "make_pruner", "make_sampler", "parse_duration", "tune")
