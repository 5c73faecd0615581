"""The item catalogue in Redis: what the catalogue API upserts, what API workers poll, what the lake's items
table copies (`export_items`).

Keys (``P`` is the prefix)::

    P:catalog:items      hash   item_id -> canonical content JSON (title, categories, attributes, available)
    P:catalog:versions   hash   item_id -> "<version> <updated_at ISO>"
    P:catalog:changed    zset   item_id, score = the catalogue version that last changed it
    P:catalog:seq        string the catalogue version allocator (INCR per changed item)

An upsert is one Lua call per batch: an item whose content equals what is stored changes nothing (no new
version: PUT is idempotent); a changed or new item gets the next version. Readers poll `seq()` and read
only what changed since the version they hold (`changed_since`), so a poll costs one GET when nothing
changed and O(changed items) otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from reco.data.catalog import ItemRecord, ItemUpsert
from reco.state.redis_io import guard, text

#: Upsert a batch: ARGV = now, then (item_id, content) pairs; returns 1 (created), 2 (updated), 0 (unchanged).
UPSERT_LUA = """
local out = {}
for i = 2, #ARGV, 2 do
  local id, content = ARGV[i], ARGV[i + 1]
  local old = redis.call('HGET', KEYS[1], id)
  if old == content then
    out[#out + 1] = 0
  else
    local v = redis.call('INCR', KEYS[4])
    redis.call('HSET', KEYS[1], id, content)
    redis.call('HSET', KEYS[2], id, v .. ' ' .. ARGV[1])
    redis.call('ZADD', KEYS[3], v, id)
    out[#out + 1] = old and 2 or 1
  end
end
return out
"""


@dataclass(frozen=True)
class UpsertResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


class ItemStore:
    """The catalogue keys above over a redis-py client (`reco.state.redis_io.connect`); Redis errors
    surface as `StoreUnavailable`."""

    def __init__(self, client: Any, prefix: str = "reco") -> None:
        self.client = client
        self.prefix = prefix
        self._keys = [f"{prefix}:catalog:{k}" for k in ("items", "versions", "changed", "seq")]
        self._upsert = client.register_script(UPSERT_LUA)

    @guard
    def upsert(self, items: Sequence[tuple[str, ItemUpsert]], now: datetime | None = None) -> UpsertResult:
        """Store `(item_id, content)` pairs in one atomic call (a repeated id: the last one wins)."""
        last = dict(items)
        if not last:
            return UpsertResult()
        stamp = (now or datetime.now(UTC)).astimezone(UTC).isoformat().replace("+00:00", "Z")
        args: list[str] = [stamp]
        for iid, content in last.items():
            args += [iid, content.content_json()]
        codes = self._upsert(keys=self._keys, args=args)
        out = UpsertResult()
        for iid, code in zip(last, codes, strict=True):
            (out.unchanged, out.created, out.updated)[int(code)].append(iid)
        return out

    @guard
    def seq(self) -> int:
        """The catalogue's version: changes whenever any item does."""
        return int(self.client.get(self._keys[3]) or 0)

    @guard
    def get(self, item_ids: Sequence[str]) -> dict[str, ItemRecord]:
        """The stored records of those ids that exist."""
        ids = list(dict.fromkeys(item_ids))
        if not ids:
            return {}
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(self._keys[0], ids)
        pipe.hmget(self._keys[1], ids)
        contents, versions = pipe.execute()
        return {iid: _record(iid, c, v) for iid, c, v in zip(ids, contents, versions, strict=True) if c is not None}

    @guard
    def changed_since(self, version: int, limit: int | None = None) -> tuple[int, list[ItemRecord]]:
        """(the catalogue version read up to, the records changed after `version`, oldest change first).

        With `limit`, at most that many records (call again from the returned version for the rest)."""
        args = (self._keys[2], f"({version}", "+inf")
        raw = self.client.zrangebyscore(*args, withscores=True, start=0, num=limit) if limit else \
            self.client.zrangebyscore(*args, withscores=True)  # fmt: skip
        if not raw:
            return version, []
        ids = [text(m) for m, _ in raw]
        found = self.get(ids)
        records = [found[i] for i in ids if i in found]
        return int(raw[-1][1]), records

    def all(self) -> list[ItemRecord]:
        return self.changed_since(0)[1]


def _record(item_id: str, content: Any, version: Any) -> ItemRecord:
    v, _, stamp = (text(version) or "0 ").partition(" ")
    return ItemRecord(item_id=item_id, version=int(v), updated_at=stamp or None, **json.loads(text(content) or "{}"))


class CatalogFollower:
    """An API worker's copy of the upserted items, brought up to date by `poll()` (one GET when nothing
    changed). `records` maps item id -> latest record; `version` is the catalogue version held.

    The copy is replaced, never mutated, so a reader that took `records` keeps a consistent view.
    """

    def __init__(self, store: ItemStore) -> None:
        self.store = store
        self.version = 0
        self.records: dict[str, ItemRecord] = {}

    def poll(self) -> bool:
        """Read what changed; True if anything did."""
        if self.store.seq() == self.version:
            return False
        version, changed = self.store.changed_since(self.version)
        if not changed and version == self.version:
            return False
        merged = dict(self.records)
        merged.update((r.item_id, r) for r in changed)
        self.records, self.version = merged, version
        return True


def export_items(store: ItemStore, table: Any, batch: int = 50_000) -> int:
    """Copy every item version the lake's items table (`reco.data.items.ItemsTable`) lacks; returns rows
    added. Idempotent: the table keeps one row per (item_id, version) and resumes from its newest version."""
    added = 0
    version = table.max_version()
    while True:
        version_read, records = store.changed_since(version, limit=batch)
        if not records:
            return added
        added += table.append(records)
        version = version_read


def records_of(items: Iterable[tuple[str, ItemUpsert]]) -> list[ItemRecord]:
    """Unstored records (version 0) of `(item_id, content)` pairs: tests and offline tools."""
    return [ItemRecord(item_id=i, **c.model_dump()) for i, c in items]
