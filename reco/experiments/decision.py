"""The verdict: continue / ship <arm> / stop, with its reasons (docs/ab-report.md, "Decision").

Order: SRM (results untrustworthy) -> guardrails harmed in every arm -> too early (fewer than
`min_days` days *with data* in the phase, even when significant) -> significant winners (the
sequential p-value, adjusted over the decision family; novelty blocks a ship) -> every arm
significantly worse -> planned horizon reached without a winner -> continue (with the days left).
Segments never decide: they are exploratory and only reported.
"""

from __future__ import annotations

from typing import Any

from reco.experiments import stats as S
from reco.experiments.report_config import ReportConfig


def _verdict(action: str, arm: str | None, reasons: list[str]) -> dict[str, Any]:
    return {"action": action, "arm": arm, "reasons": reasons}


def _disagreement(c: dict[str, Any], cfg: ReportConfig, key: str) -> str | None:
    """A reason when the fixed-horizon and the sequential answers differ (the sequential one decides)."""
    ul = c["user_level"]
    p_fix, p_seq = ul.get(key), ul["sequential"].get(key)
    if p_fix is None or p_seq is None or (p_fix < cfg.alpha) == (p_seq < cfg.alpha):
        return None
    return (
        f"arm {c['arm']}: the fixed-horizon test says p = {p_fix:.2g}, the sequential test p = {p_seq:.2g}; "
        "the sequential (always-valid) test decides, because the report is read every day"
    )


def decide(report: dict[str, Any], cfg: ReportConfig) -> dict[str, Any]:
    """The verdict of `report` (its comparisons already adjusted for multiplicity)."""
    days = report["window"]["days_with_data"]
    key = "p_holm" if cfg.correction == "holm" else "p_bh"
    if report["srm"]["flagged"]:
        return _verdict(
            "stop",
            None,
            [
                f"SRM: users per arm do not match the traffic shares in phase {report['phase']['id']} "
                f"(p = {report['srm']['p_value']:.2g} < {S.SRM_ALPHA}); assignment or logging is broken, the results "
                "cannot be trusted"
            ],
        )
    comps = report["comparisons"]
    harmed = [(c["arm"], g) for c in comps for g in c["guardrails"] if g["status"] == "harmed"]
    harm_text = [
        f"guardrail harmed: {g['metric']} in arm {a} is worse than -{g['margin']:.0%} with always-valid "
        f"confidence (interval {_pct(g['always_valid_ci'])})"
        for a, g in harmed
    ]
    if harmed and len({a for a, _ in harmed}) == len(comps):
        return _verdict("stop", None, harm_text)
    reasons = [f"{t} (arm excluded)" for t in harm_text]
    reasons += [r for c in comps if (r := _disagreement(c, cfg, key))]
    harmed_arms = {a for a, _ in harmed}
    if days < cfg.min_days:
        return _verdict(
            "continue",
            None,
            [
                *reasons,
                f"too early: {days} day(s) with data in this phase < {cfg.min_days} required before a "
                "decision (days with exposures are counted, not calendar days)",
                *_left(comps),
            ],
        )
    sig = [c for c in comps if (c["user_level"]["sequential"][key] or 1.0) < cfg.alpha]
    winners = [c for c in sig if (c["user_level"]["lift"]["relative"] or 0) > 0 and c["arm"] not in harmed_arms]
    if winners:
        best = max(winners, key=lambda c: c["user_level"]["lift"]["relative"])
        nov = best["novelty"]
        if nov.get("flagged"):
            return _verdict(
                "continue",
                None,
                [
                    *reasons,
                    f"novelty suspected in arm {best['arm']}: the lift trends with days since first exposure "
                    f"(p = {nov['p_value']:.2g})",
                ],
            )
        ul = best["user_level"]
        note = [] if nov.get("testable") else [f"novelty could not be tested ({nov.get('why', 'too few days')})"]
        return _verdict(
            "ship",
            best["arm"],
            [
                *reasons,
                f"arm {best['arm']} beats {cfg.control} on CTR: {ul['lift']['relative']:+.2%} "
                f"{_pct(ul['lift']['relative_ci'])}, sequential p ({cfg.correction}) = {ul['sequential'][key]:.2g} < "
                f"{cfg.alpha} after {days} days with data",
                *note,
            ],
        )
    losers = [c for c in sig if (c["user_level"]["lift"]["relative"] or 0) < 0]
    if losers and len(losers) == len(comps):
        return _verdict("stop", None, [*reasons, "every treatment arm is significantly worse than control on CTR"])
    if days >= cfg.planned_days:
        return _verdict(
            "stop", None, [*reasons, f"not significant after {days} days with data (planned {cfg.planned_days})"]
        )
    return _verdict("continue", None, [*reasons, "not significant yet", *_left(comps)])


def _pct(ci: list[float | None]) -> str:
    return "[n/a]" if None in ci else f"[{ci[0]:+.1%}, {ci[1]:+.1%}]"


def _left(comps: list[dict[str, Any]]) -> list[str]:
    out = []
    for c in comps:
        p = c.get("power") or {}
        if p.get("days_left") is not None:
            out.append(
                f"arm {c['arm']}: about {p['days_left']} more day(s) at the current traffic for "
                f"{p['target_relative_mde']:.0%} lift at {p.get('power_goal', 0.8):.0%} power"
            )
        elif p:
            out.append(
                f"arm {c['arm']}: a {p['target_relative_mde']:.0%} lift is not reachable within "
                f"{p['horizon_searched']} days at the current traffic"
            )
    return out
