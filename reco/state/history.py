"""`RecentItems`: a process's copy of users' recent-item lists, read from Redis by their new tail only.

Every recommendation reads the user's recent items (`P:uitems:<user>`, up to `user_items_max`, 500 by default),
which the rules drop from the page. Read whole, that list was ~45% of the request's Redis read (150 of 314 us
for 500 items: the reply, its parsing and decoding). Between two requests of a user the list changes only at its
end (events push there; the trim and the expiry drop its oldest items), so a process that has read it once
needs only what was pushed since.

Redis's count of the user's pushes says how many that is: the ingest script pushes one item per accepted view
or click and counts it in the same call (`n:view`, `n:click` of `P:user:<user>`). One script
(`RECENT_ITEMS_LUA`), given the count the remembered copy was read at, returns the count now, the list's length
and the pushes since plus `OVERLAP` items the copy already ends with, all at once. The list is always the last
`length` items pushed (pushes append; the trim and the expiry drop from the front), so the remembered copy plus
the pushes since, cut to `length`, is the list, given that the overlap matches the copy's end (checked, item by
item). A user not remembered, or a list that changed otherwise (a count that went back, an overlap that differs),
is read whole: by the same call, or, for a mismatch, by a second round trip.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from reco.state.redis_io import number, texts

__all__ = ["RecentItems"]


class RecentItems:
    """Users' recent-item lists remembered (LRU of `users` lists; ~4 KB each at 500 items: the item ids are
    interned, so users share their strings), each with the push count it was read at.

    The store adds `command` (an EVALSHA of `RECENT_ITEMS_LUA`, whose SHA1 is `sha`) to its round trip and gives
    its reply to `decode`: the list, or None when the tail does not fit the remembered copy and the whole list
    must be read (`command(..., whole=True)`, then `decode` again).
    """

    #: Items the tail repeats from the remembered copy's end, checked against it.
    OVERLAP = 4

    def __init__(self, users: int, sha: str) -> None:
        if users < 1:
            raise ValueError(f"users must be >= 1, got {users}")
        self.users = users
        self.sha = sha
        self._lists: OrderedDict[str, tuple[int, tuple[str, ...]]] = OrderedDict()  # user -> (pushes, items)
        self._lock = threading.Lock()
        self.counts = {"tail": 0, "whole": 0}  # how each list was read

    def command(self, user_id: str, list_key: str, user_key: str, *, whole: bool = False) -> tuple[Any, ...]:
        """The script call that reads this user's push count, list length and list (the tail when remembered)."""
        found = None if whole else self._lists.get(user_id)
        return ("EVALSHA", self.sha, 2, list_key, user_key, -1 if found is None else found[0], self.OVERLAP)

    def decode(self, user_id: str, reply: Sequence[Any]) -> list[str] | None:
        """The user's list from the script's reply, oldest first; None: read it whole."""
        pushes, length, tail = int(number(reply[0])), int(reply[1]), reply[2]
        tail = tuple(map(sys.intern, texts(tail)))
        if len(tail) == length:  # the whole list (read whole, or no longer than the tail)
            items = tail
            self.counts["whole"] += 1
        else:
            items = self._extended(user_id, pushes, length, tail)
            if items is None:
                return None
            self.counts["tail"] += 1
        with self._lock:
            self._lists[user_id] = (pushes, items)
            self._lists.move_to_end(user_id)
            if len(self._lists) > self.users:
                self._lists.popitem(last=False)
        return list(items)

    def _extended(self, user_id: str, pushes: int, length: int, tail: tuple[str, ...]) -> tuple[str, ...] | None:
        """The remembered list plus the pushes since, when the tail holds them all and overlaps as it must."""
        with self._lock:
            found = self._lists.get(user_id)
        if found is None:
            return None
        then, items = found
        new = pushes - then
        if not 0 <= new <= len(tail) or len(items) + new < length:
            return None
        old = tail[: len(tail) - new]  # what the list held already: the remembered copy's end
        if old != items[len(items) - len(old) :]:
            return None
        return (items + tail[len(tail) - new :])[len(items) + new - length :]
