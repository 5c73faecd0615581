"""Off-policy estimates of a candidate policy's CTR from impressions logged with propensities.

Each logged impression i was shown by the logging policy with probability ``p_i`` (the event's
`propensity`) and was clicked (``r_i`` = 1) or not. A candidate policy would have shown the same item
in the same slot with probability ``q_i``. With importance weights ``w_i = q_i / p_i``:

* IPS: ``mean(w r)``, CI from the sample variance of ``w r`` (CLT);
* SNIPS: ``sum(w r) / sum(w)``, CI from the delta method (biased but much lower variance);
* DR: ``mean(dm_i + w_i (r_i - rhat_i))`` where ``rhat_i`` is a reward model's prediction for the logged
  action and ``dm_i`` its expected reward under the candidate policy in the same context.

All CIs are normal (Wald) intervals at level ``1 - alpha``. With ``groups`` (e.g. the request id of each
row) the standard errors treat groups, not rows, as the independent units (rows of one request share a
user and a slate, so they are correlated); without, rows are independent.

`slate_policy_value` evaluates a ranking policy on logged slates (the training gate's use): see its
docstring for the candidate policy and the estimand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats as st

from reco.data.events import DEFAULT_DEVICE


@dataclass(frozen=True)
class OffPolicyEstimate:
    method: str
    value: float
    se: float
    ci: tuple[float, float]
    n: int
    effective_sample_size: float  # (sum w)^2 / sum w^2: how many logged rows the estimate is worth

    def as_dict(self) -> dict[str, object]:
        return {"method": self.method, "value": self.value, "se": self.se, "ci": list(self.ci), "n": self.n,
                "effective_sample_size": self.effective_sample_size}  # fmt: skip


def _weights(logging_propensity: np.ndarray, target_propensity: np.ndarray) -> np.ndarray:
    p = np.asarray(logging_propensity, dtype=float)
    q = np.asarray(target_propensity, dtype=float)
    if p.shape != q.shape or p.size == 0:
        raise ValueError("logging and target propensities must be non-empty arrays of the same shape")
    if not np.all((p > 0) & (p <= 1)):
        raise ValueError("logging propensities must lie in (0, 1]")
    if not np.all((q >= 0) & (q <= 1)):
        raise ValueError("target propensities must lie in [0, 1]")
    return q / p


def _group_sums(x: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """Per-group sums of x (x itself when there are no groups)."""
    if groups is None:
        return x
    _, inv = np.unique(groups, return_inverse=True)
    return np.bincount(inv.ravel(), weights=x)


def _ratio_se(num: np.ndarray, den: np.ndarray, groups: np.ndarray | None) -> float:
    """Delta-method standard error of sum(num) / sum(den) over independent groups (G / (G - 1) corrected)."""
    v = num.sum() / den.sum()
    e = _group_sums(num - v * den, groups)
    g = e.size
    return float(np.sqrt((e**2).sum() * g / (g - 1)) / den.sum()) if g > 1 else float("inf")


def _result(method: str, value: float, se: float, n: int, w: np.ndarray, alpha: float) -> OffPolicyEstimate:
    z = st.norm.ppf(1 - alpha / 2)
    ess = float(w.sum() ** 2 / (w**2).sum()) if (w**2).sum() > 0 else 0.0
    return OffPolicyEstimate(method, float(value), float(se), (float(value - z * se), float(value + z * se)), n, ess)


def ips(rewards: np.ndarray, logging_propensity: np.ndarray, target_propensity: np.ndarray,
        alpha: float = 0.05, groups: np.ndarray | None = None) -> OffPolicyEstimate:  # fmt: skip
    """Inverse propensity scoring.

    >>> e = ips(np.array([1.0, 0, 1, 0]), np.array([0.5, 0.5, 0.25, 0.5]), np.array([0.5, 1, 0.5, 0]))
    >>> round(e.value, 3), e.ci[0] < e.value < e.ci[1]
    (0.75, True)
    """
    w = _weights(logging_propensity, target_propensity)
    x = w * np.asarray(rewards, dtype=float)
    return _result("ips", x.mean(), _ratio_se(x, np.ones_like(x), groups), x.size, w, alpha)


def snips(rewards: np.ndarray, logging_propensity: np.ndarray, target_propensity: np.ndarray,
          alpha: float = 0.05, groups: np.ndarray | None = None) -> OffPolicyEstimate:  # fmt: skip
    """Self-normalised IPS with a delta-method standard error.

    >>> e = snips(np.array([1.0, 0, 1, 0]), np.array([0.5, 0.5, 0.25, 0.5]), np.array([0.5, 1, 0.5, 0]))
    >>> round(e.value, 3)
    0.6
    """
    w = _weights(logging_propensity, target_propensity)
    r = np.asarray(rewards, dtype=float)
    if w.sum() <= 0:
        raise ValueError("the target policy puts no weight on any logged impression")
    v = float((w * r).sum() / w.sum())
    # delta method for a ratio of means: Var = sum(w^2 (r - v)^2) / (sum w)^2, with the n/(n-1) correction
    return _result("snips", v, _ratio_se(w * r, w, groups), r.size, w, alpha)


def doubly_robust(
    rewards: np.ndarray,
    logging_propensity: np.ndarray,
    target_propensity: np.ndarray,
    reward_hat_logged: np.ndarray,
    reward_hat_target: np.ndarray,
    alpha: float = 0.05,
    groups: np.ndarray | None = None,
) -> OffPolicyEstimate:
    """Doubly robust: the reward model's value under the target policy plus an IPS correction of its error.

    ``reward_hat_logged[i]``: predicted click probability of the logged item; ``reward_hat_target[i]``:
    expected predicted reward of what the target policy would show in the same context.

    >>> e = doubly_robust(np.array([1.0, 0]), np.array([0.5, 0.5]), np.array([0.5, 0.5]),
    ...                   np.array([0.5, 0.5]), np.array([0.5, 0.5]))
    >>> round(e.value, 3)
    0.5
    """
    w = _weights(logging_propensity, target_propensity)
    r = np.asarray(rewards, dtype=float)
    x = np.asarray(reward_hat_target, dtype=float) + w * (r - np.asarray(reward_hat_logged, dtype=float))
    return _result("dr", x.mean(), _ratio_se(x, np.ones_like(x), groups), x.size, w, alpha)


def logged_impressions(events: pa.Table) -> pa.Table:
    """Impressions with a propensity, each with ``clicked`` (1 when a click with the same
    (request_id, item_id) exists): the input of the estimators. Duplicated event_ids count once.

    >>> import datetime as dt
    >>> ts = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    >>> rows = [dict(event_id="a", ts=ts, user_id="u", item_id="i", event_type="impression", request_id="r",
    ...              propensity=0.5), dict(event_id="b", ts=ts, user_id="u", item_id="i", event_type="click",
    ...              request_id="r", propensity=None)]
    >>> logged_impressions(pa.Table.from_pylist(rows)).column("clicked").to_pylist()
    [1]
    """
    from reco.experiments.aggregate import dedup_events

    events = dedup_events(events)
    kind = events.column("event_type")
    prop = events.column("propensity")  # null, or NaN in files written from pandas: not logged
    logged = pc.and_(pc.is_valid(prop), pc.invert(pc.is_nan(prop)))
    imps = events.filter(pc.and_(pc.equal(kind, "impression"), pc.fill_null(logged, False)))
    keys = events.filter(pc.equal(kind, "click")).select(["request_id", "item_id"])
    keys = keys.group_by(["request_id", "item_id"]).aggregate([])
    keys = keys.append_column("_hit", pa.array(np.ones(keys.num_rows, dtype=np.int8)))
    imps = imps.append_column("_row", pa.array(np.arange(imps.num_rows)))
    joined = imps.join(keys, keys=["request_id", "item_id"], join_type="left outer").sort_by("_row")
    joined = joined.append_column("clicked", pc.cast(pc.is_valid(joined.column("_hit")), pa.int64()))
    # rows keep the logged order, so a candidate's propensities can be computed row by row alongside
    return joined.drop_columns(["_hit", "_row"])


def estimate_policy_value(
    impressions: pa.Table,
    target_propensity: np.ndarray,
    reward_hat_logged: np.ndarray | None = None,
    reward_hat_target: np.ndarray | None = None,
    alpha: float = 0.05,
) -> dict[str, dict[str, object]]:
    """IPS, SNIPS (and DR when a reward model's predictions are given) for the rows of
    `logged_impressions`, keyed by method; what the training gate reports for a candidate."""
    r = impressions.column("clicked").to_numpy().astype(float)
    p = impressions.column("propensity").to_numpy()
    out = {
        "ips": ips(r, p, target_propensity, alpha).as_dict(),
        "snips": snips(r, p, target_propensity, alpha).as_dict(),
    }
    if reward_hat_logged is not None and reward_hat_target is not None:
        out["dr"] = doubly_robust(r, p, target_propensity, reward_hat_logged, reward_hat_target, alpha).as_dict()
    out["logged_ctr"] = {"method": "on-policy mean", "value": float(r.mean()), "n": int(r.size)}
    return out


# --------------------------------------------------------------------------- ranking policies on logged slates

#: Session items the served ranker sees (reco.ranking.recommend.MAX_SESSION).
MAX_SESSION = 50
#: Event types that make up a session's history in serving (the store's session list).
SESSION_EVENTS = ("view", "click")


@dataclass(frozen=True)
class LoggedSlates:
    """Logged requests with their served slates, in logged position order.

    Row i of `impressions` (columns of `logged_impressions`) is slot ``i - offsets[r]`` of request r, where
    ``offsets[r] <= i < offsets[r + 1]``; `sessions[r]` is what the ranker saw: the session's view/click
    items before the request, oldest first (at most `MAX_SESSION`)."""

    impressions: pa.Table
    offsets: np.ndarray
    request_ids: list[str]
    sessions: list[list[str]]
    page_types: list[str]
    devices: list[str]

    @property
    def n_requests(self) -> int:
        return len(self.offsets) - 1

    @property
    def request_of_row(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_requests), np.diff(self.offsets))

    def slates(self) -> list[list[str]]:
        items = self.impressions.column("item_id").to_pylist()
        return [items[a:b] for a, b in pairwise(self.offsets)]


def logged_slates(events: pa.Table, max_session: int = MAX_SESSION) -> LoggedSlates | None:
    """Group the logged impressions (with propensities, request_id and position) by request, in position
    order, and rebuild each request's session from the log: the view/click events of the same session_id
    strictly before the request's first impression (the request-context record is gone by now). None when
    the events hold no such impression (e.g. MovieLens ratings)."""
    needed = {"request_id", "position", "propensity", "session_id"}
    if missing := needed - set(events.column_names):
        raise ValueError(f"events lack column(s) {sorted(missing)} needed for the off-policy estimate")
    imps = logged_impressions(events)
    imps = imps.filter(pc.and_(pc.is_valid(imps.column("request_id")), pc.is_valid(imps.column("position"))))
    if imps.num_rows == 0:
        return None
    imps = imps.sort_by([("request_id", "ascending"), ("position", "ascending")])
    rid = imps.column("request_id").to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, rid[1:] != rid[:-1]])
    offsets = np.r_[starts, len(rid)]
    ts = imps.column("ts").cast(pa.int64()).to_numpy()
    req_ts = np.minimum.reduceat(ts, starts)
    first = imps.take(pa.array(starts))

    def col(name: str, default: str) -> list[str]:
        if name not in first.column_names:
            return [default] * len(starts)
        return [default if v is None else str(v) for v in first.column(name).to_pylist()]

    sessions = _histories(events, first.column("session_id").to_pylist(), req_ts, max_session)
    return LoggedSlates(
        imps, offsets, col("request_id", ""), sessions, col("page_type", "home"), col("device", DEFAULT_DEVICE)
    )


def _histories(events: pa.Table, session_ids: list[str | None], before: np.ndarray, cap: int) -> list[list[str]]:
    """Per request: items of its session's view/click events with ts < `before` (oldest first, last `cap`)."""
    hist = events.filter(pc.and_(pc.is_in(events.column("event_type"), pa.array(SESSION_EVENTS)),
                                 pc.is_valid(events.column("session_id"))))  # fmt: skip
    hist = hist.select(["session_id", "ts", "item_id"]).sort_by([("session_id", "ascending"), ("ts", "ascending")])
    sid = hist.column("session_id").to_numpy(zero_copy_only=False)
    hts = hist.column("ts").cast(pa.int64()).to_numpy()
    items = hist.column("item_id").to_pylist()
    bounds = {}
    if len(sid):
        cut = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1], True])
        bounds = {sid[a]: (a, b) for a, b in pairwise(cut)}
    out = []
    for s, t in zip(session_ids, before, strict=True):
        a, b = bounds.get(s, (0, 0))
        end = a + int(np.searchsorted(hts[a:b], t, side="left"))  # strictly before the request
        out.append(items[max(a, end - cap) : end])
    return out


