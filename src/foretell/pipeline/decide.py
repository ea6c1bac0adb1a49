"""Decisions: ordered rules on a prediction's outputs, e.g. ``probability[malignant] >= 0.9``.

A condition compares an output with a literal, and comparisons join with ``and`` / ``or``
(``and`` binds tighter). Outputs are named as in the results: ``label``, ``confidence``,
``probability[<class>]``, ``value``, ``cluster``, ``cluster_name``, ``distance``, ``score``,
``is_anomaly``, ``top_score``. Conditions are parsed, never evaluated as Python.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from typing import Any

import numpy as np

from foretell.errors import SpecError
from foretell.repository.spec import ModelSpec

_OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
_COMPARISON = re.compile(
    r"""^\s*(?P<name>[a-z_]+)(?:\[(?P<key>[^\]]+)\])?\s*(?P<op>>=|<=|==|!=|>|<)\s*
    (?P<literal>"[^"]*"|'[^']*'|[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|true|false|[\w.-]+)\s*$""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Comparison:
    """``quantity op literal``: one test on one output."""

    quantity: str
    op: str
    literal: float | str | bool


def parse_condition(text: str) -> list[list[Comparison]]:
    """Parses a condition into ``or`` of ``and`` groups; raises ValueError naming the problem."""
    groups: list[list[Comparison]] = []
    for alternative in re.split(r"\s+or\s+", text.strip()):
        group = []
        for part in re.split(r"\s+and\s+", alternative):
            match = _COMPARISON.match(part)
            if not match:
                raise ValueError(
                    f"condition '{part.strip()}' must read like 'probability[yes] >= 0.9' or "
                    "'label == \"spam\"' (an output, an operator, a literal)"
                )
            key = match["key"]
            quantity = f"{match['name']}[{key.strip()}]" if key else match["name"]
            group.append(Comparison(quantity, match["op"], _literal(match["literal"])))
        groups.append(group)
    return groups


def _mismatch(kind: str, c: Comparison) -> str | None:
    """What is wrong with comparing a quantity of ``kind`` as ``c`` does, or None."""
    literal = c.literal
    if kind == "number" and (isinstance(literal, bool) or not isinstance(literal, float)):
        return f"is a number; compare it with a number, not {literal!r}"
    if kind == "bool" and (not isinstance(literal, bool) or c.op not in ("==", "!=")):
        return "is true or false; use == true, == false or !="
    if kind == "text" and (not isinstance(literal, str) or c.op not in ("==", "!=")):
        return 'is text; compare it with == or != and a quoted string such as "spam"'
    return None


def _literal(text: str) -> float | str | bool:
    if text[0] in "\"'":
        return text[1:-1]
    if text in ("true", "false"):
        return text == "true"
    try:
        return float(text)
    except ValueError:
        return text


class DecisionRules:
    """The spec's rules, checked against the outputs the model will produce."""

    def __init__(self, spec: ModelSpec, kinds: dict[str, str]) -> None:
        self.default = spec.decision.default
        self.rules: list[tuple[list[list[Comparison]], str]] = []
        for i, rule in enumerate(spec.decision.rules):
            groups = parse_condition(rule.when)
            where = f"{spec.name}/{spec.version}/model.yaml: field 'decision.rules.{i}.when'"
            for comparison in (c for g in groups for c in g):
                kind = kinds.get(comparison.quantity)
                if kind is None:
                    raise SpecError(
                        f"{where} uses '{comparison.quantity}', which this model does not "
                        f"output; outputs: {', '.join(sorted(kinds))}"
                    )
                problem = _mismatch(kind, comparison)
                if problem:
                    raise SpecError(f"{where}: '{comparison.quantity}' {problem}")
            self.rules.append((groups, rule.action))

    def decide(self, quantities: dict[str, np.ndarray], n: int) -> np.ndarray:
        """The action for each of ``n`` rows: the first rule that holds, else the default."""
        decisions = np.empty(n, dtype=object)
        decisions[:] = self.default
        # the last rule is written first, so an earlier rule that holds has the last word
        for groups, action in reversed(self.rules):
            decisions[_holds(groups, quantities)] = action
        return decisions


def _holds(groups: list[list[Comparison]], quantities: dict[str, np.ndarray]) -> np.ndarray:
    """Whether any group's comparisons all hold, row by row."""
    alternatives = [
        reduce(operator.and_, [_test(c, quantities) for c in group]) for group in groups
    ]
    return reduce(operator.or_, alternatives)


def _test(c: Comparison, quantities: dict[str, np.ndarray]) -> np.ndarray:
    """Whether the comparison holds, row by row."""
    return np.asarray(_OPS[c.op](quantities[c.quantity], c.literal), dtype=bool)
