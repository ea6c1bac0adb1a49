"""The input form of a model, made from its spec: one field per feature, and back to a row;
and the explanation and uncertainty the model can add to its answer.

Numbers become number inputs with the spec's range, categories drop-downs, lists multiple
choice, text a text area. A value the form cannot turn into the feature's type is passed on
as typed, so the pipeline's validator, the one place the rules live, words the message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from foretell.errors import UserError, Violation
from foretell.insight.bayes import credible_level, gives_posterior
from foretell.insight.explain import check_explainable
from foretell.repository.spec import Feature, ModelSpec

#: Submitted form values: one text per single field, several for a multiple choice.
Submitted = Mapping[str, Sequence[str]]


@dataclass
class Field:
    """One form field as the template draws it."""

    feature: Feature
    id: str
    #: number, select, multiple or textarea
    kind: str
    value: list[str]
    hint: str
    errors: list[str]
    warnings: list[str]

    @property
    def name(self) -> str:
        return self.feature.name

    @property
    def options(self) -> list[str]:
        if self.feature.dtype == "bool":
            return ["true", "false"]
        return list(self.feature.categories or [])

    @property
    def step(self) -> str:
        return "1" if self.feature.dtype == "int" else "any"


_KINDS = {
    "float": "number",
    "int": "number",
    "bool": "select",
    "category": "select",
    "list": "multiple",
    "text": "textarea",
}


def fields(
    spec: ModelSpec,
    submitted: Submitted | None = None,
    violations: Sequence[Violation] = (),
    flags: Sequence[Violation] = (),
) -> list[Field]:
    """The form's fields, filled with what was submitted, else with a typical value."""
    return [
        Field(
            feature=f,
            id=f"field-{i}",
            kind=_KINDS[f.dtype],
            value=list(submitted.get(f.name, [])) if submitted is not None else _typical(spec, f),
            hint=_hint(f),
            errors=[v.message for v in violations if v.field == f.name],
            warnings=[v.message for v in flags if v.field == f.name],
        )
        for i, f in enumerate(spec.inputs)
    ]


def _hint(f: Feature) -> str:
    parts = [f.description] if f.description else []
    if f.min is not None or f.max is not None:
        low = "-∞" if f.min is None else f"{f.min:g}"
        high = "∞" if f.max is None else f"{f.max:g}"
        parts.append(f"{'an integer' if f.dtype == 'int' else 'a number'} from {low} to {high}")
    elif f.dtype == "int":
        parts.append("an integer")
    if f.dtype == "text":
        parts.append(f"at most {f.max_length:,} characters")
    if f.dtype == "list":
        parts.append("choose any number")
    if f.nullable:
        parts.append("optional")
    return "; ".join(parts)


def _typical(spec: ModelSpec, f: Feature) -> list[str]:
    """The training data's median, or its most frequent category: a sensible starting row."""
    ref = spec.reference.features.get(f.name) if spec.reference else None
    if f.dtype in ("float", "int", "bool") and ref is not None and ref.quantiles:
        median = ref.quantiles.get("p50")
        if median is not None:
            if f.dtype == "bool":
                return ["true" if median >= 0.5 else "false"]
            return [str(round(median)) if f.dtype == "int" else f"{median:.4g}"]
    if f.dtype == "category" and f.categories:
        frequencies = ref.frequencies if ref is not None and ref.frequencies else {}
        return [max(f.categories, key=lambda c: frequencies.get(c, 0.0))]
    return []


def row(spec: ModelSpec, submitted: Submitted) -> dict[str, Any]:
    """The record the form describes, each value in its feature's type where it parses."""
    return {f.name: _value(f, list(submitted.get(f.name, []))) for f in spec.inputs}


def _value(f: Feature, given: list[str]) -> Any:
    if f.dtype == "list":
        return [g for g in given if g]
    raw = given[-1] if given else ""
    if raw.strip() == "":
        return None
    if f.dtype == "text":
        return raw
    text = raw.strip()
    if f.dtype in ("float", "int"):
        try:
            number = float(text)
        except ValueError:
            return text
        return int(number) if f.dtype == "int" and number.is_integer() else number
    if f.dtype == "bool":
        return {"true": True, "false": False}.get(text.lower(), text)
    return text


@dataclass
class Insight:
    """The form's "also show" controls, for what the model supports."""

    #: None when the model cannot explain its predictions.
    explain: bool | None
    #: (value, text) choices of the uncertainty level; empty when the model gives none.
    levels: list[tuple[str, str]]
    confidence: str


LEVELS = [("0.8", "80 %"), ("0.9", "90 %"), ("0.95", "95 %")]


def insight(spec: ModelSpec, submitted: Submitted | None = None) -> Insight | None:
    """The explanation and uncertainty controls ``spec``'s model supports, as submitted."""
    try:
        check_explainable(spec)
        explain: bool | None = bool(submitted and submitted.get("explain"))
    except UserError:
        explain = None
    conformal = spec.insight.uncertainty
    levels = []
    if gives_posterior(spec):
        levels = [("", f"default ({credible_level(spec) * 100:g} %)"), *LEVELS]
    elif conformal is not None:
        default = conformal.default_confidence
        levels = [("", f"default ({default * 100:g} %)" if default else "none"), *LEVELS]
    if explain is None and not levels:
        return None
    chosen = (submitted or {}).get("confidence", [""])
    return Insight(explain, levels, chosen[-1] if chosen else "")


def options(found: Insight | None) -> dict[str, Any]:
    """The predict call's ``explain`` and ``confidence`` for what the form asked."""
    if found is None:
        return {}
    asked: dict[str, Any] = {}
    if found.explain:
        asked["explain"] = True
    if found.levels and found.confidence:
        try:
            asked["confidence"] = float(found.confidence)
        except ValueError:
            asked["confidence"] = found.confidence  # the model words the message
    return asked
