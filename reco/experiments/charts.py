"""Chart geometry for the HTML report: scales, nice ticks, SVG path data. The SVG elements themselves are
written by the Jinja2 templates (templates/charts.html.j2); nothing here knows about HTML.

Axis rules: dates are labelled "Jan 05" at most ~7 times; rates and lifts are labelled in %. The
cumulative-lift chart takes its y range from the lift estimates and the latest intervals, not from the
early days' intervals (the always-valid interval is +-1,000 % on day 1): those are clipped to the plot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date
from typing import Any

PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round tick values covering [lo, hi].

    >>> nice_ticks(-0.03, 0.12)
    [-0.05, 0.0, 0.05, 0.1]
    """
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else [0.0]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw)
    first = math.floor(lo / step) * step
    out, v = [], first
    while v <= hi + step * 0.5 and len(out) < 4 * n:
        out.append(round(v, 12))
        v += step
    return out


def pct(v: float | None, digits: int = 1, sign: bool = True) -> str:
    """0.0523 -> '+5.2%'; None -> 'n/a'.

    >>> pct(0.0523), pct(-0.1, 0), pct(0.1, 0, sign=False), pct(0.0, 0)
    ('+5.2%', '-10%', '10%', '0%')
    """
    if v is None or not math.isfinite(v):
        return "n/a"
    if round(v * 100, digits) == 0:
        return f"{0:.{digits}f}%"
    return f"{v:+.{digits}%}" if sign else f"{v:.{digits}%}"


class Scale:
    """Linear map of a data interval onto a pixel interval (clamped a little outside the plot)."""

    def __init__(self, d0: float, d1: float, p0: float, p1: float) -> None:
        self.d0, self.d1, self.p0, self.p1 = d0, d1 if d1 != d0 else d0 + 1.0, p0, p1

    def __call__(self, v: float) -> float:
        x = self.p0 + (v - self.d0) * (self.p1 - self.p0) / (self.d1 - self.d0)
        lo, hi = sorted((self.p0, self.p1))
        return round(min(max(x, lo - 400), hi + 400), 1)


def _path(xs: Sequence[float], ys: Sequence[float | None]) -> str:
    """SVG path data through the points, broken where y is missing."""
    out, pen = [], False
    for x, y in zip(xs, ys, strict=True):
        if y is None or not math.isfinite(y):
            pen = False
            continue
        out.append(f"{'L' if pen else 'M'}{x:.1f},{y:.1f}")
        pen = True
    return " ".join(out)


def _band(xs: Sequence[float], lo: Sequence[float | None], hi: Sequence[float | None]) -> list[str]:
    """Closed polygons between lo and hi over each run of days where both exist."""
    runs, cur = [], []
    for x, a, b in zip(xs, lo, hi, strict=True):
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
            if cur:
                runs.append(cur)
            cur = []
        else:
            cur.append((x, a, b))
    if cur:
        runs.append(cur)
    return [
        " ".join(
            [f"{'M' if i == 0 else 'L'}{x:.1f},{b:.1f}" for i, (x, _, b) in enumerate(r)]
            + [f"L{x:.1f},{a:.1f}" for x, a, _ in reversed(r)]
        )
        + " Z"
        for r in runs
    ]


def _date_ticks(days: list[date], sx: Scale, max_ticks: int = 7) -> list[dict[str, Any]]:
    if not days:
        return []
    step = max(1, math.ceil(len(days) / max_ticks))
    return [{"x": sx(i), "label": d.strftime("%b %d")} for i, d in enumerate(days) if i % step == 0]


