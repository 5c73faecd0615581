"""Data tasks of the `reco_training` DAG: ingest (files, the Redis stream or the lake) -> validate
(+ quarantine) -> build the training set. Layout and idempotency: `reco.pipeline.training_tasks`."""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path
from typing import Any

from reco.data.lake import EventLake
from reco.pipeline.home import day, home_paths, run_key

# --------------------------------------------------------------------------- ingest


def ingest(
    home: str,
    start: str,
    end: str,
    source: str = "files",
    data_dir: str | None = None,
    redis_url: str | None = None,
    redis_prefix: str = "reco",
) -> dict[str, Any]:
    """Land the interval's events in the lake: from the MovieLens files (`source="files"`, which also
    refreshes the item catalogue file), by draining the Redis event stream (`source="stream"`), or
    not at all (`source="lake"`: the events are in the lake already)."""
    p = home_paths(home)
    lake = EventLake(p["lake"])
    s, e = day(start), day(end)
    if source == "files":
        from reco.data.movielens import ingest_movielens, load_movielens

        if not data_dir:
            raise ValueError("source 'files' needs data_dir (the MovieLens-100k folder)")
        written = ingest_movielens(data_dir, lake, s, e)
        p["catalog"].parent.mkdir(parents=True, exist_ok=True)
        load_movielens(data_dir).catalog.to_parquet(p["catalog"])
    elif source == "stream":
        written = _drain_stream(lake, s, e, redis_url, redis_prefix, home)
    elif source == "lake":  # landed already (backfill, another producer): validate what is there
        written = {d: lake.count_rows(d, d) for d in lake.days() if s <= d <= e}
    else:
        raise ValueError(f"unknown source {source!r}: use 'files', 'stream' or 'lake'")
    if source != "files" and not p["catalog"].is_file():
        _bootstrap_catalog(p["catalog"], data_dir)
    items = _land_items(p, source, redis_url, redis_prefix, home)
    return {"lake": str(p["lake"]), "rows": int(sum(written.values())), "days": len(written), "items": items}


