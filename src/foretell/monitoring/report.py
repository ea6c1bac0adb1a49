"""A monitoring report for people: a rich summary in the terminal, an HTML page with charts.

The charts are inline SVG drawn here (PSI per feature, the calibration curve), so the page is
one self-contained file with no scripts and nothing fetched.
"""

from __future__ import annotations

import html
from typing import Any

from rich.console import Console
from rich.table import Table


def print_report(report: dict[str, Any], console: Console) -> None:
    """The report as rich tables."""
    console.print(
        f"[bold]{report['model']}[/bold]: {report['predictions']:,} predictions logged in the "
        f"last {report['window_seconds'] / 3600:g} h, "
        f"{report['quality']['rows']:,} with ground truth"
    )
    quality = Table(title="live quality by version")
    versions = report["quality"]["versions"]
    metrics = sorted({m for s in versions.values() for m in s if m not in ("calibration",)})
    quality.add_column("version")
    for m in metrics:
        quality.add_column(m, justify="right")
    for version, scores in versions.items():
        quality.add_row(version, *[_fmt(scores.get(m)) for m in metrics])
    console.print(quality)
    drift = Table(title="drift against the training data")
    for column in ("feature", "psi", "p-value", "missing", "out of range", "drifted"):
        drift.add_column(column, justify="left" if column == "feature" else "right")
    for name, r in report["drift"]["features"].items():
        drift.add_row(
            name,
            _fmt(r.get("psi")),
            _fmt(r.get("p_value")),
            _fmt(r.get("missing_rate")),
            _fmt(r.get("out_of_range_rate")),
            "[red]yes[/red]" if r["drifted"] else "no",
        )
    console.print(drift)
    predicted = report["drift"].get("predictions", {}).get("outputs", {})
    if predicted:
        outputs = Table(title="prediction drift")
        for column in ("output", "psi", "p-value", "drifted"):
            outputs.add_column(column)
        for name, r in predicted.items():
            outputs.add_row(
                name,
                _fmt(r.get("psi")),
                _fmt(r.get("p_value")),
                "[red]yes[/red]" if r["drifted"] else "no",
            )
        console.print(outputs)
    for version, by_version in report.get("fairness", {}).get("versions", {}).items():
        fair = Table(title=f"fairness, version {version}")
        for column in ("attribute", "demographic parity diff.", "equalized odds diff."):
            fair.add_column(column)
        for name, r in by_version["attributes"].items():
            fair.add_row(
                name,
                _fmt(r.get("demographic_parity_difference")),
                _fmt(r.get("equalized_odds_difference")),
            )
        console.print(fair)
    for alert in report["alerts"]:
        console.print(f"[red]alert[/red] {alert['message']}", highlight=False)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _bars(values: dict[str, float], threshold: float) -> str:
    width, row = 560, 22
    top = max([threshold * 1.5, *values.values()], default=1.0) or 1.0
    parts = [
        f'<svg role="img" aria-label="PSI per feature" width="{width}" '
        f'height="{row * len(values) + 10}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for i, (name, value) in enumerate(values.items()):
        length = 300 * value / top
        colour = "#c0392b" if value > threshold else "#2e86c1"
        parts.append(
            f'<text x="0" y="{i * row + 15}" font-size="12">{html.escape(name)[:28]}</text>'
            f'<rect x="200" y="{i * row + 4}" width="{length:.1f}" height="14" fill="{colour}"/>'
            f'<text x="{205 + length:.1f}" y="{i * row + 15}" font-size="11">{value:.3f}</text>'
        )
    x = 200 + 300 * threshold / top
    parts.append(
        f'<line x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{row * len(values)}" '
        'stroke="#555" stroke-dasharray="4"/></svg>'
    )
    return "".join(parts)


def _calibration(curve: list[dict[str, Any]]) -> str:
    size = 240
    points = " ".join(
        f"{20 + c['predicted'] * size:.1f},{20 + (1 - c['observed']) * size:.1f}" for c in curve
    )
    return (
        f'<svg role="img" aria-label="calibration curve" width="{size + 40}" height="{size + 40}" '
        'xmlns="http://www.w3.org/2000/svg">'
        f'<rect x="20" y="20" width="{size}" height="{size}" fill="none" stroke="#999"/>'
        f'<line x1="20" y1="{20 + size}" x2="{20 + size}" y2="20" stroke="#bbb" '
        'stroke-dasharray="4"/>'
        f'<polyline points="{points}" fill="none" stroke="#2e86c1" stroke-width="2"/></svg>'
    )


def html_report(report: dict[str, Any], psi_threshold: float) -> str:
    """The report as one self-contained HTML page."""
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(name)}</td><td>{_fmt(r.get('psi'))}</td><td>{_fmt(r.get('p_value'))}"
        f"</td><td>{_fmt(r.get('missing_rate'))}</td><td>{_fmt(r.get('out_of_range_rate'))}"
        f"</td><td>{'yes' if r['drifted'] else 'no'}</td></tr>"
        for name, r in report["drift"]["features"].items()
    )
    psi = {n: r["psi"] for n, r in report["drift"]["features"].items() if "psi" in r}
    quality = "".join(
        f"<h3>version {esc(v)}</h3><table>"
        + "".join(
            f"<tr><th>{esc(m)}</th><td>{_fmt(x)}</td></tr>"
            for m, x in scores.items()
            if m != "calibration"
        )
        + "</table>"
        + (_calibration(scores["calibration"]["curve"]) if "calibration" in scores else "")
        for v, scores in report["quality"]["versions"].items()
    )
    alerts = "".join(f"<li>{esc(a['message'])}</li>" for a in report["alerts"]) or "<li>none</li>"
    predicted = "".join(
        f"<tr><td>{esc(n)}</td><td>{_fmt(r.get('psi'))}</td><td>{_fmt(r.get('p_value'))}</td>"
        f"<td>{'yes' if r['drifted'] else 'no'}</td></tr>"
        for n, r in report["drift"].get("predictions", {}).get("outputs", {}).items()
    )
    fairness = "".join(
        f"<h3>version {esc(v)}</h3><table><tr><th>attribute</th><th>demographic parity "
        "difference</th><th>equalized odds difference</th></tr>"
        + "".join(
            f"<tr><td>{esc(n)}</td><td>{_fmt(r.get('demographic_parity_difference'))}</td>"
            f"<td>{_fmt(r.get('equalized_odds_difference'))}</td></tr>"
            for n, r in by_version["attributes"].items()
        )
        + "</table>"
        for v, by_version in report.get("fairness", {}).get("versions", {}).items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>foretell monitoring: {esc(report["model"])}</title>
<style>body{{font-family:sans-serif;margin:1.5rem;max-width:60rem}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.25rem .5rem}}</style>
</head><body>
<h1>Monitoring of {esc(report["model"])}</h1>
<p>{report["predictions"]:,} predictions logged in the last
{report["window_seconds"] / 3600:g} h; {report["quality"]["rows"]:,} with ground truth.</p>
<h2>Alerts</h2><ul>{alerts}</ul>
<h2>Live quality</h2>{quality or "<p>No ground truth yet.</p>"}
<h2>Drift</h2>{_bars(psi, psi_threshold) if psi else ""}
<table><tr><th>feature</th><th>PSI</th><th>p-value</th><th>missing</th><th>out of range</th>
<th>drifted</th></tr>{rows}</table>
<h2>Prediction drift</h2><table><tr><th>output</th><th>PSI</th><th>p-value</th><th>drifted</th>
</tr>{predicted}</table>
<h2>Fairness</h2>{fairness or "<p>No sensitive attribute is named in the spec.</p>"}
</body></html>
"""
