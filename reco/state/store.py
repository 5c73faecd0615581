"""Redis store: the online state shared by every API worker, the learner and the sink.

The client is passed in (`RedisStore(connect(url), prefix)`); nothing here opens a connection at import.
Every Redis failure surfaces as one exception type, `StoreUnavailable`, so that callers can degrade.

The key layout, every TTL and what the scripts keep consistent is documented in `reco.state.keys`;
the Lua scripts are in `reco.state.scripts`, the connection and reply decoding in `reco.state.redis_io`.
Weight snapshots (fenced by the learner's lease token) and the online learner's operations (request
contexts, pause/resume, counters, its stream reads) are `reco.state.online.OnlineStateOps`, mixed in here.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import redis

from reco.data.events import FEEDBACK_TYPES, Event, EventType
from reco.state.history import RecentItems
from reco.state.keys import REQUEST_CONTEXT_TTL_S, request_context_key
from reco.state.online import OnlineStateOps
from reco.state.records import ImpressionRecord, IngestResult, RequestFeatures, StreamEntry, WeightsSnapshot
from reco.state.redis_io import (
    StoreUnavailable,
    connect,
    guard,
    hash_fields,
    id_key,
    next_id,
    number,
    pairs,
    round_trip,
    run_script,
    text,
    texts,
)
from reco.state.scripts import IMPRESSIONS_LUA, INGEST_LUA, RECENT_ITEMS_LUA

__all__ = [
    "ImpressionRecord",
    "IngestResult",
    "RedisStore",
    "RequestFeatures",
    "StoreUnavailable",
    "StreamEntry",
    "WeightsSnapshot",
    "connect",
]


class RedisStore(OnlineStateOps):
    """Typed operations over the key layout in this module's docstring.

    >>> store = RedisStore(connect("redis://127.0.0.1:1/0"), "demo")
    >>> store.key("session", "s1")
    'demo:session:s1'
    >>> store.session_items("s1")
    Traceback (most recent call last):
    ...
    reco.state.redis_io.StoreUnavailable: redis unavailable: ...
    """

    #: Event types that enter the session history, the user's recent items, trending and popular.
    HISTORY_TYPES = frozenset({EventType.view, EventType.click})
    #: Events per Lua call (a bigger batch is split; each chunk is atomic on its own).
    CHUNK = 500

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        *,
        session_max: int = 50,
        session_ttl_s: int = 1800,
        user_items_max: int = 500,
        user_ttl_s: int = 30 * 86400,
        seen_ttl_s: int = 7 * 86400,
        feedback_ttl_s: int = 86400,
        stream_maxlen: int | None = 1_000_000,
        trending_half_life_s: float = 3600.0,
        trending_max: int = 10_000,
        keep_weights: int = 3,
        cart_max: int = 100,
        recent_items_users: int = 0,
    ) -> None:
        if not prefix or any(c.isspace() for c in prefix):
            raise ValueError(f"invalid redis prefix {prefix!r}")
        self.client = client
        self.prefix = prefix
        self.session_max = session_max
        self.session_ttl_s = session_ttl_s
        self.user_items_max = user_items_max
        self.user_ttl_s = user_ttl_s
        self.seen_ttl_s = seen_ttl_s
        self.feedback_ttl_s = feedback_ttl_s
        self.stream_maxlen = stream_maxlen
        self.trending_half_life_s = trending_half_life_s
        self.trending_max = trending_max
        self.keep_weights = keep_weights
        self.cart_max = cart_max
        # Users whose recent items this process remembers and reads by their new tail (0: read whole each time).
        self._recent_script = client.register_script(RECENT_ITEMS_LUA)
        self._recent = RecentItems(recent_items_users, self._recent_script.sha) if recent_items_users else None
        self._ingest = client.register_script(INGEST_LUA)
        self._impressions = client.register_script(IMPRESSIONS_LUA)

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @property
    def stream_key(self) -> str:
        return self.key("events")

    @guard
    def ping(self) -> bool:
        return bool(self.client.ping())

    # -- events ---------------------------------------------------------------------------------
    def _event_args(self, e: Event, categories: Mapping[str, str]) -> list[str]:
        is_feedback = e.event_type in FEEDBACK_TYPES and e.request_id is not None
        category = categories.get(e.item_id, "")  # "" -> the script reads P:item:<id> category
        return [
            self.key("seen", e.event_id),
            e.model_dump_json(),
            str(e.event_type),
            e.item_id,
            repr(e.ts.timestamp()),
            self.key("session", e.session_id) if e.session_id else "",
            self.key("user", e.user_id),
            self.key("uitems", e.user_id),
            self.key("req", e.request_id) if e.request_id else "",
            e.arm or "",
            category,
            self.key("fb", e.request_id, e.item_id) if is_feedback else "",
            self.key("cart", e.session_id) if e.session_id else "",
        ]

    @guard
    def ingest(self, events: Sequence[Event], *, categories: Mapping[str, str] | None = None) -> IngestResult:
        """Dedup by event_id and apply accepted events atomically (one Lua call per `CHUNK` events).

        categories (item_id -> category) names the Thompson category of served impressions; for items not
        in it the script reads the ``category`` field of ``P:item:<id>``, else uses ``"unknown"``.
        """
        categories = categories or {}
        accepted = duplicates = 0
        for start in range(0, len(events), self.CHUNK):
            keys, args = self._ingest_call(events[start : start + self.CHUNK], categories)
            acc, dup = self._ingest(keys=keys, args=args)
            accepted += int(acc)
            duplicates += int(dup)
        return IngestResult(accepted, duplicates)

    def _ingest_call(self, chunk: Sequence[Event], categories: Mapping[str, str]) -> tuple[list[str], list[str]]:
        header = [
            repr(time.time()),
            repr(float(self.trending_half_life_s)),
            str(self.seen_ttl_s),
            "" if self.stream_maxlen is None else str(self.stream_maxlen),
            str(self.session_max),
            str(self.session_ttl_s),
            str(self.user_items_max),
            str(self.user_ttl_s),
            str(self.feedback_ttl_s),
            str(self.trending_max),
            self.key("ts", ""),
            str(len(chunk)),
            self.key("item", ""),
            str(self.cart_max),
            str(self.session_ttl_s),
        ]
        args = header + [a for e in chunk for a in self._event_args(e, categories)]
        keys = [self.stream_key, self.key("trending"), self.key("trending", "epoch"), self.key("popular")]
        return keys, args

    def log_impressions(
        self,
        events: Sequence[Event],
        *,
        categories: Mapping[str, str] | None = None,
        request_context: Sequence[str] | None = None,
    ) -> IngestResult:
        """Impressions as `Event`s: through `ingest` or, with `request_context` (the session items the
        request was ranked with), through `log_request`, which also sets the learner's record
        ``P:reqctx:<request_id>`` in the same script call; the events must then all belong to one request.
        """
        wrong = [e.event_id for e in events if e.event_type != EventType.impression]
        if wrong:
            raise ValueError(f"log_impressions takes impressions only; got other types for {wrong[:5]}")
        if request_context is None or not events:
            return self.ingest(events, categories=categories)
        request_ids = {e.request_id for e in events}
        if len(request_ids) != 1 or None in request_ids or len(events) > self.CHUNK:
            raise ValueError("a request context needs the impressions of exactly one request")
        if len({(e.user_id, e.arm) for e in events}) != 1:
            raise ValueError("the impressions of one request name one user and one arm")
        first, categories = events[0], categories or {}
        records = [
            ImpressionRecord(e.event_id, e.item_id, e.model_dump_json(), categories.get(e.item_id, "")) for e in events
        ]
        return self.log_request(
            request_ids.pop(), first.user_id, first.arm or "", events[-1].ts, records, request_context
        )

    @guard
    def log_request(
        self,
        request_id: str,
        user_id: str,
        arm: str,
        ts: datetime,
        impressions: Sequence[ImpressionRecord],
        session: Sequence[str],
    ) -> IngestResult:
        """One request's impressions, already serialised (the API's log). One script call sets
        what `ingest` would for them, plus the learner's request-context record (``session``).

        The learner owns the record's key and format (`write_request_context`: a JSON list, with TTL); it
        is written inside the script instead of a pipeline next to it, because a pipelined script call
        costs an extra SCRIPT EXISTS round trip in redis-py.
        """
        if not impressions or len(impressions) > self.CHUNK:
            raise ValueError(f"a request log takes 1..{self.CHUNK} impressions, got {len(impressions)}")
        args = [
            str(self.seen_ttl_s),
            "" if self.stream_maxlen is None else str(self.stream_maxlen),
            self.key("user", user_id),
            str(self.user_ttl_s),
            self.key("req", request_id),
            arm,
            str(self.feedback_ttl_s),
            self.key("ts", arm),
            repr(ts.timestamp()),
            self.key("item", ""),
            request_context_key(self.prefix, request_id),
            json.dumps(list(session)),
            str(REQUEST_CONTEXT_TTL_S),
        ]
        seen = self.key("seen", "")
        for imp in impressions:
            args += (seen + imp.event_id, imp.payload, imp.item_id, imp.category)
        acc, dup = run_script(self.client, self._impressions, [self.stream_key], args)
        return IngestResult(int(acc), int(dup))

    # -- request features -----------------------------------------------------------------------
    @guard
    def request_context(
        self,
        user_id: str,
        session_id: str | None,
        item_ids: Sequence[str],
        arm: str | None,
        categories: Sequence[str],
        *,
        item_features: bool = True,
        trending_k: int = 0,
        profile: bool = True,
    ) -> RequestFeatures:
        """Session history and cart, user history and profile, item features, trending scores of the
        candidates, the top `trending_k` trending items and Thompson evidence of the arm, in one pipelined
        round trip (`round_trip`). `profile=False` skips the user profile (the API's pipeline does not
        use it, and every impression write changes it).

        Cost grows with the candidates: trending scores are one ZMSCORE, but item features are one HGETALL
        per item (about 15 ms for 500 on 2 busy cores); item_features=False skips them (empty dicts).
        """
        feature_ids = list(item_ids) if item_features else []
        commands: list[tuple[Any, ...]] = []
        at: dict[str, int] = {}  # reply slot of each part read

        def read(part: str, *command: Any) -> None:
            at[part] = len(commands)
            commands.append(command)

        if session_id:
            read("session", "LRANGE", self.key("session", session_id), 0, -1)
            read("cart", "ZRANGE", self.key("cart", session_id), 0, -1)
        uitems, user = self.key("uitems", user_id), self.key("user", user_id)
        if self._recent is None:
            read("uitems", "LRANGE", uitems, 0, -1)
        else:
            read("uitems", *self._recent.command(user_id, uitems, user))
        if profile:
            read("profile", "HGETALL", user)
        if trending_k > 0:
            read("top", "ZREVRANGE", self.key("trending"), 0, trending_k - 1, "WITHSCORES")
        first_feature = len(commands)
        commands += [("HGETALL", self.key("item", item)) for item in feature_ids]
        if item_ids:
            read("scores", "ZMSCORE", self.key("trending"), *item_ids)
        if item_ids or trending_k > 0:  # the decay epoch scales trending scores; nothing else needs it
            read("epoch", "GET", self.key("trending", "epoch"))
        cats, fields = _evidence_fields(tuple(categories)) if arm else ((), ())
        if cats:
            read("ts", "HMGET", self.key("ts", arm), *fields)
        res = self._reads(commands)

        def got(part: str, default: Any = ()) -> Any:
            return res[at[part]] if part in at else default

        end = first_feature + len(feature_ids)
        feats = {item: hash_fields(h) for item, h in zip(feature_ids, res[first_feature:end], strict=True)}
        decay = self._decay_factor(got("epoch", None), time.time())
        return RequestFeatures(
            session_items=texts(got("session")),
            user_items=self._user_items(user_id, got("uitems")),
            user_profile=hash_fields(got("profile", {})),
            item_features={item: feats.get(item, {}) for item in item_ids},
            trending={item: number(v) * decay for item, v in zip(item_ids, got("scores"), strict=True)},
            thompson=self._decode_thompson(cats, got("ts")) if "ts" in at else {},
            cart_items=texts(got("cart")),
            trending_top=[(text(m), float(sc) * decay) for m, sc in pairs(got("top"))],
        )

    def _user_items(self, user_id: str, reply: Any) -> list[str]:
        """The user's recent items from the request read's reply (`RecentItems`: its tail, or a second round trip
        for the whole list when the tail does not do)."""
        if self._recent is None:
            return texts(reply)
        items = self._recent.decode(user_id, reply)
        if items is None:
            whole = self._recent.command(user_id, self.key("uitems", user_id), self.key("user", user_id), whole=True)
            items = self._recent.decode(user_id, self._reads([whole])[0])
        return items or []

    def _reads(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """`round_trip`, with the recent-items script loaded when Redis lost it (a restart, SCRIPT FLUSH)."""
        try:
            return round_trip(self.client, commands)
        except redis.exceptions.NoScriptError:
            self.client.script_load(RECENT_ITEMS_LUA)
            return round_trip(self.client, commands)

    @guard
    def cart_items(self, session_id: str) -> list[str]:
        """Items in the session's cart, oldest addition first."""
        return [text(v) for v in self.client.zrange(self.key("cart", session_id), 0, -1)]

    @staticmethod
    def _decode_thompson(cats: Sequence[str], values: Sequence[Any]) -> dict[str, tuple[float, float]]:
        """category -> (a, b) from the HMGET reply of its a, b fields: absent 0, negative floored at 0 (as
        max(value, 0.0): NaN and -0.0 stay). One `map(float)` over the reply when every field is there, and
        the floor only when some value needs it: 12 -> 8 us for 19 categories.

        >>> RedisStore._decode_thompson(["x", "y"], [b"2", None, b"-1.5", b"3"])
        {'x': (2.0, 0.0), 'y': (0.0, 3.0)}
        """
        try:
            numbers = list(map(float, values))
        except TypeError:  # an absent field (None)
            numbers = [number(v) for v in values]
        if not min(numbers, default=0.0) >= 0.0:  # a negative (or NaN, which min may stop at): floor each
            numbers = [0.0 if v < 0.0 else v for v in numbers]
        return dict(zip(cats, zip(numbers[::2], numbers[1::2], strict=True), strict=True))

    def _decay_factor(self, epoch: bytes | str | None, now: float) -> float:
        if epoch is None:
            return 0.0  # nothing has ever been counted
        return 2.0 ** (-(now - float(epoch)) / self.trending_half_life_s)

    @guard
    def session_items(self, session_id: str) -> list[str]:
        """The session's viewed/clicked items, oldest first."""
        return [text(v) for v in self.client.lrange(self.key("session", session_id), 0, -1)]

    @guard
    def user_items(self, user_id: str) -> list[str]:
        """The user's last viewed/clicked items across sessions, oldest first."""
        return [text(v) for v in self.client.lrange(self.key("uitems", user_id), 0, -1)]

    @guard
    def trending(self, n: int, *, now: float | None = None) -> list[tuple[str, float]]:
        """Top-n items by current decayed score (counts as of `now`), best first."""
        if n <= 0:
            return []
        pipe = self.client.pipeline(transaction=False)
        pipe.zrevrange(self.key("trending"), 0, n - 1, withscores=True)
        pipe.get(self.key("trending", "epoch"))
        rows, epoch = pipe.execute()
        decay = self._decay_factor(epoch, time.time() if now is None else now)
        return [(text(m), float(sc) * decay) for m, sc in rows]

    @guard
    def popular(self, n: int) -> list[tuple[str, float]]:
        """Top-n items by all-time count, best first."""
        if n <= 0:
            return []
        return [(text(m), float(sc)) for m, sc in self.client.zrevrange(self.key("popular"), 0, n - 1, withscores=True)]

    @guard
    def set_popular(self, scores: Mapping[str, float]) -> None:
        """Replace all-time popularity (e.g. counts from the lake or MovieLens) atomically."""
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.key("popular"))
        if scores:
            pipe.zadd(self.key("popular"), {k: float(v) for k, v in scores.items()})
        pipe.execute()

    @guard
    def put_item_features(self, features: Mapping[str, Mapping[str, str | int | float]]) -> None:
        """Write item feature hashes (fields are merged into existing ones), pipelined."""
        pipe = self.client.pipeline(transaction=False)
        for item, fields in features.items():
            if fields:
                pipe.hset(self.key("item", item), mapping=dict(fields))
        pipe.execute()

    @guard
    def item_features(self, item_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        pipe = self.client.pipeline(transaction=False)
        for item in item_ids:
            pipe.hgetall(self.key("item", item))
        return {item: hash_fields(h) for item, h in zip(item_ids, pipe.execute(), strict=True)}

    @guard
    def put_user_profile(self, user_id: str, profile: Mapping[str, str | int | float]) -> None:
        if profile:
            self.client.hset(self.key("user", user_id), mapping=dict(profile))

    @guard
    def user_profile(self, user_id: str) -> dict[str, str]:
        return hash_fields(self.client.hgetall(self.key("user", user_id)))

    # -- Thompson -------------------------------------------------------------------------------
    @guard
    def thompson_stats(self, arm: str, categories: Sequence[str]) -> dict[str, tuple[float, float]]:
        """category -> (successes, failures) evidence for the arm (no prior added; failures floored at 0)."""
        cats, fields = _evidence_fields(tuple(categories))
        if not cats:
            return {}
        return self._decode_thompson(cats, self.client.hmget(self.key("ts", arm), fields))

    @guard
    def interactions(self, arm: str) -> int:
        """Counted feedback events on the arm's served impressions (drives epsilon decay across workers)."""
        return int(number(self.client.hget(self.key("ts", arm), "_n")))

    # -- stream consumption (sink, learner) -----------------------------------------------------
    @guard
    def ensure_group(self, group: str, start_id: str = "0") -> None:
        """XGROUP CREATE ... MKSTREAM; an existing group is left as it is."""
        try:
            self.client.xgroup_create(self.stream_key, group, id=start_id, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    @staticmethod
    def _entries(rows: Sequence[tuple[Any, Any]] | None) -> list[StreamEntry]:
        out = []
        for entry_id, fields in rows or []:
            eid = text(entry_id)
            raw = {text(k): text(v) for k, v in (fields or {}).items()}
            try:
                event = Event.model_validate_json(raw["e"])
            except (KeyError, ValueError):
                event = None
            out.append(StreamEntry(eid, event, raw))
        return out

    @guard
    def read_group(
        self, group: str, consumer: str, *, count: int, block_ms: int | None = None, pending: bool = False
    ) -> list[StreamEntry]:
        """XREADGROUP: new entries (``>``), or with pending=True this consumer's unacknowledged ones (``0``).

        An entry trimmed away while pending comes back with event None (acknowledge it to drop it).
        """
        res = self.client.xreadgroup(
            group, consumer, {self.stream_key: "0" if pending else ">"}, count=count, block=block_ms
        )
        rows = res[0][1] if res else []
        return self._entries(rows)

    @guard
    def claim_stale(self, group: str, consumer: str, *, min_idle_ms: int, count: int) -> list[StreamEntry]:
        """XAUTOCLAIM (one page) entries other consumers left pending for at least min_idle_ms."""
        res = self.client.xautoclaim(self.stream_key, group, consumer, min_idle_ms, start_id="0-0", count=count)
        return self._entries(res[1])

    @guard
    def ack(self, group: str, entry_ids: Sequence[str]) -> int:
        return int(self.client.xack(self.stream_key, group, *entry_ids)) if entry_ids else 0

    @guard
    def trim_acknowledged(self) -> int:
        """XTRIM MINID to the oldest entry some consumer group still needs; returns the entries removed.

        For each group the oldest needed entry is its oldest pending one, else the one after its
        last-delivered id. With no group nothing is trimmed (only the MAXLEN guard bounds the stream).
        """
        try:
            groups = self.client.xinfo_groups(self.stream_key)
        except redis.ResponseError:  # no stream yet
            return 0
        if not groups:
            return 0
        floors = []
        for g in groups:
            name = text(g["name"])
            if int(g["pending"]) > 0:
                summary = self.client.xpending(self.stream_key, name)
                floors.append(text(summary["min"]))
            else:
                floors.append(next_id(text(g["last-delivered-id"])))
        return int(self.client.xtrim(self.stream_key, minid=min(floors, key=id_key), approximate=False))

    @guard
    def stream_length(self) -> int:
        return int(self.client.xlen(self.stream_key))


@functools.lru_cache(maxsize=64)
def _evidence_fields(categories: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The categories without repeats and the hash fields of their Thompson evidence ("<category>:a", ":b"), in
    that order. Remembered: a served model asks for the same categories on every request (38 fields for 19
    categories, ~2.5 us to build), and models and their category sets are a handful."""
    cats = tuple(dict.fromkeys(categories))
    return cats, tuple(f"{c}:{ab}" for c in cats for ab in "ab")
