"""New-item cold start: items the model was not trained on, scored from their content in the model's own
item space, and explored deliberately.

**Content -> embedding.** An item's content is a bag of tokens (`content_tokens`: its categories, title
words and attribute key=value pairs) hashed into `DIM` sparse features (unit rows). At model load, when the
catalogue holds items the model does not know, a ridge map from the trained items' content to their trained
embeddings is fitted (`ContentMap`, closed form on the `DIM x DIM` normal equations: independent of the
catalogue size but for one sparse product) and applied to the new items. `extend_bundle` appends their rows
to the model's tables (embedding, category, the lowest popularity bucket): the architecture is unchanged,
the vocabulary is larger, so retrieval, the scorer's precomputed tables, the rules and the explanations
treat a new item like any other.

**Exploration.** A new item is ranked with an uncertainty bonus, LinUCB's: `bonus * spread * u / sqrt(1 + n)`,
where `u = sqrt(alpha * x' A^-1 x)` is the ridge map's uncertainty about the item's content (high for content
unlike anything trained), relative to the median new item's, `spread` the request's score spread (90th
percentile minus median: the bonus is in the scale of the scores it competes with) and `n` the impressions
this process has served it; only the `slots` best new items of a request keep it (one by default), and past
`max_impressions` it stops. A `new_items` candidate source offers the least-shown new items to every
request. The bonus is a deterministic function of the process's state at request time, so the arm's policy
stays what it was on the adjusted scores and its logged propensities stay exact (greedy: 1; epsilon-greedy
and Thompson: their own); served items that carried a bonus are logged with `is_exploration`.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from reco.data.catalog import ItemCatalog, ItemRecord, with_items

#: Hashed content features (at most 2^11): the normal equations are DIM x DIM whatever the catalogue size.
DIM = 2048
_WORD = re.compile(r"[^\W_]{2,}", re.UNICODE)


def content_tokens(
    title: str | None, categories: Sequence[str], attributes: Mapping[str, Any] | None = None
) -> list[str]:
    """The tokens an item's content is described by.

    >>> content_tokens("The Blue Shoe (2020)", ["Shoes", "Sale"], {"colour": "Blue", "size": 42, "eco": True})
    ['c:shoes', 'c0:shoes', 'c:sale', 't:the', 't:blue', 't:shoe', 't:2020', 'a:colour=blue', 'a:size', 'a:eco=true']
    """
    tokens = []
    for k, c in enumerate(categories):
        tokens.append(f"c:{c.lower()}")
        if k == 0:
            tokens.append(f"c0:{c.lower()}")  # the main category, as the model's category feature
    tokens += [f"t:{w}" for w in _WORD.findall((title or "").lower())]
    for key, value in (attributes or {}).items():
        key = key.lower()
        if isinstance(value, bool):
            tokens.append(f"a:{key}={str(value).lower()}")
        elif isinstance(value, int | float):
            tokens.append(f"a:{key}")  # numbers: presence only (a range would need the catalogue's scale)
        else:
            tokens.append(f"a:{key}={str(value).lower()}")
    return tokens


def hashed_features(docs: Iterable[Sequence[str]], dim: int = DIM) -> sp.csr_matrix:
    """Token lists -> (n, dim) sparse rows of unit norm (crc32 hashing: the same in every process).

    >>> x = hashed_features([["c:a", "t:b"], []], dim=16)
    >>> x.shape, round(float(x[0].multiply(x[0]).sum()), 6), x[1].nnz
    ((2, 16), 1.0, 0)
    """
    rows, cols = [], []
    n = 0
    for n, doc in enumerate(docs, start=1):
        for tok in doc:
            rows.append(n - 1)
            cols.append(zlib.crc32(tok.encode()) % dim)
    x = sp.csr_matrix((np.ones(len(rows), dtype=np.float64), (rows, cols)), shape=(n, dim))
    x.sum_duplicates()
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    return sp.csr_matrix(sp.diags(np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)) @ x)


@dataclass(frozen=True)
class ContentMap:
    """Ridge regression from content features to item embeddings (with an intercept: the mean embedding).

    >>> rng = np.random.default_rng(0)
    >>> x = hashed_features([[f"c:{i % 3}", f"t:{i}"] for i in range(60)], dim=64)
    >>> e = np.eye(3)[np.arange(60) % 3] + 0.01 * rng.standard_normal((60, 3))
    >>> m = ContentMap.fit(x, e, alpha=0.1)
    >>> pred, u = m.predict(hashed_features([["c:1"]], dim=64))
    >>> int(pred[0].argmax()), bool(0 < u[0] <= 1)
    (1, True)
    """

    weights: np.ndarray  # (dim, d)
    mean: np.ndarray  # (d,)
    factor: tuple[np.ndarray, bool]  # Cholesky factor of A = X'X + alpha I
    alpha: float

    @classmethod
    def fit(cls, x: sp.csr_matrix, embeddings: np.ndarray, alpha: float = 1.0) -> ContentMap:
        e = np.asarray(embeddings, dtype=np.float64)
        mean = e.mean(axis=0) if len(e) else np.zeros(e.shape[1])
        gram = (x.T @ x).toarray() + alpha * np.eye(x.shape[1])
        factor = scipy.linalg.cho_factor(gram, lower=True, check_finite=False)
        weights = scipy.linalg.cho_solve(factor, np.asarray(x.T @ (e - mean)), check_finite=False)
        return cls(weights, mean, factor, float(alpha))

    def predict(self, x: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings (n, d), uncertainty (n,) in [0, 1]: sqrt(alpha x' A^-1 x) for unit rows x)."""
        pred = self.mean + np.asarray(x @ self.weights)
        dense = x.toarray()
        solved = scipy.linalg.cho_solve(self.factor, dense.T, check_finite=False)  # (dim, n)
        var = np.einsum("ij,ji->i", dense, solved) * self.alpha
        return pred, np.sqrt(np.clip(var, 0.0, 1.0))