def plackett_luce_propensities(scores: np.ndarray, tau: float) -> np.ndarray:
    """Per slot j of each row (a slate in logged order, NaN = padding): the probability that a Plackett-Luce
    ranking with temperature `tau` over the slate puts item j at slot j given the items logged above it,
    ``exp(s_j / tau) / sum_{l >= j} exp(s_l / tau)``. ``tau = 0`` is the greedy ranking (1 when item j
    scores highest among the items from slot j on; ties share). Padding -> NaN.

    >>> plackett_luce_propensities(np.array([[1.0, 0.0, np.nan]]), 1.0).round(3)
    array([[0.731, 1.   ,   nan]])
    >>> plackett_luce_propensities(np.array([[0.0, 1.0]]), 0.0)
    array([[0., 1.]])
    """
    s = np.asarray(scores, dtype=float)
    pad = np.isnan(s)
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    if tau == 0:
        masked = np.where(pad, -np.inf, s)
        best = np.flip(np.maximum.accumulate(np.flip(masked, 1), axis=1), 1)  # max over slots j..end
        k = s.shape[1]
        later = np.triu(np.ones((k, k), dtype=bool))  # later[j, l]: l >= j
        ties = ((masked[:, None, :] == best[:, :, None]) & later[None]).sum(-1)
        return np.where(pad, np.nan, (masked == best) / np.maximum(ties, 1))
    z = np.where(pad, -np.inf, s / tau)
    # log sum_{l >= j} exp(z_l): reverse cumulative logaddexp, stable for large scores
    tail = np.flip(np.logaddexp.accumulate(np.flip(z, 1), axis=1), 1)
    with np.errstate(invalid="ignore"):  # padding: -inf - -inf
        return np.where(pad, np.nan, np.exp(z - tail))


