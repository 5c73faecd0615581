"""Approximate nearest neighbours for the similarity candidate sources of large catalogues.

`AnnIndex` is faiss's IVF-Flat over the unit item embeddings (inner product = cosine): k-means cells
(`nlist` ~ 4 sqrt(n)), each query scans the `nprobe` nearest cells exactly. A query that is an indexed item's
own vector (the similarity sources: session and page items) lies in its own cell, next to its neighbours' cells,
and scans `item_nprobe` (8) of them: recall@100 0.99-1.0 where an arbitrary query vector (the session query)
needs the 24 (docs/benchmarks.md, "Scale"), and the search costs about half (0.09 vs 0.16 ms at 10^6 items).

Why faiss IVF-Flat (docs/architecture.md, "Retrieval at scale"): a pinned abi3 wheel for cp311 (faiss-cpu
1.15.1; hnswlib ships only a source archive, usearch's HNSW builds ~15x slower at these sizes on 2 cores), a build of
seconds at 10^5 and about a minute at 10^6 items (an HNSW graph: minutes), items added without a rebuild,
and exact scores inside the probed cells. `recall_at_k` measures it against exact search.

faiss's OpenMP pool is set to one thread in every thread that searches: on the 2 shared cores spinning workers
cost more than they gain.
"""

from __future__ import annotations

import copy
import threading

import numpy as np

_local = threading.local()


def _faiss():
    """faiss, with one OpenMP thread for the calling thread: OpenMP's thread count is per calling thread,
    so every thread that searches (the request executor's) sets it once; spinning OpenMP workers made a
    search ~20x slower on the 2 shared cores."""
    import faiss

    if not getattr(_local, "one_thread", False):
        faiss.omp_set_num_threads(1)
        _local.one_thread = True
    return faiss


class AnnIndex:
    """IVF-Flat over `unit[rows]` (unit vectors); answers row numbers of `unit`.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2000, 16)).astype(np.float32)
    >>> x /= np.linalg.norm(x, axis=1, keepdims=True)
    >>> ann = AnnIndex(x, np.arange(1, 2000), nprobe=64)
    >>> rows, sims = ann.search(x[[5]], 10)
    >>> int(rows[0, 0]), bool(sims[0, 0] > 0.99), recall_at_k(x, np.arange(1, 2000), ann, x[:20], 10) > 0.9
    (5, True, True)
    """

    def __init__(self, unit: np.ndarray, rows: np.ndarray, *, nlist: int | None = None, nprobe: int = 24,
                 item_nprobe: int = 8, seed: int = 0) -> None:  # fmt: skip
        faiss = _faiss()
        unit = np.ascontiguousarray(unit, dtype=np.float32)
        rows = np.asarray(rows, dtype=np.int64)
        n, d = len(rows), unit.shape[1]
        # ~4 sqrt(n) cells, each with at least the 39 training points faiss asks for.
        self.nlist = int(nlist or max(1, min(8192, 4 * np.sqrt(max(n, 1)), n // 39)))
        self.nprobe = min(nprobe, self.nlist)
        self.item_nprobe = min(item_nprobe, self.nprobe)
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, self.nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.cp.niter = 12
        # k-means on a sample (40 points per cell, ~ faiss's minimum) keeps the build linear in n: ~20 s of
        # one core at 10^6 items (docs/benchmarks.md, "Scale").
        per_cell = 40
        sample = (
            rows
            if n <= per_cell * self.nlist
            else np.random.default_rng(seed).choice(rows, per_cell * self.nlist, False)
        )
        index.train(unit[np.sort(sample)])
        index.add_with_ids(unit[rows], rows)
        index.nprobe = self.nprobe
        self._index = index
        self.size = n

    def with_rows(self, unit: np.ndarray, *, add: np.ndarray, remove: np.ndarray = ()) -> AnnIndex:
        """A copy with the rows `remove` taken out and the rows `add` of `unit` put in (an incremental catalogue
        update: new or changed items), in the cells trained at the build (no k-means). This index is unchanged:
        it may be serving (faiss does not allow a search beside an add). Cost: one copy of the index plus the
        assignment of the added vectors to their nearest cell, O(catalogue) memory and O(added) search work."""
        faiss = _faiss()
        out = copy.copy(self)
        out._index = faiss.clone_index(self._index)
        remove = np.asarray(remove, dtype=np.int64)
        if len(remove):
            out._index.remove_ids(remove)
        add = np.asarray(add, dtype=np.int64)
        if len(add):
            out._index.add_with_ids(np.ascontiguousarray(unit[add], dtype=np.float32), add)
        out._index.nprobe = self.nprobe
        out.size = int(out._index.ntotal)
        return out

    def search(self, queries: np.ndarray, k: int, *, items: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(rows (q, k) int64, -1 where fewer were found; similarities (q, k)), best first. `items`: the queries
        are indexed items' own vectors (scan `item_nprobe` cells, not `nprobe`)."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        faiss = _faiss()
        if items and self.item_nprobe < self.nprobe:
            params = getattr(self, "_item_params", None)
            if params is None:  # made once: a SWIG object per search costs more than a small search's scan
                params = self._item_params = faiss.SearchParametersIVF()
                params.nprobe = self.item_nprobe
            sims, rows = self._index.search(q, int(k), params=params)
        else:
            sims, rows = self._index.search(q, int(k))
        return rows, sims


def recall_at_k(
    unit: np.ndarray, rows: np.ndarray, ann: AnnIndex, queries: np.ndarray, k: int, *, items: bool = False
) -> float:
    """Mean |ANN top-k ∩ exact top-k| / k over the queries (exact: brute force over `unit[rows]`); `items` as
    in `AnnIndex.search`."""
    found, _ = ann.search(queries, k, items=items)
    sims = np.asarray(queries, dtype=np.float32) @ unit[rows].T
    exact = rows[np.argpartition(-sims, k - 1, axis=1)[:, :k]]
    return float(np.mean([len(set(f.tolist()) & set(e.tolist())) / k for f, e in zip(found, exact, strict=True)]))
