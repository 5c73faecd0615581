"""What goes into and comes out of one recommendation request (`RecoRequest`, `RecoItem`,
`RecoResult`), the pipeline's settings (`PipelineConfig`) and request ids."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from reco.data.events import DEFAULT_DEVICE, PageType
from reco.ranking.candidates import (
    CandidateConfig,
)
from reco.ranking.cold_start import ColdStartConfig
from reco.ranking.rules import RuleConfig


class NoModelAvailable(RuntimeError):
    """No arm has a model loaded yet (the API answers 503 until the model manager is ready)."""


@dataclass(frozen=True)
class RecoRequest:
    user_id: str
    page_type: PageType = PageType.home
    context_item_id: str | None = None
    session_id: str | None = None
    device: str = DEFAULT_DEVICE
    limit: int = 20
    ts: datetime | None = None  # event time of the served impressions; None = now (simulations set it)


class RecoItem(NamedTuple):
    item_id: str
    score: float
    reason: str
    source: str
    position: int
    is_exploration: bool
    propensity: float
    category: str = "unknown"


@dataclass
class RecoResult:
    request_id: str
    user_id: str
    items: list[RecoItem]
    model_version: str
    online_snapshot: int | None
    latency_ms: float
    experiment_group: str
    alias: str
    degraded: list[str]
    candidates_per_source: dict[str, int] = field(default_factory=dict)
    # `recommend(..., defer_log=True)`: starts the impression write; the caller runs it exactly once (the API:
    # after the response is sent). None when there is nothing to write.
    start_log: Callable[[], None] | None = None


@dataclass(frozen=True)
class PipelineConfig:
    candidates: CandidateConfig = field(default_factory=CandidateConfig)
    rules: RuleConfig = field(default_factory=RuleConfig)
    features_timeout_s: float = 0.05
    # True: read the features on the request thread (no thread hop; the store's own socket timeout must
    # then be the budget: `reco.state.store.connect(url, socket_timeout=features_timeout_s)`).
    features_inline: bool = False
    # The trending list is the same for every request: it is read (in the features round trip) at most
    # once per this many seconds per process, not parsed anew for every request. 0 = every request.
    trending_refresh_s: float = 1.0
    # After a features read that failed slowly (half the budget or more: a hung Redis), requests skip the
    # read for this long (served degraded at once) instead of each waiting out the budget again.
    features_cooldown_s: float = 1.0
    cold_start: ColdStartConfig = field(default_factory=ColdStartConfig)
    # Similarity sources run on the executor under the per-source budget (`gather`); False: inline, uncut.
    concurrent_sources: bool = True
    # Exact similarity searches over at most this many item rows run on the request thread all the same:
    # their cost is bounded (~0.1 ms at 1,682 items) and below that of a thread hop and back on a loaded
    # machine; so do ANN searches (a fixed number of cells: ~0.1-0.2 ms at 10^6 items, where the hop cost more,
    # docs/benchmarks.md "Scale"). Larger exact tables keep the executor and its budget. 0: always the executor.
    inline_exact_rows: int = 5_000


# Request ids: a random per-process prefix plus a counter: unique across workers and restarts, and no
# entropy syscall per request (uuid4 reads os.urandom every call).
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)


def _reseed_ids() -> None:  # a forked worker must not repeat its parent's ids
    global _ID_PREFIX, _ID_COUNTER
    _ID_PREFIX, _ID_COUNTER = os.urandom(8).hex(), itertools.count(1)


os.register_at_fork(after_in_child=_reseed_ids)


def new_request_id() -> str:
    """A new request id (32 hex characters, like a uuid4 hex).

    >>> a, b = new_request_id(), new_request_id()
    >>> a != b and len(a) == len(b) == 32
    True
    """
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"