#: score_batch(sessions, candidates per session, page_type, device) -> (scores (n, k), ...): `ModelBundle.score_batch`
ScoreBatch = Callable[..., tuple[np.ndarray, object]]


def score_slates(score_batch: ScoreBatch, logged: LoggedSlates, batch: int = 512, pad_id: str = "<pad>") -> np.ndarray:
    """The candidate's scores of every logged slate, (n_requests, longest slate), NaN past a slate's end.
    Requests are scored in batches of one (page_type, device) context, slates padded with `pad_id`."""
    slates = logged.slates()
    width = max(len(x) for x in slates)
    out = np.full((len(slates), width), np.nan)
    by_ctx: dict[tuple[str, str], list[int]] = {}
    for r, ctx in enumerate(zip(logged.page_types, logged.devices, strict=True)):
        by_ctx.setdefault(ctx, []).append(r)
    for (page, device), rows in by_ctx.items():
        for i in range(0, len(rows), batch):
            chunk = rows[i : i + batch]
            cands = [slates[r] + [pad_id] * (width - len(slates[r])) for r in chunk]
            scores = np.asarray(score_batch([logged.sessions[r] for r in chunk], cands, page, device)[0], dtype=float)
            for b, r in enumerate(chunk):
                out[r, : len(slates[r])] = scores[b, : len(slates[r])]
    return out


