"""Live drift monitoring of ``tunesmith serve``: drift and estimated performance as gauges.

With ``monitor_reference`` set, :class:`LiveMonitor` keeps the most recent predicted rows
(``monitor_window_rows``) and, every ``monitor_interval_s`` on a thread of its own, tests them
against the reference with the batch monitor's tests (:mod:`tunesmith.monitor`): each input
column (text as length, words, word length, out-of-vocabulary and non-letter shares), the
model's class probabilities and predicted classes (or predicted values), and the accuracy (or
mean absolute error) estimated without labels. The figures go to the gauges of
:class:`~tunesmith.serve.metrics.MonitorGauges` on ``/metrics``.

The request path only appends rows to a bounded buffer (:meth:`LiveMonitor.observe`); pandas,
the tests and the reference all live on the monitor's thread, at a lowered priority. The
reference's outputs are computed once by the served model itself, in small batches on the
model thread between the requests' batches, so they are exactly what the server answers.
Representation (embedding) drift is not tested live: ``tunesmith monitor`` tests it on the
prediction log.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.errors import ConfigError, DataError
from tunesmith.serve.batcher import ServedModel, lower_thread_priority
from tunesmith.serve.metrics import MonitorGauges
from tunesmith.serve.predlog import LogRecord
from tunesmith.serve.schemas import RowSpec
from tunesmith.serve.settings import ServeSettings

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from tunesmith.monitor.core import Evaluator
    from tunesmith.monitor.frame import Spec
    from tunesmith.monitor.settings import MonitorSettings

logger = logging.getLogger(__package__)

MAX_REFERENCE_ROWS = 10_000
"""Reference rows the served model predicts at start-up (a random sample of larger files)."""

Submit = Callable[[Callable[[], Any]], "concurrent.futures.Future[Any]"]
"""Runs a function on the model thread and returns its future (from any thread)."""


@dataclass
class ReferenceInput:
    """The reference rows, read and checked against the served model, and what the monitor
    must know of the model: its input columns by type, task, classes and the target."""

    frame: pd.DataFrame
    source: str
    spec: Spec
    id_columns: tuple[str, ...]


def check_reference_file(settings: ServeSettings) -> None:
    """Fail before start-up when ``monitor_reference`` names no file (the columns are checked
    once the model is loaded).

    Raises:
        DataError: the reference file does not exist or is a folder.
    """
    path = settings.monitor_reference
    if path is not None and not Path(path).is_file():
        raise DataError(
            "the monitoring reference file does not exist" if not Path(path).exists() else "is a folder, not a file",
            file=path,
            hint="Give --monitor-reference a data file (CSV, Parquet, JSONL) of labeled rows",
        )


def read_reference(settings: ServeSettings, predictor: ServedModel) -> ReferenceInput:
    """Read ``monitor_reference`` and check it holds the served model's input columns and target.

    Raises:
        ConfigError: the model is not a text or tabular prediction model, or its target is
            unknown and ``monitor_target`` is not set.
        DataError: the file cannot be read or lacks an input column or the target.
    """
    from tunesmith.data.io import read_table
    from tunesmith.monitor.frame import Spec, check_columns

    path = settings.monitor_reference
    if path is None:
        raise ConfigError("live monitoring needs a reference file", key="monitor_reference")
    rows = RowSpec.of(predictor)
    if getattr(predictor, "serving", "predict") != "predict" or rows.shape not in ("text", "tabular"):
        what = "a recommender" if getattr(predictor, "serving", "predict") == "recommend" else f"a {rows.shape} model"
        raise ConfigError(
            f"live drift monitoring covers text and tabular prediction models, not {what}",
            key="monitor_reference",
            hint="Log predictions with --prediction-log and run tunesmith monitor on the log",
        )
    target = settings.monitor_target or getattr(getattr(predictor, "schema", None), "target", None)
    if not target:
        raise ConfigError(
            "the model does not say which column is its target", key="monitor_target", hint="Set --monitor-target"
        )
    regression = getattr(predictor, "task", None) == "regression"
    spec = Spec(
        numeric=list(rows.numeric_columns),
        categorical=list(rows.categorical_columns),
        text=list(rows.text_columns),
        target=str(target),
        task="regression" if regression else "classification",
        classes=None if regression else [str(c) for c in getattr(predictor, "labels", [])],
    )
    frame = read_table(path)
    check_columns(frame, spec, what="reference", file=str(path))
    if spec.target not in frame.columns:
        raise DataError(
            f"the reference lacks the target column {spec.target!r}",
            file=path,
            column=spec.target,
            hint="Give labeled reference rows, or name the target column with --monitor-target",
        )
    ids = tuple(c for c in rows.id_columns if c in frame.columns)
    return ReferenceInput(frame, str(path), spec, ids)


def monitor_settings(settings: ServeSettings) -> MonitorSettings:
    """The batch monitor's settings for live windows: no representation test, a capped reference."""
    from tunesmith.monitor.settings import make_settings

    return make_settings(
        window_rows=settings.monitor_window_rows,
        min_window_rows=settings.monitor_min_rows,
        embedding_rows=0,
        reference_rows=MAX_REFERENCE_ROWS,
        examples=0,
    )


