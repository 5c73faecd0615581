"""Guardrails on the served model (a real `SessionAwareRanker`): every update is checked on the holdout
before it can be published, a refused update goes back to the last good snapshot (not the base), and
injected finite-but-harmful updates (flipped labels, a learning-rate spike) are caught: nothing worse than
the last good snapshot by more than the margin is ever served."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from serving_helpers import tiny_bundle

from reco.online.arm import ArmLearner
from reco.online.examples import Examples
from reco.online.guardrails import log_loss
from reco.online.model import from_bundle, logits_numpy

N_ITEMS = 40
GOOD = np.arange(1, 9)  # embedding rows the simulated users like
MARGIN = 0.01


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on a loaded 2-core machine two threads spin against each other (~25x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _clicks(rng: np.random.Generator, n: int, *, flip: bool = False, position: int = 1) -> Examples:
    """A seeded click simulation: sessions of 1-3 items, one candidate each, p(click) 0.6 on a liked item
    (0.8 when the session holds a liked item too), else 0.05."""
    lengths = rng.integers(1, 4, n)
    session = np.zeros((n, 20), np.int64)
    for i, k in enumerate(lengths):
        session[i, :k] = rng.integers(1, N_ITEMS + 1, k)
    items = rng.integers(1, N_ITEMS + 1, n)
    warm = np.isin(session, GOOD).any(1)
    p = np.where(np.isin(items, GOOD), np.where(warm, 0.8, 0.6), 0.05)
    labels = (rng.random(n) < p).astype(np.float32)
    return Examples(
        session=session, lengths=lengths.astype(np.int64), items=items, positions=np.full(n, position, np.int64),
        page=np.ones(n, np.int64), device=np.full(n, 2, np.int64), propensity=np.ones(n, np.float32),
        labels=1 - labels if flip else labels, base_logit=np.full(n, np.nan, np.float32), tag=np.arange(n),
    )  # fmt: skip


def _learner() -> ArmLearner:
    model = from_bundle(tiny_bundle(n_items=N_ITEMS, seed=0), "1")
    return ArmLearner(model, lr=0.02, update_every=64, batch_size=64, replay=32, buffer_size=4096,
                      holdout_fraction=0.25, holdout_size=512, min_holdout=100, margin=MARGIN, patience=3,
                      max_session=20, seed=0)  # fmt: skip


def _loss(learner: ArmLearner, state: dict[str, torch.Tensor], rows: Examples) -> float:
    module = copy.deepcopy(learner.model.module)
    module.load_state_dict(state)
    return log_loss(logits_numpy(learner.model, rows, module=module.eval()), rows.labels)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_harmful_updates_are_caught_and_the_last_good_snapshot_is_served() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    evaluation = _clicks(np.random.default_rng(99), 4000)  # independent of the holdout
    learner = _learner()
    base = {k: v.clone() for k, v in learner.good_state().items()}
    base_eval = _loss(learner, base, evaluation)
    for _ in range(40):  # clean traffic: the served model learns
        learner.learn_many(_clicks(rng, 86))
    assert learner.snapshot_step > 0
    good_eval = _loss(learner, learner.good_state(), evaluation)
    assert good_eval < base_eval - 0.02, (good_eval, base_eval)

    injected = harmful = caught = 0
    for k in range(24):  # harmful updates: flipped labels, a learning-rate spike, or both
        flip, spike = k % 3 != 1, k % 3 != 0
        batch = _clicks(rng, 64, flip=flip)
        before = {n: v.clone() for n, v in learner.good_state().items()}
        before_eval = _loss(learner, before, evaluation)
        # The same update without the guard (a copy that accepts anything): was it harmful?
        unguarded = copy.deepcopy(learner)
        unguarded.margin, unguarded._rule.margin = float("inf"), float("inf")
        for each in (unguarded, learner):
            if spike:
                each.set_learning_rate(1.0)
        # The harm is in the update path only (a label-join bug, a bad step size): the holdout stays truthful.
        unguarded.holdout_fraction = learner.holdout_fraction = 0.0
        unguarded.learn_many(copy.deepcopy(batch))
        reports = learner.learn_many(batch)
        learner.set_learning_rate(learner.lr)
        learner.holdout_fraction = 0.25
        assert len(reports) == 1
        injected += 1
        is_harmful = _loss(unguarded, unguarded.good_state(), evaluation) > before_eval + MARGIN
        harmful += is_harmful
        r = reports[0]
        if r.outcome == "reverted":
            caught += 1
            # Back to the last good snapshot, not to the base.
            assert _same(learner.good_state(), before) and _same(learner.model.module.state_dict(), before)
            assert not _same(learner.good_state(), base)
        else:
            assert r.outcome == "ok" and r.holdout_after <= r.holdout_before + MARGIN
        # What would be published now is never worse than the last good snapshot beyond the margin.
        served = _loss(learner, learner.good_state(), evaluation)
        assert served <= before_eval + MARGIN, (k, served, before_eval)
    print(f"harmful updates caught: {caught} of {harmful} harmful ({injected} injected)")
    assert harmful >= injected // 2 and caught >= harmful
    assert learner.counters.reverts == caught
    assert _loss(learner, learner.good_state(), evaluation) < base_eval - 0.02  # still the learned model


def test_nonfinite_update_is_skipped_and_nothing_is_accepted_without_a_holdout() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    learner = _learner()
    base = {k: v.clone() for k, v in learner.good_state().items()}
    first = learner.learn_many(_clicks(rng, 86))
    assert [r.outcome for r in first] == ["unchecked"] and learner.snapshot_step == 0  # holdout too small
    assert _same(learner.good_state(), base)
    for _ in range(20):
        learner.learn_many(_clicks(rng, 86))
    good = {k: v.clone() for k, v in learner.good_state().items()}
    assert learner.snapshot_step > 0
    learner.set_learning_rate(float("inf"))  # a non-finite step: skipped or restored, never accepted
    reports = learner.learn_many(_clicks(rng, 86))
    assert [r.outcome for r in reports] in (["skipped_nonfinite"], ["restored"])
    assert _same(learner.good_state(), good) and _same(learner.model.module.state_dict(), good)
    assert all(torch.isfinite(p).all() for p in learner.model.module.parameters())


def test_ips_weights_are_clipped_and_normalised() -> None:
    learner = ArmLearner(from_bundle(tiny_bundle(n_items=N_ITEMS), "1"), ips=True, ips_clip=10.0)
    ex = _clicks(np.random.default_rng(1), 4)
    ex.propensity[:] = [1.0, 0.5, 1e-9, 0.2]
    w = learner._weights(ex).numpy()
    raw = np.array([1.0, 2.0, 10.0, 5.0])
    np.testing.assert_allclose(w, raw / raw.mean(), rtol=1e-6)
