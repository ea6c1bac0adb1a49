"""Charts for the web pages, drawn on the server as inline SVG: no JavaScript, no library.

Each chart is an ``<svg role="img">`` with a ``<title>`` and a ``<desc>`` that reads its data
out, so a screen reader gets the numbers a sighted reader gets from the picture. The view box
is narrow (360 units) so text stays legible when a phone scales the chart down.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence

from markupsafe import Markup, escape

WIDTH = 360
#: Colour-blind-safe series colours (Okabe-Ito), in order of use.
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9")
_ROW = 22
_LABEL = 150
_VALUE = 60
_ids = itertools.count()

Format = Callable[[float], str]


def number(value: float) -> str:
    """A number in at most four significant digits; large ones whole, with separators."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def percent(value: float) -> str:
    return f"{value * 100:.1f} %"


def _svg(height: float, title: str, desc: str, body: list[str]) -> Markup:
    ident = f"chart{next(_ids)}"
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {height:.0f}" role="img" '
        f'aria-labelledby="{ident}t {ident}d" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="{ident}t">{escape(title)}</title><desc id="{ident}d">{escape(desc)}</desc>'
        + "".join(body)
        + "</svg>"
    )


def _short(text: str, limit: int = 21) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bar_chart(
    values: Mapping[str, float],
    title: str,
    fmt: Format = number,
    highlight: Sequence[str] = (),
    line: tuple[float, str] | None = None,
    scale: tuple[float, float] | None = None,
) -> Markup:
    """Horizontal bars, one per key, in the given order; bars below zero grow to the left.

    ``highlight`` keys are drawn in the accent colour; ``line`` is a marked value (a
    threshold) with its label; ``scale`` fixes the axis (e.g. ``(0, 1)`` for probabilities).
    """
    low, high = scale or (min(0.0, *values.values()), max(0.0, *values.values()))
    if line is not None:
        low, high = min(low, line[0]), max(high, line[0])
    span = (high - low) or 1.0
    left, right = _LABEL + 6, WIDTH - _VALUE

    def x(v: float) -> float:
        return left + (v - low) / span * (right - left)

    zero = x(min(max(0.0, low), high))
    body = []
    for i, (key, value) in enumerate(values.items()):
        y = 4 + i * _ROW
        start, end = sorted((zero, x(value)))
        colour = PALETTE[1] if key in highlight else PALETTE[0]
        if value < 0 and not highlight:
            colour = PALETTE[1]
        body.append(
            f"<g><title>{escape(key)}: {escape(fmt(value))}</title>"
            f'<text x="{_LABEL}" y="{y + 14}" text-anchor="end">{escape(_short(key))}</text>'
            f'<rect x="{start:.1f}" y="{y + 3}" width="{max(end - start, 1):.1f}" height="14" '
            f'fill="{colour}"/>'
            f'<text x="{WIDTH - 2}" y="{y + 14}" text-anchor="end">{escape(fmt(value))}</text></g>'
        )
    height = 8 + len(values) * _ROW
    body.append(f'<line x1="{zero:.1f}" y1="2" x2="{zero:.1f}" y2="{height - 2}" class="axis"/>')
    if line is not None:
        at = x(line[0])
        anchor = "end" if at > WIDTH / 2 else "start"
        body.append(
            f'<line x1="{at:.1f}" y1="0" x2="{at:.1f}" y2="{height}" class="limit"/>'
            f'<text x="{at:.1f}" y="{height + 12}" text-anchor="{anchor}" class="note">'
            f"{escape(line[1])}</text>"
        )
        height += 16
    desc = "; ".join(f"{k}: {fmt(v)}" for k, v in values.items())
    return _svg(height, title, desc, body)