class _Stale(Exception):
    """The model changed (or the server stops) while the reference was being built."""


class LiveMonitor:
    """The rolling window of predicted rows, the monitor thread, and the gauges it sets.

    ``submit`` runs a function on the model thread (the reference's predictions go there, so
    they queue with the requests' batches instead of competing with them); ``nice`` lowers the
    monitor thread's priority (Linux).
    """

    def __init__(self, settings: ServeSettings, gauges: MonitorGauges, submit: Submit, *, nice: int = 0) -> None:
        import numpy as np

        self.settings = settings
        self.gauges = gauges
        self._submit = submit
        self._nice = nice
        self._lock = threading.Lock()
        # One entry per predicted row: (timestamp, request id, model version, row, output).
        self._rows: deque[tuple[float, str, str, Any, Any]] = deque(maxlen=settings.monitor_window_rows)
        self._new = 0
        self._version: str | None = None
        self._generation = 0
        self._job: tuple[ServedModel, ReferenceInput | None, int] | None = None
        self._evaluator: Evaluator | None = None
        self._signals: set[str] = set()
        self._metric: str | None = None
        self._rng = np.random.default_rng(0)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the request path ------------------------------------------------------------------

    def observe(self, record: LogRecord) -> None:
        """Keep the rows of a successful prediction (O(1) per row; the oldest fall out)."""
        outputs = record.outputs
        if record.status != 200 or outputs is None or record.model_version != self._version:
            # A failed request has no outputs; answers of a model that was swapped out
            # belong to another reference.
            return
        ts, rid, version = record.timestamp, record.request_id, record.model_version
        with self._lock:
            for row, out in zip(record.inputs, outputs, strict=False):
                self._rows.append((ts, rid, version, row, out))
            self._new += len(outputs)

    @property
    def buffered_rows(self) -> int:
        """Rows in the window now."""
        return len(self._rows)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, predictor: ServedModel, reference: ReferenceInput) -> None:
        """Build the reference with ``predictor`` in the background, then test every interval."""
        self._schedule(predictor, reference)
        self._thread = threading.Thread(target=self._loop, name="tunesmith-monitor", daemon=True)
        self._thread.start()

    def reload(self, predictor: ServedModel) -> None:
        """A new model serves: forget its predecessor's rows and figures and rebuild the reference.

        Call it right after the batcher's swap: reference batches of the old model that have
        not run yet are then skipped.
        """
        self._schedule(predictor, None, clear=True)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread (a test or a reference build in progress is abandoned)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _schedule(self, predictor: ServedModel, reference: ReferenceInput | None, *, clear: bool = False) -> None:
        with self._lock:
            if clear:
                # Under the lock: a test of the old model's rows finishing now must not
                # publish after this.
                self.gauges.clear()
                self._signals, self._metric = set(), None
            self._generation += 1
            self._version = predictor.version
            self._rows.clear()
            self._new = 0
            self._evaluator = None
            self._job = (predictor, reference, self._generation)
        self._wake.set()

    # --- the monitor thread ----------------------------------------------------------------------

    def _loop(self) -> None:
        lower_thread_priority(self._nice)
        while not self._stop.is_set():
            with self._lock:
                job, self._job = self._job, None
            try:
                if job is not None:
                    self._build(*job)
                else:
                    self.run_once()
            except Exception as exc:  # the thread lives on: the next interval may do better
                self.gauges.runs.labels("failed").inc()
                logger.error("tunesmith: the drift monitor failed: %s", exc, exc_info=exc)
            self._wake.wait(self.settings.monitor_interval_s)
            self._wake.clear()

    def _build(self, predictor: ServedModel, reference: ReferenceInput | None, generation: int) -> None:
        from tunesmith.monitor.core import Evaluator
        from tunesmith.monitor.frame import PREDICTION, PROBA_PREFIX
        from tunesmith.monitor.reference import build_reference

        started = time.monotonic()
        try:
            ref_input = reference or read_reference(self.settings, predictor)
            frame = self._predicted_reference(predictor, ref_input, generation)
            spec = ref_input.spec
            proba = [PROBA_PREFIX + c for c in spec.classes or []] if spec.task == "classification" else None
            settings = monitor_settings(self.settings)
            ref = build_reference(
                None, frame, target=spec.target, proba=proba, prediction=PREDICTION, settings=settings, spec=spec
            )
            evaluator = Evaluator(ref, settings)
        except _Stale:
            return
        except Exception as exc:
            self.gauges.runs.labels("failed").inc()
            logger.error("tunesmith: the drift monitor's reference cannot be built: %s", exc, exc_info=exc)
            return
        for warning in ref.warnings:
            logger.warning("tunesmith: drift monitor: %s", warning)
        with self._lock:
            if generation != self._generation:
                return
            self._evaluator = evaluator
        logger.info(
            "tunesmith: drift monitor reference ready (%d rows of %s, %.1fs)",
            ref.rows,
            ref_input.source,
            time.monotonic() - started,
        )

    def _predicted_reference(self, predictor: ServedModel, ref: ReferenceInput, generation: int) -> pd.DataFrame:
        """The reference rows with the served model's outputs in ``proba:<class>`` and ``prediction``."""
        import numpy as np

        frame = ref.frame
        spec = ref.spec
        if spec.text:
            # Rows without any text are refused by the server: they never reach the window.
            has_text = np.zeros(len(frame), dtype=bool)
            for col in spec.text:
                has_text |= frame[col].map(lambda v: isinstance(v, str) and bool(v.strip())).to_numpy(dtype=bool)
            if not has_text.all():
                logger.warning(
                    "tunesmith: drift monitor: %d reference rows without text are left out of the reference",
                    int((~has_text).sum()),
                )
            frame = frame[has_text]
        if len(frame) > MAX_REFERENCE_ROWS:
            pick = np.sort(np.random.default_rng(0).choice(len(frame), MAX_REFERENCE_ROWS, replace=False))
            frame = frame.iloc[pick]
        frame = frame.reset_index(drop=True)
        if not len(frame):
            raise DataError("the reference has no row with text", file=ref.source, column=spec.text[0])
        # The rows go to the model as a client would send them, before conform() rewrites
        # categories for the tests.
        rows = request_rows(frame, spec, ref.id_columns)
        frame = conform(frame, spec)
        outputs: list[dict[str, Any]] = []
        step = max(1, self.settings.max_batch_size)
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            outputs.extend(
                self._wait(self._submit(functools.partial(self._predict, predictor, chunk, generation)), generation)
            )
        return with_outputs(frame, outputs, spec, predictor)

    def _predict(self, predictor: ServedModel, rows: list[dict[str, Any]], generation: int) -> list[dict[str, Any]]:
        # On the model thread, after any swap queued before it: a model swapped out may be closed.
        if generation != self._generation or self._stop.is_set():
            raise _Stale
        return [p.to_dict() for p in predictor.predict_rows(rows, probabilities=True)]

    def _wait(self, future: concurrent.futures.Future[Any], generation: int) -> Any:
        while True:
            if self._stop.is_set() or generation != self._generation:
                future.cancel()
                raise _Stale
            try:
                return future.result(timeout=0.2)
            except concurrent.futures.TimeoutError:
                continue

    def run_once(self) -> bool:
        """Test the window now when the reference is ready, it holds ``monitor_min_rows`` rows and
        rows arrived since the last test; returns whether it tested. Failures are logged and counted.
        """
        with self._lock:
            evaluator, generation = self._evaluator, self._generation
            if evaluator is None or self._new == 0 or len(self._rows) < self.settings.monitor_min_rows:
                return False
            entries = list(self._rows)
            self._new = 0
        try:
            figures = evaluate(evaluator, entries, self._rng, min_rows=self.settings.monitor_min_rows)
        except Exception as exc:
            self.gauges.runs.labels("failed").inc()
            logger.error("tunesmith: the drift test failed: %s", exc, exc_info=exc)
            return False
        with self._lock:
            if generation != self._generation:
                return False
            self._publish(evaluator, figures, len(entries))
        return True

    def _publish(self, evaluator: Evaluator, figures: Mapping[str, Mapping[str, Any]], rows: int) -> None:
        g = self.gauges
        drifted = 0
        signals: set[str] = set()
        for name, f in figures.items():
            family = evaluator.signals[name].family
            if family == "performance":
                if name.startswith("performance:estimated "):
                    self._publish_performance(evaluator, f)
                continue
            detected = bool(f.get("drift"))
            drifted += detected
            signals.add(name)
            g.effect.labels(name).set(_number(f.get("value")))
            g.p_value.labels(name).set(_number(f.get("p_adjusted")))
            g.detected.labels(name).set(1.0 if detected else 0.0)
        for name in self._signals - signals:
            for gauge in (g.effect, g.p_value, g.detected):
                gauge.remove(name)
        self._signals = signals
        g.signals_detected.set(drifted)
        g.window_rows.set(rows)
        g.last_run.set(time.time())
        g.runs.labels("ok").inc()

    def _publish_performance(self, evaluator: Evaluator, f: Mapping[str, Any]) -> None:
        g = self.gauges
        perf, band = evaluator.ref.performance, evaluator.ref.band
        assert perf is not None and band is not None
        metric = perf.metric
        if self._metric is not None and self._metric != metric:
            for gauge in (g.performance, g.performance_lower, g.performance_upper, g.threshold):
                gauge.remove(self._metric)
        self._metric = metric
        g.performance.labels(metric).set(_number(f.get("value")))
        g.performance_lower.labels(metric).set(_number(f.get("lower")))
        g.performance_upper.labels(metric).set(_number(f.get("upper")))
        g.threshold.labels(metric).set(_number(band.get("threshold")))
        g.alert.set(1.0 if f.get("alert") else 0.0)


