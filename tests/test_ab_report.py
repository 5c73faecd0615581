"""The A/B report end to end: counting rules, decisions, formats, bad input, the CLI."""

from __future__ import annotations

import datetime as dt
import json
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from reco.cli import app
from reco.experiments.report import (
    ReportConfig,
    ReportError,
    build_report,
    decide,
    read_events,
    render_html,
    render_json,
)
from reco.experiments.simulate import SimConfig, simulate_events

START = date(2026, 1, 1)


def _sim(**kw) -> pa.Table:
    base = dict(users=2000, sessions=12000, days=21, ctr={"control": 0.10, "treatment": 0.10}, seed=1)
    return simulate_events(SimConfig(**(base | kw)))


@pytest.fixture(scope="module")
def winner() -> dict:
    t = _sim(ctr={"control": 0.10, "treatment": 0.13}, pre_days=7, purchase_rate=0.1, users=4000, sessions=30000)
    return build_report(t, ReportConfig(control="control", start=START))


def test_winner_ships_with_all_sections(winner: dict) -> None:
    assert winner["decision"] == {"action": "ship", "arm": "treatment", "reasons": winner["decision"]["reasons"]}
    c = winner["comparisons"][0]
    assert c["drives_decision"] == "user_level"
    ul = c["user_level"]
    assert ul["lift"]["relative_ci"][0] < ul["lift"]["relative"] < ul["lift"]["relative_ci"][1]
    # users cluster impressions: the user-level interval is wider than the impression-level one
    width = lambda lf: lf["absolute_ci"][1] - lf["absolute_ci"][0]  # noqa: E731
    assert width(ul["lift"]) > width(c["impression_level"]["lift"])
    # the always-valid interval is wider than the fixed-horizon one and its p-value larger
    assert ul["sequential"]["p_value"] >= ul["p_value"]
    assert c["bayes"]["chance_to_beat_control"] > 0.99
    assert c["cuped"]["variance_reduction"] > 0 and c["cuped"]["lift"]["relative"] > 0
    assert set(c["metrics"]) == {"clicks_per_user", "purchases_per_user", "revenue_per_user"}
    assert c["power"]["required_control_users"] > 0 and 0 < c["power"]["mde_relative_now"] < 1
    assert winner["arms"]["treatment"]["model_versions"] == ["treatment-v1"]
    assert winner["window"] == {"start": "2026-01-01", "end": "2026-01-21", "days": 21}
    assert not winner["srm"]["flagged"]
    assert len(winner["cumulative"]) == 21 and {d["arm"] for d in winner["daily"]} == {"control", "treatment"}


def test_json_is_stable_and_html_has_plots(winner: dict) -> None:
    text = render_json(winner)
    assert json.loads(text) == winner and render_json(json.loads(text)) == text
    html = render_html(winner)
    assert html.count("data:image/png;base64,") == 3 and "ship treatment" in html


def test_srm_stops_the_experiment() -> None:
    t = _sim(arms={"control": 0.56, "treatment": 0.44}, days=15)
    rep = build_report(t, ReportConfig(control="control", traffic={"control": 0.5, "treatment": 0.5}))
    assert rep["srm"]["flagged"] and rep["srm"]["p_value"] < 1e-3
    assert rep["decision"]["action"] == "stop" and rep["decision"]["reasons"][0].startswith("SRM")


def test_too_early_even_when_significant() -> None:
    rep = build_report(_sim(ctr={"control": 0.10, "treatment": 0.14}, days=7), ReportConfig(control="control"))
    assert rep["comparisons"][0]["user_level"]["p_value"] < 0.01
    assert rep["decision"]["action"] == "continue" and "too early" in rep["decision"]["reasons"][-1]


def test_novelty_blocks_a_ship() -> None:
    t = _sim(ctr={"control": 0.10, "treatment": 0.12}, novelty=4.0, sessions=30000, users=3000)
    rep = build_report(t, ReportConfig(control="control"))
    nov = rep["comparisons"][0]["novelty"]
    assert nov["flagged"] and nov["slope_per_day"] < 0
    assert rep["decision"]["action"] == "continue" and "novelty" in rep["decision"]["reasons"][-1]


def test_aa_at_horizon_stops_not_significant() -> None:
    rep = build_report(_sim(days=28, seed=3), ReportConfig(control="control"))
    assert rep["decision"]["action"] == "stop" and "not significant" in rep["decision"]["reasons"][-1]


def test_guardrail_harm_stops(winner: dict) -> None:
    rep = json.loads(render_json(winner))
    rep["comparisons"][0]["guardrails_harmed"] = ["revenue_per_user"]
    d = decide(rep, ReportConfig(control="control"))
    assert d["action"] == "stop" and "guardrail" in d["reasons"][0]


def _ev(eid: str, kind: str, user: str, req: str, item: str, arm: str | None, day: int = 1) -> dict:
    return dict(event_id=eid, ts=dt.datetime(2026, 1, day, 12, tzinfo=dt.UTC), user_id=user, item_id=item,
                event_type=kind, request_id=req, arm=arm)  # fmt: skip