def interval_chart(low: float, high: float, point: float | None, title: str) -> Markup:
    """An interval drawn as a band on a number line, with the point prediction as a dot."""
    values = [low, high] + ([point] if point is not None else [])
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.15 or abs(hi) * 0.1 or 1.0
    lo, hi = lo - pad, hi + pad

    def x(v: float) -> float:
        return 10 + (v - lo) / (hi - lo) * (WIDTH - 20)

    body = [
        f'<line x1="10" y1="20" x2="{WIDTH - 10}" y2="20" class="axis"/>',
        f'<rect x="{x(low):.1f}" y="12" width="{max(x(high) - x(low), 2):.1f}" height="16" '
        f'fill="{PALETTE[0]}" opacity="0.35"/>',
        f'<text x="{x(low):.1f}" y="44" text-anchor="middle">{escape(number(low))}</text>',
        f'<text x="{x(high):.1f}" y="44" text-anchor="middle">{escape(number(high))}</text>',
    ]
    if point is not None:
        body.append(f'<circle cx="{x(point):.1f}" cy="20" r="5" fill="{PALETTE[1]}"/>')
    desc = f"from {number(low)} to {number(high)}" + (
        f", prediction {number(point)}" if point is not None else ""
    )
    return _svg(50, title, desc, body)


Series = Sequence[tuple[float, float | None]]


def line_chart(series: Mapping[str, Series], title: str, fmt: Format = number) -> Markup:
    """Lines over time: ``series`` maps a name to (epoch seconds, value or None) points; a
    None leaves a gap. The y axis starts at zero."""
    points = [(t, v) for s in series.values() for t, v in s if v is not None]
    if not points:
        return _svg(40, title, "no data yet", ['<text x="10" y="24">no data yet</text>'])
    t0, t1 = min(p[0] for p in points), max(p[0] for p in points)
    top = max(p[1] for p in points) or 1.0
    left, right, upper, lower = 58, WIDTH - 8, 24, 150

    def xy(t: float, v: float) -> str:
        x = left + ((t - t0) / (t1 - t0) if t1 > t0 else 0.5) * (right - left)
        return f"{x:.1f},{lower - v / top * (lower - upper):.1f}"

    body = [
        f'<line x1="{left}" y1="{lower}" x2="{right}" y2="{lower}" class="axis"/>',
        f'<line x1="{left}" y1="{upper}" x2="{left}" y2="{lower}" class="axis"/>',
        f'<text x="{left - 4}" y="{upper + 4}" text-anchor="end">{escape(fmt(top))}</text>',
        f'<text x="{left - 4}" y="{lower}" text-anchor="end">{escape(fmt(0.0))}</text>',
        f'<text x="{left}" y="{lower + 14}">{_clock(t0)}</text>',
        f'<text x="{right}" y="{lower + 14}" text-anchor="end">{_clock(t1)}</text>',
    ]
    latest = []
    for i, (name, data) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        body.append(
            f'<rect x="{left + i * 90}" y="4" width="10" height="10" fill="{colour}"/>'
            f'<text x="{left + 14 + i * 90}" y="13">{escape(_short(name, 12))}</text>'
        )
        for run in _runs(data):
            coords = " ".join(xy(t, v) for t, v in run)
            body.append(f'<polyline points="{coords}" fill="none" stroke="{colour}"/>')
            if len(run) == 1 or len(data) <= 30:
                body.extend(
                    f'<circle cx="{c.split(",")[0]}" cy="{c.split(",")[1]}" r="2.5" '
                    f'fill="{colour}"/>'
                    for c in coords.split()
                )
        known = [v for _, v in data if v is not None]
        if known:
            latest.append(f"{name} {fmt(known[-1])}")
    desc = f"{len(points)} points from {_clock(t0)} to {_clock(t1)}; latest: " + ", ".join(latest)
    return _svg(lower + 20, title, desc, body)


def _runs(data: Series) -> list[list[tuple[float, float]]]:
    """The unbroken stretches of a series."""
    runs: list[list[tuple[float, float]]] = [[]]
    for t, v in data:
        if v is None:
            runs.append([])
        else:
            runs[-1].append((t, v))
    return [r for r in runs if r]


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))
