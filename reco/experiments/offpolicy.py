"""Off-policy estimates of a candidate policy's CTR from impressions logged with propensities.

Each logged impression i was shown by the logging policy with probability ``p_i`` (the event's
`propensity`) and was clicked (``r_i`` = 1) or not. A candidate policy would have shown the same item
in the same slot with probability ``q_i``. With importance weights ``w_i = q_i / p_i``:

* IPS: ``mean(w r)``, CI from the sample variance of ``w r`` (CLT);
* SNIPS: ``sum(w r) / sum(w)``, CI from the delta method (biased but much lower variance);
* DR: ``mean(dm_i + w_i (r_i - rhat_i))`` where ``rhat_i`` is a reward model's prediction for the logged
  action and ``dm_i`` its expected reward under the candidate policy in the same context.

All CIs are normal (Wald) intervals at level ``1 - alpha``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats as st


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


def _result(method: str, value: float, se: float, n: int, w: np.ndarray, alpha: float) -> OffPolicyEstimate:
    z = st.norm.ppf(1 - alpha / 2)
    ess = float(w.sum() ** 2 / (w**2).sum()) if (w**2).sum() > 0 else 0.0
    return OffPolicyEstimate(method, float(value), float(se), (float(value - z * se), float(value + z * se)), n, ess)


def ips(rewards: np.ndarray, logging_propensity: np.ndarray, target_propensity: np.ndarray,
        alpha: float = 0.05) -> OffPolicyEstimate:  # fmt: skip
    """Inverse propensity scoring.

    >>> e = ips(np.array([1.0, 0, 1, 0]), np.array([0.5, 0.5, 0.25, 0.5]), np.array([0.5, 1, 0.5, 0]))
    >>> round(e.value, 3), e.ci[0] < e.value < e.ci[1]
    (0.75, True)
    """
    w = _weights(logging_propensity, target_propensity)
    x = w * np.asarray(rewards, dtype=float)
    n = x.size
    se = x.std(ddof=1) / np.sqrt(n) if n > 1 else np.inf
    return _result("ips", x.mean(), se, n, w, alpha)


def snips(rewards: np.ndarray, logging_propensity: np.ndarray, target_propensity: np.ndarray,
          alpha: float = 0.05) -> OffPolicyEstimate:  # fmt: skip
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
    n = r.size
    # delta method for a ratio of means: Var = sum(w^2 (r - v)^2) / (sum w)^2, with the n/(n-1) correction
    se = float(np.sqrt((w**2 * (r - v) ** 2).sum() * n / max(n - 1, 1)) / w.sum())
    return _result("snips", v, se, n, w, alpha)


def doubly_robust(
    rewards: np.ndarray,
    logging_propensity: np.ndarray,
    target_propensity: np.ndarray,
    reward_hat_logged: np.ndarray,
    reward_hat_target: np.ndarray,
    alpha: float = 0.05,
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
    n = x.size
    se = x.std(ddof=1) / np.sqrt(n) if n > 1 else np.inf
    return _result("dr", x.mean(), se, n, w, alpha)


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
    from reco.experiments.report import _dedup

    events = _dedup(events)
    kind = events.column("event_type")
    imps = events.filter(pc.and_(pc.equal(kind, "impression"), pc.is_valid(events.column("propensity"))))
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
