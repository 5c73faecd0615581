"""Task function of the `reco_ab_report` DAG: lake -> A/B report -> files + MLflow -> SRM check.

Idempotent: the report of (experiment, date) lives at `<reports>/<experiment>/<date>.json|html` and a
rerun overwrites it; the MLflow run of (experiment, date) is found by its tags and reused, so reruns
neither duplicate files nor runs. A sample-ratio mismatch raises `SRMFlagged` *after* the report is
written and logged, so the evidence is there when the task fails.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any

from reco.experiments.report import ReportError, render_html, render_json, report_for

MLFLOW_EXPERIMENT = "reco-ab-reports"


class SRMFlagged(RuntimeError):
    """The report found a sample-ratio mismatch: assignment or logging is broken."""


def _day(d: str | date | None) -> date | None:
    if d is None or d == "":
        return None
    return d if isinstance(d, date) else date.fromisoformat(str(d)[:10])


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_ab_report(
    *,
    experiment: str | None,
    control: str,
    end: str | date,
    lake_dir: str | Path,
    reports_dir: str | Path,
    start: str | date | None = None,
    tracking_uri: str | None = None,
    traffic: Mapping[str, float] | None = None,
    experiments_path: str | Path | None = None,
    min_days: int = 14,
    planned_days: int = 28,
    phase: int | None = None,
    phases: list[Mapping[str, Any]] | None = None,
    pre_period_days: int = 14,
    guardrails: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Report on one phase of `experiment` (`phase`, default: the last of `phases`, else 1) from `start`
    (default: that phase's start, else its first exposure day) to `end`. The `pre_period_days` of lake
    data before the experiment's first day are CUPED's pre-exposure window; `phases` (id, started, who, why,
    versions) are listed in the report; `guardrails` {metric: margin} override the config's.

    The SRM test uses `traffic` when given, else the experiment's arm shares in the experiment config
    (`experiments_path`, None = built-in); `experiment` None = the config's first experiment.
    Returns {"json", "html", "decision", "srm_flagged", "mlflow_run_id"}; raises `ReportError` on bad
    input and `SRMFlagged` (after writing) when the sample ratio is off.
    """
    from reco.data.lake import EventLake

    end_d = _day(end)
    assert end_d is not None
    days = EventLake(lake_dir).days()
    if not days:
        raise ReportError(f"the event lake at {lake_dir} has no partitions")
    start_d = _day(start)
    if end_d < (start_d or days[0]):
        raise ReportError(f"report date {end_d} is before the experiment start {start_d or days[0]}")
    report = report_for(lake_dir, control=control, experiment=experiment, start=start_d, end=end_d,
                        traffic=traffic, experiments_path=experiments_path, min_days=min_days,
                        planned_days=planned_days, phase=phase, phases=phases, pre_period_days=pre_period_days,
                        guardrails=guardrails)  # fmt: skip
    experiment = report["experiment"]
    folder = Path(reports_dir) / experiment
    json_path, html_path = folder / f"{end_d.isoformat()}.json", folder / f"{end_d.isoformat()}.html"
    _atomic_write(json_path, render_json(report))
    _atomic_write(html_path, render_html(report))
    run_id = log_to_mlflow(tracking_uri, report, [json_path, html_path]) if tracking_uri else None
    result = {"json": str(json_path), "html": str(html_path), "decision": report["decision"],
              "srm_flagged": report["srm"]["flagged"], "mlflow_run_id": run_id}  # fmt: skip
    if report["srm"]["flagged"]:
        raise SRMFlagged(f"sample ratio mismatch in {experiment} (p = {report['srm']['p_value']:.3g}); "
                         f"report written to {json_path}")  # fmt: skip
    return result


def log_to_mlflow(tracking_uri: str, report: dict[str, Any], files: list[Path]) -> str:
    """Log the report to the run of (experiment, report date), creating it on first use; returns its id."""
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
    exp_id = exp.experiment_id if exp else client.create_experiment(MLFLOW_EXPERIMENT)
    name, day = report["experiment"], report["window"]["end"]
    found = client.search_runs(
        [exp_id], filter_string=f"tags.ab_experiment = '{name}' and tags.report_date = '{day}'", max_results=2
    )
    if found:
        run_id = found[0].info.run_id
    else:
        run = client.create_run(exp_id, run_name=f"{name} {day}", tags={"ab_experiment": name, "report_date": day})
        run_id = run.info.run_id
    tags = {"decision": report["decision"]["action"], "decision_arm": report["decision"]["arm"] or "",
            "control": report["control"], "srm_flagged": str(report["srm"]["flagged"]).lower()}  # fmt: skip
    for arm, a in report["arms"].items():
        tags[f"model_versions.{arm}"] = ",".join(a["model_versions"]) or "unknown"
    metrics = {"srm_p_value": report["srm"]["p_value"], "days": report["window"]["days"],
               "days_with_data": report["window"]["days_with_data"], "phase": report["phase"]["id"]}  # fmt: skip
    for arm, a in report["arms"].items():
        metrics |= {f"users.{arm}": a["users"], f"ctr.{arm}": a["ctr"]}
    for c in report["comparisons"]:
        ul = c["user_level"]
        metrics |= {f"relative_lift.{c['arm']}": ul["lift"]["relative"], f"p_value.{c['arm']}": ul["p_value"],
                    f"sequential_p_value.{c['arm']}": ul["sequential"]["p_value"],
                    f"chance_to_beat.{c['arm']}": c["bayes"]["chance_to_beat_control"]}  # fmt: skip
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items() if v is not None],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    for f in files:  # same artifact path on a rerun: overwritten, not duplicated
        client.log_artifact(run_id, str(f), artifact_path="ab_report")
    client.set_terminated(run_id, "FINISHED")
    return run_id
