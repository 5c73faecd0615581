"""The session (or user history) each request was ranked with, rebuilt from the stream itself.

The API records the exact session in a request-context record (`control.write_request_context`). When
that record is missing (an older API, expired TTL), the learner falls back to what the stream says:
the view/click items of the impression's session that came before it in the stream (else the user's
recent items, as serving does for a request without a session). The store applies events in stream order,
so this is the session the server read, up to events ingested concurrently with the request.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

HISTORY_EVENTS = frozenset({"view", "click"})


class HistoryTracker:
    """Bounded per-session and per-user item histories.

    >>> h = HistoryTracker(max_items=2)
    >>> for item in "abc":
    ...     h.observe({"event_type": "view", "session_id": "s", "user_id": "u", "item_id": item})
    >>> h.context({"session_id": "s", "user_id": "u"}), h.context({"session_id": "new", "user_id": "u"})
    (('b', 'c'), ('b', 'c'))
    """

    def __init__(self, max_items: int = 50, max_keys: int = 200_000):
        self.max_items = max_items
        self.max_keys = max_keys
        self._sessions: OrderedDict[str, deque[str]] = OrderedDict()
        self._users: OrderedDict[str, deque[str]] = OrderedDict()

    def observe(self, ev: dict[str, Any]) -> None:
        if ev["event_type"] not in HISTORY_EVENTS:
            return
        if ev.get("session_id"):
            self._push(self._sessions, ev["session_id"], ev["item_id"])
        if ev.get("user_id"):
            self._push(self._users, ev["user_id"], ev["item_id"])

    def context(self, ev: dict[str, Any]) -> tuple[str, ...]:
        """Session items at this point of the stream; the user's recent items when the session has none."""
        sid = ev.get("session_id")
        items = self._sessions.get(sid) if sid else None
        if not items:
            items = self._users.get(ev.get("user_id") or "")
        return tuple(items) if items else ()

    def _push(self, table: OrderedDict[str, deque[str]], key: str, item: str) -> None:
        q = table.get(key)
        if q is None:
            q = table[key] = deque(maxlen=self.max_items)
            if len(table) > self.max_keys:
                table.popitem(last=False)
        else:
            table.move_to_end(key)
        q.append(item)
