"""What a prediction looks like on the page: the answer, the decision, its charts, and the
feedback a person can give on it; and predictions of many rows as a flat table."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from markupsafe import Markup

from foretell.repository.spec import ModelSpec
from foretell.serving.ui import charts

#: Keys of a result that are about the prediction, not outputs of the model.
_META = ("prediction_id", "model", "version", "decision", "flags", "error", "timings_ms")
_INSIGHT = ("explanation", "uncertainty")
#: The output that answers the question, per task, and what to call it.
_HEADLINE = {
    "classification": ("label", "Label"),
    "text_classification": ("label", "Label"),
    "regression": ("value", "Value"),
    "clustering": ("cluster_name", "Cluster"),
    "anomaly_detection": ("is_anomaly", "Anomaly"),
}


#: How many attributions an explanation chart shows, the largest first.
SHOWN_INPUTS = 12


@dataclass
class Feedback:
    """The "was this right?" controls: what "right" sends, and how to say what was."""

    predicted: str
    #: label (choose one of ``choices``), number or bool
    kind: str
    choices: list[str] = field(default_factory=list)


@dataclass
class Result:
    prediction_id: str
    version: str
    headline: tuple[str, str] | None
    decision: str | None
    details: list[tuple[str, str]]
    charts: list[tuple[str, Markup]]
    uncertainty: str | None
    feedback: Feedback | None


def result(spec: ModelSpec, data: dict[str, Any]) -> Result:
    """The page's view of one prediction (``Prediction.to_dict()``)."""
    key, title = _HEADLINE.get(spec.task, ("", ""))
    outputs = {k: v for k, v in data.items() if k not in _META + _INSIGHT}
    headline = (title, as_text(outputs.pop(key))) if key in outputs else None
    shown: list[tuple[str, Markup]] = []
    probabilities = outputs.pop("probabilities", None)
    if isinstance(probabilities, dict):
        label = data.get("label")
        shown.append(
            (
                "Probabilities",
                charts.bar_chart(
                    probabilities,
                    "Probability of each label",
                    charts.percent,
                    highlight=[str(label)],
                    scale=(0.0, 1.0),
                ),
            )
        )
    items = outputs.pop("items", None)
    if isinstance(items, list) and items:
        scores = {str(i["item"]): float(i["score"]) for i in items}
        shown.append(("Recommended items", charts.bar_chart(scores, "Score of each item")))
        headline = ("Top item", str(items[0]["item"]))
    uncertainty = _uncertainty(data, shown)
    explanation = data.get("explanation")
    if isinstance(explanation, dict) and explanation.get("attributions"):
        shown.append(_explanation(explanation, data))
    return Result(
        prediction_id=str(data.get("prediction_id", "")),
        version=str(data.get("version", "")),
        headline=headline,
        decision=data.get("decision"),
        details=[(k, as_text(v)) for k, v in outputs.items()],
        charts=shown,
        uncertainty=uncertainty,
        feedback=_feedback(spec, data),
    )


def _explanation(explanation: dict[str, Any], data: dict[str, Any]) -> tuple[str, Markup]:
    """The largest attributions, signed: what pushed the explained number up, and down."""
    attributions = explanation["attributions"]
    top = sorted(attributions.items(), key=lambda kv: abs(kv[1]), reverse=True)[:SHOWN_INPUTS]
    explained = "the score" if "score" in data else "the value"
    if "label" in data:
        explained = f"the probability of '{data['label']}'"
    title = f"How much each input moved {explained}"
    base = explanation.get("base_value")
    if isinstance(base, int | float):
        title += f" from the model's average, {charts.number(base)}"
    more = len(attributions) - len(top)
    heading = f"Explanation: {title[0].lower()}{title[1:]}" + (
        f" (the {len(top)} largest of {len(attributions)} inputs)" if more > 0 else ""
    )
    return (heading, charts.bar_chart(dict(top), title))


def _uncertainty(data: dict[str, Any], shown: list[tuple[str, Markup]]) -> str | None:
    """The uncertainty in words; an interval is also drawn, into ``shown``."""
    found = data.get("uncertainty")
    if not isinstance(found, dict):
        return None
    level = found.get("confidence")
    share = f"{level * 100:g} %" if isinstance(level, int | float) else "the chosen"
    interval = found.get("interval")
    if isinstance(interval, list) and len(interval) == 2:
        low, high = (float(v) for v in interval)
        # a Bayesian model's interval is around its posterior mean, a regressor's its value
        point = found.get("mean", data.get("value"))
        kind = "credible" if found.get("method") == "bayesian" else "conformal prediction"
        title = f"{share} {kind} interval"
        shown.append(
            (
                "Uncertainty",
                charts.interval_chart(
                    low, high, float(point) if isinstance(point, int | float) else None, title
                ),
            )
        )
        return f"{title}: from {charts.number(low)} to {charts.number(high)}"
    labels = found.get("set")
    if isinstance(labels, list):
        members = ", ".join(str(x) for x in labels) or "empty"
        return f"{share} conformal prediction set: {{{members}}}"
    return None


def _feedback(spec: ModelSpec, data: dict[str, Any]) -> Feedback | None:
    if spec.task in ("classification", "text_classification") and "label" in data:
        return Feedback(str(data["label"]), "label", list(spec.labels or []))
    if spec.task == "regression" and "value" in data:
        return Feedback(repr(float(data["value"])), "number")
    if spec.task == "anomaly_detection" and "is_anomaly" in data:
        return Feedback("true" if data["is_anomaly"] else "false", "bool", ["true", "false"])
    return None


def truth(spec: ModelSpec, text: str) -> Any:
    """A ground truth typed into the page, as the task stores it (the monitor checks it)."""
    parse: dict[str, Callable[[str], Any]] = {
        "regression": _number_or_text,
        "anomaly_detection": lambda t: {"true": True, "false": False}.get(t.lower(), t),
    }
    return parse.get(spec.task, str)(text.strip())


def _number_or_text(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def as_text(value: Any) -> str:
    """A value as the page writes it: numbers short, lists and objects as JSON, none blank."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return charts.number(value)
    if isinstance(value, list | dict):
        return orjson.dumps(value).decode()
    return str(value)


def flat(data: dict[str, Any]) -> dict[str, Any]:
    """One prediction as a table row: probabilities one column each, lists as JSON text."""
    row: dict[str, Any] = {}
    for key, value in data.items():
        if key == "timings_ms":
            continue
        if key == "probabilities" and isinstance(value, dict):
            row.update({f"probability_{label}": p for label, p in value.items()})
        elif isinstance(value, list | dict):
            row[key] = orjson.dumps(value).decode()
        else:
            row[key] = value
    return row
