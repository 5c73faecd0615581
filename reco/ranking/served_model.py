"""`ServedModel`: one loaded model version with what serving precomputes for it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reco.data.catalog import UNKNOWN_CATEGORY, ItemRecord
from reco.ranking.candidates import (
    EmbeddingIndex,
    PopularIndex,
    RowList,
)
from reco.ranking.cold_start import ColdItems, extend_bundle


@dataclass(frozen=True)
class ServedModel:
    """One loaded model version with what serving precomputes for it (built off the request path).

    Requests take a reference to one `ServedModel` at the start and use it to the end, so a hot swap
    (a new object put in place by the model manager) never changes the model under a running request.
    """

    bundle: Any  # reco.artifacts.bundle.ModelBundle
    version: str
    index: EmbeddingIndex
    scorer: Any  # reco.models.scorer.FrozenScorer of `bundle`
    popular_rows: RowList  # every item, most popular first, as the `popular` source answers it
    online_snapshot: int | None = None
    categories: tuple[str, ...] = ()  # every catalogue category (Thompson evidence is read for all)
    # Plain lookups for the request path (the catalogue is a DataFrame: ~0.1 ms per title lookup).
    title_of: Mapping[str, str] = field(default_factory=dict)
    row_category: Sequence[str] = ()  # embedding row -> category
    row_category_code: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))  # row -> code
    # The catalogue API's state when this model was built: rows of unavailable items (never served) and the
    # new items scored from content (`reco.ranking.cold_start`); `catalog_version` = the version read.
    blocked: np.ndarray | None = None
    cold: ColdItems | None = None
    catalog_version: int = 0

    @classmethod
    def build(
        cls,
        bundle: Any,
        version: str,
        *,
        popularity: Mapping[str, float] | None = None,
        online_snapshot: int | None = None,
        items: Mapping[str, ItemRecord] | None = None,
        catalog_version: int = 0,
        ann_threshold: int | None = None,
    ) -> ServedModel:
        """Precompute the normalised embedding matrix, the scorer's item table and the popular lists of `bundle`.

        `popularity` (item -> count) defaults to the bundle's `meta["popularity"]`, then to catalogue order.
        `items` (the catalogue API's records) adds the items `bundle` was not trained on, scored from their
        content, and blocks the unavailable ones; `bundle` itself is kept unchanged (online weight snapshots
        are loaded into it), the tables served are the extended ones.
        """
        served, cold = extend_bundle(bundle, items) if items else (bundle, None)
        emb = served.item_embeddings()
        emb = emb.detach().cpu().numpy() if hasattr(emb, "detach") else np.asarray(emb)
        index = EmbeddingIndex(list(served.item_ids), emb, ann_threshold=ann_threshold)
        catalog = served.catalog
        counts = popularity or (getattr(bundle, "meta", None) or {}).get("popularity")
        if not counts:
            ids = [i for i in bundle.item_ids if i in index]
            counts = {iid: float(len(ids) - k) for k, iid in enumerate(ids)}
        counts = {iid: c for iid, c in counts.items() if iid in index}
        ids = catalog.item_ids
        all_categories = dict(zip(ids, catalog.categories_of(ids), strict=True))
        popular = PopularIndex(counts, all_categories)  # its stable order: count descending, then item id
        titles = {iid: t for iid in ids if (t := catalog.title(iid)) is not None}
        row_category = [all_categories.get(iid, UNKNOWN_CATEGORY) for iid in index.ids]
        codes = {c: k for k, c in enumerate(dict.fromkeys(row_category))}
        blocked = None
        if items and any(not r.available for r in items.values()):
            blocked = np.zeros(index.n_rows, dtype=bool)
            blocked[index.rows(iid for iid, r in items.items() if not r.available)] = True
        return cls(
            bundle, str(version), index, served.frozen_scorer(), index.row_list(popular.item_ids),
            online_snapshot, tuple(catalog.categories), titles, row_category,
            np.array([codes[c] for c in row_category], dtype=np.int32), blocked, cold, catalog_version,
        )  # fmt: skip
