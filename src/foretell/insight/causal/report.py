"""The report of a causal analysis: tables in the terminal, and one self-contained HTML file with
plots (effect per method with its interval, propensity overlap, covariate balance) drawn as
inline SVG by matplotlib."""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from foretell.insight.causal.analysis import CausalAnalysis
from foretell.insight.causal.balance import SMD_LIMIT

#: The method whose numbers lead: doubly robust when it ran, else the first adjusted one.
PREFERRED = ("aipw", "regression", "weighting", "matching", "iv", "difference")


def _n(value: float) -> str:
    return f"{value:.4g}"


_SHORT = {"placebo treatment": "placebo", "random common cause": "cause", "data subsets": "subsets"}


def _refuted(analysis: CausalAnalysis, method: str) -> str:
    marks = {True: "ok", False: "FAILS", None: "n/a"}
    found = analysis.refutations_of(method)
    return ", ".join(f"{_SHORT.get(r.check, r.check)} {marks[r.survives]}" for r in found) or "-"


def print_report(analysis: CausalAnalysis, console: Console) -> None:
    """Prints the analysis as tables and short paragraphs."""
    q = analysis.question
    console.print(Text(analysis.title, style="bold"))
    treated = f", {analysis.treated:,} treated" if analysis.treated else ""
    console.print(Text(f"{analysis.rows:,} rows{treated}"))
    console.print(Text(f"Identification: {analysis.identification.explanation}"))
    level = analysis.estimates[0].level if analysis.estimates else 0.95
    table = Table(title=f"Estimates of the {q.effect.upper()}")
    for column in ("method", "estimate", f"{level:.0%} interval", "from", "refutations"):
        table.add_column(column, justify="right" if column == "estimate" else "left")
    for e in analysis.estimates:
        source = "analytic" if e.interval == "analytic" else f"bootstrap ({e.resamples})"
        table.add_row(
            Text(e.title),
            _n(e.value),
            f"{_n(e.low)} to {_n(e.high)}",
            source,
            Text(_refuted(analysis, e.method)),
        )
    console.print(table)
    if analysis.first_stage is not None:
        fs = analysis.first_stage
        console.print(
            Text(
                f"First stage: instrument coefficient {_n(fs.coefficient)}, "
                f"F = {fs.f_statistic:.1f}, partial R² = {fs.partial_r2:.3f} "
                "(F below 10 is a weak instrument)"
            )
        )
    if analysis.balance is not None:
        balance = Table(
            title="Balance: standardized mean differences",
            caption=f"|d| above {SMD_LIMIT}: still imbalanced",
        )
        for column in ("confounder", "before", "after matching", "after weighting"):
            balance.add_column(column, justify="left" if column == "confounder" else "right")
        for name, before, matched, weighted in analysis.balance.rows():
            balance.add_row(Text(name), f"{before:+.3f}", f"{matched:+.3f}", f"{weighted:+.3f}")
        console.print(balance)
    if analysis.overlap is not None:
        ov = analysis.overlap
        console.print(
            Text(
                f"Overlap: propensity of the treated {ov.treated[0]:.3f} to "
                f"{ov.treated[1]:.3f}, of the controls {ov.control[0]:.3f} to {ov.control[1]:.3f}; "
                f"{ov.outside_support:.1%} of rows outside the common range, {ov.extreme:.1%} "
                "below 0.05 or above 0.95"
            )
        )
    failed = [r for r in analysis.refutations if r.survives is not True]
    if failed:
        console.print(Text("Refutations that failed or do not apply:"))
        for r in failed:
            console.print(Text(f"  {r.method}, {r.check}: {r.verdict}: {r.detail}"))
    for note in analysis.notes:
        console.print(Text(f"Note: {note}"))
    for warning in analysis.warnings:
        console.print(Text(f"Warning: {warning}", style="yellow"))


