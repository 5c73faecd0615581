"""The session (or user history) each request was ranked with, rebuilt from the stream itself.

The API records the exact session in a request-context record (`control.write_request_context`). When
that record is missing (an older API, expired TTL), the learner falls back to what the stream says:
the view/click items of the impression's session that came before it in the stream (else the user's
recent items, as serving does for a request without a session). The store applies events in stream order,
so this is the session the server read, up to events ingested concurrently with the request.

Bounds (O-1): at most `max_items` items per key, at most `max_keys` sessions and `max_keys` users, and a
key idle for more than `idle_s` of event time is forgotten. An entry costs about 0.1 KB plus 8 bytes per
item, so the default caps hold at most ~2 x 50,000 x 0.5 KB = 50 MB, usually far less.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

HISTORY_EVENTS = frozenset({"view", "click"})


class _Items:
    """One key's recent items (a list, not a deque: a deque costs ~600 bytes even when it holds one item)."""

    __slots__ = ("items", "ts")

    def __init__(self, ts: float) -> None:
        self.ts = ts
        self.items: list[str] = []


class HistoryTracker:
    """Bounded per-session and per-user item histories.

    >>> h = HistoryTracker(max_items=2, idle_s=100)
    >>> for t, item in enumerate("abc"):
    ...     h.observe({"event_type": "view", "session_id": "s", "user_id": "u", "item_id": item, "ts": t})
    >>> h.context({"session_id": "s", "user_id": "u"}), h.context({"session_id": "new", "user_id": "u"})
    (('b', 'c'), ('b', 'c'))
    >>> h.observe({"event_type": "view", "session_id": "s2", "user_id": "u2", "item_id": "d", "ts": 500})
    >>> h.context({"session_id": "s", "user_id": "u"}), h.sizes()    # idle for 498 s > 100 s: forgotten
    ((), {'sessions': 1, 'users': 1})
    """

    def __init__(self, max_items: int = 50, max_keys: int = 50_000, idle_s: float = 6 * 3600.0):
        self.max_items = max_items
        self.max_keys = max_keys
        self.idle_s = idle_s
        self._sessions: OrderedDict[str, _Items] = OrderedDict()  # least recently active first
        self._users: OrderedDict[str, _Items] = OrderedDict()
        self._watermark = float("-inf")

    def sizes(self) -> dict[str, int]:
        return {"sessions": len(self._sessions), "users": len(self._users)}

    def observe(self, ev: dict[str, Any]) -> None:
        if ev["event_type"] not in HISTORY_EVENTS:
            return
        ts = float(ev.get("ts") or 0.0)
        if ts > self._watermark:
            self._watermark = ts
        if ev.get("session_id"):
            self._push(self._sessions, ev["session_id"], ev["item_id"], ts)
        if ev.get("user_id"):
            self._push(self._users, ev["user_id"], ev["item_id"], ts)

    def context(self, ev: dict[str, Any]) -> tuple[str, ...]:
        """Session items at this point of the stream; the user's recent items when the session has none."""
        sid = ev.get("session_id")
        entry = self._sessions.get(sid) if sid else None
        if entry is None or not entry.items:
            entry = self._users.get(ev.get("user_id") or "")
        return tuple(entry.items) if entry is not None else ()

    def _push(self, table: OrderedDict[str, _Items], key: str, item: str, ts: float) -> None:
        entry = table.get(key)
        if entry is None:
            entry = table[key] = _Items(ts)
        else:
            table.move_to_end(key)
            entry.ts = max(entry.ts, ts)
        entry.items.append(item)
        if len(entry.items) > self.max_items:
            del entry.items[0]
        # Least recently active first: drop what went idle in event time, then anything over the size cap.
        limit = self._watermark - self.idle_s
        while table and (len(table) > self.max_keys or next(iter(table.values())).ts < limit):
            table.popitem(last=False)
