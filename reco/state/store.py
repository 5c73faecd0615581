"""Redis store: the online state shared by every API worker, the learner and the sink.

The client is passed in (`RedisStore(connect(url), prefix)`); nothing here opens a connection at import.
Every Redis failure surfaces as one exception type, `StoreUnavailable`, so that callers can degrade.

Redis key layout (``P`` is the configurable prefix, `RecoSettings.redis_prefix`, default ``reco``)::

    P:events                    stream   one entry per accepted event, field ``e`` = the Event as JSON.
                                         XADD MAXLEN ~ stream_maxlen (a memory guard, default 1,000,000);
                                         consumers trim what every group has acknowledged
                                         (`trim_acknowledged`), so the cap is never reached in the demo
    P:seen:<event_id>           string   dedup marker, SET NX EX seen_ttl_s (default 7 days)
    P:session:<session_id>      list     item ids viewed/clicked in the session, oldest first, the last
                                         session_max kept (RPUSH + LTRIM), TTL session_ttl_s renewed per event
    P:cart:<session_id>         zset     the session's cart: items added to it (add_to_cart), score = event time;
                                         a purchase removes its item; the last cart_max kept, TTL session_ttl_s
    P:uitems:<user_id>          list     the user's last user_items_max viewed/clicked items, oldest first,
                                         TTL user_ttl_s: history for a user who starts a new session
    P:user:<user_id>            hash     user profile: ``n:<event_type>`` counters, ``last_ts``, plus any fields
                                         written with `put_user_profile`
    P:item:<item_id>            hash     item features (``category``, ``title``, ...; `put_item_features`)
    P:trending                  zset     time-decayed view/click counts (forward decay, half-life
                                         trending_half_life_s): a member's score is sum(w * 2^((ts - E)/H)); the
                                         current score is score * 2^(-(now - E)/H). Kept to trending_max members
    P:trending:epoch            string   E, the forward-decay epoch (unix seconds); rebased (all scores
                                         rescaled in the same Lua call) once it is 32 half-lives old
    P:popular                   zset     all-time view/click counts (plus `set_popular` seeds)
    P:req:<request_id>          hash     served impressions of one request: item_id -> "<arm>\\t<category>",
                                         TTL feedback_ttl_s; lets feedback find its arm and category
    P:fb:<request_id>:<item_id> string   marker: the first feedback on this served impression was counted
    P:ts:<arm>                  hash     Thompson evidence per category: ``<cat>:a`` successes,
                                         ``<cat>:b`` failures; ``_n`` counted feedback events (interactions)
    P:weights:<arm>             string   latest published online-weights version (int)
    P:weights:<arm>:seq         string   version allocator (INCR)
    P:weights:<arm>:<version>   hash     ``blob`` (bytes) and ``meta`` (JSON); the last keep_weights kept

Thompson statistics are counted per served impression, never per raw click: an impression of an item
served by arm A in category c adds 1 to ``c:b`` (a failure until proven otherwise); the first feedback
event (click, add_to_cart or purchase) naming that impression's request and item moves one from ``c:b`` to
``c:a``. Later feedback on the same impression (a purchase after the click) counts nothing more. Feedback
that names no served impression (unknown request, expired, or item not served) updates no statistics.
Feedback that arrives before its impression counts nothing (the server logs impressions as it
answers, long before a person clicks). `thompson_stats` returns the evidence (successes, failures),
floored at 0 defensively; the bandit adds its prior.

The API's impression log (`log_impressions` with a request context) runs its own script over one
request's impressions: the per-event steps of the general ingest for an impression (dedup, XADD, the
served-item record, the Thompson failure count), with the user counters, TTLs and the learner's
request-context record (``P:reqctx:<request_id>``, format owned by `reco.online.control`) written once per
request in the same call (a test holds the resulting state equal to the general ingest's).

Ingest is one Lua script per batch: dedup + XADD + session/user/trending/Thompson updates run atomically
in one round trip, so an accepted event is never lost and never counted twice. Keys are computed in
Python and passed to the script; on Redis Cluster every key of a request would need one hash tag
(not needed for one Redis server or a replica set).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, ParamSpec, TypeVar

import redis

from reco.data.events import FEEDBACK_TYPES, Event, EventType

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


class StoreUnavailable(RuntimeError):
    """Redis cannot be reached (connection refused, timeout, loading). Callers degrade on this one type."""


def connect(url: str, *, socket_timeout: float = 0.5, connect_timeout: float = 0.5) -> redis.Redis:
    """A client with short timeouts and no retries, so a dead Redis costs one timeout, not seconds.

    Connecting is lazy: this never touches the network.

    >>> c = connect("redis://127.0.0.1:1/0")
    >>> c.connection_pool.connection_kwargs["socket_timeout"]
    0.5
    """
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int


@dataclass(frozen=True)
class RequestFeatures:
    """Everything one recommendation request reads from Redis (one pipelined round trip).

    session_items / user_items are oldest first. trending holds the current decayed score of each
    candidate (0.0 when absent). thompson maps category -> (successes, failures) evidence.
    """

    session_items: list[str]
    user_items: list[str]
    user_profile: dict[str, str]
    item_features: dict[str, dict[str, str]]
    trending: dict[str, float]
    thompson: dict[str, tuple[float, float]]
    cart_items: list[str] = field(default_factory=list)  # the session's cart, oldest addition first
    trending_top: list[tuple[str, float]] = field(default_factory=list)  # top `trending_k`, best first


class ImpressionRecord(NamedTuple):
    """One served impression as `log_request` takes it: the event already serialised."""

    event_id: str
    item_id: str
    payload: str  # the `Event` as JSON (what the stream holds)
    category: str  # drives the arm's Thompson statistics ("" = read P:item:<id> category)


@dataclass(frozen=True)
class StreamEntry:
    entry_id: str
    event: Event | None  # None when the entry cannot be parsed (counted, acknowledged, not lost silently)
    raw: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WeightsSnapshot:
    version: int
    meta: dict[str, Any]
    blob: bytes


P = ParamSpec("P")
R = TypeVar("R")

#: Redis errors that mean "the store is not there" (as opposed to a programming error).
_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError)


def _guard(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn redis connection/timeout errors into `StoreUnavailable`."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"redis unavailable: {exc}") from exc

    return wrapper


def _s(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _f(value: bytes | str | float | None) -> float:
    return 0.0 if value is None else float(value)


def _pairs(flat: Any) -> list[tuple[Any, Any]]:
    """A raw reply of pairs (RESP2: a flat [a1, b1, a2, b2, ...] list; RESP3: a map or a list of pairs)."""
    if isinstance(flat, dict):
        return list(flat.items())
    if flat and isinstance(flat[0], list):
        return [(a, b) for a, b in flat]
    return list(zip(flat[::2], flat[1::2], strict=True))


def _hash(raw: Any) -> dict[str, str]:
    """A raw HGETALL reply as a str -> str dict."""
    return {_s(k): _s(v) for k, v in _pairs(raw)}


def _round_trip(client: redis.Redis, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Send `commands` in one write on one pooled connection and read their raw replies (no response
    callbacks: callers decode, see `_pairs`).

    This is redis-py's non-transactional pipeline without its Python: on the request path the `Pipeline`
    object, its callbacks and its retry wrapper cost ~0.12 ms a call warm and ~0.35 ms after the process
    idled for 10 ms, against ~0.06 / ~0.35 ms for the whole round trip here (docs/benchmarks.md,
    "Serving"). An error reply or a broken socket drops the connection (later replies may be pending on it)
    and raises.
    """
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command(conn.pack_commands(commands))
        replies = [conn.read_response() for _ in commands]
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)
    return replies


