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
    assert c["decides"] == "sequential"
    ul = c["user_level"]
    assert ul["lift"]["relative_ci"][0] < ul["lift"]["relative"] < ul["lift"]["relative_ci"][1]
    # the always-valid interval is wider than the fixed-horizon one and its p-value larger
    seq = ul["sequential"]
    assert seq["p_value"] >= ul["p_value"] and seq["relative_ci"][0] < ul["lift"]["relative_ci"][0]
    assert c["bayes"]["chance_to_beat_control"] > 0.99
    # CUPED with the 7 pre-exposure days feeds the decision
    assert ul["cuped"] and c["cuped"]["applied"] and c["cuped"]["variance_reduction"] > 0.05
    assert c["cuped"]["pre_window"] == ["2025-12-18", "2025-12-31"] and c["cuped"]["users_with_pre_period"] > 0
    assert set(c["metrics"]) == {"ctr", "clicks_per_user", "purchases_per_user", "revenue_per_user"}
    assert c["power"]["mde_relative_at_planned_days"] > c["power"]["mde_relative_fixed_horizon"] > 0
    assert {b["dimension"] for b in c["breakdowns"]} == {"page_type", "device", "user_type"}
    assert {b["value"] for b in c["breakdowns"] if b["dimension"] == "user_type"} == {"new", "returning"}
    assert all(b["q_value"] >= b["p_value"] for b in c["breakdowns"] if b["p_value"] is not None)
    assert [g["metric"] for g in c["guardrails"]] == ["revenue_per_user"] and c["guardrails_harmed"] == []
    assert winner["arms"]["treatment"]["model_versions"] == ["treatment-v1"]
    assert winner["window"] | {"rule": ""} == {"start": "2026-01-01", "end": "2026-01-21", "days": 21,
                                               "days_with_data": 21, "rule": ""}  # fmt: skip
    assert winner["phase"]["id"] == 1 and winner["past_phases"] == []
    assert not winner["srm"]["flagged"]
    assert len(winner["cumulative"]) == 21 and {d["arm"] for d in winner["daily"]} == {"control", "treatment"}


def test_one_scale_per_claim(winner: dict) -> None:
    """Every p-value sits beside the interval of the same test: p < alpha exactly when the CI excludes 0."""
    for c in winner["comparisons"]:
        entries = [*c["metrics"].values(), *(b for b in c["breakdowns"] if b["p_value"] is not None)]
        for e in entries:
            lo, hi = e["relative_ci"]
            assert (e["p_value"] < 0.05) == (lo > 0 or hi < 0), e
        for m in c["metrics"].values():
            lo, hi = m["sequential"]["relative_ci"]
            assert (m["sequential"]["p_value"] < 0.05) == (lo > 0 or hi < 0), m


def test_json_is_stable_and_html_is_a_readable_page(winner: dict) -> None:
    text = render_json(winner)
    assert json.loads(text) == winner and render_json(json.loads(text)) == text
    html = render_html(winner)
    assert "<title>default · A/B report</title>" in html and "ship treatment" in html
    assert html.count("<svg") >= 10 and "<script" not in html and "data:image" not in html
    for section in ("verdict", "phase", "metrics", "guardrails", "power", "cuped", "breakdowns", "data-quality"):
        assert f'id="{section}"' in html
    assert "Segments never decide" in html and "+20%" in html  # % axes


def test_srm_stops_the_experiment() -> None:
    t = _sim(arms={"control": 0.56, "treatment": 0.44}, days=15)
    rep = build_report(t, ReportConfig(control="control", traffic={"control": 0.5, "treatment": 0.5}))
    assert rep["srm"]["flagged"] and rep["srm"]["p_value"] < 1e-3
    assert rep["decision"]["action"] == "stop" and rep["decision"]["reasons"][0].startswith("SRM")


def test_too_early_even_when_significant() -> None:
    rep = build_report(_sim(ctr={"control": 0.10, "treatment": 0.14}, days=7), ReportConfig(control="control"))
    assert rep["comparisons"][0]["user_level"]["p_value"] < 0.01
    assert rep["decision"]["action"] == "continue" and any("too early" in r for r in rep["decision"]["reasons"])
    assert "<dt>days left, treatment</dt>" in render_html(rep)


def test_days_without_data_do_not_count() -> None:
    """Seven days of events read with the window's end set seven days after the last event: 14 calendar
    days, 7 days with data: too early, whatever the p-value."""
    t = _sim(ctr={"control": 0.10, "treatment": 0.13}, days=7, users=20000, sessions=60000)
    rep = build_report(t, ReportConfig(control="control", end=date(2026, 1, 14)))
    assert rep["window"]["days"] == 14 and rep["window"]["days_with_data"] == 7
    assert rep["comparisons"][0]["user_level"]["sequential"]["p_value"] < 1e-6
    assert rep["decision"]["action"] == "continue"
    assert "7 day(s) with data in this phase < 14" in " ".join(rep["decision"]["reasons"])


