"""The A/B report of one phase of an experiment: events -> tables -> statistics -> verdict -> JSON / HTML.

The pieces, one responsibility each: `reading` (events from a lake / Parquet / CSV), `aggregate`
(per user x arm x day tables of the phase, the pre-exposure window, segments), `analysis` (every metric
on the log-ratio scale, CUPED, guardrails, novelty, breakdowns), `power` (the mSPRT's own power and days
left), `decision` (the verdict) and `render` (Jinja2 HTML with inline SVG). This module assembles them
and applies the multiple-testing adjustments. Rules and references: docs/ab-report.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from reco.experiments import analysis as A
from reco.experiments import stats as S
from reco.experiments.aggregate import EPOCH, Aggregates, aggregate
from reco.experiments.decision import decide
from reco.experiments.reading import OPTIONAL_COLUMNS, REQUIRED_COLUMNS, LakeScan, ReportError, read_events
from reco.experiments.report_config import (
    ReportConfig,
    config_dict,
    configured_experiment,
    configured_traffic,
    parse_guardrails,
)

__all__ = [
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "SCHEMA_VERSION",
    "Aggregates",
    "ReportConfig",
    "ReportError",
    "aggregate",
    "build_report",
    "config_dict",
    "configured_traffic",
    "decide",
    "parse_guardrails",
    "read_events",
    "render_html",
    "render_json",
    "report_for",
    "report_from_aggregates",
]

SCHEMA_VERSION = 2
_num = A.num


def _as_date(v: Any) -> date | None:
    if v is None or v == "":
        return None
    if isinstance(v, date):
        return v if type(v) is date else v.date() if hasattr(v, "date") else v
    return date.fromisoformat(str(v)[:10])


def _phase_start(phases: Sequence[Mapping[str, Any]], phase: int) -> date | None:
    return next((_as_date(p.get("started")) for p in phases if int(p.get("id", 0)) == phase), None)


def report_for(
    events: str | Path,
    *,
    control: str,
    experiment: str | None = None,
    start: date | None = None,
    end: date | None = None,
    traffic: Mapping[str, float] | None = None,
    traffic_source: str = "traffic parameter",
    experiments_path: str | Path | None = None,
    min_days: int = 14,
    planned_days: int = 28,
    phase: int | None = None,
    phases: Sequence[Mapping[str, Any]] | None = None,
    pre_period_days: int = 14,
    guardrails: Mapping[str, float] | None = None,
    experiment_start: date | None = None,
) -> dict[str, Any]:
    """The report of `events` (lake, Parquet or CSV) for one phase of one experiment. The SRM test uses
    `traffic` when given, else the arm shares in the experiment config (what assignment used); guardrail
    margins come from `guardrails`, else the config, else the default. `phase` None = the last of `phases`
    (or 1); the window starts at `start`, else that phase's `started`, else its first exposure. The CUPED
    pre-exposure window is the `pre_period_days` before `experiment_start` (default: the first phase's
    start, else the window start). Shared by `reco ab report` and the `reco_ab_report` DAG task."""
    phases = tuple(phases or ())
    cfg_guardrails = None
    if not traffic:
        experiment, traffic, cfg_guardrails, traffic_source = configured_experiment(experiment, experiments_path)
    elif experiments_path is not None:
        try:  # explicit shares: the config only adds guardrail margins, when it knows the experiment
            cfg_guardrails = configured_experiment(experiment, experiments_path)[2]
        except ReportError:
            cfg_guardrails = None
    if phase is None:
        phase = max((int(p["id"]) for p in phases), default=1)
    start = start or _phase_start(phases, phase)
    first = min((d for p in phases if (d := _as_date(p.get("started")))), default=None)
    experiment_start = experiment_start or first or start
    margins, g_source = (guardrails, "caller") if guardrails else (cfg_guardrails, "experiment config")
    kw: dict[str, Any] = {"guardrails": margins, "guardrails_source": g_source} if margins else {}
    cfg = ReportConfig(
        control=control,
        experiment=experiment or "default",
        start=start,
        end=end,
        traffic=dict(traffic),
        traffic_source=traffic_source,
        min_days=min_days,
        planned_days=planned_days,
        phase=phase,
        phases=phases,
        pre_period_days=pre_period_days,
        experiment_start=experiment_start,
        **kw,
    )
    # from the earlier of the window's start and the experiment's (a window may start before the first phase)
    lo = min((d for d in (experiment_start, start) if d is not None), default=None)
    table = read_events(events, lo, end, pre_period_days if lo else 0)
    return build_report(table, cfg)


def build_report(table: pa.Table | LakeScan, config: ReportConfig) -> dict[str, Any]:
    """Events (as `read_events` returns them: an Arrow table, or a lake's partitions to scan) -> the report
    dict documented in docs/ab-report.md.

    >>> import datetime as dt
    >>> rows = [dict(event_id=f"{a}{u}", ts=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), user_id=f"{a}{u}",
    ...              item_id="i", event_type="impression", request_id=f"r{a}{u}", arm=a)
    ...         for a in ("A", "B") for u in range(20)]
    >>> rows += [dict(rows[k], event_id=f"c{k}", event_type="click") for k in (0, 1, 2, 25)]
    >>> rep = build_report(pa.Table.from_pylist(rows), ReportConfig(control="A"))
    >>> rep["arms"]["A"]["clicks"], rep["arms"]["B"]["ctr"], rep["decision"]["action"]
    (3, 0.05, 'continue')
    """
    agg = aggregate(
        table,
        config.start,
        config.end,
        phase=config.phase,
        experiment_start=config.experiment_start,
        pre_period_days=config.pre_period_days,
    )
    return report_from_aggregates(agg, config)


def _check_arms(arms: list[str], config: ReportConfig, m: dict[str, np.ndarray]) -> dict[str, float] | None:
    if config.control not in arms:
        raise ReportError(f"unknown control arm {config.control!r}; arms in the events: {', '.join(arms)}")
    configured = dict(config.traffic) if config.traffic else None
    if configured:
        unknown = sorted(set(configured) - set(arms))
        if unknown:
            raise ReportError(f"arm(s) {', '.join(unknown)} have configured traffic but no impressions (empty arm)")
        extra = sorted(set(arms) - set(configured))
        if extra:
            raise ReportError(f"arm(s) {', '.join(extra)} appear in the events but have no traffic share")
    if len(arms) < 2:
        raise ReportError(f"only arm {arms[0]!r} has impressions: nothing to compare against")
    for i, a in enumerate(arms):  # every user's totals are their cumulative values after the last day
        if m["s_imps"][i, -1] == 0:
            raise ReportError(f"arm {a!r} has zero impressions")
        if m["n"][i, -1] < 2:
            raise ReportError(f"arm {a!r} has fewer than 2 users: no variance can be estimated")
    return configured


def report_from_aggregates(agg: Aggregates, config: ReportConfig) -> dict[str, Any]:
    arms, m = agg.arms, agg.moments
    configured = _check_arms(arms, config, m)
    treatments = [a for a in arms if a != config.control]
    n_days = (agg.end - agg.start).days + 1
    data_days = np.array([(d - agg.start).days for d in agg.exposure_days], dtype=int)
    comps = []
    for t in treatments:
        c = A.compare(t, config, arms, m, agg)
        c["guardrails"] = A.guardrails(c, config, len(treatments))
        c["guardrails_harmed"] = [g["metric"] for g in c["guardrails"] if g["status"] == "harmed"]
        c["_days_with_data_index"] = data_days
        c["power"] = A.power_table(c, config, len(agg.exposure_days), len(treatments)) | {"power_goal": config.power}
        comps.append(c)
    multiplicity = _adjust(comps, config)
    shares = np.array([configured[a] for a in arms]) if configured else np.full(len(arms), 1.0 / len(arms))
    users = {a: int(m["n"][i, -1]) for i, a in enumerate(arms)}
    srm = S.srm_test(np.array([users[a] for a in arms]), shares)
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "experiment": config.experiment,
        "control": config.control,
        **_phases(config, agg, arms),
        "window": {
            "start": agg.start.isoformat(),
            "end": agg.end.isoformat(),
            "days": n_days,
            "days_with_data": len(agg.exposure_days),
            "rule": f"a decision needs >= {config.min_days} days with exposures in this phase (calendar days "
            "without data do not count)",
        },
        "config": _config_json(config, arms, shares, configured),
        "data_quality": agg.quality,
        "arms": _arms_json(m, arms, agg),
        "srm": {
            "test": f"chi-square of users per arm in phase {agg.phase} vs configured traffic shares",
            "chi2": _num(srm.chi2),
            "p_value": _num(srm.p_value),
            "flagged": srm.flagged,
            "threshold": S.SRM_ALPHA,
            "expected_users": dict(zip(arms, [_num(e) for e in srm.expected], strict=True)),
        },
        "comparisons": comps,
        "multiplicity": multiplicity,
        "daily": _daily(agg.daily),
        "cumulative": _cumulative(comps, agg.start),
    }
    report["decision"] = decide(report, config)
    return report


def _adjust(comps: list[dict[str, Any]], cfg: ReportConfig) -> dict[str, Any]:
    """Decision family (arms x the decision metric, CTR): Holm and BH on the sequential and on the
    fixed-horizon p-values. Exploratory family (arms x every metric x [overall + every segment]): BH q-values
    and Holm p-values on the fixed-horizon p-values. Internal series are dropped here."""
    p_seq = np.array([c["user_level"]["sequential"]["p_value"] or 1.0 for c in comps])
    p_fix = np.array([np.nan if c["user_level"]["p_value"] is None else c["user_level"]["p_value"] for c in comps])
    for c, hs, bs, hf, bf in zip(
        comps,
        S.holm(p_seq),
        S.benjamini_hochberg(p_seq),
        S.holm(np.nan_to_num(p_fix, nan=1.0)),
        S.benjamini_hochberg(np.nan_to_num(p_fix, nan=1.0)),
        strict=True,
    ):
        c["user_level"]["sequential"].update(p_holm=_num(hs), p_bh=_num(bs))
        c["user_level"].update(p_holm=_num(hf), p_bh=_num(bf))
    entries = [e for c in comps for e in (*c["metrics"].values(), *c["breakdowns"]) if e.get("p_value") is not None]
    ps = np.array([e["p_value"] for e in entries])
    if entries:
        for e, q, h in zip(entries, S.benjamini_hochberg(ps), S.holm(ps), strict=True):
            e["q_value"], e["p_holm_all"] = _num(q), _num(h)
    return {
        "decision_family": {
            "tests": len(comps),
            "members": "treatment arms x CTR (the decision metric)",
            "method": "Holm" if cfg.correction == "holm" else "Benjamini-Hochberg",
            "on": "sequential (always-valid) p-values",
        },
        "exploratory_family": {
            "tests": len(entries),
            "members": "arms x metrics x (overall + segments)",
            "method": "Benjamini-Hochberg q-values (Holm also given)",
            "on": "fixed-horizon p-values",
            "decides": False,
        },
        "guardrail_family": {
            "members": "arms x guardrail metrics",
            "method": "Bonferroni-split alpha on always-valid intervals",
        },
    }


def _phases(cfg: ReportConfig, agg: Aggregates, arms: list[str]) -> dict[str, Any]:
    def clean(p: Mapping[str, Any]) -> dict[str, Any]:
        started = _as_date(p.get("started"))
        versions = {str(k): str(v) for k, v in dict(p.get("versions") or {}).items()}
        out = {
            "id": int(p["id"]),
            "started": started.isoformat() if started else None,
            "who": p.get("who"),
            "why": p.get("why"),
            "versions": versions,
        }
        if p.get("learning"):  # arm -> online | frozen: online learning is part of an arm's policy
            out["learning"] = {str(k): str(v) for k, v in dict(p["learning"]).items()}
        return out

    known = [clean(p) for p in cfg.phases]
    current = next((p for p in known if p["id"] == cfg.phase), None)
    if current is None:
        current = {
            "id": cfg.phase,
            "started": agg.start.isoformat(),
            "who": None,
            "why": None,
            "versions": {a: ", ".join(v) for a, v in agg.model_versions.items()},
        }
    past = sorted((p for p in known if p["id"] != cfg.phase), key=lambda p: p["id"])
    return {"phase": current, "past_phases": past}


def _config_json(cfg: ReportConfig, arms: list[str], shares: np.ndarray, configured: Any) -> dict[str, Any]:
    return {
        "alpha": cfg.alpha,
        "min_days": cfg.min_days,
        "planned_days": cfg.planned_days,
        "correction": cfg.correction,
        "traffic": dict(zip(arms, shares.tolist(), strict=True)),
        "traffic_source": (cfg.traffic_source or "configured") if configured else "equal shares (none configured)",
        "sequential": {"method": "mSPRT, normal mixture on the log ratio (Johari et al. 2017)", "tau": cfg.tau},
        "bayes": {"method": "normal approximation of the log ratio, flat prior"},
        "decision_basis": "user-level CTR (CUPED-adjusted when a pre-period exists), relative lift on the log "
        "ratio, sequential p-value "
        + ("Holm" if cfg.correction == "holm" else "Benjamini-Hochberg")
        + "-adjusted across arms",
        "guardrails": [{"metric": k, "margin": v} for k, v in cfg.guardrails.items()],
        "guardrails_source": cfg.guardrails_source,
        "target_relative_mde": cfg.target_relative_mde,
        "power": cfg.power,
        "pre_period_days": cfg.pre_period_days,
        "phase": cfg.phase,
    }


def _arms_json(m: dict[str, np.ndarray], arms: list[str], agg: Aggregates) -> dict[str, Any]:
    """Per arm, from the sums over its users of their totals (cumulative values after the last day)."""
    out = {}
    for i, a in enumerate(arms):
        n, clicks, imps = m["n"][i, -1], m["s_clicks"][i, -1], m["s_imps"][i, -1]
        ratio, var = S.ratio_moments(n, clicks, imps, m["s_clicks2"][i, -1], m["s_imps2"][i, -1], m["s_ci"][i, -1])
        out[a] = {
            "users": int(n),
            "impressions": int(imps),
            "clicks": int(clicks),
            "ctr": _num(ratio),
            "ctr_se_user_level": _num(math.sqrt(var)),
            "clicks_per_user": _num(clicks / n),
            "purchases": int(m["s_purchases"][i, -1]),
            "revenue_per_user": _num(m["s_revenue"][i, -1] / n),
            "model_versions": agg.model_versions.get(a, []),
        }
    return out


def _daily(daily: pd.DataFrame) -> list[dict[str, Any]]:
    """Per day and arm: users (active that day), impressions, clicks."""
    return [
        {
            "date": (EPOCH + timedelta(days=int(r.day))).isoformat(),
            "arm": str(r.arm),
            "users": int(r.users),
            "impressions": int(r.imps),
            "clicks": int(r.clicks),
            "ctr": _num(r.clicks / r.imps) if r.imps else None,
        }
        for r in daily.sort_values(["day", "arm"]).itertuples(index=False)
    ]


def _cumulative(comps: list[dict[str, Any]], start: date) -> list[dict[str, Any]]:
    """Per arm and day: the decision metric's relative lift with its fixed-horizon and always-valid CIs and
    the sequential p-value. Drops every comparison's internal series."""
    out = []
    for c in comps:
        s = c["metrics"]["ctr"]["_series"]
        for i, d in enumerate(s["d"]):
            se = s["se"][i]
            out.append(
                {
                    "date": (start + timedelta(days=i)).isoformat(),
                    "arm": c["arm"],
                    "relative_lift": _num(np.expm1(d)),
                    "ci": [_num(np.expm1(d - s["q"] * se)), _num(np.expm1(d + s["q"] * se))],
                    "sequential_ci": [_num(np.expm1(s["lo"][i])), _num(np.expm1(s["hi"][i]))],
                    "sequential_p_value": _num(s["p"][i]),
                }
            )
    for c in comps:
        for k in [k for k in c if k.startswith("_")]:
            del c[k]
        for mt in c["metrics"].values():
            mt.pop("_series", None)
    return out


def render_json(report: dict[str, Any]) -> str:
    """Stable, sorted JSON (same input -> byte-identical output)."""
    return json.dumps(report, indent=2, sort_keys=True, allow_nan=False)


def render_html(report: dict[str, Any]) -> str:
    """The HTML report (Jinja2 templates, inline SVG; `render.render_html`)."""
    from reco.experiments.render import render_html as _render

    return _render(report)
