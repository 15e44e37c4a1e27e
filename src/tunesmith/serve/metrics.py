"""The Prometheus metrics of the prediction server, each app in a registry of its own."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from tunesmith.serve.batcher import ServedModel

# Fine at the low end: the interesting latencies of a small model are single milliseconds.
# fmt: off
LATENCY_BUCKETS = (
    0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008, 0.01, 0.0125, 0.015, 0.02,
    0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256, 512, 1024, 2048, 4096)
REJECTION_REASONS = (
    "unauthorized", "body_too_large", "too_many_rows", "queue_full", "timeout", "shutting_down", "invalid",
    "disconnected",
)
# fmt: on
# The Prometheus text format every scraper reads; the 1.0.0 content type of newer clients only
# differs for metric names outside the legacy charset, which tunesmith does not use.
METRICS_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


class Metrics:
    """Prometheus metrics of one app, in a registry of its own (several apps may share a process)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "tunesmith_http_requests", "HTTP requests by endpoint and status.", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "tunesmith_http_request_duration_seconds",
            "Time from request start to the end of the response, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "tunesmith_batch_rows", "Rows per model call (micro-batch).", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "tunesmith_batch_requests", "Requests per model call (micro-batch).", buckets=BATCH_BUCKETS, registry=r
        )
        self.model_seconds = Histogram(
            "tunesmith_model_seconds", "Time of one model call.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.rows = Counter("tunesmith_predicted_rows", "Rows predicted.", registry=r)
        self.queue_rows = Gauge("tunesmith_queue_rows", "Rows waiting for the model.", registry=r)
        self.busy_rows = Gauge(
            "tunesmith_model_busy_rows", "Rows of the model call running now (0: the model is idle).", registry=r
        )
        self.in_flight = Gauge("tunesmith_requests_in_flight", "HTTP requests being handled.", registry=r)
        self.ready = Gauge("tunesmith_ready", "1 when the model is warmed up and serving.", registry=r)
        self.rejections = Counter("tunesmith_rejections", "Requests refused, by reason.", ["reason"], registry=r)
        self.model_info = Gauge(
            "tunesmith_model_info",
            "The model serving now (value 1).",
            ["model_version", "backend", "precision"],
            registry=r,
        )
        self.reloads = Counter("tunesmith_reloads", "Model reloads by result.", ["result"], registry=r)
        self.log_records = Counter(
            "tunesmith_prediction_log_records",
            "Prediction log records by result (dropped: the buffer was full or the write failed).",
            ["result"],
            registry=r,
        )
        for reason in REJECTION_REASONS:
            self.rejections.labels(reason)
        for result in ("ok", "failed"):
            self.reloads.labels(result)
        for result in ("written", "dropped"):
            self.log_records.labels(result)
        self._children: dict[tuple[str, int], Any] = {}
        self._latency: dict[str, Any] = {}
        self._monitor: MonitorGauges | None = None

    def monitor_gauges(self) -> MonitorGauges:
        """The gauges of live drift monitoring, registered on first use (a server without a
        reference shows none of them)."""
        if self._monitor is None:
            self._monitor = MonitorGauges(self.registry)
        return self._monitor

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one finished request."""
        key = (endpoint, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(endpoint, str(status))
        child.inc()
        hist = self._latency.get(endpoint)
        if hist is None:
            hist = self._latency[endpoint] = self.latency.labels(endpoint)
        hist.observe(seconds)

    def batch(self, rows: int, requests: int, seconds: float) -> None:
        """Record one model call (called on the event loop by the batcher)."""
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)
        self.model_seconds.observe(seconds)
        self.rows.inc(rows)

    def set_model(self, predictor: ServedModel) -> None:
        """Label ``tunesmith_model_info`` with the model serving now."""
        self.model_info.clear()
        self.model_info.labels(predictor.version, predictor.backend, predictor.precision).set(1)

    def exposition(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)


class MonitorGauges:
    """The gauges of live drift monitoring (:mod:`tunesmith.serve.watch`), in the app's registry.

    - ``tunesmith_drift_effect{signal}``: the signal's effect size in the last window
      (Wasserstein distance over the reference's std for a numeric input, Jensen-Shannon
      distance for a categorical one, Kolmogorov-Smirnov D for the outputs).
    - ``tunesmith_drift_p_value{signal}``: its p-value after the Benjamini-Hochberg correction
      over every signal of the window.
    - ``tunesmith_drift_detected{signal}``: 1 when the corrected p-value is below the false
      discovery rate and the effect reaches the signal's threshold, else 0.
    - ``tunesmith_drift_signals_detected``: how many signals drifted in the last window.
    - ``tunesmith_estimated_performance{metric}`` with ``_lower`` and ``_upper``: the accuracy
      (``metric="accuracy"``) or mean absolute error (``metric="mae"``) estimated without labels,
      and its 95% interval.
    - ``tunesmith_performance_threshold{metric}``: the estimate's alert threshold, learned on
      the reference.
    - ``tunesmith_performance_alert``: 1 when the estimate is past its threshold, else 0.
    - ``tunesmith_monitor_window_rows``: rows in the last window tested.
    - ``tunesmith_monitor_last_run_timestamp_seconds``: Unix time of the last successful test.
    - ``tunesmith_monitor_runs_total{result}``: tests (and reference builds) by result, ``ok`` or
      ``failed``.

    Unlabeled gauges read NaN until the first window was tested.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.effect = Gauge(
            "tunesmith_drift_effect", "Effect size of each drift signal in the last window.", ["signal"], registry=r
        )
        self.p_value = Gauge(
            "tunesmith_drift_p_value",
            "Corrected (Benjamini-Hochberg) p-value of each drift signal in the last window.",
            ["signal"],
            registry=r,
        )
        self.detected = Gauge(
            "tunesmith_drift_detected", "1 when the signal drifted in the last window.", ["signal"], registry=r
        )
        self.signals_detected = Gauge(
            "tunesmith_drift_signals_detected", "Signals that drifted in the last window.", registry=r
        )
        self.performance = Gauge(
            "tunesmith_estimated_performance",
            "Performance estimated without labels in the last window (accuracy or mae).",
            ["metric"],
            registry=r,
        )
        self.performance_lower = Gauge(
            "tunesmith_estimated_performance_lower",
            "Lower end of the 95% interval of the estimated performance.",
            ["metric"],
            registry=r,
        )
        self.performance_upper = Gauge(
            "tunesmith_estimated_performance_upper",
            "Upper end of the 95% interval of the estimated performance.",
            ["metric"],
            registry=r,
        )
        self.threshold = Gauge(
            "tunesmith_performance_threshold",
            "Alert threshold of the estimated performance, learned on the reference.",
            ["metric"],
            registry=r,
        )
        self.alert = Gauge(
            "tunesmith_performance_alert", "1 when the estimated performance is past its threshold.", registry=r
        )
        self.window_rows = Gauge("tunesmith_monitor_window_rows", "Rows in the last window tested.", registry=r)
        self.last_run = Gauge(
            "tunesmith_monitor_last_run_timestamp_seconds", "Unix time of the last successful drift test.", registry=r
        )
        self.runs = Counter(
            "tunesmith_monitor_runs", "Drift tests and reference builds by result.", ["result"], registry=r
        )
        for result in ("ok", "failed"):
            self.runs.labels(result)
        self.last_run.set(float("nan"))
        self.clear()

    def clear(self) -> None:
        """Forget the last window's figures (the model changed, or no window was tested yet)."""
        for gauge in (self.effect, self.p_value, self.detected, self.performance):
            gauge.clear()
        for gauge in (self.performance_lower, self.performance_upper, self.threshold):
            gauge.clear()
        for gauge in (self.signals_detected, self.alert, self.window_rows):
            gauge.set(float("nan"))
