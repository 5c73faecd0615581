"""Task functions of the `reco_training` DAG:

ingest -> validate (+ quarantine) -> build training set -> train (warm start) -> evaluate -> gate ->
register -> promote.

Layout under `home` (`RecoSettings.home`): `lake/` raw events (the landing zone, deduplicated by
`event_id`), `validated/` the clean events (same date partitions; the DAG's Asset), `quarantine/`
bad rows with reasons, `reports/validation/<id>/` validation results, `runs/<run key>/` the working
files of one training job (training set, candidate bundle). Day ranges are inclusive (`start`..`end`),
as in `EventLake`.

Idempotency: the lake, validated and quarantine partitions of a day are rewritten whole; the training
job is identified by `fingerprint(validated snapshot, training config, parent version, online snapshot
run)`, and when a version with that fingerprint is registered already, `train` short-circuits and every
later task passes it through, so a rerun of an interval creates no model version.

Warm start: from the arm's current version, with the weights of the newest good online snapshot the
learner checkpointed on that version when there is one (`reco.online.handoff`); the snapshot's run id is
in the fingerprint (a newer snapshot -> a new version) and in the lineage tag `parent_online_run`.
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
from reco.offline.gate import DEFAULT_MARGIN, OFFPOLICY_MIN_REQUESTS, decide, offpolicy_metrics, offpolicy_summary
from reco.offline.gate import summary as gate_summary

GATE_METRIC = "ndcg@10"  # gated; recall@10 is reported beside it
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

    from reco.offline.evaluation import leave_one_out
    from reco.offline.trainer import interactions

    # Impressions are not interest: neither training targets nor holdout items.
    events = interactions(pd.read_parquet(events_path)).reset_index(drop=True)
    return events, leave_one_out(events)


def train_config(epochs: int, **overrides: Any) -> dict[str, Any]:
    """The training config as a JSON-able dict (it goes into the fingerprint and the lineage tags)."""
    from reco.offline.trainer import TrainConfig

    return asdict(TrainConfig(epochs=int(epochs), **overrides))


def parent_ref(tracking_uri: str, model_name: str, arm: str) -> str | None:
    """Warm-start parent version: the arm's current version, else the champion, else None (cold start)."""
    from reco.artifacts import registry

    client = registry.client_for(tracking_uri)
    registry.ensure_registered_model(client, model_name)
    for alias in (registry.arm_alias(arm), registry.CHAMPION):
        mv = registry.alias_version(client, model_name, alias)
        if mv is not None:
            return str(mv.version)
    return None


def online_parent(tracking_uri: str, model_name: str, arm: str, parent: str | None) -> str | None:
    """MLflow run id of the newest good online snapshot of `arm` learned on `parent` (the hand-off from
    `reco learn`), or None. A snapshot on another base version is never used: its weights belong to a
    different registry version (possibly another architecture or vocabulary)."""
    if parent is None:
        return None
    from reco.artifacts import registry
    from reco.online.handoff import latest_online_run

    found = latest_online_run(registry.client_for(tracking_uri), model_name, arm, base_version=parent)
    return None if found is None else found[0]


def _warm_init(client: Any, model_name: str, parent: str | None, online_run: str | None) -> tuple[Any, str]:
    """The bundle to warm-start from and a note saying what it is: the parent version with the online
    snapshot's weights when there is one (loaded with `weights_only=True`), else the parent as registered."""
    from reco.artifacts import registry

    if parent is None:
        return None, "cold"
    init = registry.load_bundle(client, model_name, parent)[0]
    if online_run is None:
        return init, "warm"
    from reco.online.handoff import download_online_weights
    from reco.state.snapshots import decode_weights

    try:
        state = decode_weights(download_online_weights(client, online_run))
        init.model.load_state_dict(state)
    except (RuntimeError, OSError, KeyError) as e:  # a snapshot that does not fit: the registered weights
        init = registry.load_bundle(client, model_name, parent)[0]
        return init, f"warm (online snapshot {online_run} not loadable: {type(e).__name__})"
    return init, f"warm (online snapshot {online_run})"


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
    from reco.artifacts import registry
    from reco.data.catalog import ItemCatalog
    from reco.offline.trainer import TrainConfig, WarmStartError
    from reco.offline.trainer import train as fit

    cfg = train_config(epochs, **(config or {}))
    parent = parent_ref(tracking_uri, model_name, arm)
    online_run = online_parent(tracking_uri, model_name, arm, parent)
    fp = registry.fingerprint(training_set["snapshot_id"], cfg, parent, online_run)
    client = registry.client_for(tracking_uri)
    existing = registry.find_by_fingerprint(client, model_name, fp) or _rerun_of(
        client, model_name, parent, fp_args=(training_set["snapshot_id"], cfg)
    )
    base = {"fingerprint": fp, "parent_version": parent, "parent_online_run": online_run, "train_config": cfg}
    if existing is not None:
        return {**base, "existing_version": str(existing.version)}
    events, split = _split(training_set["events"])
    catalog = ItemCatalog.from_parquet(training_set["catalog"])
    init, warm_note = _warm_init(client, model_name, parent, online_run)
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
    from reco.artifacts import registry

    if parent is None:
        return None
    mv = registry.get_version(client, model_name, parent)
    own_parent = mv.tags.get("parent_version")
    own_parent = None if own_parent in (None, "none") else own_parent
    own_fp = registry.fingerprint(*fp_args, own_parent, mv.tags.get("parent_online_run"))
    return mv if mv.tags.get("fingerprint") == own_fp else None


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


