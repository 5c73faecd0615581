"""reco_training: ingest -> validate/quarantine -> training set -> warm-start train -> evaluate ->
gate -> register -> promote to `arm-<target>` (and `champion` when there is none).

Thin wiring: every task calls one `reco.pipeline.data_tasks` or `training_tasks` function (imported inside the task, so
parsing this file imports neither torch, mlflow nor great_expectations). XCom carries small dicts of
paths and ids.

Daily data intervals: the run of logical date D trains on the lake's validated events of the UTC day D
(plus `lookback_days` before it), landed by `reco sink`, warm-started from the arm's current version and
its newest online snapshot; it starts once day D is over. A promotion into an experiment arm starts a new
experiment phase. `source=files` is the MovieLens-100k bootstrap path (as `reco bootstrap`). Backfill a
range with `airflow backfill create --dag-id reco_training --from-date ... --to-date ...` or
`POST /api/v2/backfills`; every task is idempotent per logical date.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Asset, CronDataIntervalTimetable, Param, dag, get_current_context, task

VALIDATED_EVENTS = Asset(name="reco_validated_events", uri="file:///reco/validated")

DEFAULT_ARGS = {
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
    "execution_timeout": timedelta(minutes=30),
}

PARAMS = {
    "start": Param(None, type=["null", "string"], format="date", description="first day (UTC); empty = run's day"),
    "end": Param(None, type=["null", "string"], format="date", description="last day, inclusive; empty = start"),
    "source": Param(
        "lake",
        type="string",
        enum=["lake", "stream", "files"],
        description="lake: events the sink landed (the live loop); stream: drain the Redis stream first; "
        "files: MovieLens-100k (bootstrap)",
    ),
    "lookback_days": Param(0, type="integer", minimum=0, maximum=365, description="days before the interval"),
    "arm": Param("treatment", type="string", pattern="^[a-z0-9_-]{1,40}$", description="target experiment arm"),
    "epochs": Param(5, type="integer", minimum=1, maximum=200),
    "gate_margin": Param(0.05, type="number", minimum=0, maximum=1, description="reject: CI of rel. NDCG@10 < -margin"),
    "offpolicy_gate": Param(True, type="boolean", description="off-policy SNIPS CTR vs champion gates too"),
    "offpolicy_min_requests": Param(1000, type="integer", minimum=1, description="logged requests needed to gate"),
    "bad_row_threshold": Param(0.05, type="number", minimum=0, maximum=1, description="max quarantined fraction"),
    "data_dir": Param(None, type=["null", "string"], description="MovieLens folder; empty = RECO_DATA_DIR"),
    "home": Param(None, type=["null", "string"], description="reco state folder; empty = RECO_HOME"),
    "tracking_uri": Param(None, type=["null", "string"], description="MLflow URI; empty = RECO_MLFLOW_TRACKING_URI"),
}


def _job() -> dict[str, Any]:
    """The run's resolved settings (params over RECO_* environment), computed at run time, never at parse."""
    from reco.pipeline.window import run_days
    from reco.settings import RecoSettings

    ctx = get_current_context()
    p = ctx["params"]
    settings = RecoSettings()
    first, last = run_days(ctx.get("data_interval_start"), ctx.get("data_interval_end"), ctx.get("logical_date"),
                           run_after=ctx["dag_run"].run_after, start=p.get("start"), end=p.get("end"),
                           lookback_days=int(p.get("lookback_days") or 0))  # fmt: skip
    return {
        "home": str(p.get("home") or settings.home),
        "tracking_uri": p.get("tracking_uri") or settings.tracking_uri,
        "model_name": settings.registered_model,
        "data_dir": str(p.get("data_dir") or settings.movielens_dir),
        "redis_url": settings.redis_url,
        "redis_prefix": settings.redis_prefix,
        "start": first.isoformat(),
        "end": last.isoformat(),
        "experiments_path": None if settings.experiments_path is None else str(settings.experiments_path),
        "source": p["source"],
        "arm": p["arm"],
        "epochs": int(p["epochs"]),
        "gate_margin": float(p["gate_margin"]),
        "offpolicy_gate": bool(p["offpolicy_gate"]),
        "offpolicy_min_requests": int(p["offpolicy_min_requests"]),
        "threshold": float(p["bad_row_threshold"]),
    }