def slate_policy_value(
    logged: LoggedSlates, scores: np.ndarray, tau: float = 1.0, alpha: float = 0.05,
    max_weight: float | None = None,
) -> dict[str, object]:  # fmt: skip
    """IPS, SNIPS and DR estimates of the per-impression CTR a ranking policy would get on the logged requests.

    **The candidate policy** ranks each logged request's served slate (the items shown, nothing else: the
    log says nothing about items never shown) by Plackett-Luce sampling over its `scores` with temperature
    `tau` (`tau = 0`: its greedy ranking). Its propensity of the logged item at slot j given the items
    logged above is `plackett_luce_propensities`, the same conditional the serving policies log
    (`reco.ranking.bandits`: P(item at slot | items still unplaced)). The weight of slot j is the ratio of the two
    policies' probabilities of the logged ranking down to slot j, ``W_j = prod_{l <= j} q_l / p_l`` (the
    reward at slot j depends on what is above it), so

    * IPS = sum W r / N (N impressions), SNIPS = sum W r / sum W,
    * DR = sum (W_{j-1} rhat_j + W_j (r_j - rhat_j)) / N with a position-baseline reward model
      (rhat_j = the logged CTR of slot j; W_0 = 1),

    with delta-method CIs that treat requests as the independent units. The estimand is the expected
    clicks per impression when the candidate orders the same slates. It is unbiased when the logging policy
    ordered a fixed slate (a simulation's case); in serving, where the slate is itself the logging policy's
    pick from a longer candidate list, it values the candidate's re-ranking of what was shown.
    `max_weight` clips W (less variance, some bias; None = no clipping).
    """
    r, p, req, slot = _logged_arrays(logged)
    q = plackett_luce_propensities(scores, tau)[req, slot]
    if np.isnan(q).any():
        raise ValueError("the candidate's scores do not cover every logged slot")
    out = slate_estimates(r, p, q, req, slot, alpha, max_weight)
    out["policy"] = {"kind": "plackett-luce over the logged slate" if tau > 0 else "greedy over the logged slate",
                     "tau": tau, "max_weight": max_weight}  # fmt: skip
    return out


