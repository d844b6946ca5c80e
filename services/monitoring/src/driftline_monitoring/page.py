"""The HTML page of GET /: PSI per feature and rolling accuracy over the recent checks, as inline
SVG (no JavaScript), and the latest drift reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#393b79",
    "#637939",
    "#8c6d31",
    "#843c39",
)
W, H, PAD_L, PAD_B, PAD_T, PAD_R = 760, 260, 48, 28, 12, 170


def line_chart(
    series: Mapping[str, Sequence[float | None]], *, threshold: float | None, title: str, y_label: str
) -> str:
    """Lines over check index; ``threshold`` as a dashed red line."""
    n = max((len(v) for v in series.values()), default=0)
    values = [x for v in series.values() for x in v if x is not None]
    if n < 2 or not values:
        return f"<p class='empty'>{escape(title)}: not enough checks yet.</p>"
    top = max([*values, threshold or 0.0]) * 1.1 or 1.0
    bottom = min(0.0, *values)
    span = top - bottom or 1.0
    plot_w, plot_h = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def xy(i: int, y: float) -> str:
        return f"{PAD_L + plot_w * i / (n - 1):.1f},{PAD_T + plot_h * (1 - (y - bottom) / span):.1f}"

    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{H}' role='img' aria-label='{escape(title)}'>",
        f"<rect x='{PAD_L}' y='{PAD_T}' width='{plot_w}' height='{plot_h}' fill='#fafafa' stroke='#ccc'/>",
        f"<text x='4' y='{PAD_T + 10}' font-size='11'>{top:.3g}</text>",
        f"<text x='4' y='{PAD_T + plot_h}' font-size='11'>{bottom:.3g}</text>",
        f"<text x='{PAD_L}' y='{H - 8}' font-size='11'>older checks → newer ({escape(y_label)})</text>",
    ]
    if threshold is not None:
        left, right = xy(0, threshold), xy(n - 1, threshold)
        parts.append(
            f"<polyline points='{left} {right}' fill='none' stroke='#d00' stroke-dasharray='6 4' stroke-width='1.5'/>"
        )
    for k, (name, ys) in enumerate(sorted(series.items())):
        colour = PALETTE[k % len(PALETTE)]
        offset = n - len(ys)
        points = " ".join(xy(offset + i, y) for i, y in enumerate(ys) if y is not None)
        parts.append(f"<polyline points='{points}' fill='none' stroke='{colour}' stroke-width='1.5'/>")
        ly = PAD_T + 12 + 14 * k
        parts.append(f"<rect x='{W - PAD_R + 10}' y='{ly - 8}' width='10' height='3' fill='{colour}'/>")
        parts.append(f"<text x='{W - PAD_R + 24}' y='{ly - 3}' font-size='11'>{escape(name)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _psi_series(summaries: Sequence[dict[str, Any]]) -> dict[str, list[float | None]]:
    names = sorted({f for s in summaries for f in s["features"]})
    series = {f: [s["features"].get(f, {}).get("psi") for s in summaries] for f in names}
    series["(score)"] = [(s.get("score") or {}).get("psi") for s in summaries]
    if all(x is None for x in series["(score)"]):
        del series["(score)"]
    return series


def _reports_table(reports: Sequence[dict[str, Any]]) -> str:
    if not reports:
        return "<p class='empty'>No drift reported.</p>"
    rows = "".join(
        "<tr>"
        f"<td>{escape(str(r['detected_at']))}</td><td>{escape(r['model_name'])} v{r['model_version']}</td>"
        f"<td>{escape(r['kind'])}</td><td>{escape(r['method'])}</td>"
        f"<td>{r['statistic']:.4g} &gt; {r['threshold']:.4g}</td>"
        f"<td>{escape(', '.join(r['features']) or '-')}</td>"
        f"<td>{escape(str(r['resolution'] or 'open'))}</td><td><code>{escape(r['episode_id'])}</code></td>"
        "</tr>"
        for r in reports
    )
    return (
        "<table><tr><th>detected</th><th>model</th><th>kind</th><th>method</th><th>statistic</th>"
        f"<th>features</th><th>state</th><th>episode</th></tr>{rows}</table>"
    )


def render(
    models: Sequence[tuple[str, Sequence[dict[str, Any]]]],
    reports: Sequence[dict[str, Any]],
    *,
    psi_threshold: float,
    accuracy_drop: float,
) -> str:
    sections = []
    for name, summaries in models:
        psi = line_chart(_psi_series(summaries), threshold=psi_threshold, title=f"PSI of {name}", y_label="PSI")
        accuracy = [(s["performance"] or {}).get("accuracy") for s in summaries]
        reference = next(
            (p["reference_accuracy"] for s in summaries if (p := s["performance"] or {}).get("reference_accuracy")),
            None,
        )
        acc = line_chart(
            {"rolling accuracy": accuracy},
            threshold=None if reference is None else reference - accuracy_drop,
            title=f"Accuracy of {name}",
            y_label="rolling accuracy; dashed: alarm level",
        )
        version = summaries[-1]["model_version"] if summaries else "?"
        sections.append(
            f"<h2>{escape(name)} <small>v{version}, last {len(summaries)} checks</small></h2>"
            f"<h3>PSI per feature (dashed: threshold {psi_threshold})</h3>{psi}<h3>Rolling accuracy</h3>{acc}"
        )
    body = "".join(sections) or "<p class='empty'>No checks yet: no champion, or not enough records.</p>"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Driftline monitoring</title>"
        "<style>body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}"
        "td,th{border:1px solid #ddd;padding:3px 6px;font-size:13px}.empty{color:#888}</style></head><body>"
        "<h1>Driftline monitoring</h1>"
        f"{body}<h2>Drift reports</h2>{_reports_table(reports)}"
        "<p><a href='/v1/drift'>/v1/drift</a> · <a href='/v1/reports'>/v1/reports</a> · <a href='/docs'>API</a></p>"
        "</body></html>"
    )
