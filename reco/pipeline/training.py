"""Task functions of the `reco_training` DAG:

ingest -> validate (+ quarantine) -> build training set -> train (warm start) -> evaluate -> gate ->
register -> promote.

Layout under `home` (`RecoSettings.home`): `lake/` raw events (the landing zone, deduplicated by
`event_id`), `validated/` the clean events (same date partitions; the DAG's Asset), `quarantine/`
bad rows with reasons, `reports/validation/<id>/` validation results, `runs/<run key>/` the working
files of one training job (training set, candidate bundle). Day ranges are inclusive (`start`..`end`),
as in `EventLake`.

Idempotency: the lake, validated and quarantine partitions of a day are rewritten whole; the training
job is identified by `fingerprint(validated snapshot, training config, parent version)`, and when a
version with that fingerprint is registered already, `train` short-circuits and every later task
passes it through, so a rerun of an interval creates no model version.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import Any

from reco.data.lake import EventLake

GATE_METRIC = "ndcg@10"
SMOKE_CANDIDATES = 50


def _day(d: str | date) -> date:
    return d if isinstance(d, date) else date.fromisoformat(str(d)[:10])


def _paths(home: str | Path) -> dict[str, Path]:
    h = Path(home)
    return {
        "lake": h / "lake",
        "validated": h / "validated",
        "quarantine": h / "quarantine",
        "reports": h / "reports" / "validation",
        "runs": h / "runs",
        "catalog": h / "catalog.parquet",
    }


def run_key(start: str | date, end: str | date, arm: str) -> str:
    """Folder name of one training job.

    >>> run_key("2026-01-01", "2026-01-02", "treatment")
    '2026-01-01_2026-01-02_treatment'
    """
    return f"{_day(start).isoformat()}_{_day(end).isoformat()}_{arm}"


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
    p = _paths(home)
    lake = EventLake(p["lake"])
    s, e = _day(start), _day(end)
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
    return {"lake": str(p["lake"]), "rows": int(sum(written.values())), "days": len(written)}


def _drain_stream(
    lake: EventLake, start: date, end: date, redis_url: str | None, prefix: str, home: str
) -> dict[date, int]:
    """Drain the whole Redis event stream into the lake (at-least-once; the lake dedups by event_id),
    then report the interval's rows. Events of other days land too: they are simply early."""
    from reco.redis_server import resolve_url
    from reco.sink import drain_stream_to_lake
    from reco.store import RedisStore, connect

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

    p = _paths(home)
    s, e = _day(start), _day(end)
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
    p = _paths(home)
    s, e = _day(start), _day(end)
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


# --------------------------------------------------------------------------- train


def _split(events_path: str) -> tuple[Any, Any]:
    import pandas as pd

    from reco.evaluation import leave_one_out
    from reco.training import interactions

    # Impressions are not interest: neither training targets nor holdout items.
    events = interactions(pd.read_parquet(events_path)).reset_index(drop=True)
    return events, leave_one_out(events)


def train_config(epochs: int, **overrides: Any) -> dict[str, Any]:
    """The training config as a JSON-able dict (it goes into the fingerprint and the lineage tags)."""
    from reco.training import TrainConfig

    return asdict(TrainConfig(epochs=int(epochs), **overrides))


def parent_ref(tracking_uri: str, model_name: str, arm: str) -> str | None:
    """Warm-start source: the arm's current version, else the champion, else None (cold start)."""
    from reco import registry

    client = registry.client_for(tracking_uri)
    registry.ensure_registered_model(client, model_name)
    for alias in (registry.arm_alias(arm), registry.CHAMPION):
        mv = registry.alias_version(client, model_name, alias)
        if mv is not None:
            return str(mv.version)
    return None


