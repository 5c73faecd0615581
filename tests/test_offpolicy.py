"""Off-policy estimators cover the known value of a simulated target policy at their stated rate."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from reco.experiments import offpolicy as O

SIMS, N, K, C = 600, 3000, 5, 20


def _world(seed: int):
    rng = np.random.default_rng(seed)
    ctx_p = rng.dirichlet(np.ones(C))
    mu = 1 / (1 + np.exp(-rng.normal(-2.0, 1.0, (C, K))))  # click probability per (context, item)
    logit0 = rng.normal(0, 1, (C, K))
    pi0 = np.exp(logit0) / np.exp(logit0).sum(1, keepdims=True)  # logging policy
    logit1 = logit0 + 2.0 * (mu - mu.mean(1, keepdims=True)) * 10
    pi1 = np.exp(logit1) / np.exp(logit1).sum(1, keepdims=True)  # candidate: leans towards better items
    truth = float(ctx_p @ (pi1 * mu).sum(1))
    return rng, ctx_p, mu, pi0, pi1, truth


def test_ips_snips_dr_cover_the_true_value() -> None:
    rng, ctx_p, mu, pi0, pi1, truth = _world(0)
    ctx = rng.choice(C, (SIMS, N), p=ctx_p)
    u = rng.random((SIMS, N))[..., None]
    act = (u > np.cumsum(pi0[ctx], axis=-1)).sum(-1)
    r = (rng.random((SIMS, N)) < mu[ctx, act]).astype(float)
    p, q = pi0[ctx, act], pi1[ctx, act]
    model = np.clip(mu + rng.normal(0, 0.03, mu.shape), 0.001, 0.999)  # an imperfect reward model
    covered = {"ips": 0, "snips": 0, "dr": 0}
    for i in range(SIMS):
        ests = [O.ips(r[i], p[i], q[i]), O.snips(r[i], p[i], q[i]),
                O.doubly_robust(r[i], p[i], q[i], model[ctx[i], act[i]], (pi1 * model).sum(1)[ctx[i]])]  # fmt: skip
        for e in ests:
            covered[e.method] += e.ci[0] <= truth <= e.ci[1]
    tol = 3.5 * np.sqrt(0.95 * 0.05 / SIMS)
    for method, hits in covered.items():
        assert abs(hits / SIMS - 0.95) < tol, (method, hits / SIMS)
    assert truth > float(ctx_p @ (pi0 * mu).sum(1))  # the candidate is genuinely better than logging


def test_estimators_reject_bad_propensities() -> None:
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        O.ips(np.array([1.0]), np.array([0.0]), np.array([0.5]))
    with pytest.raises(ValueError, match="same shape"):
        O.snips(np.array([1.0]), np.array([0.5, 0.5]), np.array([0.5]))


def test_estimate_from_logged_events() -> None:
    ts = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rows = [dict(event_id=f"i{k}", ts=ts, user_id="u", item_id=f"m{k}", event_type="impression", request_id="r",
                 propensity=0.5) for k in range(4)]  # fmt: skip
    rows += [dict(rows[1], event_id="c1", event_type="click"), dict(rows[1], event_id="c1", event_type="click")]
    imps = O.logged_impressions(pa.Table.from_pylist(rows))
    assert imps.column("clicked").to_pylist() == [0, 1, 0, 0]
    out = O.estimate_policy_value(imps, np.full(4, 0.5))
    assert out["ips"]["value"] == pytest.approx(0.25) and out["snips"]["value"] == pytest.approx(0.25)
    assert out["logged_ctr"]["value"] == pytest.approx(0.25) and "dr" not in out