@dag(
    dag_id="reco_training",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params=PARAMS,
    tags=["reco", "training"],
    doc_md=__doc__,
)
def reco_training() -> None:
    @task(execution_timeout=timedelta(minutes=5))
    def resolve() -> dict[str, Any]:
        return _job()

    @task
    def ingest(job: dict[str, Any]) -> dict[str, Any]:
        from reco.pipeline.data_tasks import ingest

        return ingest(
            job["home"], job["start"], job["end"], job["source"], job["data_dir"], job["redis_url"], job["redis_prefix"]
        )

    @task(outlets=[VALIDATED_EVENTS])
    def validate(job: dict[str, Any], _ingested: dict[str, Any]) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from reco.data.validation import SchemaMismatch, ValidationFailed
        from reco.pipeline.data_tasks import validate

        try:
            out = validate(job["home"], job["start"], job["end"], job["threshold"])
        except (ValidationFailed, SchemaMismatch) as e:  # bad data: retrying cannot help
            raise AirflowFailException(str(e)) from e
        get_current_context()["outlet_events"][VALIDATED_EVENTS].extra = {
            "start": job["start"],
            "end": job["end"],
            "validation_id": out["validation_id"],
        }
        return out

    @task
    def build_training_set(job: dict[str, Any], validation: dict[str, Any]) -> dict[str, Any]:
        from reco.pipeline.data_tasks import build_training_set

        return build_training_set(job["home"], job["start"], job["end"], job["arm"], validation)

    @task(execution_timeout=timedelta(hours=2))
    def train(job: dict[str, Any], training_set: dict[str, Any]) -> dict[str, Any]:
        from reco.pipeline.training_tasks import train

        return train(job["tracking_uri"], job["model_name"], job["arm"], training_set, job["epochs"])

    @task
    def evaluate(job: dict[str, Any], training_set: dict[str, Any], candidate: dict[str, Any]) -> dict[str, Any]:
        from reco.pipeline.training_tasks import evaluate
        from reco.pipeline.xcom import to_xcom

        return to_xcom(evaluate(job["tracking_uri"], job["model_name"], training_set, candidate))

    @task
    def gate(job: dict[str, Any], candidate: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any]:
        from reco.pipeline.training_tasks import gate
        from reco.pipeline.xcom import from_xcom

        evaluation = from_xcom(evaluation)
        return gate(candidate, evaluation, job["gate_margin"], job["offpolicy_gate"], job["offpolicy_min_requests"])

    @task
    def register(
        job: dict[str, Any],
        training_set: dict[str, Any],
        candidate: dict[str, Any],
        evaluation: dict[str, Any],
        verdict: dict[str, Any],
        validation: dict[str, Any],
    ) -> dict[str, Any]:
        from reco.pipeline.training_tasks import register
        from reco.pipeline.xcom import from_xcom

        return register(
            job["tracking_uri"], job["model_name"], training_set, candidate, from_xcom(evaluation), verdict, validation
        )

    @task
    def promote(job: dict[str, Any], registered: dict[str, Any]) -> dict[str, Any]:
        from reco.pipeline.training_tasks import promote_candidate

        ctx = get_current_context()
        who, why = f"reco_training {ctx['run_id']}", f"trained on {job['start']}..{job['end']}"
        # the phase starts, in event time, when the run's data ends (a simulated day or a backfill: that day)
        starts = ctx.get("data_interval_end") or ctx["dag_run"].run_after

        return promote_candidate(job["tracking_uri"], job["model_name"], job["arm"], registered, who=who,
                                 experiments_path=job.get("experiments_path"), why=why,
                                 now=starts.isoformat())  # fmt: skip

    job = resolve()
    validation = validate(job, ingest(job))
    tset = build_training_set(job, validation)
    candidate = train(job, tset)
    evaluation = evaluate(job, tset, candidate)
    verdict = gate(job, candidate, evaluation)
    promote(job, register(job, tset, candidate, evaluation, verdict, validation))


training_dag = reco_training()
