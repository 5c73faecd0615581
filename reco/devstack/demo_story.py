"""The demo's story in plain words: what is compared, and why the A/B report's verdict is what it is.

>>> report = {"control": "control", "decision": {"action": "continue", "arm": None, "reasons": []},
...           "window": {"days_with_data": 3}, "config": {"min_days": 14, "planned_days": 28},
...           "srm": {"flagged": False, "p_value": 0.6},
...           "comparisons": [{"arm": "treatment", "guardrails": [{"metric": "ctr", "status": "ok"}],
...                            "user_level": {"lift": {"relative": 0.02, "relative_ci": [-0.05, 0.09]},
...                                           "sequential": {"p_value": 0.7}},
...                            "power": {"mde_relative_at_planned_days": 0.08}}]}
>>> for line in why(report): print(line[:60].rstrip())
Traffic split: the users per arm match the configured shares
Guardrails: none harmed (ctr).
Effect: treatment vs control, CTR per user +2.0% (95% CI -5.
Size: at this traffic the smallest lift the test detects by
Days: 3 day(s) with data < the 14 required before any decisi
>>> "includes 0, so no difference is shown" in why(report)[2]
True
"""

from __future__ import annotations

from typing import Any


def story(versions: dict[str, str | None], scale: Any) -> list[str]:
    """What the two arms are, in the words of someone who just ran the demo."""
    return [
        f"control (arm-control, version {versions.get('control') or '-'}): the champion, trained from scratch on "
        f"the bootstrap data (MovieLens days {scale.control_start} .. {scale.control_end}).",
        f"treatment (arm-treatment, version {versions.get('treatment') or '-'}): warm-started from the champion "
        f"and trained on the days after ({scale.treatment_start} .. {scale.treatment_end}).",
        f"Both learned online from the demo's own traffic: {scale.users} simulated users over {scale.days} "
        "simulated days; every simulated hour the learner refined each arm on the clicks so far and the API "
        "served the refined weights (a fixed seed: a rerun gives the same numbers).",
    ]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1%}"


def why(report: dict[str, Any]) -> list[str]:
    """The verdict's reasons in plain words: SRM, guardrails, effect and CI, detectable effect, days rule."""
    out = []
    srm = report.get("srm") or {}
    if srm.get("flagged"):
        out.append(f"Traffic split: the users per arm do NOT match the configured shares (SRM p = "
                   f"{srm.get('p_value'):.2g}): assignment or logging is broken, nothing can be trusted.")  # fmt: skip
    else:
        out.append(f"Traffic split: the users per arm match the configured shares (SRM p = "
                   f"{srm.get('p_value', float('nan')):.2g}): the comparison can be trusted.")  # fmt: skip
    control = report.get("control", "control")
    cfg = report.get("config") or {}
    for c in report.get("comparisons", []):
        harmed = [g["metric"] for g in c.get("guardrails", []) if g.get("status") == "harmed"]
        names = ", ".join(g["metric"] for g in c.get("guardrails", [])) or "none configured"
        out.append(f"Guardrails: {'HARMED: ' + ', '.join(harmed) if harmed else f'none harmed ({names})'}.")
        ul = c["user_level"]
        rel, (lo, hi) = ul["lift"]["relative"], ul["lift"].get("relative_ci") or (None, None)
        p_seq = ul.get("sequential", {}).get("p_value")
        if lo is not None and hi is not None and lo <= 0 <= hi:
            verdict = "the interval includes 0, so no difference is shown"
        elif lo is not None and lo > 0:
            verdict = f"the interval lies above 0: {c['arm']} is better"
        else:
            verdict = f"the interval lies below 0: {c['arm']} is worse"
        p_text = "n/a" if p_seq is None else f"{p_seq:.2g}"
        out.append(f"Effect: {c['arm']} vs {control}, CTR per user {_pct(rel)} (95% CI {_pct(lo)} .. {_pct(hi)}); "
                   f"{verdict} (always-valid p = {p_text}).")  # fmt: skip
        mde = (c.get("power") or {}).get("mde_relative_at_planned_days")
        if mde is not None and rel is not None:
            side = "below" if abs(rel) < mde else "above"
            out.append(f"Size: at this traffic the smallest lift the test detects by day {cfg.get('planned_days')} "
                       f"is about {mde:.1%}; the observed {_pct(rel)} is {side} it.")  # fmt: skip
    days, min_days = (report.get("window") or {}).get("days_with_data"), cfg.get("min_days")
    decision = report.get("decision") or {}
    if srm.get("flagged"):
        pass  # the split decides before the days rule (reco.experiments.decision)
    elif days is not None and min_days is not None and days < min_days:
        out.append(f"Days: {days} day(s) with data < the {min_days} required before any decision (weekly cycles, "
                   f"novelty): the verdict is '{decision.get('action')}' whatever the numbers say.")  # fmt: skip
    elif days is not None:
        out.append(f"Days: {days} day(s) with data >= the {min_days} required: the sequential test decides.")
    return out
