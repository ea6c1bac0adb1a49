"""A whole causal analysis: identify, check overlap and balance, estimate with every applicable
method, refute, and say in words what the numbers mean and where they cannot be trusted."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from foretell.errors import UserError
from foretell.insight.causal import iv
from foretell.insight.causal.balance import (
    SMD_LIMIT,
    Balance,
    Overlap,
    balance,
    overlap,
    propensity,
    require_overlap,
)
from foretell.insight.causal.estimates import Estimate, estimate
from foretell.insight.causal.graph import CausalGraph, Identification, assumed, identify, read_graph
from foretell.insight.causal.methods import METHODS, Method, method
from foretell.insight.causal.question import EFFECT_NAMES, Data, Effect, Question, read_table
from foretell.insight.causal.refute import Refutation, refute

#: The methods that compare like with like through the confounders (and need overlap).
ADJUSTING = ("regression", "matching", "weighting", "aipw")


class CausalWarning(UserWarning):
    """An estimate was made, but something about the data makes it less trustworthy."""


@dataclass
class CausalAnalysis:
    """Everything one ``foretell causal estimate`` found, for the terminal and the HTML report."""

    question: Question
    rows: int
    treated: int
    identification: Identification
    estimates: list[Estimate]
    refutations: list[Refutation] = field(default_factory=list)
    #: Each row's propensity and treatment, for the overlap plot (binary treatment only).
    propensity: np.ndarray | None = None
    treatment: np.ndarray | None = None
    overlap: Overlap | None = None
    balance: Balance | None = None
    first_stage: iv.FirstStage | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def estimate(self, name: str) -> Estimate:
        """The estimate of method ``name``."""
        wanted = method(name).name
        for found in self.estimates:
            if found.method == wanted:
                return found
        raise KeyError(f"method '{wanted}' did not run; ran: {[e.method for e in self.estimates]}")

    def refutations_of(self, name: str) -> list[Refutation]:
        wanted = method(name).name
        return [r for r in self.refutations if r.method == wanted]

    @property
    def title(self) -> str:
        q = self.question
        return f"Effect of {q.treatment} on {q.outcome}: {EFFECT_NAMES[q.effect]}"

    def to_dict(self) -> dict[str, Any]:
        q = self.question
        return {
            "treatment": q.treatment,
            "outcome": q.outcome,
            "effect": q.effect,
            "rows": self.rows,
            "treated": self.treated,
            "identification": self.identification.to_dict(),
            "estimates": [e.to_dict() for e in self.estimates],
            "refutations": [r.to_dict() for r in self.refutations],
            "first_stage": None
            if self.first_stage is None
            else {
                "coefficient": self.first_stage.coefficient,
                "f_statistic": self.first_stage.f_statistic,
                "partial_r2": self.first_stage.partial_r2,
            },
            "balance": None
            if self.balance is None
            else [
                {"confounder": n, "before": b, "matched": m, "weighted": w}
                for n, b, m, w in self.balance.rows()
            ],
            "notes": list(self.notes),
            "warnings": list(self.warnings),
        }


def estimate_effect(
    data: pd.DataFrame | str,
    *,
    treatment: str,
    outcome: str,
    confounders: Sequence[str] = (),
    instrument: str | None = None,
    graph: str | Path | CausalGraph | None = None,
    methods: Sequence[str] | None = None,
    effect: Effect = "ate",
    interval: str = "auto",
    level: float = 0.95,
    resamples: int = 200,
    refutations: bool = True,
    refutation_runs: int = 5,
    seed: int = 0,
) -> CausalAnalysis:
    """Estimates the effect of ``treatment`` on ``outcome`` in ``data`` (a DataFrame or a source
    URI), adjusting for ``confounders`` or for the adjustment set a causal ``graph`` identifies.

    ``methods`` defaults to every method that applies. Problems that make a number meaningless
    (a missing column, a non-binary treatment for a method that needs one, no overlap, an effect
    the graph cannot identify) raise :class:`~foretell.UserError`; problems that make it less
    trustworthy are listed in ``warnings`` and emitted as :class:`CausalWarning`.
    """
    frame = read_table(data)
    if graph is not None:
        if confounders:
            raise UserError(
                "give the confounders or a causal graph, not both: the graph decides which "
                "variables to adjust for"
            )
        identification = _from_graph(graph, treatment, outcome, instrument, frame)
        confounders = identification.adjustment
        if identification.strategy == "iv":
            instrument = instrument or identification.instruments[0]
    else:
        identification = assumed(confounders, instrument)
    question = Question(treatment, outcome, tuple(confounders), instrument, effect)
    prepared = question.prepare(frame)
    notes: list[str] = []
    chosen = _methods(methods, prepared, question, identification, notes)
    analysis = CausalAnalysis(
        question=question,
        rows=len(prepared),
        treated=int((prepared.t == 1).sum()) if prepared.binary else 0,
        identification=identification,
        estimates=[],
        notes=notes,
    )
    if prepared.binary and prepared.names:
        _diagnose(analysis, prepared, adjusting=any(m.name in ADJUSTING for m in chosen))
    if any(m.instrument for m in chosen):
        analysis.first_stage = iv.first_stage(prepared)
        _warn(analysis, analysis.first_stage.warning())
    for m in chosen:
        found = estimate(
            m, prepared, effect, interval=interval, level=level, resamples=resamples, seed=seed
        )
        analysis.estimates.append(found)
        if refutations:
            analysis.refutations.extend(refute(m, prepared, found, refutation_runs, seed))
    _interpret(analysis)
    return analysis


def _from_graph(
    graph: str | Path | CausalGraph,
    treatment: str,
    outcome: str,
    instrument: str | None,
    frame: pd.DataFrame,
) -> Identification:
    parsed = graph if isinstance(graph, CausalGraph) else read_graph(graph)
    found = identify(parsed, treatment, outcome, [str(c) for c in frame.columns])
    if not found.identifiable:
        raise UserError(
            f"cannot estimate the effect of {treatment} on {outcome}: {found.explanation}"
        )
    if instrument and instrument not in found.instruments:
        raise UserError(
            f"the graph does not make {instrument!r} an instrument for {treatment}; its "
            f"instruments: {', '.join(found.instruments) or 'none'}"
        )
    return found


def _methods(
    names: Sequence[str] | None,
    data: Data,
    question: Question,
    identification: Identification,
    notes: list[str],
) -> list[Method]:
    """The methods asked for (each checked), or every method that applies."""
    only_iv = identification.strategy == "iv"
    if names:
        chosen = list(dict.fromkeys(method(n) for n in names))
        for m in chosen:
            if only_iv and not m.instrument:
                raise UserError(
                    f"method '{m.name}' adjusts for confounders, but {identification.explanation}"
                    "; only 'iv' applies"
                )
            m.check(data, question.effect, question.treatment)
        return chosen
    chosen = []
    skipped = []
    for m in METHODS.values():
        if m.name == "regression" and data.binary and not data.names:
            continue  # with nothing to adjust for, it is the difference in means again
        try:
            if only_iv and not m.instrument:
                continue
            m.check(data, question.effect, question.treatment)
        except UserError:
            if (m.binary and not data.binary) or (m.instrument and data.z is not None):
                skipped.append(m.name)
            continue
        chosen.append(m)
    if skipped and not data.binary:
        notes.append(
            f"{', '.join(skipped)} need a binary (0/1) treatment; {question.treatment!r} is "
            "continuous, so the effect is per unit of treatment"
        )
    elif skipped:
        notes.append(
            f"{', '.join(skipped)} left out: 2SLS estimates the effect for those the instrument "
            f"moves, not the {question.effect.upper()}"
        )
    return chosen


def _diagnose(analysis: CausalAnalysis, data: Data, adjusting: bool) -> None:
    scores = propensity(data)
    analysis.balance = balance(scores, data, analysis.question.effect)
    if adjusting:
        require_overlap(scores, data, analysis.balance.before)
    analysis.propensity, analysis.treatment = scores, data.t
    analysis.overlap = overlap(scores, data)
    if adjusting:
        _warn(analysis, analysis.overlap.warning())


def _interpret(analysis: CausalAnalysis) -> None:
    """Notes on what the estimates say together, warnings on what undermines them."""
    ran = {e.method: e for e in analysis.estimates}
    bal = analysis.balance
    if bal is not None:
        for which, name in (("matched", "matching"), ("weighted", "weighting")):
            left = bal.imbalanced(which)
            if name in ran and left:
                _warn(
                    analysis,
                    f"after {name}, {', '.join(left)} still differ between the groups "
                    f"(standardized mean difference above {SMD_LIMIT}); the {name} estimate "
                    "may be biased",
                )
    adjusted = next(
        (ran[m] for m in ("aipw", "regression", "weighting", "matching") if m in ran), None
    )
    naive = ran.get("difference")
    if naive is not None and adjusted is not None and bal is not None:
        worst = int(np.argmax(np.abs(bal.before)))
        if not naive.covers(adjusted.value):
            analysis.notes.append(
                f"the naive difference in means ({naive.value:.4g}) is confounded: the groups "
                f"differ in their confounders (most in {bal.names[worst]}, standardized "
                f"difference {bal.before[worst]:+.2f}), and adjusting for them moves the "
                f"estimate to {adjusted.value:.4g} ({adjusted.title}), a bias of about "
                f"{naive.value - adjusted.value:+.3g} in the naive comparison"
            )
    two_stage = ran.get("iv")
    if two_stage is not None and adjusted is not None and not two_stage.covers(adjusted.value):
        analysis.notes.append(
            f"2SLS ({two_stage.value:.4g}) and adjustment ({adjusted.value:.4g}) disagree: if the "
            "instrument is valid, an unmeasured confounder biases the adjusted estimates"
        )
    for r in analysis.refutations:
        if r.survives is False:
            _warn(
                analysis,
                f"{r.method}: the estimate does not survive the {r.check} check ({r.detail})",
            )


def _warn(analysis: CausalAnalysis, message: str | None) -> None:
    if message:
        analysis.warnings.append(message)
        warnings.warn(message, CausalWarning, stacklevel=3)
