"""The Optuna side of a search: samplers, pruners, storages, stale-trial recovery, the pruning
callback and the result of a search.

A study lives in an Optuna storage: a journal file by default (several processes on one
machine or a shared file system may append to it), or any database URL
(``sqlite:///study.db``, ``postgresql://...``) for many machines. A trial that was running when
its process died is marked failed and queued again with the same settings: found by its
process id on this machine, and in a database by its heartbeat, whichever machine ran it.
"""

from __future__ import annotations

import math
import os
import re
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.errors import ConfigError
from tunesmith.evaluate.metrics import METRIC_DIRECTIONS
from tunesmith.search.space import SearchSpace
from tunesmith.train.callbacks import Callback, TrainState

if TYPE_CHECKING:
    import optuna

SAMPLERS: tuple[str, ...] = ("tpe", "random", "grid")
PRUNERS: tuple[str, ...] = ("median", "halving", "none")
CV_STRATEGIES: tuple[str, ...] = ("stratified", "group", "time")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([hms]?)", re.I)
_RDB_PREFIXES = ("sqlite://", "postgresql", "postgres://", "mysql", "oracle", "mssql")
# Seconds between heartbeats of a running trial in a database storage (see make_storage).
HEARTBEAT_SECONDS = 60


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


def key_direction(key: str) -> str:
    """``"max"`` or ``"min"``: which way a validation metric reported to callbacks improves.

    Known metrics (``valid_f1_macro``, ``valid_rmse``) have their own direction; any other
    improves upwards unless it is a loss or an error (``valid_loss``, ``valid_l2``).
    """
    name = key.removeprefix("valid_")
    if name in METRIC_DIRECTIONS:
        return METRIC_DIRECTIONS[name]
    lowered = name.lower()
    return "min" if any(w in lowered for w in ("loss", "error", "l1", "l2", "mse", "mae")) else "max"


class PruneOnEpoch(Callback):
    """Reports a validation metric after each epoch (or boosting step) and prunes when told to.

    ``offset`` shifts the step (``offset + epoch``): cross-validation gives each fold its
    own range of steps so the pruner compares like with like. ``direction`` is the study's
    (``"max"``/``"min"``); a metric that improves the other way (a tabular fit's
    ``valid_loss`` in a study that maximises accuracy) is reported negated, so the pruner
    ranks the trials the right way round.
    """

    # Before early stopping (order 20): a StopTraining raised there ends the epoch's callbacks,
    # and the pruner must still see (and count) that last epoch.
    order = 10

    def __init__(self, trial: optuna.Trial, key: str, offset: int = 0, *, direction: str | None = None) -> None:
        self.trial = trial
        self.key = key
        self.offset = offset
        self.sign = -1.0 if direction is not None and direction != key_direction(key) else 1.0
        self.epochs = 0
        self.reported: set[int] = set()

    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        import optuna

        self.epochs += 1
        value = metrics.get(self.key)
        if not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            return
        step = self.offset + state.epoch
        if step in self.reported:
            # A kind that trains two models in turn (tabular "auto") counts its steps again.
            return
        self.reported.add(step)
        self.trial.report(self.sign * float(value), step)
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


def make_sampler(
    name: str, space: SearchSpace, seed: int, *, startup_trials: int | None = None
) -> optuna.samplers.BaseSampler:
    """Optuna sampler for ``tpe`` (after ``startup_trials`` random trials, default 10), ``random`` or ``grid``."""
    import optuna

    if name == "tpe":
        # Multivariate TPE models parameters jointly; group handles the conditional ones.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed, multivariate=True, group=True, n_startup_trials=startup_trials or 10
            )
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


def make_storage(
    storage: str | os.PathLike[str] | None, *, heartbeat: int | None = None, grace: int | None = None
) -> tuple[Any, str]:
    """(Optuna storage, its description). A path is a journal file; a URL is a database.

    A database storage records a heartbeat of every running trial each ``heartbeat`` seconds
    (default :data:`HEARTBEAT_SECONDS`);
    a trial whose heartbeat is older than ``grace`` seconds (default: three beats) belongs to a
    worker that died, on any machine: the next trial any worker starts marks it failed and
    queues its settings again. The description hides the URL's password (it goes into
    reports); pass the original ``storage`` to other processes.
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if storage is None:
        return optuna.storages.InMemoryStorage(), "memory"
    text = str(storage)
    if text.startswith(_RDB_PREFIXES):
        url = database_url(text)
        return _open_database(url, heartbeat or HEARTBEAT_SECONDS, grace), _hide_password(text)
    if "://" in text:
        raise ConfigError(
            f"unknown storage URL {text!r}", key="storage", hint="Give a journal file path or a database URL"
        )
    path = Path(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path))), str(path)


def _open_database(url: str, heartbeat: int, grace: int | None) -> Any:
    """An RDBStorage on ``url`` with heartbeats (see make_storage); errors say which database and why."""
    import optuna
    from sqlalchemy import exc as sa_exc

    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    # A connection idle through a long trial may have been closed by the server or a proxy.
                    engine_kwargs={"pool_pre_ping": True},
                    heartbeat_interval=heartbeat,
                    grace_period=grace or 3 * heartbeat,
                    heartbeat_stale_trial_callback=requeue_failed_trial,
                )
        except (sa_exc.IntegrityError, sa_exc.ProgrammingError):
            # Workers on several machines started at once on an empty database race to create
            # Optuna's tables and types; the losers find them made a moment later.
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))
        except sa_exc.SQLAlchemyError as exc:
            # The driver's own message (connection refused, no such database), not a traceback.
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise ConfigError(
                f"cannot open the database {_hide_password(url)}: {reason}",
                key="storage",
                hint="Check that the database server is up and the URL (host, port, user, database) is right",
            ) from exc
    raise AssertionError("unreachable")


def database_url(text: str) -> str:
    """``text`` as SQLAlchemy reads it, with a PostgreSQL driver that is installed.

    ``postgres://`` (the scheme many hosting services hand out) becomes ``postgresql://``,
    which SQLAlchemy 2 requires; a URL that names no driver gets ``psycopg`` (3) or, failing
    that, ``psycopg2``: SQLAlchemy's own default differs between its versions and fails
    deep inside with a bare ModuleNotFoundError when that one driver is missing.
    """
    import importlib.util

    url = "postgresql://" + text.removeprefix("postgres://") if text.startswith("postgres://") else text
    if not url.startswith("postgresql://"):
        return url
    for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{driver}://" + url.removeprefix("postgresql://")
    raise ConfigError(
        "a postgresql:// storage needs a PostgreSQL driver",
        key="storage",
        hint="pip install 'psycopg[binary]' (or psycopg2-binary)",
    )


def _hide_password(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is refused later, by the storage itself
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def requeue_failed_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue the settings of a trial whose worker died again (heartbeat callback of database storages)."""
    study.enqueue_trial(dict(trial.params), user_attrs={"requeued_from": trial.number})


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
        requeue_failed_trial(study, trial)
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
                "threads": t.user_attrs.get("threads"),
            }
        )
    return rows


def tune_summary(result: TuneResult, top: int = 10) -> list[dict[str, Any]]:
    """The best ``top`` complete trials, best first."""
    done = [t for t in result.trials if t["state"] == "COMPLETE" and t["value"] is not None]
    done.sort(key=lambda t: t["value"], reverse=result.direction == "maximize")
    return done[:top]
