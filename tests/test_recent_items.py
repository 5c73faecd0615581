"""RecentItems: a store that remembers users' histories reads the same lists as one that reads them whole, on
the real Redis (a private key prefix per test), whatever happens between two reads."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

import reco.state.store
from reco.data.events import Event
from reco.state.history import RecentItems
from reco.state.store import RedisStore, connect

pytestmark = pytest.mark.integration

TYPES = ["view", "view", "view", "click", "impression", "add_to_cart"]


@pytest.fixture
def stores(redis_url: str, redis_prefix: str):
    """(the writer, which reads whole; a reader that remembers 3 users); histories of at most 30 items."""
    client = connect(redis_url)
    yield (
        RedisStore(client, redis_prefix, user_items_max=30),
        RedisStore(client, redis_prefix, user_items_max=30, recent_items_users=3),
    )
    client.close()


def _read(store: RedisStore, user: str) -> list[str]:
    return store.request_context(user, None, [], None, [], item_features=False, profile=False).user_items


def test_remembered_histories_read_as_the_whole_list_through_pushes_trims_duplicates_and_expiry(stores) -> None:
    writer, reader = stores
    rng = random.Random(7)
    users = [f"u{k}" for k in range(5)]  # more users than the reader remembers: some are forgotten
    n = 0
    for step in range(400):
        user = rng.choice(users)
        batch = []
        for _ in range(rng.choice([0, 1, 1, 1, 2, 3, 20, 40])):
            n += 1
            event_id = f"e{rng.randrange(n)}" if rng.random() < 0.1 else f"e{n}"  # some duplicates: not pushed
            batch.append(Event(event_id=event_id, ts=datetime.now(UTC), user_id=user, event_type=rng.choice(TYPES),
                               item_id=f"i{rng.randrange(60)}"))  # fmt: skip
        writer.ingest(batch)
        if step % 97 == 50:  # the list expires while the user's counts live on (events of other types refresh them)
            writer.client.delete(writer.key("uitems", user))
        if step % 131 == 70:  # the user expires whole: the count starts again from 0
            writer.client.delete(writer.key("uitems", user), writer.key("user", user))
        assert _read(reader, user) == writer.user_items(user), f"step {step}"
    counts = reader._recent.counts if reader._recent else {}
    assert counts["tail"] > 100 and counts["whole"] > 20  # both ways were taken


def test_the_pushes_since_are_read_in_the_request_round_trip_however_many(stores, monkeypatch) -> None:
    writer, reader = stores
    views = [Event(event_id=f"e{i}", ts=datetime.now(UTC), user_id="u", event_type="view", item_id=f"i{i}")
             for i in range(60)]  # fmt: skip
    writer.ingest(views[:25])
    assert _read(reader, "u") == [f"i{i}" for i in range(25)]
    trips = []
    real = reco.state.store.round_trip
    monkeypatch.setattr(
        reco.state.store, "round_trip", lambda client, commands: trips.append(commands) or real(client, commands)
    )
    writer.ingest(views[25:])  # 35 pushes, more than the list holds (30): read whole, by the same call
    assert _read(reader, "u") == [f"i{i}" for i in range(30, 60)]
    writer.ingest([Event(event_id="x", ts=datetime.now(UTC), user_id="u", event_type="click", item_id="i7")])
    assert _read(reader, "u") == [*[f"i{i}" for i in range(31, 60)], "i7"]
    more = [Event(event_id=f"m{i}", ts=datetime.now(UTC), user_id="u", event_type="view", item_id=f"m{i}")
            for i in range(20)]  # fmt: skip
    writer.ingest(more)  # 20 pushes: the tail holds them and 4 the copy has
    assert _read(reader, "u") == [*[f"i{i}" for i in range(51, 60)], "i7", *[f"m{i}" for i in range(20)]]
    assert len(trips) == 3 and reader._recent is not None and reader._recent.counts["tail"] == 2


def test_a_tail_that_does_not_overlap_the_remembered_list_is_read_whole(stores) -> None:
    """A list changed other than by pushes (here: rewritten behind the count's back) is not patched up."""
    writer, reader = stores
    events = [Event(event_id=f"e{i}", ts=datetime.now(UTC), user_id="u", event_type="view", item_id=f"i{i}")
              for i in range(25)]  # fmt: skip
    writer.ingest(events)
    assert _read(reader, "u") == [f"i{i}" for i in range(25)]
    key = writer.key("uitems", "u")
    writer.client.delete(key)
    writer.client.rpush(key, *[f"x{i}" for i in range(25)])
    assert _read(reader, "u") == [f"x{i}" for i in range(25)]


def test_recent_items_survive_a_script_flush(stores) -> None:
    writer, reader = stores
    writer.ingest([Event(event_id="e1", ts=datetime.now(UTC), user_id="u", event_type="view", item_id="i1")])
    assert _read(reader, "u") == ["i1"]
    writer.client.script_flush()
    writer.ingest([Event(event_id="e2", ts=datetime.now(UTC), user_id="u", event_type="click", item_id="i2")])
    assert _read(reader, "u") == ["i1", "i2"]


def test_recent_items_needs_room_for_one_user() -> None:
    with pytest.raises(ValueError, match="users must be >= 1"):
        RecentItems(0, "sha")