def test_novelty_blocks_a_ship() -> None:
    t = _sim(ctr={"control": 0.10, "treatment": 0.12}, novelty=4.0, sessions=30000, users=3000)
    rep = build_report(t, ReportConfig(control="control"))
    nov = rep["comparisons"][0]["novelty"]
    assert nov["testable"] and nov["flagged"] and nov["slope_per_day"] < 0
    assert rep["decision"]["action"] == "continue" and "novelty" in rep["decision"]["reasons"][-1]


def test_novelty_not_testable_on_one_exposure_day() -> None:
    rep = build_report(_sim(days=1, users=400, sessions=1200), ReportConfig(control="control"))
    nov = rep["comparisons"][0]["novelty"]
    assert nov["testable"] is False and nov["flagged"] is None and "3 needed" in nov["why"]
    assert "not testable" in render_html(rep)


def test_aa_at_horizon_stops_not_significant() -> None:
    rep = build_report(_sim(days=28, seed=3), ReportConfig(control="control"))
    assert rep["decision"]["action"] == "stop" and "not significant" in rep["decision"]["reasons"][-1]


def test_guardrail_harm_stops(winner: dict) -> None:
    rep = json.loads(render_json(winner))
    rep["comparisons"][0]["guardrails"][0] |= {"status": "harmed", "always_valid_ci": [-0.3, -0.1]}
    d = decide(rep, ReportConfig(control="control"))
    assert d["action"] == "stop" and d["reasons"][0].startswith("guardrail harmed: revenue_per_user")


def test_guardrail_margin_decides_harm() -> None:
    """Treatment 20 % worse on CTR: harmed against a 5 % margin, not against a 40 % one."""
    t = _sim(ctr={"control": 0.10, "treatment": 0.08}, users=6000, sessions=40000)
    tight = build_report(t, ReportConfig(control="control", guardrails={"ctr": 0.05}))
    loose = build_report(t, ReportConfig(control="control", guardrails={"ctr": 0.4}))
    assert tight["comparisons"][0]["guardrails"][0]["status"] == "harmed"
    assert tight["decision"]["action"] == "stop" and "guardrail harmed: ctr" in tight["decision"]["reasons"][0]
    assert loose["comparisons"][0]["guardrails"][0]["status"] == "non-inferior"
    with pytest.raises(ReportError, match="unknown guardrail metric"):
        ReportConfig(control="control", guardrails={"bounce": 0.1})


def test_no_pre_period_is_said() -> None:
    rep = build_report(_sim(days=5), ReportConfig(control="control", pre_period_days=14))
    cu = rep["comparisons"][0]["cuped"]
    assert cu["applied"] is False and "no pre-exposure data in the lake for 2025-12-18..2025-12-31" in cu["reason"]
    assert rep["comparisons"][0]["user_level"]["cuped"] is False


def test_phase_is_analysed_alone() -> None:
    """Phase 2 (a new version in treatment) is analysed without phase 1's events; a missing phase is 1."""
    p1 = _sim(days=10, seed=4)
    p2 = _sim(days=16, seed=5, start=date(2026, 1, 11), ctr={"control": 0.10, "treatment": 0.12})
    p2 = p2.set_column(p2.schema.get_field_index("model_version"), "model_version",
                       pa.compute.replace_substring(p2.column("model_version"), "-v1", "-v2"))  # fmt: skip
    p1, p2 = (p.drop_columns([c for c in p.column_names if c == "phase"]) for p in (p1, p2))
    t = pa.concat_tables([p1.append_column("phase", pa.nulls(p1.num_rows, pa.int64())),
                          p2.append_column("phase", pa.array([2] * p2.num_rows, pa.int64()))])  # fmt: skip
    phases = (
        {"id": 1, "started": "2026-01-01", "who": "ci", "why": "launch", "versions": {"treatment": "1"}},
        {
            "id": 2,
            "started": "2026-01-11T09:30:00+00:00",
            "who": "ci",
            "why": "promote v2",
            "versions": {"treatment": "2"},
            "learning": {"control": "frozen", "treatment": "online"},
        },
    )
    rep = build_report(t, ReportConfig(control="control", phase=2, phases=phases, start=date(2026, 1, 11)))
    assert rep["phase"]["started"] == "2026-01-11" and rep["phase"]["learning"]["control"] == "frozen"
    assert rep["phase"]["id"] == 2 and rep["phase"]["why"] == "promote v2" and rep["past_phases"][0]["id"] == 1
    assert rep["arms"]["treatment"]["model_versions"] == ["treatment-v2"]
    assert rep["window"]["days_with_data"] == 16 and rep["data_quality"]["impressions_in_other_phases"] == 0
    one = build_report(t, ReportConfig(control="control", phase=1))
    assert one["arms"]["treatment"]["model_versions"] == ["treatment-v1"] and one["window"]["days_with_data"] == 10
    html = render_html(rep)
    assert "Phase 2" in html and "promote v2" in html and "launch" in html and "control frozen" in html


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
        "impressions_in_other_phases": 0, "users_in_multiple_arms": 0, "arms_with_several_model_versions": 0,
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
    assert reps[0]["window"]["days"] == 4 and reps[0]["comparisons"][0]["cuped"]["applied"]
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
    ok = runner.invoke(app, ["ab", "report", "--events", str(tmp_path / "e.parquet"), "--control", "control",
                             "--guardrail", "ctr=0.1", "--guardrail", "revenue_per_user=0.02"])  # fmt: skip
    assert json.loads(ok.stdout)["config"]["guardrails"] == [
        {"metric": "ctr", "margin": 0.1},
        {"metric": "revenue_per_user", "margin": 0.02},
    ]
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
        (["--control", "control", "--guardrail", "bounce=0.1"], "METRIC=MARGIN"),
        (["--control", "control", "--phase", "0"], "--phase must be >= 1"),
        (["--control", "control", "--phase", "3"], "no impressions with an arm in phase 3"),
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
    assert html.count("<svg") >= 10 and "ship treatment" in html