def _bootstrap_catalog(path: Path, data_dir: str | None) -> None:
    """The first live run of a stack finds no catalogue file (`reco bootstrap` trains from the MovieLens files
    without landing them): write the bootstrap data's catalogue, the one the first model was trained with."""
    from reco.data.movielens import load_movielens

    if not data_dir or not Path(data_dir).is_dir():
        raise ValueError(f"no item catalogue at {path} and no MovieLens folder to take it from (set RECO_DATA_DIR)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    load_movielens(data_dir).catalog.to_parquet(tmp)
    tmp.replace(path)


def _land_items(p: dict[str, Path], source: str, redis_url: str | None, prefix: str, home: str) -> int:
    """The catalogue API's items: Redis -> the lake's items table (with the stream), then the table's latest
    records -> the catalogue file that validation and training read, so that upserted items are known
    to GX and join the next model's vocabulary. Returns the items merged."""
    from reco.data.items import ItemsTable, merge_into_catalog

    table = ItemsTable(p["lake"] / "items")
    if source == "stream":
        from reco.state.embedded_redis import resolve_url
        from reco.state.items import ItemStore, export_items
        from reco.state.store import connect

        url, _server = resolve_url(redis_url, home)
        client = connect(url, socket_timeout=30.0)
        try:
            export_items(ItemStore(client, prefix), table)
        finally:
            client.close()
    return merge_into_catalog(p["catalog"], table)


def _drain_stream(
    lake: EventLake, start: date, end: date, redis_url: str | None, prefix: str, home: str
) -> dict[date, int]:
    """Drain the whole Redis event stream into the lake (at-least-once; the lake dedups by event_id),
    then report the interval's rows. Events of other days land too: they are simply early."""
    from reco.state.embedded_redis import resolve_url
    from reco.state.sink import drain_stream_to_lake
    from reco.state.store import RedisStore, connect

    url, _server = resolve_url(redis_url, home)
    client = connect(url, socket_timeout=30.0)
    try:
        drain_stream_to_lake(RedisStore(client, prefix), lake)
    finally:
        client.close()
    return {d: lake.count_rows(d, d) for d in lake.days() if start <= d <= end}


# --------------------------------------------------------------------------- validate


def validate(home: str, start: str, end: str, threshold: float = 0.05, now: str | None = None) -> dict[str, Any]:
    """Validate the lake's interval with GX; clean rows -> `validated/`, bad rows -> `quarantine/`.

    Raises `ValidationFailed` (after writing the quarantine and the reports, for inspection) when the
    bad fraction exceeds `threshold`; the validated partitions are then left untouched.
    """
    from reco.data.catalog import ItemCatalog
    from reco.data.validation import enforce_threshold, interval_days, render_html, validate_events, write_quarantine

    p = home_paths(home)
    s, e = day(start), day(end)
    from reco.data.events import EVENT_COLUMNS

    frame = EventLake(p["lake"]).read_pandas(s, e, columns=[*EVENT_COLUMNS, "date"])
    partition_day = frame.pop("date").to_numpy()  # a bad row is quarantined under the day it was read from
    known = ItemCatalog.from_parquet(p["catalog"]).item_ids if p["catalog"].is_file() else None
    days = interval_days(s.isoformat(), date.fromordinal(e.toordinal() + 1).isoformat())
    end_excl = date.fromordinal(e.toordinal() + 1)
    docs_tmp = p["reports"] / f".docs-{run_key(s, e, 'v')}"
    shutil.rmtree(docs_tmp, ignore_errors=True)
    vb = validate_events(
        frame, s, end_excl, known, now=None if now is None else _ts(now), threshold=threshold, docs_dir=docs_tmp
    )
    out = p["reports"] / vb.result.validation_id
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    docs_tmp.rename(out)  # the id is known only after the run
    quarantined = write_quarantine(
        vb.quarantine, p["quarantine"], days, s, [partition_day[i] for i in vb.quarantine["row_id"]]
    )
    (out / "result.json").write_text(json.dumps(vb.result.to_dict(), indent=1))
    (out / "gx_result.json").write_text(json.dumps(vb.gx_result, indent=1))
    (out / "summary.html").write_text(render_html(vb.result, vb.quarantine))
    enforce_threshold(vb.result)
    validated = EventLake(p["validated"])
    for d in days:  # rewrite every day of the interval (a day now empty loses its old partition)
        rows = vb.clean[vb.clean["ts"].dt.date == d]
        validated.write_partition(d, rows)
    return {
        "validated": str(p["validated"]),
        "validation_id": vb.result.validation_id,
        "total_rows": vb.result.total_rows,
        "bad_rows": vb.result.bad_rows,
        "reasons": vb.result.reasons,
        "report_dir": str(out),
        "quarantine": [str(q) for q in quarantined],
    }


def _ts(value: str) -> Any:
    import pandas as pd

    t = pd.Timestamp(value)
    return t.tz_localize("UTC") if t.tzinfo is None else t


# --------------------------------------------------------------------------- training set


def build_training_set(home: str, start: str, end: str, arm: str, validation: dict[str, Any]) -> dict[str, Any]:
    """Freeze the validated interval into the job folder (`events.parquet`) with its snapshot id."""
    p = home_paths(home)
    s, e = day(start), day(end)
    lake = EventLake(p["validated"])
    frame = lake.read_pandas(s, e)
    if frame.empty:
        raise ValueError(f"no validated events in {s}..{e}: nothing to train on")
    job = p["runs"] / run_key(s, e, arm)
    job.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(job / "events.parquet", index=False)
    return {
        "job_dir": str(job),
        "events": str(job / "events.parquet"),
        "catalog": str(p["catalog"]),
        "snapshot_id": lake.snapshot_id(s, e),
        "rows": len(frame),
        "validation_id": validation["validation_id"],
        "validation_bad_rows": int(validation["bad_rows"]),
    }
