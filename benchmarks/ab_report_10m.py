"""A/B report at scale: 10 million synthetic events (seeded) in a date-partitioned lake -> report.

Times `read_events` + `build_report` (reading only the needed columns, aggregation, statistics) and, separately,
JSON + HTML rendering. The lake is generated in a child process, so the peak RSS printed is the report's own.
Prints one JSON line. Usage: `python benchmarks/ab_report_10m.py [--events N] [--lake DIR]` (`--lake`: reuse
or keep the generated lake there instead of a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path


def generate(lake: Path, events: int, seed: int) -> dict[str, float]:
    from reco.data.lake import EventLake
    from reco.experiments.simulate import SimConfig, simulate_events

    per_session = 5.0 * (1 + 0.05)  # impressions per session x (1 + clicks per impression)
    sessions = int(events / per_session)
    cfg = SimConfig(users=max(sessions // 4, 100), sessions=sessions, days=28, pre_days=0,
                    ctr={"control": 0.050, "treatment": 0.051}, seed=seed)  # fmt: skip
    t0 = time.perf_counter()
    table = simulate_events(cfg)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    EventLake(lake).write_partitions(table)
    return {"generate_s": round(gen_s, 1), "lake_write_s": round(time.perf_counter() - t0, 1)}


def report(lake: Path) -> dict[str, object]:
    from reco.experiments.report import ReportConfig, build_report, read_events, render_html, render_json

    rc = ReportConfig(control="control", start=date(2026, 1, 1), end=date(2026, 1, 28))
    t0, c0 = time.perf_counter(), time.process_time()
    table = read_events(lake, rc.start, rc.end, rc.pre_period_days)
    read_s = time.perf_counter() - t0
    rep = build_report(table, rc)
    report_s, report_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    render_json(rep), render_html(rep)
    n = rep["data_quality"]["events_read"]
    return {
        "benchmark": "ab_report", "events": n, "users": sum(a["users"] for a in rep["arms"].values()),
        "days": rep["window"]["days"], "read_s": round(read_s, 2), "report_s": round(report_s, 2),
        "s_per_10m_events": round(report_s * 1e7 / n, 2), "report_cpu_s": round(report_cpu_s, 2),
        "load_avg_1m": round(os.getloadavg()[0], 1), "render_s": round(time.perf_counter() - t0, 2),
        "cpus": os.cpu_count(), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "decision": rep["decision"]["action"],
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lake", type=Path, default=None, help="reuse (or keep) the lake here")
    ap.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generate_only:
        print(json.dumps(generate(args.lake, args.events, args.seed)))
        return
    with tempfile.TemporaryDirectory(prefix="ab-bench-") as tmp:
        lake = args.lake or Path(tmp)
        gen: dict[str, object] = {"lake_reused": True}
        if not (lake.is_dir() and any(lake.glob("date=*"))):
            cmd = [sys.executable, __file__, "--generate-only", "--lake", str(lake),
                   "--events", str(args.events), "--seed", str(args.seed)]  # fmt: skip
            gen = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        print(json.dumps(report(lake) | gen))


if __name__ == "__main__":
    main()
