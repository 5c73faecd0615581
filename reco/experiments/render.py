"""The HTML report: a view of the report dict rendered by Jinja2 templates (templates/*.html.j2) with
inline SVG charts; self-contained (no script, no network), so it opens anywhere and archives as one file.
"""

from __future__ import annotations

import math
from datetime import date
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from reco.experiments import charts as C
from reco.experiments.analysis import LABELS

_QUALITY = {
    "events_read": "events read (window and pre-period)",
    "duplicate_events": "duplicate event_ids dropped",
    "orphan_clicks": "clicks without their impression (not counted)",
    "impressions_without_arm": "impressions without an arm in the window (left out)",
    "impressions_in_other_phases": "impressions of other phases in the window (left out)",
    "users_in_multiple_arms": "users seen in more than one arm (counted in each)",
    "arms_with_several_model_versions": "arms serving more than one model version in this phase",
}
_ACTION = {"ship": "good", "continue": "wait", "stop": "bad"}


def _env() -> Environment:
    env = Environment(
        loader=PackageLoader("reco.experiments", "templates"),
        autoescape=select_autoescape(["j2", "html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = C.pct
    env.filters["p"] = lambda v: "n/a" if v is None else (f"{v:.3f}" if v >= 0.001 else f"{v:.1e}")
    env.filters["num"] = lambda v, d=4: "n/a" if v is None or not math.isfinite(v) else f"{v:,.{d}f}"
    env.filters["ci"] = lambda ci: "n/a" if not ci or None in ci else f"[{C.pct(ci[0])}, {C.pct(ci[1])}]"
    return env


def _metric_rows(report: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows = []
    for c in report["comparisons"]:
        for name, m in c["metrics"].items():
            ul = c["user_level"] if name == "ctr" else None
            rows.append(
                {
                    "arm": c["arm"],
                    "metric": LABELS.get(name, name),
                    "decides": name == "ctr",
                    "control": m["control"],
                    "treatment": m["treatment"],
                    "is_rate": name == "ctr",
                    "relative": m["relative"],
                    "ci": m["relative_ci"],
                    "p": m["p_value"],
                    "p_seq": m["sequential"]["p_value"],
                    "seq_ci": m["sequential"]["relative_ci"],
                    "p_adj": ul["sequential"]["p_holm" if report["config"]["correction"] == "holm" else "p_bh"]
                    if ul
                    else None,
                    "q": m.get("q_value"),
                    "chance": m["chance_to_beat_control"],
                    "loss": m["expected_loss_relative"],
                }
            )
    geo = C.interval_rows([{"lo": r["ci"][0], "est": r["relative"], "hi": r["ci"][1]} for r in rows])
    for r, g in zip(rows, geo["rows"], strict=True):
        r["bar"] = g
    return rows, geo


def _lift_chart(report: dict[str, Any]) -> dict[str, Any] | None:
    cum = report["cumulative"]
    if not cum:
        return None
    dates = sorted({date.fromisoformat(r["date"]) for r in cum})
    series, fit = [], []
    for c in report["comparisons"]:
        rows = [r for r in cum if r["arm"] == c["arm"]]
        est = [r["relative_lift"] for r in rows]
        ci = [r.get("ci") or [None, None] for r in rows]
        seq = [r.get("sequential_ci") or [None, None] for r in rows]
        lo, hi = [c_[0] for c_ in ci], [c_[1] for c_ in ci]
        series.append(
            {
                "name": f"{c['arm']} vs {report['control']}",
                "y": est,
                "lo": lo,
                "hi": hi,
                "lo2": [s_[0] for s_ in seq],
                "hi2": [s_[1] for s_ in seq],
            }
        )
        last = next((i for i in range(len(rows) - 1, -1, -1) if lo[i] is not None and hi[i] is not None), None)
        if last is None:
            fit += [v for v in est if v is not None]
            continue
        width = hi[last] - lo[last]
        # the y range: the final fixed-horizon interval and the estimates near it (not day 1's +-1,000 %)
        fit += [lo[last], hi[last]] + [v for v in est if v is not None and lo[last] - width <= v <= hi[last] + width]
    return C.time_chart(dates, series, y_fit=fit)


def _ctr_chart(report: dict[str, Any]) -> dict[str, Any] | None:
    daily = report["daily"]
    if not daily:
        return None
    dates = sorted({date.fromisoformat(r["date"]) for r in daily})
    idx = {d.isoformat(): i for i, d in enumerate(dates)}
    series = []
    for arm in report["arms"]:
        y: list[float | None] = [None] * len(dates)
        for r in daily:
            if r["arm"] == arm:
                y[idx[r["date"]]] = r["ctr"]
        series.append({"name": arm, "y": y})
    fit = [v for s in series for v in s["y"] if v is not None]
    return C.time_chart(dates, series, y_fit=fit, zero_line=False, height=220)


def _days_left(report: dict[str, Any]) -> list[tuple[str, str]]:
    """Per arm: days left for the target lift at the goal power (the mSPRT at the current traffic)."""
    out = []
    for c in report["comparisons"]:
        p = c.get("power") or {}
        if "target_relative_mde" not in p:
            continue
        left = p.get("days_left")
        goal = f"{C.pct(p['target_relative_mde'], 0, sign=False)} lift"
        text = f"{left} for a {goal}" if left is not None else f"a {goal} is out of reach"
        out.append((f"days left, {c['arm']}", text))
    return out


def view(report: dict[str, Any]) -> dict[str, Any]:
    """Everything the template shows, formatted where formatting is a decision (not a filter)."""
    dec = report["decision"]
    metric_rows, metric_geo = _metric_rows(report)
    seg_rows = [dict(b, arm=c["arm"]) for c in report["comparisons"] for b in c["breakdowns"]]
    seg_geo = C.interval_rows(
        [
            {
                "lo": (r.get("relative_ci") or [None, None])[0],
                "est": r.get("relative"),
                "hi": (r.get("relative_ci") or [None, None])[1],
            }
            for r in seg_rows
        ]
    )
    for r, g in zip(seg_rows, seg_geo["rows"], strict=True):
        r["bar"] = g
    win = report["window"]
    return {
        "r": report,
        "title": report["experiment"],
        "verdict": {
            "action": dec["action"],
            "arm": dec["arm"],
            "reasons": dec["reasons"],
            "tone": _ACTION.get(dec["action"], "wait"),
        },
        "facts": [
            ("days with data", f"{win['days_with_data']} (decision needs {report['config']['min_days']})"),
            ("window", f"{win['start']} .. {win['end']} ({win['days']} calendar days)"),
            (
                "decided by",
                "sequential test (mSPRT, always valid), "
                + ("Holm" if report["config"]["correction"] == "holm" else "BH")
                + " across arms",
            ),
            ("SRM", f"p = {report['srm']['p_value']:.3g}" + (" (MISMATCH)" if report["srm"]["flagged"] else " (ok)")),
            *(_days_left(report) if dec["action"] == "continue" else []),
        ],
        "metric_rows": metric_rows,
        "metric_ticks": metric_geo["ticks"],
        "seg_rows": seg_rows,
        "seg_ticks": seg_geo["ticks"],
        "lift_chart": _lift_chart(report),
        "ctr_chart": _ctr_chart(report),
        "quality": [(_QUALITY.get(k, k), v) for k, v in report["data_quality"].items()],
    }


def render_html(report: dict[str, Any]) -> str:
    """The report as one self-contained HTML page."""
    return _env().get_template("report.html.j2").render(**view(report))
