"""A/B report at scale: 10 million synthetic events (seeded) in a date-partitioned lake -> report.

Times `read_events` + `build_report` (reading only the needed columns, aggregation, statistics) and, separately,
JSON + HTML rendering. Prints one JSON line. Usage: `python benchmarks/ab_report_10m.py [--events N]`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from datetime import date
from pathlib import Path

from reco.data.lake import EventLake
from reco.experiments.report import ReportConfig, build_report, read_events, render_html, render_json
from reco.experiments.simulate import SimConfig, simulate_events


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    per_session = 5.0 * (1 + 0.05)  # impressions per session x (1 + clicks per impression)
    sessions = int(args.events / per_session)
    cfg = SimConfig(users=max(sessions // 4, 100), sessions=sessions, days=28, pre_days=0,
                    ctr={"control": 0.050, "treatment": 0.051}, seed=args.seed)  # fmt: skip
    t0 = time.perf_counter()
    events = simulate_events(cfg)
    gen_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="ab-bench-") as tmp:
        t0 = time.perf_counter()
        EventLake(Path(tmp)).write_partitions(events)
        write_s = time.perf_counter() - t0
        n = events.num_rows
        del events
        rc = ReportConfig(control="control", start=date(2026, 1, 1), end=date(2026, 1, 28))
        t0, c0 = time.perf_counter(), time.process_time()
        table = read_events(tmp, rc.start, rc.end, rc.pre_period_days)
        read_s = time.perf_counter() - t0
        report = build_report(table, rc)
        report_s = time.perf_counter() - t0
        report_cpu_s = time.process_time() - c0
        t0 = time.perf_counter()
        render_json(report), render_html(report)
        render_s = time.perf_counter() - t0
    print(json.dumps({
        "benchmark": "ab_report", "events": n, "users": sum(a["users"] for a in report["arms"].values()),
        "days": report["window"]["days"], "read_s": round(read_s, 2), "report_s": round(report_s, 2),
        "s_per_10m_events": round(report_s * 1e7 / n, 2),
        "report_cpu_s": round(report_cpu_s, 2), "load_avg_1m": round(os.getloadavg()[0], 1),
        "render_s": round(render_s, 2),
        "generate_s": round(gen_s, 1), "lake_write_s": round(write_s, 1), "cpus": os.cpu_count(),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "decision": report["decision"]["action"],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
