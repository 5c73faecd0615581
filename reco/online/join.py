"""Reward join: served impressions + feedback -> labelled impressions, in event time.

An impression is labelled 1 as soon as feedback (click, add-to-cart, purchase) with the same
`(request_id, item_id)` arrives with `ts <= impression.ts + window_s`; it is labelled 0 when the
watermark (the largest event `ts` seen) passes `impression.ts + window_s` without feedback. Time is the
events' own `ts`, never the wall clock, so a simulator that compresses days into minutes works, and a
replay gives the same labels. Feedback for an already closed impression is *late*: counted, not trained
on. Feedback that arrives before its impression (out-of-order delivery) waits until the impression shows
up or its own window passes (then it is an *orphan*).

Memory is bounded by event time and by size (O-1): open impressions live one window (`max_pending`
caps them; the oldest are then closed as no-click, counted `evicted_pending`); early feedback one window;
closed impressions are remembered `late_memory_s` (default: one window) to tell late/extra feedback from
orphans, at most `closed_memory` of them; event ids for deduplication `dedup_s` (default: one window), at
most `dedup_memory`. Feedback for an impression closed longer ago than `late_memory_s` counts as an orphan.
Each entry costs roughly 0.2-0.5 KB, so at 600 impressions/s and a 60 s window the joiner holds ~36,000
impressions (~20 MB); the size caps bound a long window at high rates.

Every event carries its stream entry id (`sid`). The joiner says which ids are finished right away
(views, duplicates, late/orphan feedback) and attaches the rest to the labelled impression they became
part of, so the caller acknowledges them only after using them.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

IMPRESSION = "impression"
FEEDBACK = frozenset({"click", "add_to_cart", "purchase"})


@dataclass(slots=True)
class Impression:
    request_id: str
    item_id: str
    arm: str
    ts: float
    position: int
    propensity: float
    sid: str
    user_id: str = ""
    session_id: str = ""
    model_version: str = ""
    page_type: str = ""
    device: str = ""
    context: tuple[str, ...] = ()  # session items per the stream (fallback when no request-context record)


@dataclass(slots=True)
class Labelled:
    """An impression whose reward window closed (label 0) or that got feedback (label 1)."""

    imp: Impression
    label: int
    sids: list[str] = field(default_factory=list)


class RewardJoiner:
    """Event-time join of impressions and feedback.

    >>> j = RewardJoiner(window_s=60)
    >>> imp = dict(sid="1-0", event_id="a", event_type="impression", ts=0.0, request_id="r", item_id="i",
    ...            arm="A", position=1, propensity=1.0)
    >>> clk = dict(sid="2-0", event_id="b", event_type="click", ts=5.0, request_id="r", item_id="i")
    >>> late = dict(sid="3-0", event_id="c", event_type="click", ts=500.0, request_id="r", item_id="j")
    >>> imp2 = dict(imp, sid="1-1", event_id="a2", item_id="j")
    >>> labelled, done = j.add([imp, imp2, clk])
    >>> [(x.imp.item_id, x.label, x.sids) for x in labelled], done
    ([('i', 1, ['1-0', '2-0'])], [])
    >>> labelled, done = j.add([late])   # ts 500 closes j's window (no click inside it) ...
    >>> [(x.imp.item_id, x.label) for x in labelled], done, j.counters["late_feedback"]
    ([('j', 0)], ['3-0'], 1)
    """

    def __init__(
        self,
        window_s: float = 1800.0,
        dedup_memory: int = 200_000,
        closed_memory: int = 200_000,
        max_pending: int = 500_000,
        late_memory_s: float | None = None,
        dedup_s: float | None = None,
    ):
        self.window_s = window_s
        self.dedup_memory = dedup_memory
        self.closed_memory = closed_memory
        self.max_pending = max_pending
        self.late_memory_s = late_memory_s
        self.dedup_s = dedup_s
        self._late_s = window_s if late_memory_s is None else late_memory_s
        self._dedup_s = window_s if dedup_s is None else dedup_s
        self._pending: dict[tuple[str, str], Impression] = {}
        self._order: deque[tuple[float, tuple[str, str]]] = deque()
        self._early: dict[tuple[str, str], tuple[float, str]] = {}
        self._early_order: deque[tuple[float, tuple[str, str]]] = deque()
        self._closed: OrderedDict[tuple[str, str], tuple[int, float]] = OrderedDict()  # key -> (label, closed at)
        self._seen: OrderedDict[str, float] = OrderedDict()  # event id -> event ts
        self.watermark = float("-inf")
        self.counters = dict.fromkeys(
            ("impressions", "positives", "negatives", "late_feedback", "extra_feedback", "orphan_feedback",
             "duplicates", "other", "evicted_pending"), 0
        )  # fmt: skip

    @property
    def n_pending(self) -> int:
        return len(self._pending)

    def sizes(self) -> dict[str, int]:
        """Entries held per structure (each bounded: see the module docstring)."""
        tables = {"pending": self._pending, "order": self._order, "early": self._early,
                  "early_order": self._early_order, "closed": self._closed, "seen": self._seen}  # fmt: skip
        return {k: len(v) for k, v in tables.items()}

    def add(self, events: list[dict[str, Any]]) -> tuple[list[Labelled], list[str]]:
        """Feed decoded events in stream order; returns (labelled impressions, stream ids finished now)."""
        out: list[Labelled] = []
        done: list[str] = []
        for ev in events:
            if self._is_duplicate(ev.get("event_id"), ev["ts"]):
                self.counters["duplicates"] += 1
                done.append(ev["sid"])
                continue
            ts = ev["ts"]
            if ts > self.watermark:
                self.watermark = ts
            etype = ev["event_type"]
            rid = ev.get("request_id")
            if etype == IMPRESSION and rid and ev.get("arm"):
                self._on_impression(ev, out)
            elif etype in FEEDBACK and rid:
                self._on_feedback(ev, out, done)
            else:
                self.counters["other"] += 1
                done.append(ev["sid"])
        self._expire(out, done)
        return out, done

    def _is_duplicate(self, event_id: str | None, ts: float) -> bool:
        if event_id is None:
            return False
        if event_id in self._seen:
            return True
        self._seen[event_id] = ts
        if len(self._seen) > self.dedup_memory:
            self._seen.popitem(last=False)
        return False

    def _on_impression(self, ev: dict[str, Any], out: list[Labelled]) -> None:
        key = (ev["request_id"], ev["item_id"])
        imp = Impression(
            request_id=key[0],
            item_id=key[1],
            arm=ev["arm"],
            ts=ev["ts"],
            position=int(ev.get("position") or 1),
            propensity=float(ev.get("propensity") or 1.0),
            sid=ev["sid"],
            user_id=ev.get("user_id") or "",
            session_id=ev.get("session_id") or "",
            model_version=ev.get("model_version") or "",
            page_type=ev.get("page_type") or "",
            device=ev.get("device") or "",
            context=ev.get("context") or (),
        )
        self.counters["impressions"] += 1
        early = self._early.pop(key, None)
        if early is not None and early[0] <= imp.ts + self.window_s:
            self._close(key, imp, 1, [imp.sid, early[1]], out)
            return
        if early is not None:  # feedback came, but outside the window: late
            self.counters["late_feedback"] += 1
            out_sids = [imp.sid, early[1]]
            self._close(key, imp, 0, out_sids, out)
            return
        self._pending[key] = imp
        self._order.append((imp.ts + self.window_s, key))
        if len(self._pending) > self.max_pending:  # a window too long for the rate: close the oldest early
            self._evict_oldest_pending(out)

    def _on_feedback(self, ev: dict[str, Any], out: list[Labelled], done: list[str]) -> None:
        key = (ev["request_id"], ev["item_id"])
        imp = self._pending.get(key)
        if imp is not None:
            if ev["ts"] <= imp.ts + self.window_s:
                del self._pending[key]
                self._close(key, imp, 1, [imp.sid, ev["sid"]], out)
            else:  # the window closed in event time before this batch's watermark caught up
                self.counters["late_feedback"] += 1
                done.append(ev["sid"])
            return
        closed = self._closed.get(key)
        if closed is not None:
            self.counters["extra_feedback" if closed[0] == 1 else "late_feedback"] += 1
            done.append(ev["sid"])
        elif key in self._early:
            self.counters["extra_feedback"] += 1
            done.append(ev["sid"])
        else:
            self._early[key] = (ev["ts"], ev["sid"])
            self._early_order.append((ev["ts"] + self.window_s, key))

    def _close(self, key: tuple[str, str], imp: Impression, label: int, sids: list[str], out: list[Labelled]) -> None:
        self.counters["positives" if label else "negatives"] += 1
        out.append(Labelled(imp, label, sids))
        self._closed[key] = (label, self.watermark)
        if len(self._closed) > self.closed_memory:
            self._closed.popitem(last=False)

    def _evict_oldest_pending(self, out: list[Labelled]) -> None:
        while self._order and len(self._pending) > self.max_pending:
            _, key = self._order.popleft()
            imp = self._pending.pop(key, None)
            if imp is not None:
                self.counters["evicted_pending"] += 1
                self._close(key, imp, 0, [imp.sid], out)

    def _expire(self, out: list[Labelled], done: list[str]) -> None:
        wm = self.watermark
        # Impressions arrive in (nearly) ts order, so the deque front holds the oldest deadlines; entries whose
        # impression was already closed by a click are skipped lazily.
        while self._order and self._order[0][0] < wm:
            _, key = self._order.popleft()
            imp = self._pending.pop(key, None)
            if imp is not None:
                self._close(key, imp, 0, [imp.sid], out)
        while self._early_order and self._early_order[0][0] < wm:
            _, key = self._early_order.popleft()
            early = self._early.pop(key, None)
            if early is not None:
                self.counters["orphan_feedback"] += 1
                done.append(early[1])
        # Closed keys and event ids are needed for one window of event time (insertion order ~ time order).
        _drop_older(self._closed, wm - self._late_s, lambda v: v[1])
        _drop_older(self._seen, wm - self._dedup_s, lambda v: v)


def _drop_older(table: OrderedDict[Any, Any], limit: float, ts_of: Any) -> None:
    """Pop entries from the front of an insertion-ordered table while their time is below `limit`."""
    while table:
        key = next(iter(table))
        if ts_of(table[key]) >= limit:
            return
        del table[key]
