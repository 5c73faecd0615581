"""The request pipeline end to end on a small real model, with real Redis (and a dead one)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import numpy as np
import pytest
from serving_helpers import tiny_bundle

from reco.data.events import Event
from reco.experiments.assignment import Assignment, ExplorationConfig
from reco.ranking.candidates import CandidateConfig
from reco.ranking.recommend import ArmPolicies, PipelineConfig, Recommender, RecoRequest, ServedModel, impression_events


@pytest.fixture(scope="module")
def model() -> ServedModel:
    return ServedModel.build(tiny_bundle(), "7")


def arm(strategy: str = "none", rate: float = 0.0):
    return lambda user_id: Assignment(
        "exp", "control", "arm-control", ExplorationConfig(strategy=strategy, rate=rate), 0.5
    )


@pytest.fixture
def store(redis_url: str, redis_prefix: str):
    from reco.state.store import RedisStore, connect

    client = connect(redis_url)
    yield RedisStore(client, redis_prefix)
    client.close()


def make(store, model: ServedModel, **kw) -> Recommender:
    return Recommender(store=store, assign=kw.pop("assign", arm()), models=lambda a: model, **kw)


def views(session: str, items: list[str], user: str = "u1") -> list[Event]:
    ts = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        Event(event_id=f"{session}-{i}", ts=ts, user_id=user, session_id=session, item_id=it, event_type="view")
        for i, it in enumerate(items)
    ]


def test_cold_start_without_redis_serves_popular_with_reasons(model: ServedModel) -> None:
    res = make(None, model).recommend(RecoRequest("new-user", limit=5))
    assert len(res.items) == 5
    assert [it.position for it in res.items] == [1, 2, 3, 4, 5]
    assert all(it.source == "popular" and it.reason.startswith("Popular") for it in res.items)
    assert {"features", "impressions"} <= set(res.degraded)
    assert res.model_version == "7" and res.experiment_group == "control" and res.alias == "arm-control"


@pytest.mark.integration
def test_session_drives_candidates_rules_explanations_and_impressions(store, model: ServedModel) -> None:
    session = ["3", "7", "11"]
    store.ingest(views("s1", session))
    rec = make(store, model)
    res = rec.recommend(RecoRequest("u1", session_id="s1", limit=10))
    served = [it.item_id for it in res.items]
    assert len(served) == 10 and not set(served) & set(session)  # consumed items dropped
    assert res.candidates_per_source.get("session_similar", 0) > 0
    titles = {f"Movie {i}" for i in session}
    for it in res.items:
        if it.source == "session_similar":
            assert it.reason.removeprefix("Because you viewed ") in titles
    assert "features" not in res.degraded and not any(d.startswith("candidates") for d in res.degraded)
    # max 3 per category among the served page (4 genres in the catalogue)
    cats = [model.bundle.catalog.category(i) for i in served]
    assert max(cats.count(c) for c in set(cats)) <= 3
    logged = store.client.xlen(store.stream_key)
    assert logged == len(session) + 10  # the session views + one impression per served item
    assert store.client.hlen(store.key("req", res.request_id)) == 10


@pytest.mark.integration
def test_product_page_excludes_its_item_and_shows_similar_ones(store, model: ServedModel) -> None:
    res = make(store, model).recommend(RecoRequest("u2", page_type="product", context_item_id="5", limit=8))
    served = [it.item_id for it in res.items]
    assert "5" not in served
    assert any(it.source == "context_similar" and it.reason == "Similar to Movie 5" for it in res.items)


def test_dead_redis_degrades_but_answers(model: ServedModel) -> None:
    from reco.state.store import RedisStore, connect

    dead = RedisStore(connect("redis://127.0.0.1:1/0"), "nobody")
    res = make(dead, model, config=PipelineConfig(candidates=CandidateConfig(source_timeout_s=1.0))).recommend(
        RecoRequest("u3", session_id="s9", limit=5)
    )
    assert len(res.items) == 5
    assert {"features", "candidates:trending"} <= set(res.degraded)


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "executor"])
def test_a_hung_redis_is_skipped_for_the_cooldown_not_waited_for_by_every_request(model, inline: bool) -> None:
    import socket

    from reco.state.store import RedisStore, connect

    class Counting(RedisStore):
        reads = 0

        def request_context(self, *args, **kwargs):
            Counting.reads += 1
            return super().request_context(*args, **kwargs)

    with socket.socket() as hole:  # accepts connections (backlog) and never answers: a hung Redis
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)
        client = connect(f"redis://127.0.0.1:{hole.getsockname()[1]}/0", socket_timeout=0.05)
        config = PipelineConfig(features_timeout_s=0.05, features_inline=inline, features_cooldown_s=60)
        rec = make(Counting(client, "hung"), model, config=config)
        answers = [rec.recommend(RecoRequest("u3", session_id="s9", limit=5)) for _ in range(3)]
    assert Counting.reads == 1  # the first request waited out the budget; the next two did not try
    assert all(len(a.items) == 5 and "features" in a.degraded for a in answers)


def test_epsilon_greedy_arm_explores_with_exact_propensities(model: ServedModel) -> None:
    rec = make(None, model, assign=arm("epsilon_greedy", 0.5), explorer_for=ArmPolicies(seed=3).explorer)
    items = [it for _ in range(5) for it in rec.recommend(RecoRequest("u4", limit=10)).items]
    explored = [it for it in items if it.is_exploration]
    assert explored and all(it.reason.startswith("Something new for you") for it in explored)
    assert all(0.0 < it.propensity <= 1.0 for it in items)
    assert all(it.propensity == 1.0 for it in items if it.position <= 3)  # protected top slots


def test_thompson_arm_runs_on_prior_without_redis(model: ServedModel) -> None:
    rec = make(None, model, assign=arm("thompson", 0.2), explorer_for=ArmPolicies(seed=1).explorer)
    res = rec.recommend(RecoRequest("u5", limit=6))
    assert len(res.items) == 6 and all(0.0 < it.propensity <= 1.0 for it in res.items)


def test_non_finite_scores_fall_back_to_retrieval_order() -> None:
    import torch

    broken = tiny_bundle()  # a real bundle whose forward went bad (NaN scores)
    with torch.no_grad():
        broken.model.mlp[-1].bias.fill_(float("nan"))
    model = ServedModel.build(broken, "9")
    res = make(None, model).recommend(RecoRequest("u6", limit=4))
    assert "ranker" in res.degraded and len(res.items) == 4
    assert all(np.isfinite(it.score) for it in res.items)


def test_impression_events_carry_the_serving_facts() -> None:
    rec = make(None, ServedModel.build(tiny_bundle(), "7"))
    res = rec.recommend(RecoRequest("u7", session_id="s", device="mobile", limit=3))
    events = impression_events(RecoRequest("u7", session_id="s", device="mobile"), res.request_id, "control", "7",
                               res.items)  # fmt: skip
    assert [e.position for e in events] == [1, 2, 3]
    assert all(e.request_id == res.request_id and e.arm == "control" and e.model_version == "7" for e in events)
    assert all(e.event_type == "impression" and 0 < e.propensity <= 1 for e in events)


def test_impression_records_serialise_exactly_the_impression_events() -> None:
    """The request log writes `impression_records` (plain json.dumps, no pydantic models): each payload must
    parse to the very `Event` that `impression_events` builds, for every field the request can vary."""
    from reco.data.events import Event
    from reco.ranking.recommend import RecoItem, impression_records

    ts = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    items = [RecoItem("i1", 0.5, "r", "trending", 1, False, 1.0, "Drama"),
             RecoItem("i2", -1.0, "r", "popular", 2, True, 0.0, "unknown")]  # propensity 0 -> clamped  # fmt: skip
    for req in (RecoRequest("u1", session_id="s1", device="x" * 40, page_type="cart"), RecoRequest("u2")):
        records = impression_records(req, "rid", "treatment", "7", items, ts=ts)
        events = impression_events(req, "rid", "treatment", "7", items, ts=ts)
        assert [Event.model_validate_json(r.payload) for r in records] == events
        assert [json.loads(r.payload) for r in records] == [
            json.loads(e.model_dump_json(exclude={"value", "phase"}))
            for e in events  # both unset: not written
        ]
        assert [(r.event_id, r.item_id, r.category) for r in records] == [
            ("rid:1", "i1", "Drama"),
            ("rid:2", "i2", "unknown"),
        ]


def test_impression_records_equal_their_per_item_json_version() -> None:
    """`impression_records` builds each record without `JSONEncoder.encode`, min/max or the NamedTuple's
    __new__: the records must equal what the per-item `json` version built, clamping edges (NaN, 0, an int
    1, > 1, negative, 1e-9) and item ids json escapes (quotes, backslash, non-ASCII, control) included."""
    from reco.ranking.recommend import RecoItem, impression_records
    from reco.state.records import ImpressionRecord

    dumps = json.JSONEncoder(separators=(",", ":")).encode
    ts = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    ids = ["i1", 'q"uote', "back\\slash", "caf\u00e9", "tab\tnl\n", "\U0001f600", "", "x" * 50]
    props = [float("nan"), 0.0, 1, 1.5, -2.0, 1e-9, 5e-10, 0.123456789012345678, 1.0, True]
    items = [
        RecoItem(ids[k % len(ids)], 0.5, "r", "gru", k + 1, k % 2 == 0, p, f"c{k % 3}") for k, p in enumerate(props)
    ]
    req = RecoRequest("u1", session_id="s1", device="mobile", page_type="cart")
    for phase in (None, 3):
        records = impression_records(req, 'r"1', "control", "7", items, ts=ts, phase=phase)
        head = records[0].payload[: records[0].payload.index(',"event_id":')]
        eid, expected = dumps('r"1:')[:-1], []
        for it in items:
            propensity = min(1.0, max(it.propensity, 1e-9))
            payload = (
                f'{head},"event_id":{eid}{it.position}","item_id":{dumps(it.item_id)},'
                f'"position":{it.position},"propensity":{float.__repr__(propensity)},'
                f'"is_exploration":{"true" if it.is_exploration else "false"}}}'
            )
            expected.append(ImpressionRecord(f'r"1:{it.position}', it.item_id, payload, it.category))
        assert records == expected
        assert all(type(r) is ImpressionRecord for r in records)


def test_async_impression_failures_reach_the_hook(model: ServedModel) -> None:
    from reco.state.store import RedisStore, connect

    failures: list[Exception] = []
    dead = RedisStore(connect("redis://127.0.0.1:1/0"), "nobody")
    with ThreadPoolExecutor(1) as log_pool:
        make(dead, model, log_executor=log_pool, on_log_error=failures.append).recommend(RecoRequest("u8", limit=2))
    assert len(failures) == 1


@pytest.mark.integration
def test_cart_page_skips_the_cart_and_the_served_session_is_recorded_for_the_learner(store, model) -> None:
    from reco.online.control import read_request_contexts

    ts = datetime(2026, 1, 1, tzinfo=UTC)
    store.ingest(views("s5", ["3", "7"]))
    popular = [it.item_id for it in make(None, model).recommend(RecoRequest("u9", limit=5)).items]
    popular = [i for i in popular if i not in {"3", "7"}][:3]
    store.ingest([Event(event_id=f"cart-{i}", ts=ts, user_id="u9", session_id="s5", item_id=it,
                        event_type="add_to_cart") for i, it in enumerate(popular)])  # fmt: skip
    rec = make(store, model)
    cart_page = rec.recommend(RecoRequest("u9", page_type="cart", session_id="s5", limit=10))
    home = rec.recommend(RecoRequest("u9", page_type="home", session_id="s5", limit=39))
    assert not set(popular) & {it.item_id for it in cart_page.items}
    assert set(popular) <= {it.item_id for it in home.items}  # only the cart page drops the cart
    assert read_request_contexts(store.client, store.prefix, [cart_page.request_id]) == {
        cart_page.request_id: ("3", "7")
    }


@pytest.mark.integration
def test_the_users_earlier_sessions_are_not_served_again_unless_switched_off(redis_url, redis_prefix, model) -> None:
    from reco.ranking.rules import RuleConfig
    from reco.state.store import RedisStore, connect

    earlier = [str(i) for i in range(1, 21)]  # 20 of the 40 items, in an earlier session
    client = connect(redis_url)
    try:
        store = RedisStore(client, redis_prefix, user_items_max=8)  # Redis keeps the last 8 of them
        store.ingest(views("old", earlier, user="u7") + views("new", ["21"], user="u7"))
        kept = set(earlier[-7:]) | {"21"}  # the history holds the current session's item too
        req = RecoRequest("u7", session_id="new", limit=39)
        served = [it.item_id for it in make(store, model).recommend(req).items]
        assert len(served) == 40 - 8 and not kept & set(served)  # the history and the session dropped
        assert set(earlier[:-7]) <= set(served)  # older than the window: served again
        session_only = PipelineConfig(rules=RuleConfig(drop_history=False))
        rec = make(store, model, config=session_only)
        served = [it.item_id for it in rec.recommend(req).items]
        assert len(served) == 39 and "21" not in served  # the session's item only
    finally:
        client.close()