def test_counting_rules() -> None:
    rows = [_ev(f"i{a}{u}", "impression", f"{a}{u}", f"r{a}{u}", "m1", a) for a in "AB" for u in range(5)]
    rows += [
        _ev("i-dup", "impression", "A0", "rA0", "m2", "A"),
        _ev("i-dup", "impression", "A0", "rA0", "m2", "A"),  # duplicated event_id counts once
        _ev("c1", "click", "A0", "rA0", "m1", "A"),
        _ev("c2", "click", "A0", "rA0", "m1", "A"),  # second click on the same impression: still 1 clicked
        _ev("c3", "click", "B1", "rB1", "m1", "B"),
        _ev("c4", "click", "B1", "r-none", "m9", "B"),  # orphan: no impression
        _ev("i-noarm", "impression", "C0", "rC0", "m1", None),
    ]
    rep = build_report(pa.Table.from_pylist(rows), ReportConfig(control="A"))
    assert rep["arms"]["A"] == rep["arms"]["A"] | {"users": 5, "impressions": 6, "clicks": 1}
    assert rep["arms"]["B"]["clicks"] == 1 and rep["arms"]["B"]["impressions"] == 5
    assert rep["data_quality"] | {"events_read": 0} == {
        "events_read": 0, "duplicate_events": 1, "orphan_clicks": 1, "impressions_without_arm": 1,
        "users_in_multiple_arms": 0,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "cfg", "message"),
    [
        (lambda t: t.drop_columns(["request_id"]), {}, "missing required column"),
        (lambda t: t, {"control": "nope"}, "unknown control arm 'nope'"),
        (lambda t: t, {"traffic": {"control": 0.4, "treatment": 0.4, "c": 0.2}}, "no impressions"),
        (lambda t: t.filter(pa.compute.equal(t.column("event_type"), "click")), {}, "no impressions"),
        (lambda t: t.filter(pa.compute.equal(t.column("arm"), "control")), {}, "nothing to compare"),
    ],
)
def test_bad_input_is_a_clear_error(mutate, cfg: dict, message: str) -> None:
    t = _sim(users=100, sessions=300, days=3)
    with pytest.raises(ReportError, match=message):
        build_report(mutate(t), ReportConfig(**({"control": "control"} | cfg)))


def test_readers_agree_lake_parquet_csv(tmp_path: Path) -> None:
    from reco.data.lake import EventLake

    t = _sim(users=300, sessions=1500, days=6, pre_days=2)
    EventLake(tmp_path / "lake").write_partitions(t)
    pq.write_table(t, tmp_path / "e.parquet")
    pacsv.write_csv(t, tmp_path / "e.csv")
    start, end = date(2026, 1, 2), date(2026, 1, 5)
    cfg = ReportConfig(control="control", start=start, end=end)
    reps = [build_report(read_events(tmp_path / p, start, end, 7), cfg) for p in ("lake", "e.parquet", "e.csv")]
    assert reps[0]["arms"] == reps[1]["arms"] == reps[2]["arms"]
    assert reps[0]["window"]["days"] == 4 and reps[0]["comparisons"][0]["cuped"] is not None
    with pytest.raises(ReportError, match="does not exist"):
        read_events(tmp_path / "missing.parquet")


def test_cli_report_and_errors(tmp_path: Path) -> None:
    t = _sim(users=300, sessions=1500, days=5)
    pq.write_table(t, tmp_path / "e.parquet")
    runner = CliRunner()
    ok = runner.invoke(app, ["ab", "report", "--events", str(tmp_path / "e.parquet"), "--control", "control",
                             "--traffic", "control=0.5", "--traffic", "treatment=0.5"])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["decision"]["action"] == "continue"
    out = tmp_path / "r.html"
    ok = runner.invoke(app, ["ab", "report", "--events", str(tmp_path / "e.parquet"), "--control", "control",
                             "--format", "html", "--out", str(out)])  # fmt: skip
    assert ok.exit_code == 0 and out.read_text().startswith("<!doctype html>")
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("version: 1\nexperiments:\n  - name: x\n    salt: s\n    arms:\n"
                   "      - {name: control, traffic: 0.3, alias: a}\n"
                   "      - {name: treatment, traffic: 0.7, alias: b}\n")  # fmt: skip
    ok = runner.invoke(app, ["ab", "report", "--events", str(tmp_path / "e.parquet"), "--control", "control",
                             "--experiments", str(cfg)])  # fmt: skip
    rep = json.loads(ok.stdout)
    assert rep["experiment"] == "x" and rep["config"]["traffic"] == {"control": 0.3, "treatment": 0.7}
    assert rep["srm"]["flagged"]  # the simulated 50/50 split does not match the configured 30/70
    for args, msg in [
        (["--control", "control", "--experiment", "nope"], "no experiment 'nope'"),
        (["--control", "control", "--experiments", str(tmp_path / "none.yaml")], "cannot read experiment config"),
        (["--control", "nope"], "unknown control arm"),
        (["--control", "control", "--traffic", "control"], "ARM=SHARE"),
        (["--control", "control", "--start", "2026-13-01"], "YYYY-MM-DD"),
        (["--control", "control", "--format", "pdf"], "json or html"),
    ]:
        bad = runner.invoke(app, ["ab", "report", "--events", str(tmp_path / "e.parquet"), *args])
        assert bad.exit_code == 2, bad.output
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and msg in lines[0] and "Traceback" not in bad.output


def test_html_renders_days_without_a_confidence_interval(winner: dict) -> None:
    """Early days of a small experiment have no variance yet: their CI is null in the JSON and the
    plot shows a gap instead of crashing."""
    import copy

    report = copy.deepcopy(winner)
    report["cumulative"][0]["ci"] = [None, None]
    report["cumulative"][1]["sequential_ci"] = None
    report["daily"][0]["ctr"] = None
    html = render_html(report)
    assert html.count("data:image/png;base64,") == 3