def train(
    tracking_uri: str,
    model_name: str,
    arm: str,
    training_set: dict[str, Any],
    epochs: int = 1,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Warm-start train a candidate on the training part of the leave-one-out split.

    Returns `existing_version` (and trains nothing) when this exact job was registered before.
    """
    from reco import registry
    from reco.data.catalog import ItemCatalog
    from reco.training import TrainConfig, WarmStartError
    from reco.training import train as fit

    cfg = train_config(epochs, **(config or {}))
    parent = parent_ref(tracking_uri, model_name, arm)
    fp = registry.fingerprint(training_set["snapshot_id"], cfg, parent)
    client = registry.client_for(tracking_uri)
    existing = registry.find_by_fingerprint(client, model_name, fp) or _rerun_of(
        client, model_name, parent, fp_args=(training_set["snapshot_id"], cfg)
    )
    base = {"fingerprint": fp, "parent_version": parent, "train_config": cfg}
    if existing is not None:
        return {**base, "existing_version": str(existing.version)}
    events, split = _split(training_set["events"])
    catalog = ItemCatalog.from_parquet(training_set["catalog"])
    init = registry.load_bundle(client, model_name, parent)[0] if parent else None
    warm_note = "warm" if init is not None else "cold"
    train_rows = events.iloc[split.train_rows]
    valid_sessions, valid_targets, _ = split.sessions("valid")  # best epoch by validation NDCG@10
    valid = (valid_sessions, valid_targets)
    try:
        result = fit(train_rows, catalog, TrainConfig(**cfg), init=init, progress=False, validation=valid)
    except WarmStartError as e:  # architecture changed: the candidate starts cold, and says so
        warm_note = f"cold (warm start refused: {e})"
        result = fit(train_rows, catalog, TrainConfig(**cfg), init=None, progress=False, validation=valid)
    out = Path(training_set["job_dir"]) / "candidate"
    shutil.rmtree(out, ignore_errors=True)
    result.bundle.save(out)
    return {
        **base,
        "existing_version": None,
        "candidate_dir": str(out),
        "warm_start": warm_note,
        "train_metrics": _json_safe(result.metrics),
    }


def _rerun_of(client: Any, model_name: str, parent: str | None, fp_args: tuple[str, dict[str, Any]]) -> Any:
    """The parent itself when it was trained on this same snapshot + config (a rerun of the interval
    after its version was promoted: the arm now points at it, so the parent differs from the first run's)."""
    from reco import registry

    if parent is None:
        return None
    mv = registry.get_version(client, model_name, parent)
    own_parent = mv.tags.get("parent_version")
    own_parent = None if own_parent in (None, "none") else own_parent
    return mv if mv.tags.get("fingerprint") == registry.fingerprint(*fp_args, own_parent) else None


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


# --------------------------------------------------------------------------- evaluate + gate


def evaluate(
    tracking_uri: str, model_name: str, training_set: dict[str, Any], candidate: dict[str, Any]
) -> dict[str, Any]:
    """Candidate and current champion on the SAME holdout (the test side of the split of this job's
    events), through the served scoring path."""
    if candidate.get("existing_version"):
        return {"skipped": True}
    from reco import registry
    from reco.evaluation import evaluate_split
    from reco.models.bundle import ModelBundle

    _, split = _split(training_set["events"])
    cand = evaluate_split(ModelBundle.load(candidate["candidate_dir"]), split)["model"]["all"]
    client = registry.client_for(tracking_uri)
    champ_mv = registry.alias_version(client, model_name, registry.CHAMPION)
    champ = None
    if champ_mv is not None:
        bundle, _ = registry.load_bundle(client, model_name, str(champ_mv.version))
        champ = evaluate_split(bundle, split)["model"]["all"]
    return {
        "skipped": False,
        "candidate": cand,
        "champion": champ,
        "champion_version": None if champ_mv is None else str(champ_mv.version),
        "holdout_users": len(split.sessions("test")[1]),
    }


def gate(candidate: dict[str, Any], evaluation: dict[str, Any], tolerance: float = 0.01) -> dict[str, Any]:
    """Accept the candidate unless: a metric is NaN, NDCG@10 falls more than `tolerance` (absolute)
    below the champion's, or the saved bundle fails to load and score a smoke batch."""
    if evaluation.get("skipped"):
        return {"skipped": True, "passed": True, "reason": "already registered"}
    reasons = []
    cand = evaluation["candidate"]
    if any(not math.isfinite(v) for v in cand.values()):
        reasons.append("NaN or infinite offline metric")
    champ = evaluation.get("champion")
    if champ is not None and cand[GATE_METRIC] < champ[GATE_METRIC] - tolerance:
        reasons.append(
            f"{GATE_METRIC} {cand[GATE_METRIC]:.4f} < champion v{evaluation['champion_version']} "
            f"{champ[GATE_METRIC]:.4f} - tolerance {tolerance}"
        )
    smoke = _smoke(candidate["candidate_dir"])
    if smoke:
        reasons.append(smoke)
    return {"skipped": False, "passed": not reasons, "reason": "; ".join(reasons) or "passed"}


def _smoke(bundle_dir: str) -> str | None:
    """Load the saved bundle and score one batch (`reco.models.smoke`, the check the API's model manager
    also runs); a problem -> its description."""
    from reco.models.bundle import ModelBundle
    from reco.models.smoke import smoke_check

    try:
        bundle = ModelBundle.load(bundle_dir)
    except Exception as e:  # any failure to load is a gate failure, reported not raised
        return f"smoke test failed: {type(e).__name__}: {e}"
    return smoke_check(bundle, SMOKE_CANDIDATES)


# --------------------------------------------------------------------------- register + promote


def register(
    tracking_uri: str,
    model_name: str,
    training_set: dict[str, Any],
    candidate: dict[str, Any],
    evaluation: dict[str, Any],
    verdict: dict[str, Any],
    validation: dict[str, Any],
    experiment: str = "reco-training",
) -> dict[str, Any]:
    """Register the candidate (a rejected one too, tagged `rejected=<reason>`), with lineage tags and
    the validation results + evaluation logged to the version's MLflow run."""
    from reco import registry
    from reco.models.bundle import ModelBundle

    if candidate.get("existing_version"):
        return {"version": candidate["existing_version"], "rejected": None, "created": False}
    client = registry.client_for(tracking_uri)
    metrics = {k: float(v) for k, v in evaluation["candidate"].items()}
    lineage = registry.Lineage(
        data_snapshot_id=training_set["snapshot_id"],
        data_rows=int(training_set["rows"]),
        validation_id=training_set["validation_id"],
        validation_bad_rows=int(training_set["validation_bad_rows"]),
        parent_version=candidate["parent_version"],
        metrics=metrics,
        train_config=candidate["train_config"],
        code_revision=registry.code_revision(),
        extra={"warm_start": candidate.get("warm_start", "cold")[:250], "gate": verdict["reason"][:500]},
    )
    run = client.create_run(registry.ensure_experiment(client, experiment), tags={"fingerprint": lineage.fingerprint})
    run_id = run.info.run_id
    report = validation.get("report_dir")
    if report and Path(report).is_dir():
        client.log_artifacts(run_id, report, "validation")
    client.log_dict(run_id, evaluation, "evaluation.json")
    client.log_dict(run_id, candidate["train_config"], "train_config.json")
    rejected = None if verdict["passed"] else verdict["reason"]
    mv = registry.log_bundle(
        client,
        model_name,
        ModelBundle.load(candidate["candidate_dir"]),
        lineage,
        run_id=run_id,
        rejected_reason=rejected,
    )
    client.set_terminated(run_id)
    return {"version": str(mv.version), "rejected": rejected, "created": True, "run_id": run_id}


def promote_candidate(
    tracking_uri: str, model_name: str, arm: str, registered: dict[str, Any], who: str = "reco_training"
) -> dict[str, Any]:
    """Point `arm-<arm>` at the new version (and `champion` when there is none). A rejected version
    is never aliased; an alias already at the version is left alone (reruns)."""
    from reco import registry

    client = registry.client_for(tracking_uri)
    version = registry.get_version(client, model_name, registered["version"])
    if version.tags.get("rejected"):
        return {"moved": [], "rejected": version.tags["rejected"]}
    moved = []
    targets = [registry.arm_alias(arm)]
    if registry.alias_version(client, model_name, registry.CHAMPION) is None:
        targets.append(registry.CHAMPION)
    for alias in targets:
        current = registry.alias_version(client, model_name, alias)
        if current is not None and str(current.version) == str(version.version):
            continue
        registry.promote(
            client, model_name, alias, version.version, who=who, reason=f"passed the gate ({registered['version']})"
        )
        moved.append(alias)
    return {"moved": moved, "version": str(version.version), "rejected": None}