# --- frames ------------------------------------------------------------------------------------


def request_rows(frame: pd.DataFrame, spec: Spec, id_columns: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The reference rows as the server receives them: objects of the model's columns, missing
    values as null."""
    columns = [*spec.text, *spec.numeric, *spec.categorical, *id_columns]
    out = []
    for record in frame[columns].to_dict(orient="records"):
        out.append({str(k): _plain(v) for k, v in record.items()})
    return out


def with_outputs(
    frame: pd.DataFrame, outputs: Sequence[Mapping[str, Any]], spec: Spec, predictor: ServedModel
) -> pd.DataFrame:
    """``frame`` with the model's outputs as the monitor reads them: ``proba:<class>`` columns
    and ``prediction`` (the class, or the predicted value)."""
    import pandas as pd

    from tunesmith.monitor.frame import PREDICTION, PROBA_PREFIX

    frame = frame.copy()
    if spec.task == "regression":
        frame[PREDICTION] = [_number(o.get("value")) for o in outputs]
        return frame
    classes = spec.classes or []
    for c in classes:
        frame[PROBA_PREFIX + c] = [_number((o.get("probabilities") or {}).get(c)) for o in outputs]
    # The answer names the class by its value (1, True); the monitor by its label ("1", "True").
    labels = [str(c) for c in getattr(predictor, "labels", classes)]
    values = list(getattr(predictor, "label_values", labels))
    name = {str(v): lab for v, lab in zip(values, labels, strict=False)}
    frame[PREDICTION] = pd.Series([name.get(str(o.get("label")), str(o.get("label"))) for o in outputs], dtype=object)
    return frame


def conform(frame: pd.DataFrame, spec: Spec) -> pd.DataFrame:
    """Every input column present (absent: missing) and categorical values as the request
    carries them, so a file's ``3.0`` and a request's ``3`` are the same category."""
    frame = frame.copy()
    for col in spec.inputs:
        if col not in frame.columns:
            frame[col] = None
    for col in spec.categorical:
        frame[col] = frame[col].map(_category).astype(object)
    for col in spec.text:
        frame[col] = frame[col].map(lambda v: v if isinstance(v, str) else None).astype(object)
    return frame


def live_frame(entries: Sequence[tuple[float, str, str, Any, Any]], spec: Spec) -> pd.DataFrame:
    """The window's rows expanded as the batch monitor expands a prediction log."""
    import pandas as pd

    from tunesmith.monitor.frame import log_rows

    text = spec.text[0] if spec.text else None
    log = pd.DataFrame(
        {
            "timestamp": [e[0] for e in entries],
            "request_id": [e[1] for e in entries],
            "model_version": [e[2] for e in entries],
            "status": [200] * len(entries),
            # A bare string is the text of a one-text-column model (the server refused it otherwise).
            "inputs": [[{text: e[3]} if isinstance(e[3], str) and text else e[3]] for e in entries],
            "outputs": [[e[4]] for e in entries],
        }
    )
    frame, _ = log_rows(log, spec, file="live")
    return conform(frame, spec)


def evaluate(
    evaluator: Evaluator,
    entries: Sequence[tuple[float, str, str, Any, Any]],
    rng: np.random.Generator,
    *,
    min_rows: int,
) -> dict[str, dict[str, Any]]:
    """Every signal of one window of rows, corrected for testing them together.

    Rows answered without probabilities (``"probabilities": false``) count for the inputs;
    the outputs and the performance estimate come from the rows that have them, when there
    are ``min_rows`` of them.
    """
    import numpy as np

    from tunesmith.monitor.core import decide
    from tunesmith.monitor.current import Current, Window
    from tunesmith.monitor.frame import PREDICTION, PROBA_PREFIX

    spec = evaluator.ref.spec
    frame = live_frame(entries, spec)

    def window(rows: pd.DataFrame) -> dict[str, dict[str, Any]]:
        n = len(rows)
        return evaluator.window(
            Current(rows, "live", True, {}, []), Window(0, np.arange(n), "live", "0", str(n - 1)), rng
        )

    outputs = [PROBA_PREFIX + c for c in spec.classes or []] if spec.task == "classification" else []
    complete = (
        frame[outputs].notna().all(axis=1).to_numpy(dtype=bool)
        if outputs and all(c in frame.columns for c in outputs)
        else np.full(len(frame), not outputs)
    )
    if complete.all():
        raw = window(frame)
    else:
        raw = window(frame.drop(columns=[c for c in (*outputs, PREDICTION) if c in frame.columns]))
        if complete.sum() >= min_rows:
            more = window(frame[complete].reset_index(drop=True))
            raw.update({k: v for k, v in more.items() if not k.startswith("input:")})
    decide([raw], evaluator.signals, evaluator.s.alpha)
    return raw


def _plain(value: Any) -> Any:
    """A JSON value: numpy scalars as Python ones, a missing or infinite number as null."""
    import pandas as pd

    if value is None or isinstance(value, (str, bool, int, list, dict)):
        return value
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):  # an array: not a scalar a request carries
        return value
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _category(value: Any) -> str | None:
    value = _plain(value)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(value: Any) -> float:
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan
