"""The promotion gate's statistics: a candidate against the champion on the same users, with confidence.

Both models rank the same evaluation window (the test side of the job's leave-one-out split), so each user
contributes a pair (candidate metric, champion metric). `paired_bootstrap` resamples *users* (the pairs
together) and reads the percentile interval of the relative change of the mean,

    rel = mean(candidate) / mean(champion) - 1,

and `decide` rejects when the interval's upper bound is below -margin: the data say, at level 1 - alpha,
that the candidate is worse by more than the margin. A candidate that merely cannot be shown equal (a wide
interval on a small window) passes; one that is clearly worse is stopped however small the window. The
statistic is a ratio of sums (`num` / `den` per unit), so the same function serves the off-policy check
(per-request SNIPS sums, `reco.experiments.offpolicy.request_sums`).

**Default margin 0.05 (5 % relative).** On MovieLens-100k's 943 test users the 95 % interval of the relative
NDCG@10 change between two models is about +-10 % around the point (docs/benchmarks.md, "Promotion gate"),
and retraining the same data with another seed moves NDCG@10 by +3.6 % +- 4.3 % (3 seeds). So an equivalent
model is rejected only if its point estimate falls about 15 % below the champion's, far outside seed noise,
while a candidate that is clearly worse by more than 5 % is stopped; being relative, the margin means the
same on NDCG 0.05 and 0.3 (the old absolute 0.01 was 13 % of the benchmark's 0.0755 and 20-30 % of the
demo's values). A DAG param (`gate_margin`) sets it per run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DEFAULT_MARGIN = 0.05
N_RESAMPLES = 2000
#: Logged requests from which the off-policy check gates (below, it is reported only): with fewer, the paired
#: interval of the SNIPS CTR change is wider than any margin worth setting (docs/architecture.md).
OFFPOLICY_MIN_REQUESTS = 1000


@dataclass(frozen=True)
class PairedComparison:
    """Candidate vs champion on the same units: means, relative change and its bootstrap interval."""

    metric: str
    candidate: float
    champion: float
    relative_change: float
    ci: tuple[float, float]
    n: int
    alpha: float
    n_resamples: int

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["ci"] = list(self.ci)
        return d


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / den


def paired_bootstrap(
    metric: str,
    candidate: np.ndarray,
    champion: np.ndarray,
    candidate_den: np.ndarray | None = None,
    champion_den: np.ndarray | None = None,
    *,
    alpha: float = 0.05,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> PairedComparison:
    """Percentile bootstrap over units (resampled in pairs) of sum(c)/sum(c_den) / (sum(h)/sum(h_den)) - 1.

    Without denominators each unit weighs one (the relative change of the means). A champion mean of 0 makes
    the relative change undefined: NaN, and `decide` does not reject on it (nor on an infinite upper bound).

    >>> c = paired_bootstrap("ndcg@10", np.array([0.5, 0.2, 0.0, 0.3]), np.array([0.5, 0.4, 0.1, 0.3]))
    >>> round(c.relative_change, 3), c.ci[0] < c.relative_change < c.ci[1]
    (-0.231, True)
    """
    c = np.asarray(candidate, dtype=np.float64)
    h = np.asarray(champion, dtype=np.float64)
    if c.shape != h.shape or c.ndim != 1 or c.size == 0:
        raise ValueError("candidate and champion need one value per unit, the same units, at least one")
    cd = np.ones_like(c) if candidate_den is None else np.asarray(candidate_den, dtype=np.float64)
    hd = np.ones_like(h) if champion_den is None else np.asarray(champion_den, dtype=np.float64)
    rng = np.random.default_rng(seed)
    point = float(_ratio(_ratio(c.sum(), cd.sum()), _ratio(h.sum(), hd.sum())) - 1.0)
    point = point if np.isfinite(point) else float("nan")
    rel = np.empty(n_resamples)
    chunk = max(1, 4_000_000 // c.size)  # bounded memory: resample index blocks of ~4M entries
    for lo in range(0, n_resamples, chunk):
        idx = rng.integers(0, c.size, size=(min(chunk, n_resamples - lo), c.size))
        num, den = _ratio(c[idx].sum(1), cd[idx].sum(1)), _ratio(h[idx].sum(1), hd[idx].sum(1))
        # A resample whose champion mean is 0 (few hits on a small window): +inf when the candidate has
        # some, no change when neither has; nearest-rank quantiles below keep the interval defined.
        rel[lo : lo + len(idx)] = np.where(den > 0, _ratio(num, den) - 1, np.where(num > 0, np.inf, 0.0))
    if np.isfinite(point) and not np.isnan(rel).any():
        q = np.quantile(rel, [alpha / 2, 1 - alpha / 2], method="inverted_cdf")
        ci = (float(q[0]), float(q[1]))
    else:
        ci = (float("nan"), float("nan"))
    return PairedComparison(metric, float(_ratio(c.sum(), cd.sum())), float(_ratio(h.sum(), hd.sum())),
                            float(point), ci, int(c.size), alpha, n_resamples)  # fmt: skip


def user_metrics(ranks: np.ndarray, k: int = 10) -> dict[str, np.ndarray]:
    """Per-user NDCG@k and Recall@k from 0-based target ranks (one relevant item per user); their means
    are `reco.offline.evaluation.ranking_metrics`.

    >>> {m: v.round(4).tolist() for m, v in user_metrics(np.array([0, 1, 12])).items()}
    {'ndcg@10': [1.0, 0.6309, 0.0], 'recall@10': [1.0, 1.0, 0.0]}
    """
    ranks = np.asarray(ranks)
    hit = ranks < k
    return {f"ndcg@{k}": np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0), f"recall@{k}": hit.astype(np.float64)}


def compare_ranks(
    candidate_ranks: np.ndarray, champion_ranks: np.ndarray, k: int = 10, alpha: float = 0.05, seed: int = 0
) -> dict[str, dict[str, object]]:
    """Paired bootstrap of NDCG@k (the gated metric) and Recall@k (reported) from each model's per-user
    ranks on the same users, keyed by metric."""
    cand, champ = user_metrics(candidate_ranks, k), user_metrics(champion_ranks, k)
    return {m: paired_bootstrap(m, cand[m], champ[m], alpha=alpha, seed=seed).as_dict() for m in cand}


def decide(comparison: dict[str, object], margin: float) -> str | None:
    """The rejection reason when the interval's upper bound of the relative change is below -margin.

    >>> decide({"metric": "ndcg@10", "relative_change": -0.3, "ci": [-0.4, -0.2], "n": 900,
    ...         "candidate": 0.07, "champion": 0.1}, 0.05)
    'ndcg@10 -30.0% [-40.0%, -20.0%] vs champion (0.0700 vs 0.1000, 900 paired units): upper bound below -5.0%'
    >>> decide({"metric": "ndcg@10", "relative_change": -0.1, "ci": [-0.3, 0.1], "n": 9,
    ...         "candidate": 0.09, "champion": 0.1}, 0.05) is None
    True
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    lo, hi = comparison["ci"]  # type: ignore[misc]
    if not np.isfinite(hi) or hi >= -margin:
        return None
    return (f"{comparison['metric']} {comparison['relative_change']:+.1%} [{lo:+.1%}, {hi:+.1%}] vs champion "
            f"({comparison['candidate']:.4f} vs {comparison['champion']:.4f}, {comparison['n']} paired units): "
            f"upper bound below {-margin:+.1%}")  # fmt: skip


def summary(comparison: dict[str, object] | None) -> str:
    """One line: the relative change and its interval.

    >>> summary({"metric": "recall@10", "relative_change": 0.02, "ci": [-0.05, 0.09], "n": 9,
    ...          "candidate": 0.2, "champion": 0.196})
    'recall@10 +2.0% [-5.0%, +9.0%]'
    """
    if not comparison:
        return "no champion"
    lo, hi = comparison["ci"]  # type: ignore[misc]
    return f"{comparison['metric']} {comparison['relative_change']:+.1%} [{lo:+.1%}, {hi:+.1%}]"


def offpolicy_metrics(offpolicy: dict[str, Any]) -> dict[str, float]:
    """Flat `offpolicy_*` metrics of an estimate (finite values only; none without logged traffic).

    >>> offpolicy_metrics({"status": "none", "reason": "no impressions"})
    {}
    """
    if offpolicy.get("status") != "estimated":
        return {}
    out = {"offpolicy_n": float(offpolicy["logged"]["impressions"]),
           "offpolicy_requests": float(offpolicy["logged"]["requests"]),
           "offpolicy_logged_ctr": offpolicy["logged"]["ctr"]}  # fmt: skip
    for m in ("snips", "ips", "dr"):
        if m in offpolicy:
            e = offpolicy[m]
            out |= {f"offpolicy_{m}_ctr": e["value"], f"offpolicy_{m}_ci_low": e["ci"][0],
                    f"offpolicy_{m}_ci_high": e["ci"][1]}  # fmt: skip
    out["offpolicy_ess"] = offpolicy["ips"]["effective_sample_size"]
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}


def offpolicy_summary(offpolicy: dict[str, Any] | None) -> str:
    """One line for the gate's output and logs.

    >>> offpolicy_summary(None)
    'none (not evaluated)'
    """
    if not offpolicy or offpolicy.get("status") != "estimated":
        return f"none ({(offpolicy or {}).get('reason', 'not evaluated')})"
    s, lg = offpolicy.get("snips") or offpolicy["ips"], offpolicy["logged"]
    vs = offpolicy.get("vs_champion")
    return (f"{s['method']} CTR {s['value']:.4f} [{s['ci'][0]:.4f}, {s['ci'][1]:.4f}] vs logged {lg['ctr']:.4f} "
            f"({lg['impressions']} impressions, {lg['requests']} requests, "
            f"ESS {s['effective_sample_size']:.0f}, tau {offpolicy['policy']['tau']})"
            + (f"; vs champion {summary(vs)}" if vs else ""))  # fmt: skip