def _next_id(entry_id: str) -> str:
    """The smallest stream id after entry_id ("5-3" -> "5-4")."""
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


# Lua shared by both ingest scripts: dedup + append to the stream, and one served impression's record
# (the item -> "<arm>\\t<category>" field of P:req, and one Thompson failure when the record is new).
_LUA_COMMON = """
local function append(stream, maxlen, seen_key, seen_ttl, payload)
  if not redis.call('SET', seen_key, '1', 'NX', 'EX', seen_ttl) then
    return false
  end
  if maxlen == '' then
    redis.call('XADD', stream, '*', 'e', payload)
  else
    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'e', payload)
  end
  return true
end

local function record_served(req_key, item, arm, category, item_prefix, ts_key)
  if category == '' then
    category = redis.call('HGET', item_prefix .. item, 'category') or 'unknown'
  end
  if redis.call('HSETNX', req_key, item, arm .. '\\t' .. category) == 1 then
    redis.call('HINCRBYFLOAT', ts_key, category .. ':b', 1)
  end
end
"""

# Per event the script reads _FIELDS arguments (see `RedisStore._event_args`).
_FIELDS = 13
_INGEST_LUA = (
    _LUA_COMMON
    + """
local stream, trending, epoch_key, popular = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, half_life = tonumber(ARGV[1]), tonumber(ARGV[2])
local seen_ttl, maxlen = ARGV[3], ARGV[4]
local session_max, session_ttl = tonumber(ARGV[5]), ARGV[6]
local uitems_max, user_ttl = tonumber(ARGV[7]), ARGV[8]
local feedback_ttl, trending_max = ARGV[9], tonumber(ARGV[10])
local ts_prefix, n, item_prefix = ARGV[11], tonumber(ARGV[12]), ARGV[13]
local cart_max, cart_ttl = tonumber(ARGV[14]), ARGV[15]
local H, F = 15, 13

local epoch = tonumber(redis.call('GET', epoch_key))
if not epoch then
  epoch = now
  redis.call('SET', epoch_key, tostring(now))
end
-- Forward decay: rebase before 2^exponent loses range (all scores x 2^-k, epoch + k half-lives).
local k = math.floor((now - epoch) / half_life)
if k > 32 then
  redis.call('ZUNIONSTORE', trending, 1, trending, 'WEIGHTS', tostring(2 ^ -k))
  epoch = epoch + k * half_life
  redis.call('SET', epoch_key, tostring(epoch))
end

local accepted, duplicates, touched = 0, 0, false
for i = 0, n - 1 do
  local b = H + i * F
  local seen_key, payload, etype, item = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  local ts, session_key, user_key, uitems_key = tonumber(ARGV[b + 5]), ARGV[b + 6], ARGV[b + 7], ARGV[b + 8]
  local req_key, arm, category, fb_key = ARGV[b + 9], ARGV[b + 10], ARGV[b + 11], ARGV[b + 12]
  local cart_key = ARGV[b + 13]
  if append(stream, maxlen, seen_key, seen_ttl, payload) then
    accepted = accepted + 1
    redis.call('HINCRBY', user_key, 'n:' .. etype, 1)
    redis.call('HSET', user_key, 'last_ts', ARGV[b + 5])
    redis.call('EXPIRE', user_key, user_ttl)
    if etype == 'view' or etype == 'click' then
      if session_key ~= '' then
        redis.call('RPUSH', session_key, item)
        redis.call('LTRIM', session_key, -session_max, -1)
        redis.call('EXPIRE', session_key, session_ttl)
      end
      redis.call('RPUSH', uitems_key, item)
      redis.call('LTRIM', uitems_key, -uitems_max, -1)
      redis.call('EXPIRE', uitems_key, user_ttl)
      local x = (math.min(ts, now) - epoch) / half_life
      redis.call('ZINCRBY', trending, tostring(2 ^ x), item)
      redis.call('ZINCRBY', popular, 1, item)
      touched = true
    elseif etype == 'impression' and req_key ~= '' and arm ~= '' then
      record_served(req_key, item, arm, category, item_prefix, ts_prefix .. arm)
      redis.call('EXPIRE', req_key, feedback_ttl)
    elseif etype == 'add_to_cart' and cart_key ~= '' then
      redis.call('ZADD', cart_key, ARGV[b + 5], item)
      redis.call('ZREMRANGEBYRANK', cart_key, 0, -(cart_max + 1))
      redis.call('EXPIRE', cart_key, cart_ttl)
    elseif etype == 'purchase' and cart_key ~= '' then
      redis.call('ZREM', cart_key, item)
    end
    if fb_key ~= '' then
      local served = redis.call('HGET', req_key, item)
      if served and redis.call('SET', fb_key, '1', 'NX', 'EX', feedback_ttl) then
        local tab = string.find(served, '\\t', 1, true)
        local s_arm, s_cat = string.sub(served, 1, tab - 1), string.sub(served, tab + 1)
        redis.call('HINCRBYFLOAT', ts_prefix .. s_arm, s_cat .. ':a', 1)
        redis.call('HINCRBYFLOAT', ts_prefix .. s_arm, s_cat .. ':b', -1)
        redis.call('HINCRBY', ts_prefix .. s_arm, '_n', 1)
      end
    end
  else
    duplicates = duplicates + 1
  end
end
if touched then
  local extra = redis.call('ZCARD', trending) - trending_max
  if extra > 0 then
    redis.call('ZREMRANGEBYRANK', trending, 0, extra - 1)
  end
end
return {accepted, duplicates}
"""
)

