"""Per treatment arm against control: every metric on one scale (the log ratio), its sequential and
fixed-horizon tests, CUPED, guardrails, novelty, power and the breakdowns.

Scale: each relative lift ``t/c - 1`` is estimated, tested and bounded as ``log(t/c)`` with the delta
method, so a p-value and the interval beside it always agree (p < alpha exactly when the interval
excludes 0). The decision reads the *sequential* (mSPRT, always-valid) p-value of the CUPED-adjusted
user-level CTR; the fixed-horizon figures are shown beside it and, where they disagree, the report says
that the sequential one decides (the report is read every day).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as st

from reco.experiments import power as P
from reco.experiments import stats as S
from reco.experiments.aggregate import Aggregates
from reco.experiments.report_config import ReportConfig

_PER_USER = {"clicks_per_user": "clicks", "purchases_per_user": "purchases", "revenue_per_user": "revenue"}
LABELS = {
    "ctr": "CTR (user level)",
    "clicks_per_user": "clicks per user",
    "purchases_per_user": "purchases per user",
    "revenue_per_user": "revenue per user",
}


def num(x: Any) -> float | None:
    """JSON-safe float (NaN/inf -> None)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _cov(s_ab: np.ndarray, s_a: np.ndarray, s_b: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Sample covariance (ddof 1) from sums."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (s_ab - s_a * s_b / n) / (n - 1.0)


def ctr_series(m: dict[str, np.ndarray], i: int) -> tuple[np.ndarray, np.ndarray]:
    """Arm `i`'s user-level CTR after each day and its delta-method variance."""
    return S.ratio_moments(
        m["n"][i], m["s_clicks"][i], m["s_imps"][i], m["s_clicks2"][i], m["s_imps2"][i], m["s_ci"][i]
    )


def cuped_ctr_series(m: dict[str, np.ndarray], arms: tuple[int, int]) -> dict[str, np.ndarray] | None:
    """CUPED (Deng et al. 2013) on the linearised user-level CTR of two arms, per day, in closed form from
    the cumulative sums: lin = (clicks - R imps) / mean(imps); theta = Cov(lin, x) / Var(x) pooled over the
    two arms (each centred on its own mean, so the effect does not leak into theta); adjusted CTR
    ``R - theta (mean_arm(x) - mean(x))`` with variance ``Var(lin - theta x) / n``. None when x has no
    variance (no pre-period data)."""
    n = m["n"][list(arms)]
    if not (np.nansum(m["s_x2"][list(arms)][:, -1]) > 0):
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        out: dict[str, Any] = {}
        parts = []
        for i in arms:
            ni = m["n"][i]
            mc, mi = m["s_clicks"][i] / ni, m["s_imps"][i] / ni
            r = mc / mi
            v_c = _cov(m["s_clicks2"][i], m["s_clicks"][i], m["s_clicks"][i], ni)
            v_i = _cov(m["s_imps2"][i], m["s_imps"][i], m["s_imps"][i], ni)
            c_ci = _cov(m["s_ci"][i], m["s_clicks"][i], m["s_imps"][i], ni)
            v_lin = (v_c - 2 * r * c_ci + r * r * v_i) / mi**2
            v_x = _cov(m["s_x2"][i], m["s_x"][i], m["s_x"][i], ni)
            c_lx = (
                _cov(m["s_cx"][i], m["s_clicks"][i], m["s_x"][i], ni)
                - r * _cov(m["s_ix"][i], m["s_imps"][i], m["s_x"][i], ni)
            ) / mi
            parts.append((ni, r, v_lin, v_x, c_lx, m["s_x"][i] / ni))
        theta = sum((p[0] - 1) * p[4] for p in parts) / sum((p[0] - 1) * p[3] for p in parts)
        theta = np.where(np.isfinite(theta), theta, 0.0)
        x_bar = sum(m["s_x"][i] for i in arms) / n.sum(axis=0)
        for key, (ni, r, v_lin, v_x, c_lx, x_mean) in zip(("t", "c"), parts, strict=True):
            out[f"r_{key}"] = r - theta * (x_mean - x_bar)
            out[f"v_{key}"] = np.maximum(v_lin - 2 * theta * c_lx + theta**2 * v_x, 0.0) / ni
            out[f"raw_v_{key}"] = v_lin / ni
    out["theta"] = theta
    return out


def mean_series(m: dict[str, np.ndarray], col: str, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Arm `i`'s per-user mean of `col` after each day and the variance of that mean."""
    n = m["n"][i]
    with np.errstate(divide="ignore", invalid="ignore"):
        return m[f"s_{col}"][i] / n, _cov(m[f"s_{col}2"][i], m[f"s_{col}"][i], m[f"s_{col}"][i], n) / n


def _log_series(t: np.ndarray, vt: np.ndarray, c: np.ndarray, vc: np.ndarray, nt: np.ndarray, nc: np.ndarray):
    """Log ratio and its variance per day; days without two users per arm or a positive variance are
    missing (0 with infinite variance: no information)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.log(t / c)
        v = S.log_ratio_var(t, vt, c, vc)
    ok = np.isfinite(d) & np.isfinite(v) & (v > 0) & (nt >= 2) & (nc >= 2)
    return np.where(ok, d, 0.0), np.where(ok, v, np.inf), ok


def metric_test(
    d: np.ndarray, v: np.ndarray, ok: np.ndarray, cfg: ReportConfig, t_last: float, c_last: float, label: str
) -> dict[str, Any]:
    """One metric's figures on the log-ratio scale: fixed-horizon z-test and CI at the last day, the mSPRT
    p-value and always-valid CI over the days, chance to beat control and expected loss."""
    p_seq = S.msprt_pvalues(d, v, cfg.tau)
    lo, hi = S.msprt_ci(d, v, cfg.tau, cfg.alpha)
    q = float(st.norm.ppf(1 - cfg.alpha / 2))
    dl, se = (float(d[-1]), math.sqrt(v[-1])) if ok[-1] else (math.nan, math.nan)
    z = dl / se if se > 0 else math.nan
    return {
        "metric": label,
        "scale": "relative lift, tested and bounded on the log ratio (delta method)",
        "treatment": num(t_last),
        "control": num(c_last),
        "relative": num(math.expm1(dl)),
        "relative_ci": [num(math.expm1(dl - q * se)), num(math.expm1(dl + q * se))],
        "z": num(z),
        "p_value": num(2 * st.norm.sf(abs(z))) if math.isfinite(z) else None,
        "sequential": {"p_value": num(p_seq[-1]), "relative_ci": [num(math.expm1(lo[-1])), num(math.expm1(hi[-1]))]},
        "chance_to_beat_control": num(S.chance_to_beat(dl, se)),
        "expected_loss_relative": num(S.expected_relative_loss(dl, se)),
        "_series": {"d": np.where(ok, d, np.nan), "se": np.sqrt(v), "lo": lo, "hi": hi, "p": p_seq, "q": q},
    }


def compare(arm: str, cfg: ReportConfig, arms: list[str], m: dict[str, np.ndarray], agg: Aggregates) -> dict[str, Any]:
    """Everything about `arm` against the control (before the multiple-testing adjustment)."""
    it, ic = arms.index(arm), arms.index(cfg.control)
    nt, nc = m["n"][it], m["n"][ic]
    rt, vt = ctr_series(m, it)
    rc, vc = ctr_series(m, ic)
    raw = metric_test(*_log_series(rt, vt, rc, vc, nt, nc), cfg, rt[-1], rc[-1], "ctr")
    cu = cuped_ctr_series(m, (it, ic))
    ctr, cuped = raw, {"applied": False, "reason": _no_pre_reason(agg)}
    if cu is not None:
        ctr = metric_test(*_log_series(cu["r_t"], cu["v_t"], cu["r_c"], cu["v_c"], nt, nc), cfg, rt[-1], rc[-1], "ctr")
        raw_var, adj_var = cu["raw_v_t"][-1] + cu["raw_v_c"][-1], cu["v_t"][-1] + cu["v_c"][-1]
        cuped = {
            "applied": True,
            "covariate": "pre-period linearised CTR (0 for users without pre-period)",
            "theta": num(cu["theta"][-1]),
            "variance_reduction": num(1 - adj_var / raw_var),
            "raw": _strip(raw),
            "adjusted": _strip(ctr),
        }
    cuped |= {"pre_window": _window(agg.pre_window), "users_with_pre_period": agg.pre_users}
    metrics = {"ctr": ctr}
    for name, col in _PER_USER.items():
        if name != "clicks_per_user" and m[f"s_{col}"][:, -1].sum() == 0:
            continue  # no purchases logged: the metric does not exist here
        mt, vmt = mean_series(m, col, it)
        mc, vmc = mean_series(m, col, ic)
        metrics[name] = metric_test(*_log_series(mt, vmt, mc, vmc, nt, nc), cfg, mt[-1], mc[-1], name)
    # every user's totals are their cumulative values after the last day
    xc, nic, xt, nit = (m[s][i, -1] for i, s in ((ic, "s_clicks"), (ic, "s_imps"), (it, "s_clicks"), (it, "s_imps")))
    z, p = S.two_proportion_ztest(xt, nit, xc, nic)
    rel = xt / nit / (xc / nic) - 1 if xc > 0 else math.nan
    return {
        "arm": arm,
        "control": cfg.control,
        "metric": "ctr",
        "decides": "sequential",
        "user_level": _user_level(ctr, cfg, cu is not None),
        "impression_level": {
            "test": "two-proportion z-test (pooled; impressions are not independent: shown only, never decides)",
            "z": num(z),
            "p_value": num(p),
            "relative": num(rel),
        },
        "cuped": cuped,
        "metrics": metrics,
        "bayes": {
            "chance_to_beat_control": ctr["chance_to_beat_control"],
            "expected_loss_relative": ctr["expected_loss_relative"],
        },
        "novelty": novelty(agg, arm, cfg),
        "users": {"treatment": int(nt[-1]), "control": int(nc[-1])},
        "breakdowns": breakdowns(agg.segments, arm, cfg),
        "_info": np.where(np.isfinite(ctr["_series"]["se"]), 1.0 / ctr["_series"]["se"] ** 2, 0.0),
        "_abs": (float(rt[-1] - rc[-1]), math.sqrt(vt[-1] + vc[-1])),
    }


def _strip(t: dict[str, Any]) -> dict[str, Any]:
    return {k: t[k] for k in ("relative", "relative_ci", "p_value", "sequential")}


def _window(w: tuple[Any, Any] | None) -> list[str] | None:
    return [w[0].isoformat(), w[1].isoformat()] if w else None


def _no_pre_reason(agg: Aggregates) -> str:
    if agg.pre_window is None:
        return "no pre-exposure window (pre_period_days = 0): CTR is not variance-reduced"
    lo, hi = agg.pre_window
    return f"no pre-exposure data in the lake for {lo.isoformat()}..{hi.isoformat()}: CTR is not variance-reduced"


def _user_level(ctr: dict[str, Any], cfg: ReportConfig, cuped: bool) -> dict[str, Any]:
    lift = {"relative": ctr["relative"], "relative_ci": ctr["relative_ci"]}
    t, c = ctr["treatment"], ctr["control"]
    lift["absolute"] = num(t - c) if t is not None and c is not None else None
    return {
        "test": "ratio z-test on log(CTR_t / CTR_c), delta-method variance, users = randomisation unit"
        + (", CUPED-adjusted" if cuped else ""),
        "cuped": cuped,
        "z": ctr["z"],
        "p_value": ctr["p_value"],
        "lift": lift,
        "sequential": {"method": "mSPRT normal mixture on the log ratio", "tau": cfg.tau} | ctr["sequential"],
    }


# --------------------------------------------------------------------------- guardrails


def guardrails(comp: dict[str, Any], cfg: ReportConfig, n_treatments: int) -> list[dict[str, Any]]:
    """Sequential non-inferiority per guardrail metric: the always-valid CI of log(t/c) at level
    alpha / (arms x guardrails) (Bonferroni: one family across all of them) against log(1 - margin).
    harmed: the whole interval lies below -margin; non-inferior: it lies above; else inconclusive."""
    out = []
    family = max(n_treatments * len(cfg.guardrails), 1)
    a = cfg.alpha / family
    for metric, margin in cfg.guardrails.items():
        t = comp["metrics"].get(metric)
        if t is None:
            out.append({"metric": metric, "margin": margin, "status": "no data", "alpha": a})
            continue
        s = t["_series"]
        lo, hi = S.msprt_ci(np.nan_to_num(s["d"]), np.where(np.isfinite(s["d"]), s["se"] ** 2, np.inf), cfg.tau, a)
        bound = math.log1p(-margin) if margin < 1 else -math.inf
        status = "harmed" if hi[-1] < bound else "non-inferior" if lo[-1] > bound else "inconclusive"
        out.append(
            {
                "metric": metric,
                "margin": margin,
                "alpha": a,
                "status": status,
                "relative": t["relative"],
                "always_valid_ci": [num(math.expm1(lo[-1])), num(math.expm1(hi[-1]))],
            }
        )
    return out


# --------------------------------------------------------------------------- novelty


def novelty(agg: Aggregates, arm: str, cfg: ReportConfig) -> dict[str, Any]:
    """Does the relative lift trend with days since first exposure? WLS slope z-test over exposure days
    with at least `novelty_min_users` users in both arms; flagged when p < alpha and the trend shrinks the
    lift. Fewer than 3 such days: not testable (flagged None, never "no")."""
    test = "WLS of daily lift on days since first exposure, user-clustered (delta-method) standard error"
    mom = agg.novelty.set_index(["arm", "k"])
    rows = {}
    for a in (arm, cfg.control):
        if a not in mom.index.get_level_values(0):
            return {"test": test, "testable": False, "flagged": None, "p_value": None, "exposure_days_used": 0}
        mm = mom.loc[a]
        r, v = S.ratio_moments(mm["n"], mm["s_num"], mm["s_den"], mm["s_num2"], mm["s_den2"], mm["s_numden"])
        rows[a] = pd.DataFrame({"n": mm["n"], "r": r, "v": v})
    j = rows[arm].join(rows[cfg.control], lsuffix="_t", rsuffix="_c", how="inner")
    j = j[(j["n_t"] >= cfg.novelty_min_users) & (j["n_c"] >= cfg.novelty_min_users) & (j["r_c"] > 0)]
    rel = j["r_t"] / j["r_c"] - 1
    tr = S.trend_test(
        j.index.to_numpy(float), rel.to_numpy(), S.relative_lift_var(j["r_t"], j["v_t"], j["r_c"], j["v_c"])
    )
    if not math.isfinite(tr.p_value):
        return {
            "test": test,
            "testable": False,
            "flagged": None,
            "p_value": None,
            "exposure_days_used": tr.n_points,
            "why": f"{tr.n_points} exposure day(s) with >= {cfg.novelty_min_users} users per arm; 3 needed",
        }
    var_k = S.relative_lift_var(j["r_t"], j["v_t"], j["r_c"], j["v_c"])
    se = _clustered_slope_se(agg.novelty_cross, mom, arm, cfg.control, j, var_k)
    z = tr.slope / se if se > 0 else math.nan
    p = float(2 * st.norm.sf(abs(z))) if math.isfinite(z) else math.nan
    tr = S.Trend(tr.slope, se, z, p, tr.n_points)
    overall = (rel * j["n_t"]).sum() / max(j["n_t"].sum(), 1)
    flagged = bool(math.isfinite(p) and p < cfg.alpha and np.sign(tr.slope) != np.sign(overall))
    return {
        "test": test,
        "testable": True,
        "slope_per_day": num(tr.slope),
        "z": num(tr.z),
        "p_value": num(tr.p_value),
        "exposure_days_used": tr.n_points,
        "flagged": flagged,
    }


def _clustered_slope_se(
    cross: pd.DataFrame, mom: pd.DataFrame, arm: str, control: str, j: pd.DataFrame, var_k: Any
) -> float:
    """Standard error of the WLS slope with users as clusters. The daily lifts share users (a user is on
    exposure days 0, 1, 2, ...), so the slope's textbook variance, which treats days as independent, is
    too small (13 % false alarms in a simulated A/A at alpha 5 %). The slope is linear in the daily lifts,
    b = sum_k g_k y_k, and each y_k = R_t,k / R_c,k - 1 is linearised in users' clicks and impressions
    (delta method), so b ~ sum over users of their influence phi_i; Var(b) = sum phi_i^2 (users independent).

    phi_i = sum_k (a_k c_ik + b_k n_ik) (c, n: user i's clicks and impressions k days after their first
    exposure; a_k, b_k per arm), so sum_i phi_i^2 = a'CC a + 2 a'CN b + b'NN b with the per-arm sums over users
    CC[k, k2] = sum c_ik c_ik2, CN[k, k2] = sum c_ik n_ik2, NN[k, k2] = sum n_ik n_ik2 (`Aggregates.novelty_cross`):
    no per-user table is needed."""
    w = 1.0 / np.asarray(var_k, dtype=float)
    ks = j.index.to_numpy()
    x = ks.astype(float)
    xb = (w @ x) / w.sum()
    g = w * (x - xb) / float(w @ (x - xb) ** 2)
    rt, rc = j["r_t"].to_numpy(float), j["r_c"].to_numpy(float)
    total = 0.0
    for a in (arm, control):
        den = mom.loc[a]["s_den"].reindex(ks).to_numpy(float)  # the arm's impressions k days after exposure
        if a == arm:  # influence of a treatment user on R_t,k / R_c,k: (c - R_t n) / den_t / R_c
            coef_c, coef_n = 1.0 / (den * rc), -rt / (den * rc)
        else:  # of a control user: -(R_t / R_c^2) (c - R_c n) / den_c
            coef_c, coef_n = -rt / (rc**2 * den), rt / (rc * den)
        va, vb = g * coef_c, g * coef_n
        cr = cross[(cross["arm"] == a) & cross["k"].isin(ks) & cross["k2"].isin(ks)]
        pos = pd.Index(ks)
        ii, jj = pos.get_indexer(cr["k"]), pos.get_indexer(cr["k2"])
        mats = {}
        for name in ("cc", "cn", "nn"):
            mat = np.zeros((len(ks), len(ks)))
            mat[ii, jj] = cr[name].to_numpy(float)
            mats[name] = mat
        total += va @ mats["cc"] @ va + 2 * va @ mats["cn"] @ vb + vb @ mats["nn"] @ vb
    return float(np.sqrt(max(total, 0.0)))


# --------------------------------------------------------------------------- breakdowns


def breakdowns(segments: pd.DataFrame, arm: str, cfg: ReportConfig) -> list[dict[str, Any]]:
    """User-level CTR per page type, device and new/returning user (fixed-horizon log-ratio test; the
    exploratory family is BH-adjusted later), from each segment's per-arm sums over users
    (`Aggregates.segments`). A segment with fewer than `min_segment_users` users in an arm is listed without a
    test. Segments never decide."""
    out = []
    seg = segments[segments["arm"].isin([arm, cfg.control])]
    for (dim, value), g in seg.groupby(["dimension", "value"], observed=True, sort=True):
        row: dict[str, Any] = {"dimension": dim, "value": value}
        stats = {}
        for a, key in ((arm, "treatment"), (cfg.control, "control")):
            ga = g[g["arm"] == a]
            n = int(ga["users"].sum())
            row[f"users_{key}"] = n
            if n >= max(cfg.min_segment_users, 2) and ga["s_imps"].sum() > 0:
                stats[key] = S.ratio_moments(
                    n, *(float(ga[c].sum()) for c in ("s_clicks", "s_imps", "s_clicks2", "s_imps2", "s_ci"))
                )
        if len(stats) == 2:
            (tr, tv), (cr, cv) = stats["treatment"], stats["control"]
            lf = S.log_ratio_lift(float(tr), float(tv), float(cr), float(cv), cfg.alpha)
            row |= {
                "ctr_treatment": num(tr),
                "ctr_control": num(cr),
                "relative": num(lf.relative),
                "relative_ci": [num(lf.relative_ci[0]), num(lf.relative_ci[1])],
                "p_value": num(lf.p_value),
            }
        else:
            row |= {"p_value": None, "why": f"fewer than {cfg.min_segment_users} users in an arm"}
        out.append(row)
    return out


# --------------------------------------------------------------------------- power


def power_table(comp: dict[str, Any], cfg: ReportConfig, days_with_data: int, n_treatments: int) -> dict[str, Any]:
    """The mSPRT's power and days left at the current traffic (`power.plan`), at the per-comparison level
    the decision family uses (alpha / arms: Holm's first step)."""
    info = comp["_info"]
    days = np.asarray(comp.get("_days_with_data_index", np.arange(info.size)))
    observed = info[days] if days.size else info
    return P.plan(
        observed,
        days_with_data,
        target_relative_mde=cfg.target_relative_mde,
        planned_days=cfg.planned_days,
        min_days=cfg.min_days,
        tau=cfg.tau,
        alpha=cfg.alpha / max(n_treatments, 1),
        power=cfg.power,
    )