def _logged_arrays(logged: LoggedSlates) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rewards, logged propensities, request index and slot of every logged row."""
    imps = logged.impressions
    r = imps.column("clicked").to_numpy().astype(float)
    p = imps.column("propensity").to_numpy().astype(float)
    if not np.all((p > 0) & (p <= 1)):
        raise ValueError("logging propensities must lie in (0, 1]")
    req = logged.request_of_row
    return r, p, req, np.arange(len(r)) - logged.offsets[req]


def prefix_weights(p: np.ndarray, q: np.ndarray, req: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """W of each row: the product of q / p over its request's slots up to and including its own (rows of a
    request contiguous, in slot order): the ratio of the two policies' probabilities of the logged prefix.

    >>> prefix_weights(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.25, 1.0]), np.array([0, 0, 1]),
    ...                np.array([0, 1, 0])).tolist()
    [2.0, 1.0, 1.0]
    """
    n_req, width = int(req.max()) + 1, int(slot.max()) + 1
    ratio = np.ones((n_req, width))
    ratio[req, slot] = np.asarray(q, dtype=float) / np.asarray(p, dtype=float)
    return np.cumprod(ratio, axis=1)[req, slot]


def slate_estimates(
    r: np.ndarray, p: np.ndarray, q: np.ndarray, req: np.ndarray, slot: np.ndarray, alpha: float = 0.05,
    max_weight: float | None = None,
) -> dict[str, object]:  # fmt: skip
    """IPS, SNIPS and DR of a target policy's clicks per impression from logged slates, for any pair of
    policies that log and state the same kind of propensity: ``p`` (logged) and ``q`` (target) are each
    policy's P(logged item at its slot | the logged items above it), over the same candidates (see
    `reco.ranking.bandits`: both serving policies log exactly that). With W_j the prefix weight
    (`prefix_weights`), E_log[W_j r_j] = E_target[r_j] whenever the target's slates are possible under the
    logging policy: IPS is unbiased (tests/test_offpolicy.py checks it on a simulator for both serving
    policies), SNIPS consistent. Requests are the independent units of the CIs."""
    w = prefix_weights(p, q, req, slot)
    if max_weight is not None:
        w = np.minimum(w, max_weight)
    w_prev = np.where(slot == 0, 1.0, np.r_[1.0, w[:-1]])
    rhat = np.bincount(slot, weights=r) / np.bincount(slot)
    rj = rhat[slot]
    n, ones = len(r), np.ones(len(r))
    out: dict[str, object] = {
        "ips": _result("ips", (w * r).mean(), _ratio_se(w * r, ones, req), n, w, alpha).as_dict(),
    }
    if w.sum() > 0:
        out["snips"] = _result("snips", (w * r).sum() / w.sum(), _ratio_se(w * r, w, req), n, w, alpha).as_dict()
    x = w_prev * rj + w * (r - rj)
    out["dr"] = _result("dr", x.mean(), _ratio_se(x, ones, req), n, w, alpha).as_dict()
    out["dr"]["reward_model"] = "position baseline (logged CTR per slot)"
    out["logged"] = {"ctr": float(r.mean()), "se": _ratio_se(r, ones, req), "impressions": n,
                     "requests": int(req.max()) + 1}  # fmt: skip
    return out


def request_sums(
    logged: LoggedSlates, scores: np.ndarray, tau: float = 1.0, max_weight: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per logged request, sum(W r) and sum(W) under the Plackett-Luce policy of `scores`: SNIPS is
    sum(num) / sum(den), and two policies' sums on the same requests pair up for the promotion gate's
    paired bootstrap (`reco.offline.gate.paired_bootstrap`)."""
    r, p, req, slot = _logged_arrays(logged)
    q = plackett_luce_propensities(scores, tau)[req, slot]
    if np.isnan(q).any():
        raise ValueError("the scores do not cover every logged slot")
    w = prefix_weights(p, q, req, slot)
    if max_weight is not None:
        w = np.minimum(w, max_weight)
    return np.bincount(req, weights=w * r), np.bincount(req, weights=w)