@dataclass(frozen=True)
class ColdItems:
    """What serving needs about the new items of one extended model."""

    rows: np.ndarray  # (k,) int64 their rows in the extended tables
    uncertainty: np.ndarray  # (n_rows,) float32, 0 for trained items: the bonus's u (1 = the median new item)
    is_new: np.ndarray  # (n_rows,) bool
    # For incremental catalogue updates (`ServedModel.updated`): the fitted map and the raw uncertainty of
    # each of `rows` (the relative `uncertainty` is renormalised over all new items when one is added).
    fit: ContentFit | None = None
    raw_uncertainty: np.ndarray | None = None  # (k,) aligned with `rows`

    @classmethod
    def of(cls, rows: np.ndarray, raw: np.ndarray, n_rows: int, fit: ContentFit | None = None) -> ColdItems:
        """New items at `rows` with raw uncertainties `raw`, in tables of `n_rows` rows."""
        uncertainty = np.zeros(n_rows, dtype=np.float32)
        # Relative to the median new item's: the bonus scale is then the same whatever alpha and the catalogue.
        uncertainty[rows] = np.clip(raw / max(float(np.median(raw)), 1e-6), 0.0, 2.0) if len(rows) else 0.0
        is_new = np.zeros(n_rows, dtype=bool)
        is_new[rows] = True
        return cls(rows, uncertainty, is_new, fit, raw)


