"""`OnlineStateOps`: the Redis operations of online learning, part of `RedisStore` (keys in `reco.state.keys`).

Weight snapshots (published under a fencing token, see `reco.state.lease`), request contexts, pause and
resume, the learner's counters and heartbeat, and the learner's reads of the event stream: through its
consumer group, decoded by a fast path (one `json.loads` and one `fromisoformat` per entry, ~4x cheaper
than validating each entry into an `Event`, which the sink does) because the learner reads every event.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from reco.state.keys import (
    HEARTBEAT_TTL_S,
    REQUEST_CONTEXT_TTL_S,
    heartbeat_key,
    lease_token_key,
    paused_key,
    request_context_key,
    reverts_key,
    stats_key,
)
from reco.state.records import WeightsSnapshot
from reco.state.redis_io import guard, id_key, number, text
from reco.state.scripts import LATEST_WEIGHTS_LUA
from reco.state.snapshots import StaleToken

__all__ = ["OnlineStateOps", "decode_event"]

#: A decoded stream entry: (entry id, the event as a flat dict with ``ts`` in epoch seconds, or None).
Row = tuple[str, "dict[str, Any] | None"]

# Publish one snapshot. With a token (ARGV[4] != ''), only while it is the arm's newest fencing token:
# the check and the write are one atomic call, so an old lease holder can never write after a takeover.
_PUT_WEIGHTS = """
if ARGV[4] ~= '' then
  local newest = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tonumber(ARGV[4]) ~= newest then return -newest end
