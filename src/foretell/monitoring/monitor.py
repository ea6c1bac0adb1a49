"""The monitor: prediction log, feedback, live quality, drift, fairness and alerts.

Reports are computed on request (``GET /v1/models/{name}/monitoring``, ``foretell monitor``)
and every ``interval`` seconds in the background, which refreshes the drift and quality gauges
on ``/metrics`` so Prometheus alerting can act on them. Every alert is also logged. The
background reports are computed in a reporter process of their own, so that serving neither
waits for them nor keeps their memory.
"""

from __future__ import annotations

import logging
import multiprocessing
import reprlib
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from foretell.errors import UserError
from foretell.monitoring.predlog import PredictionLog
from foretell.monitoring.store import MonitoringStore
from foretell.pipeline import Model
from foretell.repository.spec import ModelSpec

log = logging.getLogger("foretell.monitor")
#: Quality metrics where lower is better: their thresholds are ceilings.
ERRORS = ("mae", "rmse", "log_loss")


def check_truth(spec: ModelSpec, truth: Any) -> Any:
    """The ground truth as stored, or a UserError saying what the task expects."""
    if spec.task in ("classification", "text_classification"):
        if isinstance(truth, list | dict) or str(truth) not in (spec.labels or []):
            raise UserError(
                f"ground truth of '{spec.name}' must be one of its labels {spec.labels}; "
                f"got {reprlib.repr(truth)}"
            )
        return str(truth)
    if spec.task == "regression":
        if isinstance(truth, bool) or not isinstance(truth, int | float):
            raise UserError(
                f"ground truth of '{spec.name}' must be a number; got {reprlib.repr(truth)}"
            )
        return float(truth)
    if spec.task == "anomaly_detection":
        if not isinstance(truth, bool):
            raise UserError(
                f"ground truth of '{spec.name}' must be true (an anomaly) or false; "
                f"got {reprlib.repr(truth)}"
            )
        return truth
    raise UserError(f"a {spec.task} model takes no ground truth")