# One request's impressions (the API's own log): the per-event steps `_INGEST_LUA` runs for an impression
# (dedup, XADD, the served-item record and the arm's Thompson failure count), with what is the same for
# every impression of a request (user counters, last_ts, TTLs, the learner's request context) done once.
# 4 arguments per event instead of 13, ~4 Redis calls per event instead of ~9.
_IMPRESSIONS_LUA = (
    _LUA_COMMON
    + """
local stream = KEYS[1]
local seen_ttl, maxlen, user_key, user_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local req_key, arm, feedback_ttl, ts_key = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local ts, item_prefix = ARGV[9], ARGV[10]
local ctx_key, ctx_value, ctx_ttl = ARGV[11], ARGV[12], ARGV[13]
local H, F = 13, 4

if ctx_key ~= '' then
  redis.call('SET', ctx_key, ctx_value, 'EX', ctx_ttl)
end
local accepted, duplicates = 0, 0
for b = H, #ARGV - 1, F do
  local seen_key, payload, item, category = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  if append(stream, maxlen, seen_key, seen_ttl, payload) then
    accepted = accepted + 1
    if req_key ~= '' and arm ~= '' then
      record_served(req_key, item, arm, category, item_prefix, ts_key)
    end
  else
    duplicates = duplicates + 1
  end
end
if accepted > 0 then
  redis.call('HINCRBY', user_key, 'n:impression', accepted)
  redis.call('HSET', user_key, 'last_ts', ts)
  redis.call('EXPIRE', user_key, user_ttl)
  if req_key ~= '' and arm ~= '' then
    redis.call('EXPIRE', req_key, feedback_ttl)
  end
end
return {accepted, duplicates}
"""
)