def time_chart(
    dates: list[date],
    series: list[dict[str, Any]],
    *,
    y_fit: Sequence[float],
    width: int = 720,
    height: int = 260,
    zero_line: bool = True,
) -> dict[str, Any]:
    """Geometry of a chart over days. Each series: {"name", "y": [..], optional "lo"/"hi" (a shaded band),
    optional "lo2"/"hi2" (dashed lines)}; values None where missing. The y range covers `y_fit` (and 0 when
    `zero_line`), padded 15 %; anything outside is clipped by the template."""
    m = {"l": 58, "r": 12, "t": 12, "b": 30}
    fit = [v for v in y_fit if v is not None and math.isfinite(v)] + ([0.0] if zero_line else [])
    lo, hi = (min(fit), max(fit)) if fit else (-0.1, 0.1)
    pad = (hi - lo) * 0.15 or max(abs(hi), 0.01) * 0.5
    ticks = nice_ticks(lo - pad, hi + pad)
    y0, y1 = min(ticks[0], lo - pad), max(ticks[-1], hi + pad)
    sx = Scale(0, max(len(dates) - 1, 1), m["l"], width - m["r"])
    sy = Scale(y0, y1, height - m["b"], m["t"])
    xs = [sx(i) for i in range(len(dates))]
    out = []
    for k, s in enumerate(series):
        y = lambda vals: [None if v is None else sy(v) for v in vals]  # noqa: E731
        item = {
            "name": s["name"],
            "color": PALETTE[k % len(PALETTE)],
            "path": _path(xs, y(s["y"])),
            "dots": [{"x": x, "y": v} for x, v in zip(xs, y(s["y"]), strict=True) if v is not None],
        }
        if "lo" in s:
            item["bands"] = _band(xs, y(s["lo"]), y(s["hi"]))
        if "lo2" in s:
            item["lo2"], item["hi2"] = _path(xs, y(s["lo2"])), _path(xs, y(s["hi2"]))
        out.append(item)
    return {
        "width": width,
        "height": height,
        "plot": {"x": m["l"], "y": m["t"], "w": width - m["l"] - m["r"], "h": height - m["t"] - m["b"]},
        "series": out,
        "x_ticks": _date_ticks(dates, sx),
        "y_ticks": [
            {"y": sy(t), "label": pct(t, 0 if max(abs(x) for x in ticks) >= 0.1 else 1, sign=zero_line)}
            for t in ticks
            if y0 <= t <= y1
        ],
        "zero": sy(0.0) if zero_line and y0 <= 0 <= y1 else None,
    }


def interval_rows(rows: list[dict[str, Any]], width: int = 200, height: int = 22) -> dict[str, Any]:
    """Geometry of a column of small interval plots sharing one x scale (relative lift in %): each row
    {"lo", "est", "hi"} gets x positions; the shared domain covers every interval and 0, at most -100 %
    .. +200 % (a wider interval is drawn to the edge with an arrow)."""
    vals = [v for r in rows for v in (r.get("lo"), r.get("est"), r.get("hi")) if v is not None and math.isfinite(v)]
    lo, hi = (min([*vals, 0.0]), max([*vals, 0.0])) if vals else (-0.1, 0.1)
    lo, hi = max(lo, -1.0), min(hi, 2.0)
    pad = (hi - lo) * 0.08 or 0.01
    sx = Scale(lo - pad, hi + pad, 8, width - 8)
    out = []
    for r in rows:
        ok = all(r.get(k) is not None and math.isfinite(r[k]) for k in ("lo", "est", "hi"))
        g = {"ok": ok, "zero": sx(0.0), "width": width, "height": height, "mid": height / 2}
        if ok:
            g |= {
                "x_lo": max(sx(r["lo"]), 2),
                "x_hi": min(sx(r["hi"]), width - 2),
                "x_est": sx(r["est"]),
                "clipped_lo": r["lo"] < lo,
                "clipped_hi": r["hi"] > hi,
                "color": "#2a9d55" if r["lo"] > 0 else "#c44e52" if r["hi"] < 0 else "#777",
            }
        out.append(g)
    ticks = [{"x": sx(t), "label": pct(t, 0)} for t in nice_ticks(lo, hi, 4) if lo - pad <= t <= hi + pad]
    return {"rows": out, "ticks": ticks, "width": width}
