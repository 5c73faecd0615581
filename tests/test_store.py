"""RedisStore against the real Redis at 127.0.0.1:6379 (a private key prefix per test)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace
from datetime import UTC, datetime

import pytest
import redis

import reco.state.redis_io
import reco.state.store
from reco.data.events import Event
from reco.state.store import RedisStore, StoreUnavailable, connect

pytestmark = pytest.mark.integration


@pytest.fixture
def store(redis_url: str, redis_prefix: str):
    client = connect(redis_url)
    yield RedisStore(client, redis_prefix, session_max=3)
    client.close()


def ev(event_id: str, event_type: str, item: str, **kw) -> Event:
    base = {"ts": datetime.now(UTC), "user_id": "u1", "session_id": "s1"}
    return Event(event_id=event_id, event_type=event_type, item_id=item, **{**base, **kw})


def test_ingest_dedups_and_appends_each_event_once(store: RedisStore) -> None:
    events = [ev(f"e{i}", "view", f"i{i}") for i in range(4)]
    assert store.ingest(events).accepted == 4
    again = store.ingest([*events[:2], ev("e9", "click", "i9")])
    assert (again.accepted, again.duplicates) == (1, 2)
    assert store.stream_length() == 5
    # duplicates inside one batch count once too
    assert store.ingest([ev("d", "view", "x"), ev("d", "view", "x")]).duplicates == 1


def test_session_history_is_bounded_chronological_and_expires(store: RedisStore) -> None:
    store.ingest([ev(f"e{i}", "view", f"i{i}") for i in range(5)] + [ev("imp", "impression", "zz")])
    assert store.session_items("s1") == ["i2", "i3", "i4"]  # session_max=3, impressions excluded
    assert store.user_items("u1") == ["i0", "i1", "i2", "i3", "i4"]
    ttl = store.client.ttl(store.key("session", "s1"))
    assert 0 < ttl <= store.session_ttl_s
    profile = store.user_profile("u1")
    assert profile["n:view"] == "5" and profile["n:impression"] == "1"


def test_trending_decays_with_half_life(store: RedisStore) -> None:
    store.trending_half_life_s = 100.0
    now = time.time()  # the events' time and the reading's: no wall time passes between them, however loaded
    at = datetime.fromtimestamp(now, UTC)
    store.ingest([ev("a1", "view", "a", ts=at), ev("a2", "click", "a", ts=at), ev("b1", "view", "b", ts=at)])
    top = store.trending(5, now=now)
    assert [i for i, _ in top] == ["a", "b"]
    assert top[0][1] == pytest.approx(2.0, rel=1e-2)
    later = dict(store.trending(5, now=now + 100.0))  # one half-life later
    assert later["a"] == pytest.approx(1.0, rel=1e-2)
    assert store.popular(1) == [("a", 2.0)]


def test_old_events_count_less_in_trending(store: RedisStore) -> None:
    store.trending_half_life_s = 60.0
    old = datetime.fromtimestamp(time.time() - 120, UTC)  # two half-lives ago
    store.ingest([ev("o", "view", "old", ts=old), ev("n", "view", "new")])
    scores = dict(store.trending(2))
    assert scores["old"] == pytest.approx(scores["new"] / 4, rel=2e-2)


def test_trending_epoch_rebase_keeps_scores(store: RedisStore) -> None:
    store.trending_half_life_s = 10.0
    now = time.time()
    store.client.set(store.key("trending", "epoch"), repr(now - 400.0))  # 40 half-lives ago
    store.client.zadd(store.key("trending"), {"x": 3.0 * 2.0**40})  # 3 events counted just now
    store.ingest([ev("v", "view", "y", ts=datetime.fromtimestamp(now, UTC))])  # rebases: exponents stay small
    assert float(store.client.get(store.key("trending", "epoch"))) > now - 20.0
    scores = dict(store.trending(2, now=now))  # read at `now`: a 10 s half-life leaves no slack for a slow machine
    assert scores["x"] == pytest.approx(3.0, rel=1e-2) and scores["y"] == pytest.approx(1.0, rel=1e-2)


def test_thompson_counts_impressions_as_failures_and_first_click_as_success(store: RedisStore) -> None:
    store.put_item_features({"i2": {"category": "comedy"}})
    imps = [ev(f"imp{i}", "impression", f"i{i}", request_id="r1", arm="control", position=i + 1) for i in range(3)]
    store.log_impressions(imps, categories={"i0": "drama", "i1": "drama"})  # i2 falls back to P:item
    assert store.thompson_stats("control", ["drama", "comedy", "horror"]) == {
        "drama": (0.0, 2.0),
        "comedy": (0.0, 1.0),
        "horror": (0.0, 0.0),
    }
    # click, then purchase on the same impression, and a click on an item never served in r1
    store.ingest(
        [
            ev("c1", "click", "i0", request_id="r1"),
            ev("p1", "purchase", "i0", request_id="r1", value=9.5),
            ev("c2", "click", "i7", request_id="r1"),
        ]
    )
    assert store.thompson_stats("control", ["drama"]) == {"drama": (1.0, 1.0)}
    assert store.interactions("control") == 1
    assert store.thompson_stats("treatment", ["drama"]) == {"drama": (0.0, 0.0)}


def test_log_impressions_rejects_other_types(store: RedisStore) -> None:
    with pytest.raises(ValueError, match="impressions only"):
        store.log_impressions([ev("x", "click", "i")])


@contextlib.contextmanager
def round_trips(client: redis.Redis):
    """Count round trips on the real client: each direct command by name, each pipeline (redis-py's or the
    store's own `round_trip`) as "pipeline"."""
    calls: list[str] = []
    pipeline, execute_command, round_trip = client.pipeline, client.execute_command, reco.state.store.round_trip

    def counting_pipeline(*args, **kwargs):
        calls.append("pipeline")
        return pipeline(*args, **kwargs)

    def counting_round_trip(c, commands):
        # A one-command round trip of a script call (`run_script`) is named as the command it sends.
        calls.append("EVALSHA" if [cmd[0] for cmd in commands] == ["EVALSHA"] else "pipeline")
        return round_trip(c, commands)

    def counting_command(*args, **kwargs):
        calls.append(str(args[0]))
        return execute_command(*args, **kwargs)

    client.pipeline, client.execute_command = counting_pipeline, counting_command
    reco.state.store.round_trip = reco.state.redis_io.round_trip = counting_round_trip
    try:
        yield calls
    finally:
        client.pipeline, client.execute_command = pipeline, execute_command
        reco.state.store.round_trip = reco.state.redis_io.round_trip = round_trip


def test_request_context_reads_everything_in_one_round_trip(store: RedisStore) -> None:
    store.put_item_features({"i1": {"category": "drama", "title": "One"}})
    store.put_user_profile("u1", {"segment": "new"})
    store.ingest([ev("v1", "view", "i1"), ev("i", "impression", "i1", request_id="r", arm="control")])
    with round_trips(store.client) as calls:
        ctx = store.request_context("u1", "s1", ["i1", "i2"], "control", ["drama", "comedy"])
    assert calls == ["pipeline"]
    assert ctx.session_items == ["i1"] and ctx.user_items == ["i1"]
    assert ctx.user_profile["segment"] == "new"
    assert ctx.item_features == {"i1": {"category": "drama", "title": "One"}, "i2": {}}
    assert ctx.trending["i1"] == pytest.approx(1.0, rel=1e-2) and ctx.trending["i2"] == 0.0
    assert ctx.thompson == {"drama": (0.0, 1.0), "comedy": (0.0, 0.0)}
    lean = store.request_context("u1", "s1", ["i1"], "control", [], item_features=False)
    assert lean.item_features == {"i1": {}} and lean.trending["i1"] == pytest.approx(1.0, rel=1e-2)


def test_request_context_reads_the_same_over_resp3_and_skips_what_it_is_not_asked(
    store: RedisStore, redis_url: str
) -> None:
    """The round trip reads raw replies: maps and score pairs come back differently over RESP3."""
    store.put_user_profile("u1", {"segment": "new"})
    store.put_item_features({"i1": {"category": "drama"}})
    store.ingest([ev("v1", "view", "i1"), ev("v2", "view", "i2"), ev("c1", "add_to_cart", "i2")])
    resp3 = RedisStore(redis.Redis.from_url(redis_url, protocol=3), store.prefix)
    args = ("u1", "s1", ["i1", "i2"], "control", ["drama"])
    kwargs = {"trending_k": 2}
    ctx, ctx2 = resp3.request_context(*args, **kwargs), store.request_context(*args, **kwargs)
    assert ctx.trending == pytest.approx(ctx2.trending, rel=1e-4)  # the decay moves with the clock
    timeless = {"trending": {}, "trending_top": [m for m, _ in ctx.trending_top]}
    assert replace(ctx, **timeless) == replace(ctx2, **timeless)
    assert ctx.user_profile["segment"] == "new" and ctx.item_features["i1"] == {"category": "drama"}
    assert [m for m, _ in ctx.trending_top] == ["i2", "i1"] and ctx.cart_items == ["i2"]
    lean = store.request_context("u1", "s1", [], None, [], item_features=False, profile=False)
    assert lean.user_profile == {} and lean.session_items == ["i1", "i2"] and lean.trending_top == []
    resp3.client.close()


def test_request_context_after_an_error_reply_reads_cleanly_again(store: RedisStore) -> None:
    """An error reply mid-round-trip drops the connection, so later replies cannot answer the next call."""
    store.ingest([ev("v1", "view", "i1")])
    store.client.set(store.key("uitems", "u1"), "not a list")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        store.request_context("u1", "s1", [], None, [], item_features=False)
    store.client.delete(store.key("uitems", "u1"))
    assert store.request_context("u1", "s1", [], None, [], item_features=False).session_items == ["i1"]


def test_request_context_for_unknown_user_is_empty(store: RedisStore) -> None:
    ctx = store.request_context("nobody", None, [], None, [])
    assert (ctx.session_items, ctx.user_items, ctx.user_profile, ctx.trending, ctx.thompson) == ([], [], {}, {}, {})


def test_weights_snapshots_are_versioned_and_pruned(store: RedisStore) -> None:
    assert store.latest_weights_version("control") is None and store.get_weights("control") is None
    versions = [store.put_weights("control", bytes([v]) * 10, {"step": v}) for v in range(1, 5)]
    assert versions == [1, 2, 3, 4]
    latest = store.get_weights("control")
    assert (latest.version, latest.meta, latest.blob) == (4, {"step": 4}, b"\x04" * 10)
    assert store.get_weights("control", 2).blob == b"\x02" * 10
    assert store.get_weights("control", 1) is None  # keep_weights=3
    assert store.latest_weights_version("treatment") is None


def test_redis_down_raises_store_unavailable(redis_prefix: str) -> None:
    store = RedisStore(connect("redis://127.0.0.1:1/0", connect_timeout=0.2), redis_prefix)
    for call in (
        lambda: store.ingest([ev("e", "view", "i")]),
        lambda: store.request_context("u", "s", ["i"], "control", ["c"]),
        lambda: store.trending(5),
        lambda: store.get_weights("control"),
    ):
        with pytest.raises(StoreUnavailable):
            call()
    assert issubclass(StoreUnavailable, RuntimeError) and not issubclass(StoreUnavailable, redis.RedisError)


def test_concurrent_ingest_of_overlapping_batches_accepts_each_event_once(redis_url: str, redis_prefix: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    events = [ev(f"c{i}", "view", f"i{i % 9}") for i in range(300)]
    orders = [events, events[::-1], events[100:] + events[:100], events[::2] + events[1::2]]

    def worker(batch: list[Event]) -> int:
        client = connect(redis_url)  # one connection per worker, like separate API processes
        try:
            store = RedisStore(client, redis_prefix)
            return sum(store.ingest(batch[k : k + 50]).accepted for k in range(0, len(batch), 50))
        finally:
            client.close()

    with ThreadPoolExecutor(4) as pool:
        accepted = sum(pool.map(worker, orders))
    client = connect(redis_url)
    store = RedisStore(client, redis_prefix)
    assert accepted == 300 == store.stream_length()
    assert store.popular(9)[0][1] == pytest.approx(34.0)  # 300 views over 9 items: 34, 34, 34, 33, ...
    client.close()


def test_cart_holds_added_items_drops_purchased_ones_and_is_read_with_the_features(store: RedisStore) -> None:
    store.cart_max = 2
    store.ingest([ev("c1", "add_to_cart", "i1"), ev("c2", "add_to_cart", "i2"), ev("c3", "add_to_cart", "i3"),
                  ev("p3", "purchase", "i3"), ev("c4", "add_to_cart", "i4", session_id="s2")])  # fmt: skip
    assert store.cart_items("s1") == ["i2"]  # bounded to the last 2 additions, then i3 bought
    assert 0 < store.client.ttl(store.key("cart", "s1")) <= store.session_ttl_s
    store.ingest([ev("v1", "view", "i9"), ev("v2", "view", "i8")])
    ctx = store.request_context("u1", "s1", [], "control", [], item_features=False, trending_k=1)
    assert ctx.cart_items == ["i2"] and ctx.session_items == ["i9", "i8"]
    assert len(ctx.trending_top) == 1 and ctx.trending_top[0][0] in {"i8", "i9"}
    assert store.request_context("u1", None, [], None, []).cart_items == []


def test_a_script_redis_does_not_know_yet_is_loaded_and_run(store: RedisStore) -> None:
    """`run_script` sends a raw EVALSHA; on NOSCRIPT (a restarted Redis) it loads the script and runs it."""
    import uuid

    from reco.state.redis_io import run_script

    script = store.client.register_script(f"return {{#ARGV, KEYS[1] == 'k' and 1 or 0}} -- {uuid.uuid4().hex}")
    with round_trips(store.client) as calls:
        assert run_script(store.client, script, ["k"], ["a", "b"]) == [2, 1]
        assert run_script(store.client, script, ["k"], ["a"]) == [1, 1]
    assert calls == ["EVALSHA", "SCRIPT LOAD", "EVALSHA", "EVALSHA"]


def test_impression_log_writes_the_learners_request_context_in_the_same_round_trip(store: RedisStore) -> None:
    from reco.online.control import read_request_contexts

    imps = [ev(f"r1:{p}", "impression", f"i{p}", request_id="r1", arm="control", position=p) for p in (1, 2)]
    with round_trips(store.client) as calls:
        result = store.log_impressions(imps, categories={"i1": "drama"}, request_context=["a", "b"])
    assert calls in (["EVALSHA"], ["EVALSHA", "SCRIPT LOAD", "EVALSHA"])  # one call (+ a cold script cache)
    assert (result.accepted, result.duplicates) == (2, 0)
    assert read_request_contexts(store.client, store.prefix, ["r1", "r0"]) == {"r1": ("a", "b")}
    assert 0 < store.client.ttl(store.key("reqctx", "r1")) <= 6 * 3600
    assert store.thompson_stats("control", ["drama"]) == {"drama": (0.0, 1.0)}
    with pytest.raises(ValueError, match="one request"):
        store.log_impressions([*imps, ev("r2:1", "impression", "i1", request_id="r2")], request_context=[])


def test_the_request_impression_script_leaves_the_state_the_general_ingest_leaves(redis_url: str) -> None:
    """`log_impressions(..., request_context=...)` runs its own script (per-request work done once): for the
    same impressions it must leave every key as `ingest` does, duplicates included."""
    import uuid

    ts = datetime(2026, 1, 1, tzinfo=UTC)
    imps = [Event(event_id=f"r1:{p}", ts=ts, user_id="u1", session_id="s1", item_id=f"i{p}", event_type="impression",
                  request_id="r1", arm="control", position=p, propensity=0.5) for p in (1, 2, 3)]  # fmt: skip
    categories = {"i1": "drama", "i2": "comedy"}  # i3: read from P:item:i3 by the script
    states = []
    client = connect(redis_url)
    for general in (True, False):
        store = RedisStore(client, f"test-{uuid.uuid4().hex[:8]}")
        try:
            store.put_item_features({"i3": {"category": "horror"}})

            def log(batch: list[Event], store: RedisStore = store, general: bool = general):
                if general:
                    return store.ingest(batch, categories=categories)
                return store.log_impressions(batch, categories=categories, request_context=["a"])

            first, again = log(imps[:2]), log(imps)  # the second call repeats two impressions
            keys = {k.decode().removeprefix(store.prefix) for k in client.scan_iter(match=f"{store.prefix}:*")}
            # Not impression state: the request context (written by the request path only, by design) and
            # the trending epoch (initialised by every general ingest call).
            keys -= {":reqctx:r1", ":trending:epoch"}
            states.append({
                "results": [(first.accepted, first.duplicates), (again.accepted, again.duplicates)],
                "keys": keys,
                "stream": [f[b"e"] for _, f in client.xrange(store.stream_key)],
                "user": client.hgetall(store.key("user", "u1")),
                "req": client.hgetall(store.key("req", "r1")),
                "thompson": store.thompson_stats("control", ["drama", "comedy", "horror"]),
                "ttls": sorted(k for k in keys if client.ttl(store.prefix + k) > 0),
            })  # fmt: skip
        finally:
            for key in client.scan_iter(match=f"{store.prefix}:*"):
                client.delete(key)
    client.close()
    general, request = states
    assert request == general
    assert general["results"] == [(2, 0), (1, 2)] and len(general["stream"]) == 3


def test_the_users_history_keeps_the_last_user_items_max_items(redis_url: str, redis_prefix: str) -> None:
    client = connect(redis_url)
    try:
        store = RedisStore(client, redis_prefix, user_items_max=3)
        store.ingest([ev(f"e{i}", "view", f"i{i}", session_id=f"s{i % 2}") for i in range(5)])
        assert store.user_items("u1") == ["i2", "i3", "i4"]  # across sessions, oldest first
        assert store.request_context("u1", None, [], None, []).user_items == ["i2", "i3", "i4"]
    finally:
        client.close()


# The request-impression script with HSETNX and HINCRBYFLOAT per item, before they were batched per request
# (the reference for `test_the_request_impression_script_writes_what_its_per_item_version_wrote`).
_PER_ITEM_IMPRESSIONS_LUA = """
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


@pytest.mark.parametrize("maxlen", [None, 1_000_000])
def test_the_request_impression_script_writes_what_its_per_item_version_wrote(redis_url: str, maxlen) -> None:
    """Every key `log_request` writes (stream entries, seen keys, user profile, served record, Thompson
    stats, request context: values, hash field order and TTLs) and its results equal the per-item script's,
    over repeated and looked-up categories, already served items, an item served twice, existing counts,
    duplicates and no arm."""
    import uuid

    from reco.ranking.impressions import impression_records
    from reco.ranking.request import RecoItem, RecoRequest
    from reco.state.scripts import LUA_COMMON

    ts = datetime(2026, 1, 1, 12, 30, 15, 250000, tzinfo=UTC)
    cats = ["drama", "comedy", "drama", "", "drama", "comedy", "", "horror", "drama", "sci-fi"]
    items = [RecoItem(f"i{p}", 0.5, "r", "gru", p, p % 3 == 0, 0.01 * p, c) for p, c in enumerate(cats, 1)]
    items.append(RecoItem("i8", 0.5, "r", "gru", 11, False, 0.5, "drama"))  # served twice: recorded once
    req = RecoRequest("u1", session_id="s1")
    states = []
    client = connect(redis_url)
    for reference in (True, False):
        began = time.monotonic()
        store = RedisStore(client, f"test-{uuid.uuid4().hex[:8]}", stream_maxlen=maxlen)
        if reference:
            store._impressions = client.register_script(LUA_COMMON + _PER_ITEM_IMPRESSIONS_LUA)
        try:
            store.put_item_features({"i4": {"category": "horror"}})  # i7: no features -> 'unknown'
            client.hset(store.key("ts", "control"), mapping={"comedy:b": "3", "drama:a": "2", "drama:b": "5"})
            client.hset(store.key("req", "r1"), "i5", "treatment\tdrama")  # already served: no new failure

            def log(rid: str, arm: str, served: list[RecoItem], store: RedisStore = store):
                records = impression_records(req, rid, arm, "7", served, ts=ts, phase=2)
                result = store.log_request(rid, "u1", arm, ts, records, ["a", rid])
                return result.accepted, result.duplicates

            results = [log("r1", "control", items[:6]), log("r1", "control", items), log("r2", "", items[:3])]
            state = {}
            for key in sorted(client.scan_iter(match=f"{store.prefix}:*")):
                kind, name = client.type(key).decode(), key.decode().removeprefix(store.prefix)
                value = {
                    "string": lambda k: client.get(k),
                    "hash": lambda k: list(client.hgetall(k).items()),  # field order included
                    "stream": lambda k: [fields for _, fields in client.xrange(k)],  # ids are clock-made
                }[kind](key)
                state[name] = (kind, value, client.ttl(key))
            states.append((results, state, time.monotonic() - began))
        finally:
            for key in client.scan_iter(match=f"{store.prefix}:*"):
                client.delete(key)
    client.close()
    (ref_results, ref_state, ref_took), (results, state, took) = states
    # A key's TTL is its configured one less the time since its EXPIRE, at most its run's duration (seconds on a
    # loaded machine): the two runs' TTLs differ by at most the longer run, plus a second's rounding.
    slack = max(took, ref_took) + 1
    assert results == ref_results == [(6, 0), (5, 6), (3, 0)]
    assert state.keys() == ref_state.keys()
    for name, (kind, value, ttl) in state.items():
        ref_kind, ref_value, ref_ttl = ref_state[name]
        assert (kind, value) == (ref_kind, ref_value), name
        assert abs(ttl - ref_ttl) <= slack and (ttl > 0) == (ref_ttl > 0), name
    assert state[":ts:control"][1] == [(b"comedy:b", b"5"), (b"drama:a", b"2"), (b"drama:b", b"8"),
                                        (b"horror:b", b"2"), (b"unknown:b", b"1"), (b"sci-fi:b", b"1")]  # fmt: skip
