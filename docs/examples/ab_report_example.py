"""The example A/B report in this folder: a seeded simulated experiment in its second phase.

Phase 1 (2026-01-01 .. 01-07) compared control v3 with treatment v5; on 2026-01-08 treatment was promoted
to v7 (phase 2), which lifts CTR by 8 %. The report analyses phase 2 only (21 days with data), with CUPED
on the 14 days of lake before the experiment began. Writes ab-report.html and, with Debian's headless
Chromium, ab-report.png next to this file.

Usage: `.venv/bin/python docs/examples/ab_report_example.py`
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from reco.experiments.report import ReportConfig, build_report, render_html
from reco.experiments.simulate import SimConfig, simulate_events

HERE = Path(__file__).resolve().parent
PHASES = (
    {"id": 1, "started": "2026-01-01", "who": "reco_promote (scheduled)", "why": "experiment launch",
     "versions": {"control": "3", "treatment": "5"}},
    {"id": 2, "started": "2026-01-08", "who": "alice", "why": "promote v7 (warm-started on 2026-01-07) into treatment",
     "versions": {"control": "3", "treatment": "7"}},
)  # fmt: skip


def events() -> pa.Table:
    """One seeded experiment over 28 days (14 days of lake before it); days from 2026-01-08 on are phase 2,
    with treatment serving v7 instead of v5."""
    t = simulate_events(SimConfig(users=12000, sessions=90000, days=28, pre_days=14, purchase_rate=0.1, seed=12,
                                  ctr={"control": 0.10, "treatment": 0.108}))  # fmt: skip
    day = pc.cast(t.column("ts"), pa.date32())
    phase2 = pc.greater_equal(day, pa.scalar(date(2026, 1, 8), pa.date32()))
    armed = pc.is_valid(t.column("arm"))
    phase = pc.if_else(armed, pc.if_else(phase2, 2, 1), pa.scalar(None, pa.int64()))
    treat = pc.equal(t.column("arm"), "treatment")
    version = pc.if_else(treat, pc.if_else(phase2, "7", "5"), "3")
    version = pc.if_else(armed, version, pa.scalar(None, pa.string()))
    t = t.set_column(t.schema.get_field_index("model_version"), "model_version", version)
    return t.set_column(t.schema.get_field_index("phase"), "phase", phase.cast(t.schema.field("phase").type))


def main() -> None:
    cfg = ReportConfig(
        control="control",
        experiment="ranker-v2",
        phase=2,
        phases=PHASES,
        start=date(2026, 1, 8),
        experiment_start=date(2026, 1, 1),
        guardrails={"revenue_per_user": 0.05, "ctr": 0.02},
    )
    html = HERE / "ab-report.html"
    html.write_text(render_html(build_report(events(), cfg)))
    exe = shutil.which("chromium")
    if exe:
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                            "--disable-background-networking", "--disable-component-update", "--disable-sync",
                            f"--user-data-dir={profile}", "--hide-scrollbars", "--window-size=1440,3000",
                            f"--screenshot={HERE / 'ab-report.png'}", html.as_uri()],
                           check=True, capture_output=True, timeout=180)  # fmt: skip
    print(html)


if __name__ == "__main__":
    main()
