"""Task functions of reco_training without Airflow: the gate's three refusals and the source switch."""

from __future__ import annotations

import pytest
from test_registry import tiny_bundle

from reco.pipeline import training_tasks as T


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


def test_gate_passes_without_champion(candidate):
    """Against a champion the gate compares real models (tests/test_gate.py); without one only NaN and the
    smoke test decide."""
    assert T.gate(candidate, ev(0.1, None))["passed"]


def test_gate_rejects_nan_and_broken_bundle(candidate, tmp_path):
    assert "NaN" in T.gate(candidate, ev(float("nan"), None))["reason"]
    (tmp_path / "cand" / "weights.pt").write_bytes(b"corrupt")
    assert "smoke test failed" in T.gate(candidate, ev(0.3, None))["reason"]


def test_unknown_source_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown source 'ftp'"):
        T.ingest(str(tmp_path), "2026-01-01", "2026-01-01", source="ftp")


def test_ingest_from_the_redis_stream_lands_each_event_once(tmp_path, redis_url, redis_prefix, movielens_dir):
    """source="stream": the sink drains the real Redis stream into the lake; a rerun adds nothing. A first
    live run has no catalogue file yet: it takes the bootstrap data's (RECO_DATA_DIR), as a deployment does."""
    from datetime import UTC, datetime, timedelta

    from reco.data.events import Event
    from reco.data.lake import EventLake
    from reco.pipeline.training_tasks import ingest
    from reco.state.store import RedisStore, connect

    t0 = datetime(2026, 3, 1, 23, 0, tzinfo=UTC)
    events = [
        Event(event_id=f"e{i}", ts=t0 + timedelta(minutes=20 * i), user_id="u1", session_id="s1",
              item_id=str(i % 3 + 1), event_type="view")
        for i in range(6)
    ]  # fmt: skip
    store = RedisStore(connect(redis_url), redis_prefix)
    assert store.ingest(events + events[:2]).accepted == 6  # duplicates refused at the door

    kw = dict(home=str(tmp_path), start="2026-03-01", end="2026-03-02", source="stream",
              redis_url=redis_url, redis_prefix=redis_prefix, data_dir=str(movielens_dir))  # fmt: skip
    first = ingest(**kw)
    again = ingest(**kw)
    assert first["rows"] == again["rows"] == 6
    table = EventLake(tmp_path / "lake").read()
    assert sorted(table.column("event_id").to_pylist()) == sorted(e.event_id for e in events)


# --------------------------------------------------------------------------- off-policy estimate in the gate


def _training_set_file(tmp_path, table) -> str:
    """The job's events file as `build_training_set` writes it (lake -> pandas -> Parquet)."""
    from reco.data.lake import EventLake

    lake = EventLake(tmp_path / "lake")
    lake.write_partitions(table)
    path = tmp_path / "events.parquet"
    lake.read_pandas().to_parquet(path, index=False)
    return str(path)


def test_gate_reports_the_candidates_offpolicy_ctr_on_a_simulated_log(candidate, tmp_path):
    """Logged ranking traffic with a known click model: the candidate's (tiny_bundle's) CTR under its own
    Plackett-Luce policy is known exactly, and `evaluate`'s estimates from the job's events file (sessions
    rebuilt from the log, served scoring path) cover it. The gate reports it without rejecting on it, and
    `register` records it as run metrics and version tags."""
    import numpy as np
    from test_offpolicy import pl_value

    from reco.artifacts import registry
    from reco.experiments.simulate import SlateSimConfig, simulate_slate_log

    log = simulate_slate_log(SlateSimConfig(requests=2000, logging_spread=0.5, seed=3))
    uri, tau = f"sqlite:///{tmp_path}/mlflow.db", 0.02  # the tiny model's logits are close: a low temperature
    tset = {"events": _training_set_file(tmp_path, log.events), "snapshot_id": "s", "rows": 1,
            "validation_id": "v", "validation_bad_rows": 0}  # fmt: skip
    cand = candidate | {"parent_version": None, "train_config": {"epochs": 1}}
    evaluation = T.evaluate(uri, "op", tset, cand, offpolicy_tau=tau)
    est = evaluation["offpolicy"]
    items = [[str(i + 1) for i in row] for row in log.slates]
    scores = tiny_bundle().score_batch(log.sessions, items, "home", "web")[0]
    truth = pl_value(scores, log.slates, log.click_prob, tau)
    assert est["status"] == "estimated" and est["logged"]["impressions"] == 8000
    for m in ("ips", "snips", "dr"):
        assert est[m]["ci"][0] <= truth <= est[m]["ci"][1], (m, est[m], truth)
    assert est["snips"]["effective_sample_size"] < 0.8 * 8000, est["snips"]  # its policy differs from the log's
    metrics = T.offpolicy_metrics(est)
    assert metrics["offpolicy_snips_ctr"] == est["snips"]["value"] and metrics["offpolicy_n"] == 8000
    assert metrics["offpolicy_snips_ci_low"] < metrics["offpolicy_snips_ctr"] < metrics["offpolicy_snips_ci_high"]
    assert evaluation["candidate"].items() >= metrics.items() and np.isfinite(list(metrics.values())).all()

    verdict = T.gate(candidate, evaluation)
    assert verdict["passed"] and verdict["offpolicy"].startswith("snips CTR ")
    reg = T.register(uri, "op", tset, cand, evaluation, verdict, {})
    client = registry.client_for(uri)
    tags = registry.get_version(client, "op", reg["version"]).tags
    assert float(tags["metric.offpolicy_snips_ctr"]) == pytest.approx(est["snips"]["value"], rel=1e-5)
    assert client.get_run(reg["run_id"]).data.metrics["offpolicy_n"] == 8000
    # against a champion's policy on the same requests: gates by default from 1,000 logged requests
    vs = {"metric": "offpolicy snips ctr", "relative_change": -0.2, "ci": [-0.3, -0.1], "n": 2000,
          "candidate": 0.08, "champion": 0.1}  # fmt: skip
    worse = evaluation | {"offpolicy": est | {"vs_champion": vs}}
    rejected = T.gate(candidate, worse)
    assert not rejected["passed"] and rejected["offpolicy_gated"]
    assert "off-policy: offpolicy snips" in rejected["reason"]
    assert T.gate(candidate, worse, offpolicy_gate=False)["passed"]
    assert T.gate(candidate, worse, offpolicy_min_requests=5000)["passed"]  # too little traffic: reported only


def test_offpolicy_is_none_without_logged_traffic(candidate, tmp_path, movielens_dir):
    """MovieLens ratings have no impressions: the gate says so and passes on the offline metrics."""
    from datetime import date

    from reco.data.lake import EventLake
    from reco.data.movielens import ingest_movielens

    ingest_movielens(movielens_dir, EventLake(tmp_path / "ml"), date(1997, 9, 20), date(1997, 9, 21))
    path = tmp_path / "ml.parquet"
    EventLake(tmp_path / "ml").read_pandas().to_parquet(path, index=False)
    est = T.offpolicy_estimate(str(path), tiny_bundle())
    assert est == {"status": "none", "reason": "no impressions logged with propensities in the job's interval"}
    assert T.offpolicy_metrics(est) == {}
    verdict = T.gate(candidate, ev(0.3, None) | {"offpolicy": est})
    assert verdict["passed"] and verdict["offpolicy"].startswith("none (no impressions")
    assert T.gate(candidate, ev(0.3, None))["offpolicy"] == "none (not evaluated)"
