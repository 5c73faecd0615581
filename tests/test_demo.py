"""`make demo` in CI: the whole loop at `--scale small` (DEMO_SCALE=small), run like a user runs it (the
`reco demo` command in a fresh RECO_HOME), asserted on the summary it writes; plus the pieces of the local
stack that the demo relies on (pid files, stale pid files, process-group stop, port checks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reco.devstack.local_stack import LocalStack, Service, StackError, free_port, group_alive
from reco.state.processes import pid_alive

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- local stack


def test_stack_stops_whole_process_group_and_cleans_pid_files(tmp_path: Path) -> None:
    # A parent that forks a child: stopping the service must end both.
    script = "import subprocess, time; subprocess.Popen(['sleep', '120']); time.sleep(120)"
    with LocalStack(tmp_path) as stack:
        pid = stack.start(Service("forker", (sys.executable, "-c", script), settle_s=0.5))
        assert stack.pid_file("forker").exists()
        assert [s.name for s in stack.status() if s.running] == ["forker"]
        pgid = os.getpgid(pid)
    assert not pid_alive(pid)
    assert not group_alive(pgid)  # the forked child is gone too (at most a zombie awaiting its reaper)
    assert not stack.pid_file("forker").exists()


def test_stale_pid_file_is_removed_and_service_restarts(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path)
    stack.run_dir.mkdir(parents=True)
    # A pid that exists (ours) but with another start time: a recycled pid, not our service.
    stack.pid_file("svc").write_text(json.dumps({"pid": os.getpid(), "start_time": 1, "argv": ["x"]}))
    assert stack.running_pid("svc") is None
    assert not stack.pid_file("svc").exists()
    stack.pid_file("svc").write_text("not json")
    assert stack.status()[0].running is False
    with stack:
        pid = stack.start(Service("svc", ("sleep", "60"), settle_s=0.2))
        assert stack.running_pid("svc") == pid
        # Starting the same service again reuses the running process (re-running is safe).
        assert LocalStack(tmp_path).start(Service("svc", ("sleep", "60"), settle_s=0.2)) == pid
    assert stack.running_pid("svc") is None


def test_port_taken_by_a_foreign_process_is_refused(tmp_path: Path) -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        with LocalStack(tmp_path) as stack, pytest.raises(StackError, match=f"port 127.0.0.1:{port} is already in use"):
            stack.start(Service("web", ("sleep", "60"), port=port))
        assert stack.known_services() == []


def test_failing_service_and_task_report_their_log(tmp_path: Path) -> None:
    with LocalStack(tmp_path) as stack:
        with pytest.raises(StackError, match=r"exited during start-up(.|\n)*boom"):
            stack.start(Service("bad", ("sh", "-c", "echo boom; exit 3"), port=free_port()))
        with pytest.raises(StackError, match=r"failed \(exit 4\)(.|\n)*oops"):
            stack.run_task("task", ["sh", "-c", "echo oops; exit 4"])
        with pytest.raises(StackError, match="ran longer than 1 s"):
            stack.run_task("hang", ["sleep", "30"], timeout_s=1)
        lines: list[str] = []
        stack.run_task("ok", ["sh", "-c", "echo one; echo two"], on_line=lines.append)
        assert lines == ["one", "two"]
    assert "oops" in stack.log_file("task").read_text()


# --------------------------------------------------------------------------- the demo, end to end


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_small_demo_end_to_end(tmp_path: Path, movielens_dir: Path) -> None:
    home = tmp_path / "reco-home"
    out = tmp_path / "summary.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECO_", "AIRFLOW"))}
    env.update({"RECO_HOME": str(home), "RECO_DATA_DIR": str(movielens_dir), "DEMO_SCALE": "small"})
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "reco"), "demo", "--json", str(out)],
        cwd=tmp_path,  # no .env from the checkout
        env=env,
        capture_output=True,
        text=True,
        timeout=1400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(out.read_text())

    assert summary["scale"] == "small"
    arms = {a["arm"]: a for a in summary["arms"]}
    assert set(arms) == {"control", "treatment"}
    # Two registered versions: the cold start behind control (and champion), the warm start behind treatment.
    assert arms["control"]["version"] and arms["treatment"]["version"]
    assert arms["control"]["version"] != arms["treatment"]["version"]
    assert summary["champion"] == arms["control"]["version"]
    for a in arms.values():
        assert a["impressions"] > 0 and a["users"] > 0
        assert 0.0 <= a["ctr"] <= 1.0
        assert a["clicks"] == pytest.approx(a["ctr"] * a["impressions"], abs=0.5)
        # Online learning happened: the API served an online snapshot that holds accepted updates, and its
        # holdout log-loss is not worse than the base model's on the same rows (beyond the learner's margin).
        assert a["online_snapshot"] is not None and a["online_snapshot"] >= 1, a
        assert a["online_updates"] >= 1, a
        assert a["holdout_logloss"] <= a["base_logloss"] + 0.01, a
    assert "Online learning" in proc.stdout
    comp = summary["comparison"]
    assert comp["arm"] == "treatment" and comp["control"] == "control"
    assert comp["p_value"] is None or 0.0 <= comp["p_value"] <= 1.0
    assert summary["decision"]
    assert Path(summary["report_html"]).is_file() and Path(summary["report_json"]).is_file()
    assert "CTR" in proc.stdout and "decision" in proc.stdout
    # Everything the demo started is stopped, and no pid file is left behind.
    assert all(not s.running for s in LocalStack(home).status())
    assert not list((home / "run").glob("*.pid"))


def test_summary_reads_the_report_schema_and_prints(tmp_path: Path) -> None:
    """The demo's summary from a real A/B report JSON (the engine on seeded synthetic logs)."""
    import datetime as dt
    import random

    import pyarrow as pa
    from rich.console import Console

    from reco.cli.demo import print_summary
    from reco.devstack.demo import _summarise, scale_named
    from reco.experiments.report import ReportConfig, build_report, render_json

    rng = random.Random(0)
    rows = []
    for u in range(400):
        arm = "control" if u % 2 else "treatment"
        for k in range(5):
            rid = f"r{u}-{k}"
            ts = dt.datetime(2026, 1, 1 + k % 3, 12, tzinfo=dt.UTC)
            base = dict(ts=ts, user_id=f"u{u}", item_id=str(k), request_id=rid, arm=arm)
            rows.append(dict(base, event_id=f"i{u}-{k}", event_type="impression"))
            if rng.random() < (0.12 if arm == "treatment" else 0.10):
                rows.append(dict(base, event_id=f"c{u}-{k}", event_type="click"))
    report = build_report(pa.Table.from_pylist(rows), ReportConfig(control="control", experiment="exp"))
    path = tmp_path / "exp" / "2026-01-03.json"
    path.parent.mkdir()
    path.write_text(render_json(report))

    summary = _summarise(scale_named("small"), {"control": "1", "treatment": "2", "champion": "1"}, path)
    arms = {a.arm: a for a in summary.arms}
    assert arms["control"].version == "1" and arms["treatment"].version == "2"
    assert arms["control"].impressions == 1000 and arms["treatment"].impressions == 1000
    assert 0 < arms["control"].ctr < 1 and arms["treatment"].clicks > 0
    assert summary.comparison["arm"] == "treatment" and 0 <= summary.comparison["p_value"] <= 1
    assert len(summary.comparison["relative_ci"]) == 2
    assert summary.decision.startswith(("continue", "ship", "stop"))
    assert summary.report_json == str(path)

    console = Console(record=True, width=200)
    print_summary(console, summary)
    text = console.export_text()
    assert "arm-treatment" in text and "CTR" in text and "p-value" in text and "decision:" in text
    assert "Online learning" in text and "holdout log-loss" in text
    # The story and the verdict in plain words: what is compared, and why the report decided what it did.
    assert "What is compared" in text and "warm-started from the champion" in text and "learned online" in text
    assert "Why this verdict" in text and "Traffic split" in text and "95% CI" in text and "Days:" in text
