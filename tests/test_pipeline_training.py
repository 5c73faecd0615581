"""Task functions of reco_training without Airflow: the gate's three refusals and the source switch."""

from __future__ import annotations

import pytest
from test_registry import tiny_bundle

from reco.pipeline import training as T


@pytest.fixture
def candidate(tmp_path):
    tiny_bundle().save(tmp_path / "cand")
    return {"candidate_dir": str(tmp_path / "cand")}


def ev(cand: float, champ: float | None) -> dict:
    return {
        "skipped": False,
        "candidate": {"ndcg@10": cand, "recall@10": 0.5},
        "champion": None if champ is None else {"ndcg@10": champ},
        "champion_version": "3",
    }


def test_gate_passes_within_tolerance_and_without_champion(candidate):
    assert T.gate(candidate, ev(0.295, 0.30), tolerance=0.01)["passed"]
    assert T.gate(candidate, ev(0.1, None))["passed"]


def test_gate_rejects_regression_nan_and_broken_bundle(candidate, tmp_path):
    v = T.gate(candidate, ev(0.25, 0.30), tolerance=0.01)
    assert not v["passed"] and "champion v3" in v["reason"]
    assert "NaN" in T.gate(candidate, ev(float("nan"), None))["reason"]
    (tmp_path / "cand" / "weights.pt").write_bytes(b"corrupt")
    assert "smoke test failed" in T.gate(candidate, ev(0.3, None))["reason"]


def test_unknown_source_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown source 'ftp'"):
        T.ingest(str(tmp_path), "2026-01-01", "2026-01-01", source="ftp")


def test_ingest_from_the_redis_stream_lands_each_event_once(tmp_path, redis_url, redis_prefix):
    """source="stream": the sink drains the real Redis stream into the lake; a rerun adds nothing."""
    from datetime import UTC, datetime, timedelta

    from reco.data.events import Event
    from reco.data.lake import EventLake
    from reco.pipeline.training import ingest
    from reco.store import RedisStore, connect

    t0 = datetime(2026, 3, 1, 23, 0, tzinfo=UTC)
    events = [
        Event(event_id=f"e{i}", ts=t0 + timedelta(minutes=20 * i), user_id="u1", session_id="s1",
              item_id=str(i % 3 + 1), event_type="view")
        for i in range(6)
    ]  # fmt: skip
    store = RedisStore(connect(redis_url), redis_prefix)
    assert store.ingest(events + events[:2]).accepted == 6  # duplicates refused at the door

    kw = dict(home=str(tmp_path), start="2026-03-01", end="2026-03-02", source="stream",
              redis_url=redis_url, redis_prefix=redis_prefix)  # fmt: skip
    first = ingest(**kw)
    again = ingest(**kw)
    assert first["rows"] == again["rows"] == 6
    table = EventLake(tmp_path / "lake").read()
    assert sorted(table.column("event_id").to_pylist()) == sorted(e.event_id for e in events)
