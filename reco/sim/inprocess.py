"""An in-process stand-in for the API with the same two calls as `HttpApi`, for fast tests and the
online-vs-frozen benchmark: greedy top-k of each arm's `ArmModel` over a fixed candidate list, impressions
logged through `RedisStore.log_impressions` (stamped with the simulated time) plus the request-context
record, events ingested through `RedisStore.ingest`, and online weights adopted between requests
exactly as the API's model manager does (newer version, same base version)."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import torch

from reco.data.events import DEFAULT_DEVICE, Event
from reco.models.ranker import SessionAwareRanker
from reco.online.control import write_request_context
from reco.online.examples import Examples
from reco.online.model import ArmModel, logits_numpy, state_from_bytes


class InProcessApi:
    def __init__(
        self,
        store: Any,
        models: Mapping[str, ArmModel],
        assign: Callable[[str], str],
        candidates: Sequence[str],
        *,
        max_session: int = 20,
        popular: Sequence[str] = (),
    ):
        self.store = store
        self.assign = assign
        self.candidates = list(candidates)
        self.max_session = max_session
        # Cold requests (no session, no user history) get the popular order, as the API's fallback does.
        self._pop_rank = {item: -float(r) for r, item in enumerate(popular)}
        # Serving copies: the learner may hold the originals in the same process.
        self._models = {arm: copy.deepcopy(m) for arm, m in models.items()}
        self._snapshot: dict[str, int | None] = dict.fromkeys(models)
        self._clocked = False  # under the simulated clock: snapshots adopted at ticks only (`adopt_epoch`)

    def adopt_epoch(self, epoch: int) -> None:
        """A tick of the simulated clock: adopt the snapshots published for it now, and only at ticks from now on."""
        self._clocked = True
        for arm in self._models:
            self._refresh(arm)

    def _refresh(self, arm: str) -> int | None:
        latest = self.store.latest_weights_version(arm)
        if latest is not None and latest != self._snapshot[arm]:
            snap = self.store.get_weights(arm, latest)
            if snap is not None and str(snap.meta.get("base_version")) == self._models[arm].base_version:
                self._models[arm].module.load_state_dict(state_from_bytes(snap.blob))
                self._snapshot[arm] = latest
        return self._snapshot[arm]

    def recommend(
        self, user_id: str, *, session_id: str, page_type: str, context_item_id: str | None, limit: int, ts: datetime
    ) -> dict[str, Any]:
        arm = self.assign(user_id)
        snapshot = self._snapshot[arm] if self._clocked else self._refresh(arm)
        model = self._models[arm]
        session = self.store.session_items(session_id) or self.store.user_items(user_id)
        rows = [model.index_of[i] for i in session if i in model.index_of][-self.max_session :]
        consumed = set(session)
        cands = [c for c in self.candidates if c not in consumed and c in model.index_of]
        page, dev = (model.context_index or (lambda p, d: (0, 0)))(page_type, DEFAULT_DEVICE)
        if not rows and model.min_session > 0:
            scores = np.array([self._pop_rank.get(c, -1e9) for c in cands])
        else:
            scores = self._score(model, rows, [model.index_of[c] for c in cands], page, dev)
        top = np.argsort(-scores, kind="stable")[:limit]
        request_id = uuid.uuid4().hex
        items = [{"item_id": cands[j], "score": float(scores[j]), "position": p} for p, j in enumerate(top, 1)]
        events = [
            Event(event_id=f"{request_id}:{it['position']}", ts=ts, user_id=user_id, session_id=session_id,
                  item_id=it["item_id"], event_type="impression", request_id=request_id, position=it["position"],
                  arm=arm, model_version=model.base_version, propensity=1.0, is_exploration=False,
                  page_type=page_type, device=DEFAULT_DEVICE)
            for it in items
        ]  # fmt: skip
        write_request_context(self.store.client, self.store.prefix, request_id, session[-self.max_session :])
        self.store.log_impressions(events)
        return {"request_id": request_id, "items": items, "experiment_group": arm, "online_snapshot": snapshot,
                "model_version": model.base_version}  # fmt: skip

    def _score(self, model: ArmModel, rows: list[int], cands: list[int], page: int, dev: int) -> np.ndarray:
        if isinstance(model.module, SessionAwareRanker):  # the ranker's forward, the candidates shared
            with torch.inference_mode():
                logits, _ = model.module(torch.tensor([rows or [0]]), torch.tensor(cands), torch.tensor([page]),
                                         torch.tensor([dev]))  # fmt: skip
            return logits[0].numpy()
        ex = Examples.zeros(len(cands), self.max_session)
        ex.session[:, : len(rows)] = rows
        ex.lengths[:], ex.items[:], ex.positions[:], ex.page[:], ex.device[:] = len(rows), cands, 1, page, dev
        return logits_numpy(model, ex)

    def send_events(self, events: Sequence[dict[str, Any]]) -> None:
        self.store.ingest([Event.model_validate(e) for e in events])
