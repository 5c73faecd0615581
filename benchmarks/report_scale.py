"""The A/B report at 10M-100M events: a seeded synthetic lake in the project's layout (one zstd Parquet file per
UTC day, `date=YYYY-MM-DD/part-0.parquet`, `EVENT_SCHEMA`) -> `read_events` + `build_report` in a child process
-> one JSON line with its wall time, CPU time and peak RSS.

Usage: `python benchmarks/report_scale.py --events 10_000_000 --lake /tmp/x [--keep] [--engine reference]`
(100M: `--events 100_000_000`, ~2 min to generate). The lake is generated day by day (users persist across days:
arm, device and click propensity per user; sessions drawn by user activity), so 100M events never sit in memory
at once; it is reused when `--lake` already holds partitions (`--replicate-from DIR --copies N`: N copies of a
lake, each with its own users). `--engine reference` runs the former Arrow/pandas pass and per-user pandas
aggregation (tests/ab_reference.py, which reads the whole window into memory) for an A/B against the production
DuckDB session.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

START, DAYS = date(2026, 1, 1), 28
PAGES, DEVICES = ("home", "product", "category"), ("web", "ios", "android")


def generate(lake: Path, events: int, seed: int) -> dict[str, object]:
    """~`events` impressions + clicks over `DAYS` days: 5 impressions per session, 4 sessions per user.

    numpy draws the numbers (the same seeded draws, in the same order, as the lakes measured before), DuckDB
    turns them into the event strings and writes each day's zstd partition in one `COPY` statement (the lake's
    `date=YYYY-MM-DD/part-0.parquet` layout and `EVENT_SCHEMA` column types): 100M events in minutes, where
    building the strings with pyarrow and writing through `EventLake` (dedup, hashing) took ~1.4 min per day."""
    import duckdb

    from reco.data.lake import EventLake

    rng = np.random.default_rng(seed)
    sessions = int(events / (5.0 * 1.05))
    users = max(sessions // 4, 100)
    arm = rng.integers(0, 2, users)  # 50/50
    p_user = rng.beta(20 * 0.05, 20 * 0.95, users) * np.where(arm == 1, 1.02, 1.0)  # treatment: +2 % CTR
    device = rng.choice(3, users, p=[0.5, 0.3, 0.2])
    activity = rng.gamma(0.7, 1.0, users)
    cdf = np.cumsum(activity / activity.sum())
    con = duckdb.connect(config={"threads": 2, "memory_limit": "4GB", "preserve_insertion_order": False})
    lk, t0, n_events, s0 = EventLake(lake), time.perf_counter(), 0, 0
    for d in range(DAYS):
        n_s = sessions // DAYS
        s_user = np.minimum(np.searchsorted(cdf, rng.random(n_s)), users - 1)
        n_imp = rng.poisson(4.0, n_s) + 1
        sess = np.repeat(np.arange(n_s), n_imp)
        user = s_user[sess]
        clicked = np.flatnonzero(rng.random(sess.size) < p_user[user])
        rows = np.concatenate([np.arange(sess.size), clicked])  # impressions, then clicks of some of them
        n, day0 = rows.size, datetime(START.year, START.month, START.day, tzinfo=UTC) + timedelta(days=d)
        secs = (rng.integers(0, 86_390, n_s)[sess])[rows]
        secs[sess.size :] += 5  # a click comes a few seconds after its impression (same UTC day: < 86,395 s)
        u = user[rows]
        pos = np.arange(sess.size) - np.repeat(np.cumsum(n_imp) - n_imp, n_imp)
        item = rng.integers(0, 5000, sess.size)[rows]
        page = rng.choice(3, n_s, p=[0.5, 0.3, 0.2])[sess][rows]
        ev = pa.table({"i": np.arange(n), "us": int(day0.timestamp() * 1e6) + secs * 1_000_000, "u": u,
                       "req": s0 + sess[rows], "item": item, "click": np.arange(n) >= sess.size,
                       "pos": (pos[rows] + 1).astype(np.int32), "arm": arm[u], "page": page,
                       "dev": device[u]})  # fmt: skip
        out = lk.partition_path(START + timedelta(days=d))
        out.parent.mkdir(parents=True, exist_ok=True)
        con.register("ev", ev)
        con.execute(f"""COPY (SELECT CAST({n_events} + i AS VARCHAR) AS event_id, make_timestamptz(us) AS ts,
            'u' || u AS user_id, 'r' || req AS session_id, 'm' || item AS item_id,
            CASE WHEN click THEN 'click' ELSE 'impression' END AS event_type, 'r' || req AS request_id,
            pos AS position, ['control', 'treatment'][arm + 1] AS arm,
            ['control-v1', 'treatment-v1'][arm + 1] AS model_version, CAST(NULL AS DOUBLE) AS propensity,
            CAST(NULL AS BOOLEAN) AS is_exploration, {list(PAGES)}[page + 1] AS page_type,
            {list(DEVICES)}[dev + 1] AS device, CAST(NULL AS DOUBLE) AS value, CAST(1 AS INTEGER) AS phase
            FROM ev ORDER BY i) TO '{out}.tmp' (FORMAT parquet, COMPRESSION zstd)""")
        con.unregister("ev")
        os.replace(f"{out}.tmp", out)
        n_events, s0 = n_events + n, s0 + n_s
    con.close()
    size = sum(f.stat().st_size for f in lake.rglob("*.parquet"))
    return {"events_generated": n_events, "users_generated": users, "generate_s": round(time.perf_counter() - t0, 1),
            "lake_mb": round(size / 2**20)}  # fmt: skip


def replicate(src: Path, lake: Path, copies: int) -> dict[str, object]:
    """`copies` x the lake `src`, day by day, each copy with its own users, requests, sessions and event ids
    (so `copies` x the users, each copy behaving as the seeded original): 100M events from the 10M lake in
    minutes instead of generating them afresh (DuckDB writes the zstd Parquet files)."""
    import duckdb

    from reco.data.lake import EventLake

    t0, con = time.perf_counter(), duckdb.connect(config={"threads": 2, "memory_limit": "4GB"})
    ids = ", ".join(f"k || '-' || {c} AS {c}" for c in ("event_id", "user_id", "request_id", "session_id"))
    for day in EventLake(src).days():
        out = EventLake(lake).partition_path(day)
        if out.exists():  # resumed
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        con.execute(f"""COPY (SELECT t.* REPLACE ({ids}) FROM read_parquet('{EventLake(src).partition_path(day)}') t,
            (SELECT CAST(range AS VARCHAR) AS k FROM range({copies})))
            TO '{out}.tmp' (FORMAT parquet, COMPRESSION zstd)""")
        os.replace(f"{out}.tmp", out)
    size = sum(f.stat().st_size for f in lake.rglob("*.parquet"))
    return {"replicated_from": str(src), "copies": copies, "generate_s": round(time.perf_counter() - t0, 1),
            "lake_mb": round(size / 2**20)}  # fmt: skip


def report(lake: Path, engine: str) -> dict[str, object]:
    from reco.experiments.aggregate import aggregate
    from reco.experiments.report import ReportConfig, read_events, render_html, render_json, report_from_aggregates

    run = aggregate
    if engine == "reference":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from ab_reference import reference_aggregate

        run = reference_aggregate
    rc = ReportConfig(control="control", start=START, end=START + timedelta(days=DAYS - 1))
    t0, c0 = time.perf_counter(), time.process_time()
    source = read_events(lake, rc.start, rc.end, rc.pre_period_days)
    agg = run(source, rc.start, rc.end, phase=rc.phase, experiment_start=rc.experiment_start,
              pre_period_days=rc.pre_period_days)  # fmt: skip
    agg_s = time.perf_counter() - t0
    rep = report_from_aggregates(agg, rc)
    report_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    render_json(rep), render_html(rep)
    from reco.experiments.columnar import MEMORY_LIMIT, THREADS

    return {
        "benchmark": "report_scale", "engine": engine, "events": rep["data_quality"]["events_read"],
        "users": sum(a["users"] for a in rep["arms"].values()), "days": rep["window"]["days"],
        "report_s": round(report_s, 1), "of_which_reduce_aggregate_s": round(agg_s, 1), "report_cpu_s": round(cpu_s, 1),
        "render_s": round(time.perf_counter() - t0, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "duckdb_threads": THREADS, "duckdb_memory_limit": MEMORY_LIMIT, "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 1), "decision": rep["decision"]["action"],
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lake", type=Path, required=True, help="where the lake is generated (or reused)")
    ap.add_argument("--keep", action="store_true", help="keep a lake generated by this run")
    ap.add_argument("--engine", choices=["duckdb", "reference"], default="duckdb")
    ap.add_argument("--replicate-from", type=Path, help="build the lake as --copies copies of this lake")
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--report-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.report_only:
        print(json.dumps(report(args.lake, args.engine)))
        return
    gen: dict[str, object] = {"lake_reused": True}
    if args.replicate_from:  # resumes: days already copied are kept
        gen = replicate(args.replicate_from, args.lake, args.copies)
    elif not any(args.lake.glob("date=*")):
        gen = generate(args.lake, args.events, args.seed)
    try:
        cmd = [sys.executable, __file__, "--report-only", "--lake", str(args.lake), "--engine", args.engine]
        child = subprocess.run(cmd, check=True, capture_output=True, text=True)  # peak RSS: the report's own
        print(json.dumps(json.loads(child.stdout) | gen))
    finally:
        if "generate_s" in gen and not args.keep:
            shutil.rmtree(args.lake, ignore_errors=True)


if __name__ == "__main__":
    main()
