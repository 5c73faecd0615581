"""reco_ab_report (daily, or manual with a date range): the A/B significance report of an experiment.

Reads the lake for the current experiment phase (its start .. the run's day: the run of logical date D
reports up to the UTC day D, once D is over), writes JSON + HTML to `<reports>/<experiment>/<date>.*`,
logs both to MLflow (one run per experiment per day), and fails loudly, after writing, when the sample
ratio is off. The phases come from the registry (`reco.experiments.phases`): the report analyses one
phase and lists the others, never pooling two versions of an arm. Idempotent per logical date; backfill
with `POST /api/v2/backfills` or `airflow backfill create`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import CronDataIntervalTimetable, Param, dag, get_current_context, task


@dag(
    dag_id="reco_ab_report",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=2), "execution_timeout": timedelta(minutes=20)},
    params={
        "experiment": Param(None, type=["null", "string"], description="empty = the config's first experiment"),
        "control": Param("control", type="string", minLength=1),
        "start": Param(
            None, type=["null", "string"], format="date", description="first day; empty = the phase's first exposure"
        ),
        "end": Param(None, type=["null", "string"], format="date", description="last day; empty = the run's day"),
        "phase": Param(None, type=["null", "integer"], minimum=1, description="empty = the current phase"),
        "traffic": Param(None, type=["null", "object"], description='shares, e.g. {"control": 0.5}; empty = config'),
        "experiments": Param(None, type=["null", "string"], description="config YAML; empty = RECO_EXPERIMENTS_PATH"),
        "min_days": Param(14, type="integer", minimum=1),
        "pre_period_days": Param(14, type="integer", minimum=0, description="CUPED pre-exposure window (days)"),
        "guardrails": Param(None, type=["null", "object"], description='margins, e.g. {"revenue_per_user": 0.05}'),
        "lake_dir": Param(None, type=["null", "string"], description="empty = RECO_HOME/lake"),
        "reports_dir": Param(None, type=["null", "string"], description="empty = RECO_HOME/reports"),
        "tracking_uri": Param(None, type=["null", "string"], description="empty = RECO_MLFLOW_TRACKING_URI"),
    },
    tags=["reco", "experiments"],
    doc_md=__doc__,
)
def reco_ab_report() -> None:
    @task
    def report() -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        from reco.experiments.phases import experiment_phases, phase_at
        from reco.experiments.report import ReportError
        from reco.pipeline.report_tasks import SRMFlagged, run_ab_report
        from reco.pipeline.window import run_days
        from reco.settings import RecoSettings

        ctx = get_current_context()
        p, s = ctx["params"], RecoSettings()
        # the run's day (its data interval), deterministic per run (never now())
        end = p.get("end") or run_days(ctx.get("data_interval_start"), ctx.get("data_interval_end"),
                                       ctx.get("logical_date"), run_after=ctx["dag_run"].run_after)[1]  # fmt: skip
        tracking_uri = p.get("tracking_uri") or s.tracking_uri
        experiments = p.get("experiments") or s.experiments_path
        try:
            phases = experiment_phases(tracking_uri, s.registered_model, p["experiment"], experiments)
            return run_ab_report(
                phase=p.get("phase") or phase_at(phases, end), phases=phases,
                experiment=p["experiment"], control=p["control"], start=p.get("start"), end=end,
                lake_dir=p.get("lake_dir") or s.lake_dir, reports_dir=p.get("reports_dir") or s.reports_dir,
                tracking_uri=tracking_uri, traffic=p.get("traffic"),
                experiments_path=experiments, min_days=p["min_days"],
                pre_period_days=p.get("pre_period_days", 14), guardrails=p.get("guardrails"),
            )  # fmt: skip
        except (SRMFlagged, ReportError) as e:  # retrying cannot fix either
            raise AirflowFailException(str(e)) from e

    report()


ab_report_dag = reco_ab_report()
