"""Experiment phases against a real MLflow registry (SQLite): a promotion into a running experiment
starts a phase recorded with who / why / when / every arm's version, before the alias moves; reruns are
idempotent; the API stamps impressions with the phase of the version that served them; the event
schema, lake and GX suite carry `phase`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from test_registry import lineage, tiny_bundle

from reco.artifacts import registry
from reco.experiments.phases import PhaseLog, experiment_phases, phase_of
from reco.pipeline.promote_tasks import move_alias
from reco.pipeline.training_tasks import promote_candidate

pytestmark = pytest.mark.integration

EXPERIMENTS = """
version: 1
experiments:
  - name: exp-a
    salt: s-a
    control: control
    arms:
      - {name: control, traffic: 0.5, alias: arm-control}
      - {name: treatment, traffic: 0.5, alias: arm-treatment}
"""


@pytest.fixture
def reg(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    client = registry.client_for(uri)
    name = f"rk-{uuid.uuid4().hex[:8]}"
    versions = []
    for seed in range(3):
        run = client.create_run(registry.ensure_experiment(client, "reco-test")).info.run_id
        mv = registry.log_bundle(client, name, tiny_bundle(seed), lineage(f"snap-{seed}"), run_id=run)
        versions.append(str(mv.version))
    cfg = tmp_path / "experiments.yaml"
    cfg.write_text(EXPERIMENTS)
    return uri, client, name, versions, str(cfg)


def test_promotions_start_phases_with_who_why_and_every_arm(reg):
    uri, client, name, (v1, v2, _), cfg = reg
    # Bootstrapping arm by arm: no phase until every arm has a version.
    first = promote_candidate(uri, name, "control", {"version": v1}, who="boot", experiments_path=cfg)
    assert first["phases"] == [] and experiment_phases(uri, name, "exp-a", cfg) == []
    second = promote_candidate(uri, name, "treatment", {"version": v1}, who="boot", experiments_path=cfg)
    assert [p["id"] for p in second["phases"]] == [1]
    assert second["phases"][0]["versions"] == {"control": v1, "treatment": v1}

    moved = move_alias(uri, name, "promote", "arm-treatment", v2, reason="day 1 model", who="alice",
                       experiments_path=cfg)  # fmt: skip
    phase2 = moved["phases"][0]
    assert (phase2["id"], phase2["who"], phase2["why"]) == (2, "alice", "day 1 model")
    assert phase2["versions"] == {"control": v1, "treatment": v2}
    assert datetime.fromisoformat(phase2["started"]).tzinfo is not None
    assert registry.alias_version(client, name, "arm-treatment").version == int(v2)

    # A rerun of the same promotion starts nothing new.
    again = promote_candidate(uri, name, "treatment", {"version": v2}, who="x", experiments_path=cfg)
    assert again["moved"] == [] and [p["id"] for p in experiment_phases(uri, name, "exp-a", cfg)] == [1, 2]

    # A rollback is a phase too (the versions changed back).
    back = move_alias(uri, name, "rollback", "arm-treatment", reason="bad", who="bob", experiments_path=cfg)
    assert back["phases"][0]["id"] == 3 and back["phases"][0]["versions"]["treatment"] == v1
    log = PhaseLog(client, name)
    assert log.current("exp-a").id == 3 and [p.id for p in log.phases("exp-a")] == [1, 2, 3]


def test_phase_recorded_before_the_alias_moves(reg):
    uri, client, name, (v1, v2, _), cfg = reg
    for arm in ("control", "treatment"):
        promote_candidate(uri, name, arm, {"version": v1}, who="boot", experiments_path=cfg)
    seen = {}

    def move() -> None:  # what an API polling between the two writes would see
        phases = PhaseLog(client, name).phases("exp-a")
        seen["alias"] = str(registry.alias_version(client, name, "arm-treatment").version)
        seen["stamp"] = phase_of(phases, "treatment", seen["alias"])
        seen["new"] = phase_of(phases, "treatment", v2)
        registry.promote(client, name, "arm-treatment", v2, who="t", reason="r")

    from reco.experiments.phases import promote_in_experiment

    promote_in_experiment(client, name, "arm-treatment", v2, who="t", why="r", move=move, experiments_path=cfg)
    # the old version still served in between is stamped with the old phase, the new one with the new phase
    assert seen == {"alias": v1, "stamp": 1, "new": 2}


def test_rejected_version_gets_no_phase(reg):
    uri, client, name, (v1, _, v3), cfg = reg
    for arm in ("control", "treatment"):
        promote_candidate(uri, name, arm, {"version": v1}, who="boot", experiments_path=cfg)
    client.set_model_version_tag(name, v3, "rejected", "gate")
    with pytest.raises(registry.RegistryError):
        move_alias(uri, name, "promote", "arm-treatment", v3, reason="try", who="x", experiments_path=cfg)
    assert [p["id"] for p in experiment_phases(uri, name, "exp-a", cfg)] == [1]


def test_learning_modes_and_start_idempotent(reg):
    _, client, name, (v1, v2, _), _ = reg
    log = PhaseLog(client, name)
    t = datetime(2026, 1, 2, tzinfo=UTC)
    a = log.start("e", {"control": v1, "treatment": v2}, who="w", why="y", learning={"treatment": "frozen"}, now=t)
    b = log.start("e", {"control": v1, "treatment": v2}, who="w2", why="y2", learning={"treatment": "frozen"})
    assert a == b and a.frozen == ("treatment",) and a.started == "2026-01-02T00:00:00+00:00"
    c = log.start("e", {"control": v1, "treatment": v2}, who="w", why="unfreeze")
    assert c.id == a.id + 1 and c.frozen == ()


def test_event_schema_lake_and_gx_carry_phase(tmp_path):
    import pandas as pd

    from reco.data.events import EVENT_SCHEMA, Event
    from reco.data.lake import EventLake
    from reco.data.validation import validate_events

    e = Event(event_id="e1", ts="2026-01-01T10:00:00Z", user_id="u", item_id="i", event_type="impression", phase=2)
    assert EVENT_SCHEMA.field("phase").type.bit_width == 32
    with pytest.raises(ValueError):
        Event(event_id="e2", ts="2026-01-01T10:00:00Z", user_id="u", item_id="i", event_type="impression", phase=0)
    lake = EventLake(tmp_path / "lake")
    lake.append([e])
    assert lake.read_pandas().loc[0, "phase"] == 2
    bad = lake.read_pandas().assign(phase=pd.array([0], dtype="Int32"))
    day = pd.Timestamp("2026-01-01", tz="UTC")
    vb = validate_events(bad, day, day + pd.Timedelta(days=1), None, threshold=1.0)
    assert "phase < 1" in vb.quarantine["reasons"].iloc[0]


def test_served_impressions_carry_the_phase():
    from reco.ranking.recommend import RecoItem, RecoRequest, impression_records

    it = RecoItem("i1", 0.5, "Trending now", "trending", 1, False, 1.0, "Drama")
    ts = datetime(2026, 1, 1, tzinfo=UTC)
    stamped = impression_records(RecoRequest("u"), "r1", "control", "3", [it], ts=ts, phase=4)
    plain = impression_records(RecoRequest("u"), "r1", "control", "3", [it], ts=ts)
    from reco.data.events import Event

    assert Event.model_validate_json(stamped[0].payload).phase == 4
    assert Event.model_validate_json(plain[0].payload).phase is None


def test_versions_served_before_any_phase_become_phase_1(reg):
    """`reco bootstrap` sets the aliases without phases; the first promotion records that state as phase 1
    (impressions without a phase are phase 1 to the report), then its own as phase 2."""
    uri, client, name, (v1, v2, _), cfg = reg
    for alias in ("arm-control", "arm-treatment"):
        registry.promote(client, name, alias, v1, who="reco bootstrap", reason="first model")
    out = promote_candidate(uri, name, "treatment", {"version": v2}, who="dag", experiments_path=cfg,
                            now="2026-01-03T00:00:00+00:00")  # fmt: skip
    phases = experiment_phases(uri, name, "exp-a", cfg)
    assert [(p["id"], p["versions"]["treatment"], p["started"]) for p in phases] == [
        (1, v1, ""), (2, v2, "2026-01-03T00:00:00+00:00")]  # fmt: skip
    assert [p["id"] for p in out["phases"]] == [2]


def test_frozen_learning_in_the_config_is_recorded_in_the_phase(reg, tmp_path):
    uri, _, name, (v1, _, _), _ = reg
    cfg = tmp_path / "frozen.yaml"
    cfg.write_text(EXPERIMENTS.replace("alias: arm-treatment}", "alias: arm-treatment, learning: frozen}"))
    for arm in ("control", "treatment"):
        promote_candidate(uri, name, arm, {"version": v1}, who="boot", experiments_path=str(cfg))
    (phase,) = experiment_phases(uri, name, "exp-a", str(cfg))
    assert phase["learning"] == {"control": "online", "treatment": "frozen"}