def write_html(analysis: CausalAnalysis, path: str | Path) -> Path:
    """Writes the report as one HTML file with inline SVG plots; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(analysis), encoding="utf-8")
    return path


def render_html(analysis: CausalAnalysis) -> str:
    from foretell.insight.causal.methods import require_extra

    require_extra("matplotlib", "the plots of the causal report")
    e = html.escape
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{e(analysis.title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{e(analysis.title)}</h1>",
        f"<p>{analysis.rows:,} rows"
        + (f", {analysis.treated:,} treated" if analysis.treated else "")
        + "</p>",
        "<h2>Identification</h2>",
        f"<p>{e(analysis.identification.explanation)}</p>",
    ]
    if analysis.warnings:
        parts.append("<h2>Warnings</h2><ul class='warn'>")
        parts.extend(f"<li>{e(w)}</li>" for w in analysis.warnings)
        parts.append("</ul>")
    parts.append("<h2>Estimates</h2>")
    parts.append(_estimates_table(analysis))
    if analysis.estimates:
        parts.append(f"<figure>{_svg(_effects_plot(analysis))}</figure>")
    for note in analysis.notes:
        parts.append(f"<p class='note'>{e(note)}</p>")
    if analysis.refutations:
        parts.append("<h2>Refutations</h2>")
        parts.append(
            _table(
                ["method", "check", "verdict", "detail"],
                [[r.method, r.check, r.verdict, r.detail] for r in analysis.refutations],
            )
        )
    if analysis.first_stage is not None:
        fs = analysis.first_stage
        parts.append("<h2>Instrument</h2>")
        parts.append(
            f"<p>First stage: coefficient {_n(fs.coefficient)}, F = {fs.f_statistic:.1f}, "
            f"partial R² = {fs.partial_r2:.3f}. An F below 10 marks a weak instrument.</p>"
        )
    if analysis.overlap is not None and analysis.propensity is not None:
        ov = analysis.overlap
        parts.append("<h2>Overlap</h2>")
        parts.append(
            f"<p>Propensity of the treated {ov.treated[0]:.3f} to {ov.treated[1]:.3f}, of the "
            f"controls {ov.control[0]:.3f} to {ov.control[1]:.3f}; {ov.outside_support:.1%} of "
            f"rows outside the common range; {ov.extreme:.1%} below 0.05 or above 0.95.</p>"
        )
        parts.append(f"<figure>{_svg(_overlap_plot(analysis))}</figure>")
    if analysis.balance is not None:
        parts.append("<h2>Balance</h2>")
        parts.append(
            _table(
                ["confounder", "before", "after matching", "after weighting"],
                [
                    [n, f"{b:+.3f}", f"{m:+.3f}", f"{w:+.3f}"]
                    for n, b, m, w in analysis.balance.rows()
                ],
            )
        )
        parts.append(f"<figure>{_svg(_balance_plot(analysis))}</figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _estimates_table(analysis: CausalAnalysis) -> str:
    rows = [
        [
            est.title,
            _n(est.value),
            f"{_n(est.low)} to {_n(est.high)} ({est.level:.0%})",
            est.describe_interval(),
            _refuted(analysis, est.method),
        ]
        for est in analysis.estimates
    ]
    return _table(["method", "estimate", "interval", "interval from", "refutations"], rows)


def _table(header: list[str], rows: list[list[str]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(7, height), layout="constrained")


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # inline: no XML declaration or doctype


def _effects_plot(analysis: CausalAnalysis) -> Any:
    estimates = analysis.estimates[::-1]
    figure = _figure(0.5 * len(estimates) + 1.2)
    axes = figure.add_subplot()
    y = np.arange(len(estimates))
    values = np.array([e.value for e in estimates])
    errors = np.array([[e.value - e.low for e in estimates], [e.high - e.value for e in estimates]])
    colours = ["#999999" if e.method == "difference" else "#1f5fa8" for e in estimates]
    for i, colour in enumerate(colours):
        axes.errorbar(values[i], y[i], xerr=errors[:, i : i + 1], fmt="o", color=colour, capsize=4)
    axes.axvline(0, color="black", linewidth=0.8)
    axes.set_yticks(y, [e.title for e in estimates])
    axes.set_xlabel(
        f"{analysis.question.effect.upper()} of {analysis.question.treatment} on "
        f"{analysis.question.outcome}"
    )
    axes.set_title("Effect by method, with intervals")
    return figure


def _overlap_plot(analysis: CausalAnalysis) -> Any:
    assert analysis.propensity is not None and analysis.treatment is not None
    figure = _figure(3.0)
    axes = figure.add_subplot()
    bins = np.linspace(0, 1, 41)
    for value, label, colour in ((1, "treated", "#c0392b"), (0, "control", "#1f5fa8")):
        scores = analysis.propensity[analysis.treatment == value]
        axes.hist(scores, bins=bins, alpha=0.5, density=True, label=label, color=colour)
    axes.set_xlabel("propensity score P(treated | confounders)")
    axes.set_ylabel("density")
    axes.set_title("Overlap of the propensity scores")
    axes.legend()
    return figure


def _balance_plot(analysis: CausalAnalysis) -> Any:
    assert analysis.balance is not None
    bal = analysis.balance
    figure = _figure(0.35 * len(bal.names) + 1.4)
    axes = figure.add_subplot()
    y = np.arange(len(bal.names))
    axes.scatter(np.abs(bal.before), y, marker="o", label="before", color="#999999")
    axes.scatter(np.abs(bal.matched), y, marker="s", label="after matching", color="#c0392b")
    axes.scatter(np.abs(bal.weighted), y, marker="^", label="after weighting", color="#1f5fa8")
    axes.axvline(SMD_LIMIT, color="black", linestyle="--", linewidth=0.8)
    axes.set_yticks(y, list(bal.names))
    axes.set_ylim(-0.6, len(bal.names) - 0.4)
    axes.set_xlabel("absolute standardized mean difference")
    axes.set_title("Covariate balance")
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3, frameon=False)
    return figure


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3rem 0.7rem; text-align: left; }
figure { margin: 1rem 0; } figure svg { max-width: 100%; height: auto; }
.warn li { color: #9a5b00; } .note { background: #f3f6fa; padding: 0.5rem 0.8rem; }
"""
