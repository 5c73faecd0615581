"""Guardrails: a poisoned batch (labels flipped, huge feature values) never reaches the published weights."""

from __future__ import annotations

import numpy as np
import torch

from reco.online.arm import ArmLearner
from reco.online.examples import Examples
from reco.online.model import ArmModel, Batch, DotScorer

N_ITEMS = 30
GOOD = np.arange(1, 6)


def _forward(m: DotScorer, b: Batch) -> torch.Tensor:
    # A float input path: the position enters the logit (cubed), so absurd positions overflow to inf.
    return m(b.session, b.lengths, b.items) + m.pos_scale * b.positions.to(torch.float32).pow(3)


def _model() -> ArmModel:
    torch.manual_seed(0)
    module = DotScorer(N_ITEMS, dim=8)
    module.pos_scale = torch.nn.Parameter(torch.tensor(1e-6))
    return ArmModel(module, {str(i): i for i in range(1, N_ITEMS + 1)}, "1", forward=_forward)


def _batch(rng: np.random.Generator, n: int, *, flip: bool = False, position: int = 1) -> Examples:
    items = rng.integers(1, N_ITEMS + 1, n)
    labels = (rng.random(n) < np.where(np.isin(items, GOOD), 0.8, 0.05)).astype(np.float32)
    z = np.zeros(n, np.int64)
    return Examples(
        session=np.column_stack([rng.integers(1, N_ITEMS + 1, n), z]), lengths=np.ones(n, np.int64), items=items,
        positions=np.full(n, position, np.int64), page=z, device=z, propensity=np.ones(n, np.float32),
        labels=1 - labels if flip else labels, base_logit=np.full(n, np.nan, np.float32), tag=np.arange(n),
    )  # fmt: skip


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_poisoned_batches_are_skipped_then_reverted() -> None:
    rng = np.random.default_rng(0)
    model = _model()
    base = {k: v.clone() for k, v in model.module.state_dict().items()}
    learner = ArmLearner(model, lr=0.05, update_every=128, batch_size=128, replay=0, holdout_fraction=0.2,
                         min_holdout=100, margin=0.02, patience=2, seed=0)  # fmt: skip
    for _ in range(20):
        learner.learn_many(_batch(rng, 128))
    online, base_loss = learner.holdout_losses()
    assert online < base_loss - 0.05  # clean traffic: the online model beats the base
    good = {k: v.clone() for k, v in learner.good_state().items()}

    # Huge feature values: the loss is not finite -> the step is skipped and the last good weights stay.
    reports = learner.learn_many(_batch(rng, 160, flip=True, position=10**15))
    assert [r.outcome for r in reports] == ["skipped_nonfinite"]
    assert _same(learner.good_state(), good) and _same(model.module.state_dict(), good)

    # Labels flipped: the holdout log-loss degrades past the base's; after `patience` checks -> base weights.
    outcomes = []
    for _ in range(30):
        outcomes += [r.outcome for r in learner.learn_many(_batch(rng, 128, flip=True))]
        if "reverted" in outcomes:
            break
    assert "reverted" in outcomes and learner.counters.reverts == 1
    assert learner.snapshot_step == 0
    assert _same(learner.good_state(), base) and _same(model.module.state_dict(), base)
    assert all(torch.isfinite(p).all() for p in model.module.parameters())


def test_ips_weights_are_clipped_and_normalised() -> None:
    learner = ArmLearner(_model(), ips=True, ips_clip=10.0)
    ex = _batch(np.random.default_rng(1), 4)
    ex.propensity[:] = [1.0, 0.5, 1e-9, 0.2]
    w = learner._weights(ex).numpy()
    raw = np.array([1.0, 2.0, 10.0, 5.0])
    np.testing.assert_allclose(w, raw / raw.mean(), rtol=1e-6)