end
local v = redis.call('INCR', KEYS[1] .. ':seq')
redis.call('HSET', KEYS[1] .. ':' .. v, 'blob', ARGV[1], 'meta', ARGV[2])
redis.call('SET', KEYS[1], v)
local old = v - tonumber(ARGV[3])
if old >= 1 then redis.call('DEL', KEYS[1] .. ':' .. old) end
return v
"""


def decode_event(entry_id: str, fields: Mapping[Any, Any]) -> dict[str, Any] | None:
    """A stream entry (`e` = Event JSON) -> a flat dict with `ts` as epoch seconds and `sid` = entry id.

    >>> decode_event("1-0", {b"e": b'{"event_id": "x", "ts": "2026-01-01T00:00:00Z", "event_type": "view",'
    ...                             b' "user_id": "u", "item_id": "i"}'})["ts"]
    1767225600.0
    >>> decode_event("1-1", {b"e": b"not json"}) is None
    True
    """
    raw = fields.get(b"e", fields.get("e"))
    try:
        ev = json.loads(raw)
        ev["ts"] = datetime.fromisoformat(ev["ts"]).timestamp()
        ev["event_type"] = str(ev["event_type"])
        ev["item_id"] = str(ev["item_id"])
    except (TypeError, ValueError, KeyError):
        return None
    ev["sid"] = entry_id
    return ev


def _rows(raw: Sequence[tuple[Any, Any]] | None) -> list[Row]:
    out = []
    for entry_id, fields in raw or []:
        sid = text(entry_id)
        out.append((sid, decode_event(sid, fields or {})))
    return out


class OnlineStateOps:
    """Mixed into `RedisStore` (which provides `client`, `prefix`, `key`, `stream_key`, `keep_weights`)."""

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    client: Any
    prefix: str
    keep_weights: int
    stream_key: str

    # -- weight snapshots ------------------------------------------------------------------------
    def _script(self, name: str, source: str) -> Any:
        scripts = self.__dict__.setdefault("_online_scripts", {})
        if name not in scripts:
            scripts[name] = self.client.register_script(source)
        return scripts[name]

    @guard
    def put_weights(self, arm: str, blob: bytes, meta: Mapping[str, Any], *, token: int | None = None) -> int:
        """Publish a new snapshot; returns its version (1, 2, ...). Only the last keep_weights are kept.

        With `token` (the writer's lease token, `reco.state.lease.Lease`), the snapshot's meta carries it
        and the write happens only while it is the arm's newest token; otherwise `StaleToken` is raised and
        nothing is written. Allocation, blob, pointer and pruning are one script call, so a reader never
        sees a pointer to a missing snapshot.
        """
        meta = dict(meta) if token is None else {**meta, "token": int(token)}
        keys = [self.key("weights", arm), lease_token_key(self.prefix, arm)]
        args = [bytes(blob), json.dumps(meta), self.keep_weights, "" if token is None else int(token)]
        version = int(self._script("put", _PUT_WEIGHTS)(keys=keys, args=args))
        if version <= 0:
            raise StaleToken(f"arm {arm}: token {token} is stale (newest {-version}); snapshot not written")
        return version

    @guard
    def latest_weights_version(self, arm: str) -> int | None:
        v = self.client.get(self.key("weights", arm))
        return None if v is None else int(v)

    @guard
    def get_weights(self, arm: str, version: int | None = None) -> WeightsSnapshot | None:
        """The snapshot (latest when version is None); None when there is none (or it was pruned)."""
        base = self.key("weights", arm)
        if version is None:
            res = self._script("latest", LATEST_WEIGHTS_LUA)(keys=[base])
            if not res or res[1] is None:
                return None
            v, blob, meta = res
        else:
            blob, meta = self.client.hmget(f"{base}:{version}", ["blob", "meta"])
            if blob is None:
                return None
            v = version
        return WeightsSnapshot(int(v), json.loads(text(meta) or "{}"), bytes(blob))

    @guard
    def newest_token(self, arm: str) -> int:
        """The arm's newest lease token (0 before any learner held the lease)."""
        return int(number(self.client.get(lease_token_key(self.prefix, arm))))

    # -- request contexts ------------------------------------------------------------------------
    @guard
    def write_request_context(
        self, request_id: str, session_items: Sequence[str], ttl_s: int = REQUEST_CONTEXT_TTL_S
    ) -> None:
        """Record the session items a request was ranked with (the API writes it inside `log_impressions`)."""
        self.client.set(request_context_key(self.prefix, request_id), json.dumps(list(session_items)), ex=ttl_s)

    @guard
    def read_request_contexts(self, request_ids: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """Session items per request id, for every id that has a record (one MGET round trip)."""
        ids = list(dict.fromkeys(request_ids))
        if not ids:
            return {}
        raw = self.client.mget([request_context_key(self.prefix, r) for r in ids])
        return {rid: tuple(str(x) for x in json.loads(v)) for rid, v in zip(ids, raw, strict=True) if v is not None}

    # -- control: pause/resume, counters, heartbeat -----------------------------------------------
    @guard
    def set_paused(self, arm: str, paused: bool) -> None:
        """Pause (the learner keeps consuming, so lag does not build up, but does not learn) or resume."""
        if paused:
            self.client.set(paused_key(self.prefix, arm), "1")
        else:
            self.client.delete(paused_key(self.prefix, arm))

    @guard
    def paused_arms(self, arms: Sequence[str]) -> set[str]:
        """The paused arms among `arms`, in one round trip."""
        if not arms:
            return set()
        vals = self.client.mget([paused_key(self.prefix, a) for a in arms])
        return {a for a, v in zip(arms, vals, strict=True) if v is not None}

    @guard
    def count_revert(self, arm: str) -> int:
        return int(self.client.incr(reverts_key(self.prefix, arm)))

    @guard
    def revert_count(self, arm: str) -> int:
        return int(number(self.client.get(reverts_key(self.prefix, arm))))

    @guard
    def write_learner_stats(self, stats: Mapping[str, Mapping[str, Any]]) -> None:
        """arm -> counters, each arm's hash written in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for arm, values in stats.items():
            pipe.hset(stats_key(self.prefix, arm), mapping={k: str(v) for k, v in values.items()})
        pipe.execute()

    @guard
    def learner_stats(self, arm: str) -> dict[str, str]:
        return {text(k): text(v) for k, v in self.client.hgetall(stats_key(self.prefix, arm)).items()}

    @guard
    def beat(self, consumer: str, now: float) -> None:
        """Record that learner `consumer` is alive and polling (the key expires when it stops)."""
        self.client.set(heartbeat_key(self.prefix, consumer), repr(now), ex=HEARTBEAT_TTL_S)

    @guard
    def last_beat(self, consumer: str) -> float | None:
        """Unix time of the consumer's last heartbeat, None when it has not beaten within the TTL."""
        raw = self.client.get(heartbeat_key(self.prefix, consumer))
        return None if raw is None else float(raw)

    # -- the learner's stream reads ----------------------------------------------------------------
    @guard
    def read_events(
        self, group: str, consumer: str, *, count: int, block_ms: int | None = None, pending: bool = False
    ) -> list[Row]:
        """XREADGROUP, decoded by `decode_event`: new entries, or with pending=True this consumer's
        unacknowledged ones (oldest first). An undecodable entry comes back as (id, None)."""
        res = self.client.xreadgroup(group, consumer, {self.stream_key: "0" if pending else ">"}, count=count,
                                     block=block_ms)  # fmt: skip
        return _rows(res[0][1] if res else None)

    @guard
    def read_pending_after(self, group: str, consumer: str, after: str, *, count: int) -> list[Row]:
        """This consumer's pending entries after id `after` (paging through `read_events(pending=True)`)."""
        res = self.client.xreadgroup(group, consumer, {self.stream_key: after}, count=count)
        return _rows(res[0][1] if res else None)

    @guard
    def claim_idle(self, group: str, consumer: str, *, min_idle_ms: int, count: int) -> int:
        """Move to `consumer` every pending entry of the group idle for at least `min_idle_ms` (XAUTOCLAIM,
        all pages; the caller then reads them as its own pending entries); returns how many. Entries a live
        consumer is still working on are younger than that and stay where they are."""
        cursor, moved = "0-0", 0
        while True:
            res = self.client.xautoclaim(self.stream_key, group, consumer, min_idle_ms, start_id=cursor,
                                         count=count)  # fmt: skip
            cursor, moved = text(res[0]), moved + len(res[1])
            if cursor == "0-0":
                return moved

    @guard
    def claim_from_others(self, group: str, consumer: str, *, min_idle_ms: int, count: int) -> list[Row]:
        """Entries other consumers of the group left pending for at least `min_idle_ms`, claimed for
        `consumer` and decoded (XPENDING IDLE + XCLAIM: never this consumer's own, which it still holds)."""
        ids: list[Any] = []
        for c in self.client.xinfo_consumers(self.stream_key, group):
            name = text(c["name"])
            if name == consumer or not int(c["pending"]) or len(ids) >= count:
                continue
            pending = self.client.xpending_range(self.stream_key, group, min="-", max="+", count=count - len(ids),
                                                 consumername=name, idle=min_idle_ms)  # fmt: skip
            ids += [p["message_id"] for p in pending]
        if not ids:
            return []
        return _rows(self.client.xclaim(self.stream_key, group, consumer, min_idle_ms, ids))

    @guard
    def group_lag(self, group: str) -> dict[str, int]:
        """Entries not yet delivered to the group (`lag`) and delivered but not acknowledged (`pending`).

        Redis < 7 (the embedded server is 6.2) reports no lag: then `lag` is 1 while the group has not been
        delivered the stream's last entry (at least one is undelivered), else 0."""
        for g in self.client.xinfo_groups(self.stream_key):
            if text(g["name"]) == group:
                lag = g.get("lag")
                if lag is None:
                    last = text(self.client.xinfo_stream(self.stream_key)["last-generated-id"])
                    lag = int(id_key(text(g["last-delivered-id"])) < id_key(last))
                return {"lag": int(lag), "pending": int(g["pending"])}
        return {"lag": 0, "pending": 0}