# --------------------------------------------------------------------------- evaluate + gate


#: Temperature of the candidate's Plackett-Luce policy over a logged slate (its scores are logits).
OFFPOLICY_TAU = 1.0
#: Event columns the off-policy estimate reads.
_OFFPOLICY_COLUMNS = ("event_id", "ts", "session_id", "item_id", "event_type", "request_id", "position",
                      "propensity", "page_type", "device")  # fmt: skip


def evaluate(
    tracking_uri: str,
    model_name: str,
    training_set: dict[str, Any],
    candidate: dict[str, Any],
    offpolicy_tau: float = OFFPOLICY_TAU,
) -> dict[str, Any]:
    """Candidate and champion on the SAME holdout users (the test side of this job's split), with the paired
    bootstrap of per-user NDCG@10 and Recall@10 (`comparison`, `reco.offline.gate`); plus the off-policy CTR
    estimate on the job's logged traffic (`offpolicy_estimate`), whose headline figures join the candidate's
    metrics (its MLflow run metrics and `metric.offpolicy_*` version tags)."""
    if candidate.get("existing_version"):
        return {"skipped": True}
    from reco.artifacts import registry
    from reco.artifacts.bundle import ModelBundle
    from reco.offline.evaluation import evaluate_bundle
    from reco.offline.gate import compare_ranks

    _, split = _split(training_set["events"])
    sessions, targets, _ = split.sessions("test")
    cand_bundle = ModelBundle.load(candidate["candidate_dir"])
    cand_ranks: dict[str, Any] = {}
    cand = evaluate_bundle(cand_bundle, sessions, targets, per_user=cand_ranks)["all"]
    client = registry.client_for(tracking_uri)
    champ_mv = registry.alias_version(client, model_name, registry.CHAMPION)
    champ = comparison = champ_bundle = None
    if champ_mv is not None:
        champ_bundle, _ = registry.load_bundle(client, model_name, str(champ_mv.version))
        champ_ranks: dict[str, Any] = {}
        champ = evaluate_bundle(champ_bundle, sessions, targets, per_user=champ_ranks)["all"]
        comparison = compare_ranks(cand_ranks["all"], champ_ranks["all"])
    offpolicy = offpolicy_estimate(training_set["events"], cand_bundle, tau=offpolicy_tau, champion=champ_bundle)
    return {
        "skipped": False,
        "candidate": {**cand, **offpolicy_metrics(offpolicy)},
        "champion": champ,
        "champion_version": None if champ_mv is None else str(champ_mv.version),
        "comparison": comparison,
        "holdout_users": len(targets),
        "offpolicy": offpolicy,
    }


def offpolicy_estimate(
    events_path: str, bundle: Any, tau: float = OFFPOLICY_TAU, alpha: float = 0.05, max_weight: float | None = None,
    champion: Any = None,
) -> dict[str, Any]:  # fmt: skip
    """The candidate's CTR under its own policy, estimated from the traffic logged in the job's events
    (impressions with request_id, position and propensity, clicks joined by (request_id, item_id)).

    The candidate's policy: for each logged request, a Plackett-Luce ranking of the served slate by the
    candidate's scores with temperature `tau` (0 = its greedy ranking), the scores computed from the
    request's session as rebuilt from the log (the same session's earlier views and clicks) through the
    served scoring path (`bundle.score_batch`). IPS, SNIPS and DR estimates with CIs, next to the logged
    policy's CTR: `reco.experiments.offpolicy.slate_policy_value`. With a `champion`, `vs_champion`: the paired
    bootstrap over requests of the SNIPS CTR change vs the champion's policy of the same kind (like with like).
    Without logged traffic (e.g. the MovieLens files): {"status": "none", "reason": ...}.
    """
    import pyarrow.parquet as pq

    from reco.experiments.offpolicy import logged_slates, request_sums, score_slates, slate_policy_value
    from reco.offline.gate import paired_bootstrap

    names = set(pq.read_schema(events_path).names)
    missing = sorted({"request_id", "position", "propensity", "session_id"} - names)
    if missing:
        return {"status": "none", "reason": f"the events have no {', '.join(missing)} column(s)"}
    table = pq.read_table(events_path, columns=[c for c in _OFFPOLICY_COLUMNS if c in names])
    logged = logged_slates(table)
    if logged is None:
        return {"status": "none", "reason": "no impressions logged with propensities in the job's interval"}
    scores = score_slates(bundle.score_batch, logged)
    try:
        out = {"status": "estimated", **slate_policy_value(logged, scores, tau, alpha, max_weight)}
        if champion is not None:
            cn, cd = request_sums(logged, scores, tau, max_weight)
            hn, hd = request_sums(logged, score_slates(champion.score_batch, logged), tau, max_weight)
            out["vs_champion"] = paired_bootstrap("offpolicy snips ctr", cn, hn, cd, hd, alpha=alpha).as_dict()
        return out
    except ValueError as e:  # e.g. a propensity outside (0, 1]: report, never fail the training job on it
        return {"status": "none", "reason": f"not estimable: {e}"}