# Atomic read of the latest weights snapshot: version, blob, meta.
_LATEST_WEIGHTS_LUA = """
local v = redis.call('GET', KEYS[1])
if not v then return false end
local h = redis.call('HMGET', KEYS[1] .. ':' .. v, 'blob', 'meta')
return {v, h[1], h[2]}
"""


class RedisStore:
    """Typed operations over the key layout in this module's docstring.

    >>> store = RedisStore(connect("redis://127.0.0.1:1/0"), "demo")
    >>> store.key("session", "s1")
    'demo:session:s1'
    >>> store.session_items("s1")
    Traceback (most recent call last):
    ...
    reco.state.store.StoreUnavailable: redis unavailable: ...
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
        user_items_max: int = 100,
        user_ttl_s: int = 30 * 86400,
        seen_ttl_s: int = 7 * 86400,
        feedback_ttl_s: int = 86400,
        stream_maxlen: int | None = 1_000_000,
        trending_half_life_s: float = 3600.0,
        trending_max: int = 10_000,
        keep_weights: int = 3,
        cart_max: int = 100,
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
        self._ingest = client.register_script(_INGEST_LUA)
        self._impressions = client.register_script(_IMPRESSIONS_LUA)
        self._latest_weights = client.register_script(_LATEST_WEIGHTS_LUA)

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @property
    def stream_key(self) -> str:
        return self.key("events")

    @_guard
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

    @_guard
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

    @_guard
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
        from reco.online.control import REQUEST_CONTEXT_TTL_S, request_context_key

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
        acc, dup = self._impressions(keys=[self.stream_key], args=args)
        return IngestResult(int(acc), int(dup))

    # -- request features -----------------------------------------------------------------------
    @_guard
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
        round trip (`_round_trip`). `profile=False` skips the user profile (the API's pipeline does not
        use it, and every impression write changes it).

        Cost grows with the candidates: trending scores are one ZMSCORE, but item features are one HGETALL
        per item (about 15 ms for 500 on 2 busy cores); item_features=False skips them (empty dicts).
        """
        cats = list(dict.fromkeys(categories))
        feature_ids = list(item_ids) if item_features else []
        commands: list[tuple[Any, ...]] = []
        at: dict[str, int] = {}  # reply slot of each part read

        def read(part: str, *command: Any) -> None:
            at[part] = len(commands)
            commands.append(command)

        if session_id:
            read("session", "LRANGE", self.key("session", session_id), 0, -1)
            read("cart", "ZRANGE", self.key("cart", session_id), 0, -1)
        read("uitems", "LRANGE", self.key("uitems", user_id), 0, -1)
        if profile:
            read("profile", "HGETALL", self.key("user", user_id))
        if trending_k > 0:
            read("top", "ZREVRANGE", self.key("trending"), 0, trending_k - 1, "WITHSCORES")
        first_feature = len(commands)
        commands += [("HGETALL", self.key("item", item)) for item in feature_ids]
        if item_ids:
            read("scores", "ZMSCORE", self.key("trending"), *item_ids)
        if item_ids or trending_k > 0:  # the decay epoch scales trending scores; nothing else needs it
            read("epoch", "GET", self.key("trending", "epoch"))
        if arm and cats:
            read("ts", "HMGET", self.key("ts", arm), *[f"{c}:{ab}" for c in cats for ab in "ab"])
        res = _round_trip(self.client, commands)

        def got(part: str, default: Any = ()) -> Any:
            return res[at[part]] if part in at else default

        end = first_feature + len(feature_ids)
        feats = {item: _hash(h) for item, h in zip(feature_ids, res[first_feature:end], strict=True)}
        decay = self._decay_factor(got("epoch", None), time.time())
        return RequestFeatures(
            session_items=[_s(v) for v in got("session")],
            user_items=[_s(v) for v in got("uitems")],
            user_profile=_hash(got("profile", {})),
            item_features={item: feats.get(item, {}) for item in item_ids},
            trending={item: _f(v) * decay for item, v in zip(item_ids, got("scores"), strict=True)},
            thompson=self._decode_thompson(cats, got("ts")) if "ts" in at else {},
            cart_items=[_s(v) for v in got("cart")],
            trending_top=[(_s(m), float(sc) * decay) for m, sc in _pairs(got("top"))],
        )

    @_guard
    def cart_items(self, session_id: str) -> list[str]:
        """Items in the session's cart, oldest addition first."""
        return [_s(v) for v in self.client.zrange(self.key("cart", session_id), 0, -1)]

    @staticmethod
    def _decode_thompson(cats: Sequence[str], values: Sequence[Any]) -> dict[str, tuple[float, float]]:
        out = {}
        for i, c in enumerate(cats):
            out[c] = (max(_f(values[2 * i]), 0.0), max(_f(values[2 * i + 1]), 0.0))
        return out

    def _decay_factor(self, epoch: bytes | str | None, now: float) -> float:
        if epoch is None:
            return 0.0  # nothing has ever been counted
        return 2.0 ** (-(now - float(epoch)) / self.trending_half_life_s)

    @_guard
    def session_items(self, session_id: str) -> list[str]:
        """The session's viewed/clicked items, oldest first."""
        return [_s(v) for v in self.client.lrange(self.key("session", session_id), 0, -1)]

    @_guard
    def user_items(self, user_id: str) -> list[str]:
        """The user's last viewed/clicked items across sessions, oldest first."""
        return [_s(v) for v in self.client.lrange(self.key("uitems", user_id), 0, -1)]

    @_guard
    def trending(self, n: int, *, now: float | None = None) -> list[tuple[str, float]]:
        """Top-n items by current decayed score (counts as of `now`), best first."""
        if n <= 0:
            return []
        pipe = self.client.pipeline(transaction=False)
        pipe.zrevrange(self.key("trending"), 0, n - 1, withscores=True)
        pipe.get(self.key("trending", "epoch"))
        rows, epoch = pipe.execute()
        decay = self._decay_factor(epoch, time.time() if now is None else now)
        return [(_s(m), float(sc) * decay) for m, sc in rows]

    @_guard
    def popular(self, n: int) -> list[tuple[str, float]]:
        """Top-n items by all-time count, best first."""
        if n <= 0:
            return []
        return [(_s(m), float(sc)) for m, sc in self.client.zrevrange(self.key("popular"), 0, n - 1, withscores=True)]

    @_guard
    def set_popular(self, scores: Mapping[str, float]) -> None:
        """Replace all-time popularity (e.g. counts from the lake or MovieLens) atomically."""
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.key("popular"))
        if scores:
            pipe.zadd(self.key("popular"), {k: float(v) for k, v in scores.items()})
        pipe.execute()

    @_guard
    def put_item_features(self, features: Mapping[str, Mapping[str, str | int | float]]) -> None:
        """Write item feature hashes (fields are merged into existing ones), pipelined."""
        pipe = self.client.pipeline(transaction=False)
        for item, fields in features.items():
            if fields:
                pipe.hset(self.key("item", item), mapping=dict(fields))
        pipe.execute()

    @_guard
    def item_features(self, item_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        pipe = self.client.pipeline(transaction=False)
        for item in item_ids:
            pipe.hgetall(self.key("item", item))
        return {item: _hash(h) for item, h in zip(item_ids, pipe.execute(), strict=True)}

    @_guard
    def put_user_profile(self, user_id: str, profile: Mapping[str, str | int | float]) -> None:
        if profile:
            self.client.hset(self.key("user", user_id), mapping=dict(profile))

    @_guard
    def user_profile(self, user_id: str) -> dict[str, str]:
        return _hash(self.client.hgetall(self.key("user", user_id)))

    # -- Thompson -------------------------------------------------------------------------------
    @_guard
    def thompson_stats(self, arm: str, categories: Sequence[str]) -> dict[str, tuple[float, float]]:
        """category -> (successes, failures) evidence for the arm (no prior added; failures floored at 0)."""
        cats = list(dict.fromkeys(categories))
        if not cats:
            return {}
        values = self.client.hmget(self.key("ts", arm), [f"{c}:{ab}" for c in cats for ab in "ab"])
        return self._decode_thompson(cats, values)

    @_guard
    def interactions(self, arm: str) -> int:
        """Counted feedback events on the arm's served impressions (drives epsilon decay across workers)."""
        return int(_f(self.client.hget(self.key("ts", arm), "_n")))

    # -- weights --------------------------------------------------------------------------------
    @_guard
    def put_weights(self, arm: str, blob: bytes, meta: Mapping[str, Any]) -> int:
        """Publish a new snapshot; returns its version (1, 2, ...). Only the last keep_weights are kept.

        The version is allocated first (INCR), then blob + pointer are written in one MULTI/EXEC, so a
        reader never sees a pointer to a missing snapshot.
        """
        base = self.key("weights", arm)
        version = int(self.client.incr(f"{base}:seq"))
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(f"{base}:{version}", mapping={"blob": bytes(blob), "meta": json.dumps(dict(meta))})
        pipe.set(base, version)
        old = version - self.keep_weights
        if old >= 1:
            pipe.delete(f"{base}:{old}")
        pipe.execute()
        return version

    @_guard
    def latest_weights_version(self, arm: str) -> int | None:
        v = self.client.get(self.key("weights", arm))
        return None if v is None else int(v)

    @_guard
    def get_weights(self, arm: str, version: int | None = None) -> WeightsSnapshot | None:
        """The snapshot (latest when version is None); None when there is none (or it was pruned)."""
        base = self.key("weights", arm)
        if version is None:
            res = self._latest_weights(keys=[base])
            if not res or res[1] is None:
                return None
            v, blob, meta = res
        else:
            blob, meta = self.client.hmget(f"{base}:{version}", ["blob", "meta"])
            if blob is None:
                return None
            v = version
        return WeightsSnapshot(int(v), json.loads(_s(meta) or "{}"), bytes(blob))

    # -- stream consumption (sink, learner) -----------------------------------------------------
    @_guard
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
            eid = _s(entry_id)
            raw = {_s(k): _s(v) for k, v in (fields or {}).items()}
            try:
                event = Event.model_validate_json(raw["e"])
            except (KeyError, ValueError):
                event = None
            out.append(StreamEntry(eid, event, raw))
        return out

    @_guard
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

    @_guard
    def claim_stale(self, group: str, consumer: str, *, min_idle_ms: int, count: int) -> list[StreamEntry]:
        """XAUTOCLAIM (one page) entries other consumers left pending for at least min_idle_ms."""
        res = self.client.xautoclaim(self.stream_key, group, consumer, min_idle_ms, start_id="0-0", count=count)
        return self._entries(res[1])

    @_guard
    def ack(self, group: str, entry_ids: Sequence[str]) -> int:
        return int(self.client.xack(self.stream_key, group, *entry_ids)) if entry_ids else 0

    @_guard
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
            name = _s(g["name"])
            if int(g["pending"]) > 0:
                summary = self.client.xpending(self.stream_key, name)
                floors.append(_s(summary["min"]))
            else:
                floors.append(_next_id(_s(g["last-delivered-id"])))
        return int(self.client.xtrim(self.stream_key, minid=min(floors, key=_id_key), approximate=False))

    @_guard
    def stream_length(self) -> int:
        return int(self.client.xlen(self.stream_key))