@dataclass(frozen=True)
class ContentFit:
    """The content -> embedding map of one bundle's trained items, and the model's category rows: all that
    scoring a new item needs (fitted once per bundle; `rows` then costs O(new items))."""

    cmap: ContentMap
    dim: int
    category_index: dict[str, int]  # category name -> the model's category row (0 = unknown)

    @classmethod
    def of(cls, bundle: Any, alpha: float = 1.0) -> ContentFit:
        model, item_ids = bundle.model, list(bundle.item_ids)
        trained = _trained_content(bundle.catalog, item_ids[1:])
        emb = model.item_emb.weight.detach().cpu().numpy()
        # Fewer hashed features for a small catalogue (the normal equations are dim x dim), DIM at most.
        dim = int(min(DIM, 2 ** np.ceil(np.log2(max(256, 2 * len(trained))))))
        cmap = ContentMap.fit(hashed_features(trained, dim), emb[1:], alpha=alpha)
        return cls(cmap, dim, _category_index(bundle.catalog, item_ids, model.item_category.cpu().numpy()))

    def rows(self, records: Sequence[ItemRecord]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(embeddings (k, d) float32, raw uncertainty (k,), category rows (k,) int64) of `records`."""
        pred, unc = self.cmap.predict(hashed_features((content_tokens(r.title, r.categories, r.attributes)
                                                       for r in records), self.dim))  # fmt: skip
        cats = np.array([self.category_index.get(r.category, 0) for r in records], dtype=np.int64)
        return pred.astype(np.float32), unc, cats


def extend_bundle(
    bundle: Any, records: Mapping[str, ItemRecord], *, alpha: float = 1.0
) -> tuple[Any, ColdItems | None]:
    """`bundle` with rows appended for the records it does not know, scored from content (see the module
    docstring); its catalogue carries every record's title and categories. Unchanged bundle (and None)
    when every record is already in the vocabulary and none changes the catalogue."""
    import torch

    from reco.models.ranker import SessionAwareRanker

    known = set(bundle.item_ids)
    new = [r for iid, r in records.items() if iid not in known]
    changed = [r for iid, r in records.items() if iid in known]
    if not new:
        if not changed:
            return bundle, None
        return type(bundle)(model=bundle.model, item_ids=list(bundle.item_ids),
                            catalog=with_items(bundle.catalog, changed), meta=bundle.meta), None  # fmt: skip
    model = bundle.model
    item_ids = list(bundle.item_ids)
    fit = ContentFit.of(bundle, alpha)
    pred, unc, cat_rows = fit.rows(new)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["item_emb.weight"] = torch.cat([state["item_emb.weight"], torch.from_numpy(pred)])
    cats = torch.from_numpy(cat_rows).to(state["item_category"].dtype)
    state["item_category"] = torch.cat([state["item_category"], cats])
    state["item_pop"] = torch.cat([state["item_pop"], torch.zeros(len(new), dtype=state["item_pop"].dtype)])
    config = replace(model.config, n_items=len(item_ids) + len(new))
    extended = SessionAwareRanker(config)
    extended.load_state_dict(state)
    extended.eval()
    ids = item_ids + [r.item_id for r in new]
    catalog = with_items(bundle.catalog, [*changed, *new])
    out = type(bundle)(model=extended, item_ids=ids, catalog=catalog, meta=dict(bundle.meta, cold_items=len(new)))
    return out, ColdItems.of(np.arange(len(item_ids), len(ids), dtype=np.int64), unc, len(ids), fit)


def _trained_content(catalog: ItemCatalog, item_ids: Sequence[str]) -> list[list[str]]:
    titles = catalog.items.set_index("item_id")["title"].to_dict() if len(catalog) else {}
    genres = catalog.items.set_index("item_id")["genres"].to_dict() if len(catalog) else {}
    out = []
    for iid in item_ids:
        title = titles.get(iid)
        out.append(content_tokens(title if isinstance(title, str) else None, list(genres.get(iid, []) or [])))
    return out


def _category_index(catalog: ItemCatalog, item_ids: Sequence[str], item_category: np.ndarray) -> dict[str, int]:
    """Category name -> the model's category row, read off the trained items (row 0 = unknown)."""
    out: dict[str, int] = {}
    for cat, code in zip(catalog.categories_of(item_ids[1:]), item_category[1:].tolist(), strict=True):
        if code:
            out.setdefault(cat, int(code))
    return out


@dataclass(frozen=True)
class ColdStartConfig:
    """`bonus`: the uncertainty bonus at 0 impressions, in units of the request's score spread (its 90th
    percentile minus its median; 0 = no deliberate exploration); `slots`: new items per page that keep their
    bonus (the best by score + bonus: a page is not flooded with new items); `max_impressions`: impressions
    (per process) after which a new item gets no bonus and leaves the `new_items` source; `source_k`: new
    items offered as candidates per request."""

    bonus: float = 2.0
    slots: int = 1
    max_impressions: int = 200
    source_k: int = 20


class ImpressionCounts:
    """Impressions this process served per new item (the `n` of the bonus). Plain dict updates under the GIL."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._turn = 0

    def bonus(
        self, cold: ColdItems, rows: np.ndarray, ids: Sequence[str], config: ColdStartConfig, scores: np.ndarray
    ) -> np.ndarray:
        """The bonus of each row in `rows` given their `scores` (0 for trained items, items past
        `max_impressions`, and new items beyond the `slots` best by score + bonus)."""
        out = np.zeros(len(rows), dtype=np.float64)
        if config.bonus <= 0 or config.slots <= 0:
            return out
        spread = max(float(np.percentile(scores, 90) - np.median(scores)), 1e-3) if len(scores) else 1.0
        get = self.counts.get
        for k in np.flatnonzero(cold.is_new[rows]).tolist():
            r = int(rows[k])
            n = get(ids[r], 0)
            if n < config.max_impressions:
                out[k] = config.bonus * spread * float(cold.uncertainty[r]) / np.sqrt(1.0 + n)
        lifted = np.flatnonzero(out)
        if len(lifted) > config.slots:
            best = lifted[np.argsort(-(scores[lifted] + out[lifted]), kind="stable")[: config.slots]]
            keep = np.zeros(len(out), dtype=bool)
            keep[best] = True
            out[~keep] = 0.0
        return out

    def source_rows(self, cold: ColdItems, ids: Sequence[str], config: ColdStartConfig) -> np.ndarray:
        """Up to `source_k` new items still under `max_impressions`, taken in turn (a rotating start) so
        that every new item is offered to some requests."""
        rows = cold.rows
        if not len(rows) or config.source_k <= 0:
            return np.zeros(0, dtype=np.int64)
        self._turn = (self._turn + config.source_k) % len(rows)
        order = np.roll(rows, -self._turn)
        get, cap = self.counts.get, config.max_impressions
        picked = [r for r in order[: 4 * config.source_k].tolist() if get(ids[r], 0) < cap][: config.source_k]
        return np.asarray(picked, dtype=np.int64)

    def served(self, item_ids: Iterable[str]) -> None:
        counts = self.counts
        for iid in item_ids:
            counts[iid] = counts.get(iid, 0) + 1