def gate(
    candidate: dict[str, Any],
    evaluation: dict[str, Any],
    margin: float = DEFAULT_MARGIN,
    offpolicy_gate: bool = True,
    offpolicy_min_requests: int = OFFPOLICY_MIN_REQUESTS,
) -> dict[str, Any]:
    """Accept the candidate unless: a metric is NaN; against the champion, the upper bound of the 95 %
    paired-bootstrap interval of the relative NDCG@10 change is below -`margin` (`reco.offline.gate.decide`;
    Recall@10 is reported beside it); with `offpolicy_gate` and at least `offpolicy_min_requests` logged
    requests, the same holds for the off-policy SNIPS CTR change vs the champion's policy; or the saved
    bundle fails to load and score a smoke batch. Without a champion only NaN and the smoke test decide."""
    if evaluation.get("skipped"):
        return {"skipped": True, "passed": True, "reason": "already registered"}
    reasons = []
    cand = evaluation["candidate"]
    if any(not math.isfinite(v) for v in cand.values()):
        reasons.append("NaN or infinite offline metric")
    comparison = evaluation.get("comparison") or {}
    if comparison.get(GATE_METRIC) and (why := decide(comparison[GATE_METRIC], margin)):
        reasons.append(f"champion v{evaluation['champion_version']}: {why}")
    op = evaluation.get("offpolicy") or {}
    vs = op.get("vs_champion") if op.get("status") == "estimated" else None
    gates = bool(vs) and offpolicy_gate and op["logged"]["requests"] >= offpolicy_min_requests
    if gates and (why := decide(vs, margin)):
        reasons.append(f"off-policy: {why}")
    smoke = _smoke(candidate["candidate_dir"])
    if smoke:
        reasons.append(smoke)
    return {"skipped": False, "passed": not reasons, "reason": "; ".join(reasons) or "passed",
            "margin": margin, "comparison": {m: gate_summary(c) for m, c in comparison.items()},
            "offpolicy": offpolicy_summary(op or None), "offpolicy_gated": gates}  # fmt: skip


def _smoke(bundle_dir: str) -> str | None:
    """Load the saved bundle and score one batch (`reco.artifacts.smoke`, the check the API's model manager
    also runs); a problem -> its description."""
    from reco.artifacts.bundle import ModelBundle
    from reco.artifacts.smoke import smoke_check

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
    from reco.artifacts import registry
    from reco.artifacts.bundle import ModelBundle

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
        parent_online_run=candidate.get("parent_online_run"),
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
    tracking_uri: str,
    model_name: str,
    arm: str,
    registered: dict[str, Any],
    who: str = "reco_training",
    experiments_path: str | None = None,
    why: str | None = None,
    now: str | None = None,
) -> dict[str, Any]:
    """Point `arm-<arm>` at the new version (and `champion` when there is none). A rejected version
    is never aliased; an alias already at the version is left alone (reruns). Moving an arm's alias starts
    a new phase of every experiment that arm is in (`reco.experiments.phases`), recorded before the move;
    `now` (ISO time) is when the phase starts in event time (the DAG: the end of the run's data interval)."""
    from datetime import datetime

    from reco.artifacts import registry
    from reco.experiments.phases import promote_in_experiment

    client = registry.client_for(tracking_uri)
    version = registry.get_version(client, model_name, registered["version"])
    if version.tags.get("rejected"):
        return {"moved": [], "rejected": version.tags["rejected"]}
    moved: list[str] = []
    phases: list[dict[str, Any]] = []
    targets = [registry.arm_alias(arm)]
    if registry.alias_version(client, model_name, registry.CHAMPION) is None:
        targets.append(registry.CHAMPION)
    for alias in targets:
        current = registry.alias_version(client, model_name, alias)
        if current is not None and str(current.version) == str(version.version):
            continue
        reason = why or f"passed the gate ({registered['version']})"

        def move(alias: str = alias, reason: str = reason) -> Any:
            return registry.promote(client, model_name, alias, version.version, who=who, reason=reason)

        recorded = promote_in_experiment(client, model_name, alias, str(version.version), who=who, why=reason,
                                         move=move, experiments_path=experiments_path,
                                         now=datetime.fromisoformat(now) if now else None)  # fmt: skip
        phases += [p.to_dict() for p in recorded]
        moved.append(alias)
    return {"moved": moved, "version": str(version.version), "rejected": None, "phases": phases}
