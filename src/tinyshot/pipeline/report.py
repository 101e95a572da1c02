"""A single self-contained `report.html`: images are embedded as base64 PNG, curves as inline SVG.

No plotting library is needed; the report opens offline in any browser.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from tinyshot.utils.io import atomic_write

_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
h3{font-size:1.05em;margin-bottom:.3em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.row{display:flex;flex-wrap:wrap;gap:3px;align-items:center;margin:.2em 0}
.row img{image-rendering:pixelated;border:1px solid #eee}
.label{width:9em;font-size:.85em;color:#555}.note{color:#666;font-size:.9em}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.85em}
"""


def image_to_data_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_row(label: str, images: Sequence[Image.Image], size: int = 64) -> str:
    cells = "".join(
        f'<img src="{image_to_data_uri(im)}" width="{size}" height="{size}" alt="">'
        for im in images
    )
    return f'<div class="row"><span class="label">{html.escape(label)}</span>{cells}</div>'


def table_html(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _nice_step(raw: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is >= raw."""
    import math

    base = 10 ** math.floor(math.log10(raw))
    return next(m * base for m in (1, 2, 2.5, 5, 10) if m * base >= raw * (1 - 1e-9))


def line_chart_svg(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    *,
    width: int = 640,
    height: int = 280,
    x_label: str = "iteration",
    y_label: str = "accuracy",
    y_range: tuple[float, float] | None = None,
) -> str:
    """series: name -> (xs, ys). Axes from 0 (unless data go below it or y_range says
    otherwise), a few ticks, and a legend under the plot so long names are not cut off."""
    pts = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys)]
    if not pts:
        return '<p class="note">(no data)</p>'
    x0, x1 = min(0.0, min(p[0] for p in pts)), max(p[0] for p in pts)
    y0, y1 = y_range or (min(0.0, min(p[1] for p in pts)), max(p[1] for p in pts))
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1e-3
    if y_range is None:  # round the top up so the 4 intervals are round numbers
        y1 = y0 + 4 * _nice_step((y1 - y0) / 4)
    ml, mr, mt, mb = 56, 16, 10, 35
    pw, ph = width - ml - mr, height - mt - mb
    legend_top = height + 4
    total_height = legend_top + 16 * len(series)

    def sx(x: float) -> float:
        return ml + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return mt + (1 - (y - y0) / (y1 - y0)) * ph

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{total_height}" '
        'font-size="11">'
    ]
    parts.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        parts.append(
            f'<line x1="{ml}" x2="{ml + pw}" y1="{sy(yv):.1f}" y2="{sy(yv):.1f}" stroke="#eee"/>'
        )
        parts.append(f'<text x="{ml - 4}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:.3g}</text>')
        xv = x0 + (x1 - x0) * i / 4
        parts.append(
            f'<text x="{sx(xv):.1f}" y="{mt + ph + 14}" text-anchor="middle">{xv:.4g}</text>'
        )
    parts.append(
        f'<text x="{ml + pw / 2}" y="{height - 4}" text-anchor="middle">{html.escape(x_label)}</text>'
    )
    parts.append(
        f'<text x="12" y="{mt + ph / 2}" text-anchor="middle" transform="rotate(-90 12 {mt + ph / 2})">'
        f"{html.escape(y_label)}</text>"
    )
    for i, (name, (xs, ys)) in enumerate(series.items()):
        color = _PALETTE[i % len(_PALETTE)]
        poly = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{poly}"/>')
        ly = legend_top + 8 + 16 * i
        parts.append(
            f'<line x1="{ml}" x2="{ml + 18}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"/>'
        )
        parts.append(f'<text x="{ml + 24}" y="{ly + 4}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


@dataclass
class Report:
    """Accumulates HTML sections; `write` produces one self-contained file."""

    title: str
    sections: list[str] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.sections.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str, note: bool = False) -> None:
        cls = ' class="note"' if note else ""
        self.sections.append(f"<p{cls}>{html.escape(text)}</p>")

    def raw(self, fragment: str) -> None:
        self.sections.append(fragment)

    def images(self, label: str, images: Sequence[Image.Image], size: int = 64) -> None:
        self.sections.append(image_row(label, images, size))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.sections.append(table_html(headers, rows))

    def chart(self, series: dict[str, tuple[Sequence[float], Sequence[float]]], **kw) -> None:
        self.sections.append(line_chart_svg(series, **kw))

    def code(self, text: str) -> None:
        self.sections.append(f"<pre>{html.escape(text)}</pre>")

    def render(self) -> str:
        body = "\n".join(self.sections)
        return (
            f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(self.title)}</title>'
            f"<style>{_CSS}</style></head><body><h1>{html.escape(self.title)}</h1>\n{body}\n</body></html>"
        )

    def write(self, path: str | Path) -> Path:
        text = self.render()
        return atomic_write(path, lambda p: p.write_text(text))
