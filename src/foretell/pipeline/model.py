"""A loaded model: the whole inference pipeline, validate → preprocess → forward → decide."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from foretell.errors import ForetellError, ValidationError, Violation
from foretell.insight.bayes import POSTERIOR_OUTPUTS, PosteriorRuntime, credible_level
from foretell.insight.conformal import Calibration, resolve_confidence
from foretell.pipeline.decide import DecisionRules
from foretell.pipeline.postprocess import Postprocessor
from foretell.pipeline.preprocess import Preprocessor
from foretell.pipeline.rows import Rows, to_columns
from foretell.pipeline.validate import Checked, Validator, in_row_order
from foretell.repository.spec import ModelSpec, read_spec
from foretell.runtimes import Runtime, canonical, create_runtime

if TYPE_CHECKING:
    from foretell.insight.explain import Explainer

STAGES = ("validate", "preprocess", "forward", "postprocess", "decide")
#: Output columns an explanation adds (besides one ``attribution[<input>]`` per input), and
#: those conformal uncertainty adds.
EXPLANATION_COLUMNS = ("base_value",)
UNCERTAINTY_COLUMNS = ("lower", "upper", "prediction_set", "confidence")


@dataclass
class Prediction:
    """One row's result. ``error`` is set, and ``outputs`` empty, when the row was unusable."""

    prediction_id: str
    model: str
    version: str
    outputs: dict[str, Any]
    decision: str | None
    flags: list[Violation] = field(default_factory=list)
    error: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    #: ``{"base_value": b, "attributions": {input: a}}`` when asked for.
    explanation: dict[str, Any] | None = None
    #: ``{"method": "conformal", "confidence": c, "interval": [lo, hi]}`` (or ``"set"``: the
    #: labels) when asked for.
    uncertainty: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON-ready data, outputs at the top level."""
        data: dict[str, Any] = {
            "prediction_id": self.prediction_id,
            "model": self.model,
            "version": self.version,
            **self.outputs,
            "decision": self.decision,
        }
        if self.explanation is not None:
            data["explanation"] = self.explanation
        if self.uncertainty is not None:
            data["uncertainty"] = self.uncertainty
        if self.flags:
            data["flags"] = [v.to_json() for v in self.flags]
        if self.error is not None:
            data["error"] = self.error
        data["timings_ms"] = self.timings_ms
        return data


class Model:
    """A model version ready to predict, the same object for HTTP, files and streams.

    ``predict`` takes a list of records (dicts), a list of lists in schema order, a pandas
    DataFrame or a 2-D numpy array, and returns one :class:`Prediction` per row.
    """

    def __init__(self, spec: ModelSpec, folder: Path, runtime: Runtime) -> None:
        self.spec = spec
        self.folder = folder
        self.runtime = runtime
        self.validator = Validator(spec)
        self.preprocessor = Preprocessor(spec, folder)
        self.postprocessor = Postprocessor(spec)
        self.rules = DecisionRules(spec, self.postprocessor.quantity_kinds())
        #: The inputs' names in schema order (the spec's, worked out once).
        self.feature_names = spec.feature_names
        #: Called with every scored batch (the server's metrics listen here).
        self.observers: list[Callable[[Batch], None]] = []
        #: Whether an observer is behind and may make the next batch wait for it (the
        #: prediction log's writer, say): the server then scores off its event loop.
        self.observers_behind: list[Callable[[], bool]] = []
        # built on first use: scoring the calibration set, reading the background sample
        self._insight_lock = threading.Lock()
        self._calibration: Calibration | None = None
        self._explainer: Explainer | None = None

    @classmethod
    def from_folder(cls, folder: str | Path, spec: ModelSpec | None = None) -> Model:
        """Loads the model version in ``folder`` (read from its model.yaml unless given)."""
        folder = Path(folder)
        spec = spec or read_spec(folder)
        return cls(spec, folder, create_runtime(spec, folder))

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> str:
        return self.spec.version

    def run(
        self,
        rows: Rows,
        all_or_nothing: bool = False,
        *,
        explain: bool = False,
        confidence: float | None = None,
        groups: np.ndarray | None = None,
    ) -> Batch:
        """Scores every usable row, columnar; never raises for invalid rows.

        A row is unusable when it breaks a hard rule, or any rule if the spec rejects invalid
        rows; its violations say why. With ``all_or_nothing``, one unusable row leaves the
        whole batch unscored, or, when ``groups`` numbers the request of each row of a merged
        batch, its own request's rows. ``explain`` adds feature attributions, ``confidence``
        (a level in (0, 1)) conformal intervals or label sets: see :mod:`foretell.insight`. A
        Bayesian model's uncertainty is its own posterior, at ``confidence`` or the spec's level.
        """
        bayesian = self.postprocessor.posterior
        level = (
            credible_level(self.spec, confidence)
            if bayesian
            else resolve_confidence(self.spec, confidence)
        )
        if explain:
            from foretell.insight.explain import check_explainable

            check_explainable(self.spec)
        scored = self.score(rows, all_or_nothing, groups)
        if bayesian:
            # rules read the spec's level, so no caller moves a decision by asking another
            if len(scored.usable) and level is not None and level != credible_level(self.spec):
                x = self.preprocessor.transform(scored.inputs, scored.usable)
                scored.outputs.update(self._posterior(x, level))
            scored.insight.extend(k for k in POSTERIOR_OUTPUTS if k in scored.outputs)
        elif len(scored.usable) and level is not None:
            started = time.perf_counter()
            scored.add_insight(self._calibrated().columns(scored.outputs, level))
            _lap(scored.timings_ms, "uncertainty", started)
        if len(scored.usable) and explain:
            started = time.perf_counter()
            x = self.preprocessor.transform(scored.inputs, scored.usable)
            explainer = self._explaining()
            scored.add_insight(explainer.columns(x, scored.inputs, scored.usable, scored.outputs))
            _lap(scored.timings_ms, "explain", started)
        for observe in self.observers:
            observe(scored)
        return scored

    def score(
        self, rows: Rows, all_or_nothing: bool = False, groups: np.ndarray | None = None
    ) -> Batch:
        """:meth:`run` without insight and without telling observers: for passes over rows
        nobody asked to predict, such as scoring a calibration set."""
        clock = time.perf_counter
        laps = [clock()]  # when the call began, then when each stage ended
        batch = to_columns(rows, self.feature_names)
        checked = self.validator.check(batch)
        laps.append(clock())
        usable = self._usable(checked, all_or_nothing, groups)
        outputs: dict[str, np.ndarray] = {}
        decisions: np.ndarray = np.empty(0, dtype=object)
        if len(usable):
            x = self.preprocessor.transform(checked.columns, usable, checked.matrix)
            laps.append(clock())
            raw = canonical(self.spec.task, self._forward(x))
            laps.append(clock())
            outputs, quantities = self.postprocessor.apply(raw, x)
            laps.append(clock())
            decisions = self.rules.decide(quantities, len(usable))
            laps.append(clock())
        # a batch with no usable row ends after validation: its later stages have no lap
        pairs = zip(STAGES, laps, laps[1:], strict=False)
        timings = {stage: round((end - start) * 1000.0, 4) for stage, start, end in pairs}
        return Batch(
            self,
            len(batch),
            usable,
            outputs,
            decisions,
            checked.violations,
            new_ids(len(batch)),
            timings,
            checked.columns,
            matrix=checked.matrix,
        )

    def _usable(
        self, checked: Checked, all_or_nothing: bool, groups: np.ndarray | None
    ) -> np.ndarray:
        """The indices of the rows to score (see :meth:`run`)."""
        if not checked.violations:
            return np.arange(checked.length, dtype=np.intp)
        unusable = checked.unusable()
        if self.spec.on_invalid == "reject":
            unusable[list(checked.violations)] = True
        if all_or_nothing and unusable.any():
            if groups is None:
                unusable[:] = True
            else:
                unusable |= np.isin(groups, groups[unusable])
        return np.flatnonzero(~unusable)

    def predict(
        self, rows: Rows, *, explain: bool = False, confidence: float | None = None
    ) -> list[Prediction]:
        """One result per row; raises ValidationError if the spec rejects invalid rows.

        ``explain`` and ``confidence`` add each result's ``explanation`` and ``uncertainty``.
        """
        rejecting = self.spec.on_invalid == "reject"
        batch = self.run(rows, all_or_nothing=rejecting, explain=explain, confidence=confidence)
        if batch.violations and rejecting:
            raise ValidationError(in_row_order(batch.violations))
        return batch.predictions()

    def _calibrated(self) -> Calibration:
        with self._insight_lock:
            if self._calibration is None:
                self._calibration = Calibration.of(self)
            return self._calibration

    def _explaining(self) -> Explainer:
        from foretell.insight.explain import Explainer

        with self._insight_lock:
            if self._explainer is None:
                self._explainer = Explainer(self)
            return self._explainer

    def _posterior(self, x: np.ndarray, level: float) -> dict[str, np.ndarray]:
        """A Bayesian model's posterior columns at ``level``."""
        if not isinstance(self.runtime, PosteriorRuntime):
            raise ForetellError(f"the {self.runtime.format} runtime gives no posterior")
        raw = self.runtime.predict_posterior(x, level)
        return {k: np.asarray(raw[k], dtype=np.float64) for k in POSTERIOR_OUTPUTS}

    def _forward(self, x: np.ndarray) -> np.ndarray | dict[str, np.ndarray]:
        try:
            return self.runtime.predict(x)
        except Exception as exc:  # the model's own library failed on this batch
            raise ForetellError(
                f"model '{self.spec.name}' version {self.spec.version} failed in its forward "
                f"pass: {type(exc).__name__}: {exc}"
            ) from exc


