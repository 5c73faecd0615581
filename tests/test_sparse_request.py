"""The request path touches only its candidates (per-thread masks kept between requests, only the request's rows
set and reset): merge and "seen" equal the fresh catalogue-sized mask versions they replaced, on random
inputs in sequence (priority, blocked, excluded, padding, the cap; a mask left dirty would show)."""

from __future__ import annotations

import numpy as np
import pytest

from reco.models.ranker import seen
from reco.ranking.candidates import SOURCE_PRIORITY, SOURCES, RowList, Source, merge


def _dense_merge(results, limit, n_rows, exclude=(), blocked=None):
    """The former merge: a boolean "taken" mask over the whole catalogue, sources in priority order."""
    taken = np.zeros(n_rows, dtype=bool) if blocked is None else blocked.copy()
    taken[0] = True
    taken[np.asarray(exclude, dtype=np.int64)] = True
    out_rows, out_src, out_anchor, per = [], [], [], {}
    n = 0
    for source in SOURCE_PRIORITY:
        found = results.get(source)
        if found is None or n >= limit:
            continue
        keep = ~taken[found.rows]
        rows, anchors = found.rows[keep][: limit - n], found.anchors[keep][: limit - n]
        taken[rows] = True
        out_rows += rows.tolist()
        out_anchor += anchors.tolist()
        out_src += [SOURCES.index(source)] * len(rows)
        if len(rows):
            per[str(source)] = len(rows)
        n += len(rows)
    return out_rows, out_src, out_anchor, per


def _dense_seen(candidates, history, n_items):
    table = np.zeros(n_items, dtype=bool)
    table[history] = True
    table[0] = False
    return table[candidates]


def test_sparse_merge_equals_the_dense_mask_merge():
    rng = np.random.default_rng(7)
    n_rows = 400
    for trial in range(200):
        results = {}
        for source in rng.permutation(list(Source))[: rng.integers(0, len(Source) + 1)]:
            rows = rng.choice(n_rows, rng.integers(0, 120), replace=False)  # distinct within a list, may hold 0
            results[Source(source)] = RowList(rows.astype(np.int64), rng.integers(0, n_rows, len(rows)))
        blocked = rng.random(n_rows) < 0.1 if trial % 2 else None
        exclude = rng.integers(0, n_rows, rng.integers(0, 4)).tolist()
        limit = int(rng.integers(1, 300))
        got = merge(results, limit, n_rows=n_rows, exclude=exclude, blocked=blocked)
        rows, src, anchors, per = _dense_merge(results, limit, n_rows, exclude, blocked)
        assert got.rows.tolist() == rows
        assert got.sources.tolist() == src
        assert got.anchors.tolist() == anchors
        assert got.per_source == per and list(got.per_source) == list(per)
        assert got.rows.dtype == np.int64 and got.sources.dtype == np.int8 and got.anchors.dtype == np.int64


def test_sparse_seen_equals_the_table_lookup():
    rng = np.random.default_rng(3)
    with pytest.raises(IndexError):  # a bad row leaves the thread's table clean for the next call
        seen(np.array([10**9]), np.array([5, 7]), 300)
    for _ in range(200):
        candidates = rng.integers(0, 300, rng.integers(0, 60))
        history = rng.integers(0, 300, rng.integers(0, 25))
        assert seen(candidates, history, 300).tolist() == _dense_seen(candidates, history, 300).tolist()
