"""Causal inference: the effect of a treatment on an outcome from experiments or observational
data, with refutation checks and a report, and uplift models served like any other.

>>> from foretell.insight import causal
>>> analysis = causal.estimate_effect("rows.parquet", treatment="T", outcome="Y",
...                                   confounders=["X1", "X2"])  # doctest: +SKIP
>>> analysis.estimate("aipw").value  # doctest: +SKIP
>>> causal.write_html(analysis, "effect.html")  # doctest: +SKIP

The modules follow the analysis: ``question`` (columns and their checks), ``graph``
(identification), ``balance`` (propensity, overlap, balance), ``methods`` and ``iv`` (the
estimators), ``estimates`` (intervals), ``refute``, ``analysis`` (all of it together),
``report``; ``uplift`` trains the served CATE models.
"""

from __future__ import annotations

from foretell.insight.causal.analysis import CausalAnalysis, CausalWarning, estimate_effect
from foretell.insight.causal.estimates import Estimate
from foretell.insight.causal.graph import CausalGraph, Identification, identify, read_graph
from foretell.insight.causal.methods import METHODS
from foretell.insight.causal.refute import Refutation
from foretell.insight.causal.report import print_report, write_html
from foretell.insight.causal.uplift import train_uplift

__all__ = [
    "METHODS",
    "CausalAnalysis",
    "CausalGraph",
    "CausalWarning",
    "Estimate",
    "Identification",
    "Refutation",
    "estimate_effect",
    "identify",
    "print_report",
    "read_graph",
    "train_uplift",
    "write_html",
]
