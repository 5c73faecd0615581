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
from pathlib import Path
from typing import Any

from reco.offline.gate import DEFAULT_MARGIN, OFFPOLICY_MIN_REQUESTS, decide, offpolicy_metrics, offpolicy_summary
from reco.offline.gate import summary as gate_summary
from reco.pipeline.data_tasks import build_training_set, ingest, validate
from reco.pipeline.home import run_key

# Re-exported: every task function of the DAG is reachable here (the data tasks live in `data_tasks`).
__all__ = [
    "build_training_set",
    "evaluate",
    "gate",
    "ingest",
    "offpolicy_estimate",
    "promote_candidate",
    "register",
    "run_key",
    "train",
    "validate",
]

GATE_METRIC = "ndcg@10"  # gated; recall@10 is reported beside it
SMOKE_CANDIDATES = 50


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
    # The interval's validated lake partitions, frozen for this job: the run's MLflow dataset input.
    import pandas as pd

    frame = pd.read_parquet(training_set["events"])
    data = registry.TrainingData(frame, source=training_set["events"], name=f"lake {training_set['snapshot_id']}")
    mv = registry.log_bundle(
        client,
        model_name,
        ModelBundle.load(candidate["candidate_dir"]),
        lineage,
        run_id=run_id,
        rejected_reason=rejected,
        data=data,
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