@dataclass
class Batch:
    """A scored batch, columnar: outputs and decisions of the ``usable`` rows, and the
    violations of every row that broke a rule."""

    model: Model
    length: int
    usable: np.ndarray
    outputs: dict[str, np.ndarray]
    decisions: np.ndarray
    violations: dict[int, list[Violation]]
    prediction_ids: list[str]
    timings_ms: dict[str, float]
    #: The checked input columns, by feature name (imputed values filled in).
    inputs: dict[str, Any]
    #: The names of the ``outputs`` that explanations and uncertainty added.
    insight: list[str] = field(default_factory=list)
    #: Every input as one (rows, inputs) float64 array in schema order, when validation had
    #: one (see ``Checked.matrix``): the prediction log ships it as it is.
    matrix: np.ndarray | None = None
    #: When these rows were split from a batch that merged several requests: that batch, and
    #: the position of this one's first row in it.
    part_of: tuple[Batch, int] | None = None
    #: What every request of this batch would otherwise compute alike, worked out once by the
    #: first that needs it (the REST encoding of its outputs), by name.
    shared: dict[str, Any] = field(default_factory=dict)

    def add_insight(self, columns: dict[str, np.ndarray]) -> None:
        """Adds explanation or uncertainty columns to the outputs."""
        self.outputs.update(columns)
        self.insight.extend(columns)

    def records(self) -> list[dict[str, Any]]:
        """The outputs of the usable rows as JSON-ready dicts, with their ``explanation`` and
        ``uncertainty`` when the batch has them."""
        if not len(self.usable):
            return []
        if not self.insight:
            return self.model.postprocessor.records(self.outputs)
        task = {k: v for k, v in self.outputs.items() if k not in self.insight}
        records = self.model.postprocessor.records(task)
        for record, (explanation, uncertainty) in zip(records, self._grouped(), strict=True):
            if explanation is not None:
                record["explanation"] = explanation
            if uncertainty is not None:
                record["uncertainty"] = uncertainty
        return records

    def _grouped(self) -> list[tuple[dict[str, Any] | None, dict[str, Any] | None]]:
        """Per usable row: its explanation and its uncertainty, each None when absent."""
        values = {name: self.outputs[name].tolist() for name in self.insight}
        attributions = {n[len("attribution[") : -1]: v for n, v in values.items() if n[-1] == "]"}
        grouped = []
        for j in range(len(self.usable)):
            explanation = uncertainty = None
            if "base_value" in values:
                explanation = {
                    "base_value": values["base_value"][j],
                    "attributions": {name: a[j] for name, a in attributions.items()},
                }
            if "std" in values:  # a Bayesian model's posterior predictive
                uncertainty = {
                    "method": "bayesian",
                    "mean": values["mean"][j],
                    "std": values["std"][j],
                    "confidence": values["level"][j],
                    "interval": [values["lower"][j], values["upper"][j]],
                }
            elif "confidence" in values:
                uncertainty = {"method": "conformal", "confidence": values["confidence"][j]}
                if "lower" in values:
                    uncertainty["interval"] = [values["lower"][j], values["upper"][j]]
                else:
                    uncertainty["set"] = values["prediction_set"][j]
            grouped.append((explanation, uncertainty))
        return grouped

    def predictions(self) -> list[Prediction]:
        """One :class:`Prediction` per row, in order."""
        name, version = self.model.spec.name, self.model.spec.version
        ids, violations, timings = self.prediction_ids, self.violations, self.timings_ms
        records = self.records()
        decisions = self.decisions.tolist()
        position = dict(zip(self.usable.tolist(), range(len(self.usable)), strict=True))
        results = []
        for row in range(self.length):
            found = violations.get(row, [])
            j = position.get(row)
            if j is None:  # not scored: its violations say why
                outputs, decision, flags = {}, None, []
                error: str | None = "; ".join(v.message for v in found)
            else:
                outputs, decision, flags, error = records[j], str(decisions[j]), found, None
            results.append(
                Prediction(
                    prediction_id=ids[row],
                    model=name,
                    version=version,
                    explanation=outputs.pop("explanation", None),
                    uncertainty=outputs.pop("uncertainty", None),
                    outputs=outputs,
                    decision=decision,
                    flags=flags,
                    error=error,
                    timings_ms=timings.copy(),
                )
            )
        return results

    def table(self) -> dict[str, Any]:
        """The scored rows as flat columns (``row`` is the row's position in the batch)."""
        ids = np.array(self.prediction_ids, dtype=object)[self.usable]
        task = {k: v for k, v in self.outputs.items() if k not in self.insight}
        outputs = self.model.postprocessor.table(task) if len(self.usable) else {}
        insight = {k: self.outputs[k] for k in self.insight}
        return {
            "row": self.usable,
            "prediction_id": ids,
            **outputs,
            "decision": self.decisions,
            **insight,
        }

    def errors(self) -> dict[int, str]:
        """Row position -> why the row was not scored."""
        scored = set(self.usable.tolist())
        return {
            row: "; ".join(v.message for v in found)
            for row, found in sorted(self.violations.items())
            if row not in scored
        }


#: A random hex digit -> the digit with the RFC 9562 variant bits (10xx) set, keeping its
#: two low bits.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def new_ids(n: int) -> list[str]:
    """``n`` time-ordered (version 7, RFC 9562) UUIDs as text, made in bulk at a fraction of
    ``uuid``'s cost: 48 bits of Unix time in milliseconds, then 74 random bits.

    Time order keeps the prediction log's primary-key index growing at its end: with random
    (version 4) ids, SQLite's insert cost twice the CPU per row once the log outgrew its page
    cache, and the log's writer is what limits serving at large batches."""
    ms = f"{time.time_ns() // 1_000_000:012x}"
    head = f"{ms[:8]}-{ms[8:]}-7"
    h = os.urandom(10 * n).hex()  # 19 of every 20 digits used
    return [
        f"{head}{h[i : i + 3]}-{_VARIANT[h[i + 3]]}{h[i + 4 : i + 7]}-{h[i + 7 : i + 19]}"
        for i in range(0, 20 * n, 20)
    ]


def _lap(timings: dict[str, float], stage: str, started: float) -> float:
    now = time.perf_counter()
    timings[stage] = round((now - started) * 1000.0, 4)
    return now