class Monitor:
    """Monitoring of a set of models backed by one :class:`MonitoringStore`."""

    def __init__(
        self,
        store: MonitoringStore,
        registry: CollectorRegistry,
        sample_rate: float = 1.0,
        window_seconds: float = 86_400.0,
        interval: float = 60.0,
        sample_rows: int = 20_000,
    ) -> None:
        self.store, self.window, self.interval = store, window_seconds, interval
        #: Reports read at most this many of the window's newest predictions (and labelled
        #: predictions): enough for drift and quality, and a bound on the memory one report
        #: takes, however busy the server is.
        self.sample_rows = sample_rows
        failures = Counter(
            "foretell_prediction_log_failures",
            "Predictions the log could not store.",
            registry=registry,
        )
        waits = Counter(
            "foretell_prediction_log_wait_seconds",
            "Seconds serving waited for room in the prediction log's full queue.",
            registry=registry,
        )
        self.predlog = PredictionLog(store, sample_rate, failures=failures, waits=waits)
        self.feedback_rows = Counter(
            "foretell_feedback", "Ground-truth values received.", ["model"], registry=registry
        )
        self.psi = Gauge(
            "foretell_drift_psi",
            "Population stability index of a feature.",
            ["model", "feature"],
            registry=registry,
            # with --workers, every worker's reporter reads the same store: the latest holds
            multiprocess_mode="mostrecent",
        )
        self.drifted = Gauge(
            "foretell_feature_drifted",
            "1 when a feature drifted.",
            ["model", "feature"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.quality = Gauge(
            "foretell_quality",
            "Live quality of a model version.",
            ["model", "version", "metric"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.fairness = Gauge(
            "foretell_fairness",
            "Difference between groups of a sensitive input (0 is parity).",
            ["model", "version", "attribute", "metric"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.alerts = Gauge(
            "foretell_alert",
            "1 while an alert holds.",
            ["model", "kind", "subject"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.models: dict[str, Model] = {}
        self._reporter: ProcessPoolExecutor | None = None
        self._reporter_lock = threading.Lock()
        self._stop = threading.Event()
        self._timer = threading.Thread(
            target=self._refresh_loop, name="foretell-monitor", daemon=True
        )
        self._timer.start()

    def attach(self, model: Model) -> None:
        """Logs every batch ``model`` scores from now on."""
        model.observers.append(self.predlog.observe)
        model.observers_behind.append(self.predlog.behind)
        self.models[model.name] = model

    def feedback(self, spec: ModelSpec, items: Sequence[tuple[str, Any]]) -> int:
        checked = [(pid, check_truth(spec, truth)) for pid, truth in items]
        stored = self.store.add_feedback(spec.name, checked)
        self.feedback_rows.labels(spec.name).inc(stored)
        return stored

    def report(self, spec: ModelSpec, window_seconds: float | None = None) -> dict[str, Any]:
        """Quality, input and prediction drift, fairness and alerts of ``spec``'s model over the
        last ``window_seconds``."""
        from foretell.monitoring.snapshot import measure  # scipy and scikit-learn: on first use

        window = window_seconds or self.window
        return self._publish(spec, measure(self.store, spec, window, self.sample_rows))

    def _publish(self, spec: ModelSpec, result: dict[str, Any]) -> dict[str, Any]:
        """Adds a report's alerts, logs them, and sets the gauges."""
        result["alerts"] = self._alerts(spec, result)
        self._gauges(spec, result)
        return result

    def _alerts(self, spec: ModelSpec, report: dict[str, Any]) -> list[dict[str, Any]]:
        features = report["drift"]["features"]
        alerts = [
            {
                "kind": "drift",
                "subject": name,
                "message": f"feature '{name}' drifted (psi {features[name].get('psi', 0):.3f})",
            }
            for name in report["drift"]["drifted"]
        ]
        outputs = report["drift"]["predictions"]["outputs"]
        alerts.extend(
            {
                "kind": "prediction_drift",
                "subject": name,
                "message": f"predicted '{name}' drifted (psi {outputs[name].get('psi', 0):.3f})",
            }
            for name in report["drift"]["predictions"]["drifted"]
        )
        for version, found in report["fairness"]["versions"].items():
            for attribute, result in found["attributes"].items():
                for metric, ceiling in spec.monitoring.max.items():
                    value = result.get(metric)
                    if isinstance(value, float) and value > ceiling:
                        alerts.append(
                            {
                                "kind": "fairness",
                                "subject": f"{version}:{attribute}:{metric}",
                                "message": f"version {version} {metric} over '{attribute}' "
                                f"{value:.4g} is above {ceiling}",
                            }
                        )
        for version, scores in report["quality"]["versions"].items():
            for metric, floor in spec.monitoring.min.items():
                value = scores.get(metric)
                if value is not None and value < floor:
                    alerts.append(
                        {
                            "kind": "quality",
                            "subject": f"{version}:{metric}",
                            "message": f"version {version} {metric} {value:.4g} is below {floor}",
                        }
                    )
            for metric, ceiling in spec.monitoring.max.items():
                value = scores.get(metric)
                if value is not None and value > ceiling:
                    alerts.append(
                        {
                            "kind": "quality",
                            "subject": f"{version}:{metric}",
                            "message": f"version {version} {metric} {value:.4g} is above {ceiling}",
                        }
                    )
        for alert in alerts:
            log.warning("alert for %s: %s", spec.name, alert["message"])
        return alerts

    def _gauges(self, spec: ModelSpec, report: dict[str, Any]) -> None:
        for name, result in report["drift"]["features"].items():
            if "psi" in result:
                self.psi.labels(spec.name, name).set(result["psi"])
            self.drifted.labels(spec.name, name).set(1 if result["drifted"] else 0)
        for version, scores in report["quality"]["versions"].items():
            for metric, value in scores.items():
                if isinstance(value, int | float) and metric != "rows":
                    self.quality.labels(spec.name, version, metric).set(value)
        for version, found in report["fairness"]["versions"].items():
            for attribute, result in found["attributes"].items():
                for metric in ("demographic_parity_difference", "equalized_odds_difference"):
                    self.fairness.labels(spec.name, version, attribute, metric).set(result[metric])
        for alert in report["alerts"]:
            self.alerts.labels(spec.name, alert["kind"], alert["subject"]).set(1)

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.interval):
            for model in list(self.models.values()):
                try:
                    self._publish(model.spec, self._measure_apart(model.spec))
                except Exception:  # a report must never take serving down
                    log.exception("monitoring report of %s failed", model.name)

    def _measure_apart(self, spec: ModelSpec) -> dict[str, Any]:
        """:func:`~foretell.monitoring.snapshot.measure` in the reporter process, started on
        first use (again if it died):
        a report reads thousands of logged rows into pandas and computes drift, which in the
        serving process would hold its interpreter lock for hundreds of milliseconds (every
        request waits) and leave its memory high after each report."""
        with self._reporter_lock:
            if self._reporter is None:
                self._reporter = ProcessPoolExecutor(
                    1, multiprocessing.get_context("spawn"), initializer=_ignore_stop_signals
                )
            reporter = self._reporter
        from foretell.monitoring.snapshot import measure_in

        uri = self.store.connect_uri
        try:
            return reporter.submit(measure_in, uri, spec, self.window, self.sample_rows).result()
        except BrokenProcessPool:
            with self._reporter_lock:
                self._reporter = None
            raise

    def close(self) -> None:
        """Flushes the prediction log and stops the background refresh."""
        self._stop.set()
        with self._reporter_lock:
            if self._reporter is not None:
                self._reporter.shutdown(wait=False, cancel_futures=True)
                self._reporter = None
        self.predlog.close()


def _ignore_stop_signals() -> None:
    """The reporter leaves stopping to the server, which shuts it down once it has drained."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
