"""Reward join: served impressions + feedback -> labelled impressions, in event time.

An impression is labelled 1 as soon as feedback (click, add-to-cart, purchase) with the same
`(request_id, item_id)` arrives with `ts <= impression.ts + window_s`; it is labelled 0 when the
watermark (the largest event `ts` seen) passes `impression.ts + window_s` without feedback. Time is the
events' own `ts`, never the wall clock, so a simulator that compresses days into minutes works, and a
replay gives the same labels. Feedback for an already closed impression is *late*: counted, not trained
on. Feedback that arrives before its impression (out-of-order delivery) waits until the impression shows
up or its own window passes (then it is an *orphan*).

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

    def __init__(self, window_s: float = 1800.0, dedup_memory: int = 500_000, closed_memory: int = 500_000):
        self.window_s = window_s
        self.dedup_memory = dedup_memory
        self.closed_memory = closed_memory
        self._pending: dict[tuple[str, str], Impression] = {}
        self._order: deque[tuple[float, tuple[str, str]]] = deque()
        self._early: dict[tuple[str, str], tuple[float, str]] = {}
        self._early_order: deque[tuple[float, tuple[str, str]]] = deque()
        self._closed: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.watermark = float("-inf")
        self.counters = dict.fromkeys(
            ("impressions", "positives", "negatives", "late_feedback", "extra_feedback", "orphan_feedback",
             "duplicates", "other"), 0
        )  # fmt: skip

    @property
    def n_pending(self) -> int:
        return len(self._pending)

    def add(self, events: list[dict[str, Any]]) -> tuple[list[Labelled], list[str]]:
        """Feed decoded events in stream order; returns (labelled impressions, stream ids finished now)."""
        out: list[Labelled] = []
        done: list[str] = []
        for ev in events:
            if self._is_duplicate(ev.get("event_id")):
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

    def _is_duplicate(self, event_id: str | None) -> bool:
        if event_id is None:
            return False
        if event_id in self._seen:
            return True
        self._seen[event_id] = None
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
            self.counters["extra_feedback" if closed == 1 else "late_feedback"] += 1
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
        self._closed[key] = label
        if len(self._closed) > self.closed_memory:
            self._closed.popitem(last=False)

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
