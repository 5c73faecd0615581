"""`ModelBundle`: a trained `SessionAwareRanker` with everything serving needs to rank without the
training data (item vocabulary, catalog, training metadata), and its on-disk format.

Directory layout (`save` / `load`): `config.json` (RankerConfig), `weights.pt` (state_dict, loaded
with `torch.load(weights_only=True)`), `items.json` (vocabulary; row i of the embedding table is
`items[i]`, row 0 is "<pad>"), `catalog.parquet`, `meta.json` (training config, metrics, categories).

The session given to `score` is the user's recent history, oldest first: the encoder reads its last
`max_session_len` items; the ranker's "already seen" feature uses all of it.

`score` and `score_batch` are thin calls of `SessionAwareRanker.forward` (THE scoring function), used by
the offline evaluation and the quality benchmark. Serving scores through `frozen_scorer()`
(`reco.models.scorer`), the forward's numpy twin with tables precomputed at load; tests hold the two equal on
every architecture, so the offline figures are those of the served ranking.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reco.data.catalog import ItemCatalog
from reco.data.events import DEFAULT_DEVICE
from reco.models.scorer import FrozenScorer, ScoreResult

PAD = "<pad>"
_FILES = ("config.json", "weights.pt", "items.json", "catalog.parquet", "meta.json")


class BundleError(ValueError):
    """A model bundle directory is missing, incomplete or corrupt."""


@dataclass
class ModelBundle:
    model: Any  # SessionAwareRanker, in eval mode (Any: keeps torch out of this module's import)
    item_ids: list[str]
    catalog: ItemCatalog
    meta: dict[str, Any]

    def __post_init__(self) -> None:
        if not self.item_ids or self.item_ids[0] != PAD:
            raise BundleError(f"item_ids[0] must be {PAD!r}")
        if len(self.item_ids) != self.model.config.n_items:
            raise BundleError(f"{len(self.item_ids)} item ids for a model with {self.model.config.n_items} rows")
        self._index = {iid: i for i, iid in enumerate(self.item_ids)}
        self._index.pop(PAD)
        self.model.eval()

    def __repr__(self) -> str:
        return f"ModelBundle({len(self.item_ids) - 1} items, version={self.meta.get('version')!r})"

    def index_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """Embedding rows of `item_ids`; unknown ids -> 0 (padding / out of vocabulary)."""
        get = self._index.get
        return np.fromiter((get(i, 0) for i in item_ids), dtype=np.int64, count=len(item_ids))

    def _session_rows(self, session: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The last max_session_len items given -> (known rows, positions of the known ones in that tail)."""
        tail = list(session)[-self.model.config.max_session_len :]
        rows = self.index_of(tail)
        known = np.flatnonzero(rows)
        return rows[known], known

    def score(
        self,
        session_item_ids: Sequence[str],
        candidate_item_ids: Sequence[str],
        page_type: str = "home",
        device: str = DEFAULT_DEVICE,
    ) -> ScoreResult:
        """Scores (logits) of the candidates for one session; one forward pass, session encoded once."""
        scores, attention = self.score_batch([session_item_ids], candidate_item_ids, page_type, device)
        return ScoreResult(scores=scores[0], attention=attention[0])

    def score_batch(
        self,
        sessions: Sequence[Sequence[str]],
        candidates: Sequence[str] | Sequence[Sequence[str]],
        page_type: str = "home",
        device: str = DEFAULT_DEVICE,
        seen: bool = True,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Many sessions at once, through the ranker's forward. `candidates` is one list shared by all
        sessions (its item-only features are computed once) or one list per session (same length). Unknown
        candidate ids score as the padding row would: use `index_of` to filter them first if that matters.
        `seen=False` gives the ranker an empty history (no candidate is "already seen"; the encoder still
        reads the session). Returns (scores (n_sessions, n_candidates), attention per session as in `score`)."""
        import torch

        model = self.model
        shared = len(candidates) == 0 or isinstance(candidates[0], str)
        parsed = [self._session_rows(s) for s in sessions]
        sess = _right_padded([r for r, _ in parsed])
        history = _right_padded([self.index_of(s) if seen else [] for s in sessions])  # ALL items given
        cand = self.index_of(candidates) if shared else np.stack([self.index_of(c) for c in candidates])  # type: ignore[arg-type]
        page, dev = model.context_index(page_type, device)
        ctx = torch.full((len(sessions),), page), torch.full((len(sessions),), dev)
        with torch.inference_mode():
            scores, attn = model(torch.from_numpy(sess), torch.from_numpy(cand), *ctx, torch.from_numpy(history))
        attention = []
        for b, (r, pos) in enumerate(parsed):
            a = np.zeros(min(len(sessions[b]), model.config.max_session_len), dtype=np.float32)
            a[pos] = attn[b, : len(r)].numpy()
            attention.append(a)
        return scores.numpy(), attention

    def frozen_scorer(self) -> FrozenScorer:
        """Serving's scorer for this bundle (`reco.models.scorer`); its weights must not change afterwards."""
        return FrozenScorer(self.model)

    def session_embedding(self, session_item_ids: Sequence[str]) -> np.ndarray:
        """The session's query vector in item space (d,): `item_embeddings() @ it` is the retrieval score."""
        import torch

        rows, _ = self._session_rows(session_item_ids)
        with torch.inference_mode():
            q, _ = self.model.encode(torch.from_numpy(rows[None, :] if len(rows) else np.zeros((1, 1), np.int64)))
        return q[0].numpy()

    def item_embeddings(self) -> np.ndarray:
        """(n_items, d) rows aligned with `item_ids` (row 0 = padding, zeros)."""
        return self.model.item_emb.weight.detach().numpy().copy()

    def save(self, directory: str | Path) -> None:
        import torch

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(self.model.config.to_dict(), indent=1))
        torch.save(self.model.state_dict(), directory / "weights.pt")
        (directory / "items.json").write_text(json.dumps(self.item_ids))
        self.catalog.to_parquet(directory / "catalog.parquet")
        (directory / "meta.json").write_text(json.dumps(self.meta, indent=1, default=str))

    @classmethod
    def load(cls, directory: str | Path) -> ModelBundle:
        """Load a saved bundle; any missing or corrupt file -> `BundleError` naming it."""
        import torch

        from reco.models.ranker import RankerConfig, SessionAwareRanker

        directory = Path(directory)
        if not directory.is_dir():
            raise BundleError(f"model directory not found: {directory}")
        missing = [f for f in _FILES if not (directory / f).is_file()]
        if missing:
            raise BundleError(f"model directory {directory} lacks {', '.join(missing)}")
        current = "config.json"
        try:
            config = RankerConfig.from_dict(json.loads((directory / current).read_text()))
            current = "items.json"
            item_ids = json.loads((directory / current).read_text())
            current = "meta.json"
            meta = json.loads((directory / current).read_text())
            current = "catalog.parquet"
            catalog = ItemCatalog.from_parquet(directory / current)
            current = "weights.pt"
            model = SessionAwareRanker(config)
            model.load_state_dict(torch.load(directory / current, weights_only=True, map_location="cpu"))
        except Exception as e:  # any parse/shape error is a corrupt bundle, reported by file
            raise BundleError(f"corrupt model file {directory / current}: {type(e).__name__}: {e}") from e
        return cls(model=model, item_ids=list(item_ids), catalog=catalog, meta=meta)


def _right_padded(rows: Sequence[Sequence[int] | np.ndarray]) -> np.ndarray:
    """Rows of different lengths -> (n, longest or 1) int64, right-padded with 0."""
    out = np.zeros((len(rows), max([1] + [len(r) for r in rows])), dtype=np.int64)
    for b, r in enumerate(rows):
        out[b, : len(r)] = r
    return out
