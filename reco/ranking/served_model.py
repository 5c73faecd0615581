"""`ServedModel`: one loaded model version with what serving precomputes for it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from reco.data.catalog import UNKNOWN_CATEGORY, ItemRecord
from reco.ranking.candidates import EmbeddingIndex, RowList
from reco.ranking.cold_start import ColdItems, ContentFit, extend_bundle
from reco.ranking.popular import PopularIndex


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
    records: Mapping[str, ItemRecord] = field(default_factory=dict)  # the catalogue records built from

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
        scorer = served.frozen_scorer()
        # The scorer's item table holds the embeddings already: the index reads them there (a view, no copy).
        index = EmbeddingIndex(list(served.item_ids), scorer.item_embeddings(), ann_threshold=ann_threshold)
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
            bundle, str(version), index, scorer, index.row_list(popular.item_ids),
            online_snapshot, tuple(catalog.categories), titles, row_category,
            np.array([codes[c] for c in row_category], dtype=np.int32), blocked, cold, catalog_version, items or {},
        )  # fmt: skip

    def updated(self, items: Mapping[str, ItemRecord], catalog_version: int = 0) -> ServedModel:
        """This model for the catalogue records `items` (a later copy of the ones it was built from), updated
        incrementally where `build` starts over: new items get rows appended to the scorer's tables and the
        embedding index (content-scored; the ANN gets them added to its trained cells), changed new items
        their rows replaced, trained items their title and category, and availability is set per changed
        item. Only records that are not the same object as before are read (`CatalogFollower` replaces the
        changed ones). This model is unchanged (it may be serving): the caller swaps the result in with one
        reference assignment. Equal to `build` from the same records (tests), but for the ANN's cells (not
        retrained) and a category no item holds any more (still listed until the next build).
        """
        before = self.records
        changed = [r for iid, r in items.items() if before.get(iid) is not r]
        if not changed:
            return replace(self, catalog_version=catalog_version, records=items)
        index, cold = self.index, self.cold
        new = [r for r in changed if r.item_id not in index]
        renewed = [r for r in changed if cold is not None and (row := index.row_of(r.item_id)) is not None
                   and cold.is_new[row]]  # fmt: skip
        scored = [*renewed, *new]
        if scored:
            fit = cold.fit if cold is not None and cold.fit is not None else ContentFit.of(self.bundle)
            emb, raw, cat_rows = fit.rows(scored)
            rows = np.array(index.rows(r.item_id for r in renewed) + list(range(index.n_rows, index.n_rows + len(new))),
                            dtype=np.int64)  # fmt: skip
            scorer = self.scorer.with_items(rows, emb, cat_rows)
            index = index.with_rows([r.item_id for r in new], rows, emb, scorer.item_embeddings())  # ids: `new`
            old_rows = cold.rows if cold is not None else np.zeros(0, dtype=np.int64)
            old_raw = cold.raw_uncertainty if cold is not None else np.zeros(0)
            raw_of = dict(zip(old_rows.tolist(), np.asarray(old_raw).tolist(), strict=True))
            raw_of.update(zip(rows.tolist(), raw.tolist(), strict=True))
            cold_rows = np.array(sorted(raw_of), dtype=np.int64)
            cold = ColdItems.of(cold_rows, np.array([raw_of[r] for r in cold_rows.tolist()]), index.n_rows, fit)
        else:
            scorer = self.scorer
        titles = dict(self.title_of)
        row_category = list(self.row_category)
        row_category += [UNKNOWN_CATEGORY] * (index.n_rows - len(row_category))
        blocked = np.zeros(index.n_rows, dtype=bool)
        if self.blocked is not None:
            blocked[: len(self.blocked)] = self.blocked
        moved = False  # an item already listed changed category: the codes are recomputed
        for r in changed:
            row = index.row_of(r.item_id)
            if r.title is not None:
                titles[r.item_id] = r.title
            else:
                titles.pop(r.item_id, None)
            if row is not None:
                moved |= row < len(self.row_category) and row_category[row] != r.category
                row_category[row] = r.category
                blocked[row] = not r.available
        return replace(
            self, index=index, scorer=scorer, cold=cold, title_of=titles, row_category=row_category,
            row_category_code=_codes(row_category, None if moved else self), blocked=blocked if blocked.any() else None,
            categories=tuple(sorted({*self.categories, *(r.category for r in changed)})),
            catalog_version=catalog_version, records=items,
        )  # fmt: skip


def _codes(row_category: Sequence[str], previous: ServedModel | None) -> np.ndarray:
    """row -> category code, codes in order of first appearance (as `build`); from `previous`'s codes when
    only rows were appended to its categories (Python work for the new rows only)."""
    if previous is None or not len(previous.row_category_code):
        codes = {c: k for k, c in enumerate(dict.fromkeys(row_category))}
        return np.array([codes[c] for c in row_category], dtype=np.int32)
    n = len(previous.row_category)
    _, first = np.unique(previous.row_category_code, return_index=True)  # code k first appears at row first[k]
    codes = {previous.row_category[int(r)]: k for k, r in enumerate(first.tolist())}
    for c in row_category[n:]:
        codes.setdefault(c, len(codes))
    return np.concatenate([previous.row_category_code, np.array([codes[c] for c in row_category[n:]], dtype=np.int32)])