def test_html_escapes_what_comes_from_the_events() -> None:
    rows = [_ev(f"i{a}{u}", "impression", f"{a}{u}", f"r{a}{u}", "m1", a) for a in ("A", "<i>B</i>") for u in range(5)]
    rows += [_ev("c1", "click", "A0", "rA0", "m1", "A")]
    html = render_html(build_report(pa.Table.from_pylist(rows), ReportConfig(control="A", experiment="<b>x</b>")))
    assert "<i>B</i>" not in html and "&lt;i&gt;B&lt;/i&gt;" in html and "<b>x</b>" not in html


def test_lake_partitions_written_before_phases_existed(tmp_path: Path) -> None:
    """Old partitions have no `phase` column, newer ones do: both are read, the old rows as phase 1."""
    from reco.data.lake import EventLake

    t = _sim(users=300, sessions=2000, days=6)
    t = t.drop_columns([c for c in t.column_names if c == "phase"])
    lake = EventLake(tmp_path / "lake")
    day = pa.compute.cast(t.column("ts"), pa.date32())
    for i in range(6):
        d = date(2026, 1, 1 + i)
        part = t.filter(pa.compute.equal(day, pa.scalar(d, pa.date32())))
        if i >= 3:  # the newer partitions carry the phase (2 from day 4 on)
            part = part.append_column("phase", pa.array([2] * part.num_rows, pa.int32()))
        lake.partition_dir(d).mkdir(parents=True)
        pq.write_table(part, lake.partition_path(d))
    old = build_report(read_events(lake.root), ReportConfig(control="control", phase=1))
    new = build_report(read_events(lake.root), ReportConfig(control="control", phase=2))
    assert old["window"]["days_with_data"] == 3 and new["window"]["days_with_data"] == 3
    assert old["data_quality"]["impressions_in_other_phases"] == sum(a["impressions"] for a in new["arms"].values())


def test_cuped_pre_window_ends_before_the_first_exposure() -> None:
    """A phase recorded after its traffic (promotion dated after the simulated days) must not make the
    experiment's own days its CUPED "pre-exposure" period."""
    import datetime as dt

    import pyarrow as pa

    from reco.experiments.aggregate import aggregate

    rows = []
    for day in range(1, 4):
        ts = dt.datetime(2026, 1, day, 12, tzinfo=dt.UTC)
        for a in ("A", "B"):
            for u in range(10):
                rows.append(dict(event_id=f"{day}{a}{u}", ts=ts, user_id=f"{a}{u}", item_id="i",
                                 event_type="impression", request_id=f"r{day}{a}{u}", arm=a))  # fmt: skip
                if u < 3:
                    rows.append(dict(rows[-1], event_id=f"c{day}{a}{u}", event_type="click"))
    agg = aggregate(pa.Table.from_pylist(rows), experiment_start=dt.date(2026, 1, 10), pre_period_days=14)
    assert agg.pre_window == (dt.date(2025, 12, 18), dt.date(2025, 12, 31))
    assert agg.pre_users == 0 and not agg.moments["s_x"].any() and not agg.moments["s_x2"].any()  # x = 0 for all
