"""Property tests (hypothesis) for a few statistics functions."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as hs

from reco.experiments import stats as S

counts = hs.integers(min_value=1, max_value=100_000)


@settings(max_examples=60, deadline=None)
@given(n1=counts, n0=counts, f1=hs.floats(0, 1), f0=hs.floats(0, 1))
def test_ztest_pvalue_in_unit_interval(n1: int, n0: int, f1: float, f0: float) -> None:
    x1, x0 = int(f1 * n1), int(f0 * n0)
    if x1 + x0 in (0, n1 + n0):
        return  # no variance: the test is undefined (the report refuses this case earlier)
    _, p = S.two_proportion_ztest(x1, n1, x0, n0)
    assert 0.0 <= float(p) <= 1.0


@settings(max_examples=60, deadline=None)
@given(
    t=hs.floats(0.001, 1), c=hs.floats(0.001, 1), vt=hs.floats(1e-8, 1e-2), vc=hs.floats(1e-8, 1e-2),
    alpha=hs.floats(0.001, 0.5),
)  # fmt: skip
def test_lift_ci_contains_point_estimate(t: float, c: float, vt: float, vc: float, alpha: float) -> None:
    lf = S.lift(t, vt, c, vc, alpha)
    assert lf.absolute_ci[0] <= lf.absolute <= lf.absolute_ci[1]
    assert lf.relative_ci[0] <= lf.relative <= lf.relative_ci[1]
    assert 0.0 <= lf.p_value <= 1.0


@settings(max_examples=80, deadline=None)
@given(hs.lists(hs.floats(0, 1), min_size=1, max_size=30))
def test_holm_and_bh_monotone_and_bounded(ps: list[float]) -> None:
    p = np.array(ps)
    h, b = S.holm(p), S.benjamini_hochberg(p)
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(h[order]) >= 0) and np.all(np.diff(b[order]) >= 0)  # order preserved
    assert np.all(h >= p - 1e-15) and np.all(h <= 1) and np.all(b <= h + 1e-15)  # BH never stricter than Holm


@settings(max_examples=60, deadline=None)
@given(
    d=hs.lists(hs.floats(-1, 1), min_size=1, max_size=20),
    v=hs.floats(1e-6, 1.0),
    tau=hs.floats(0.01, 1.0),
)
def test_msprt_pvalues_valid_and_nonincreasing(d: list[float], v: float, tau: float) -> None:
    arr = np.array(d)
    p = S.msprt_pvalues(arr, np.full(arr.size, v), tau)
    assert np.all((p >= 0) & (p <= 1)) and np.all(np.diff(p) <= 0)
    lo, hi = S.msprt_ci(arr, np.full(arr.size, v), tau)
    assert np.all(lo <= hi) or np.any(p < 0.05)  # an empty interval only after a rejection
