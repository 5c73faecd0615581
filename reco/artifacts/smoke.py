"""`smoke_check`: the one smoke test of a model bundle, shared by the training gate (before a candidate is
registered) and the API's model manager (before a registry version or an online weight snapshot is put in
place). A bundle passes when every floating weight is finite and one small batch scores to finite values of
the right shape."""

from __future__ import annotations

from typing import Any

#: Candidates scored by the smoke batch (the first items of the vocabulary).
SMOKE_CANDIDATES = 50
#: Session length of the smoke batch: a non-empty session, as most served requests have.
SMOKE_SESSION = 5


def smoke_check(bundle: Any, n_candidates: int = SMOKE_CANDIDATES) -> str | None:
    """None when `bundle` (a `ModelBundle`) is fit to serve, else a description of what is wrong.

    Never raises: a failure to score is reported, not propagated.

    >>> import torch
    >>> from reco.data.catalog import ItemCatalog
    >>> from reco.artifacts.bundle import PAD, ModelBundle
    >>> from reco.models.ranker import RankerConfig, SessionAwareRanker
    >>> _ = torch.manual_seed(0)
    >>> cat = ItemCatalog.from_records([{"item_id": str(i), "title": "t", "genres": ["Comedy"]} for i in range(1, 9)])
    >>> cfg = RankerConfig(n_items=9, n_categories=2, item_dim=8, hidden=8, attn_dim=8, mlp_dims=(8,))
    >>> bundle = ModelBundle(SessionAwareRanker(cfg), [PAD, *(str(i) for i in range(1, 9))], cat, {})
    >>> smoke_check(bundle) is None
    True
    >>> with torch.no_grad():
    ...     _ = bundle.model.item_emb.weight.fill_(float("nan"))
    >>> smoke_check(bundle)
    'smoke test failed: weights not finite (item_emb.weight)'
    """
    import numpy as np
    import torch

    try:
        for name, tensor in bundle.model.state_dict().items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                return f"smoke test failed: weights not finite ({name})"
        items = bundle.item_ids[1 : n_candidates + 1]
        scores = bundle.score(items[:SMOKE_SESSION], items).scores
    except Exception as e:  # any failure to score is a failed smoke test, reported not raised
        return f"smoke test failed: {type(e).__name__}: {e}"
    if scores.shape != (len(items),) or not np.isfinite(scores).all():
        return "smoke test failed: scores not finite or wrong shape"
    return None
