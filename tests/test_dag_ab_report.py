"""reco_ab_report: the pipeline function without Airflow (idempotent files and MLflow run, SRM raises after
writing), then the DAG through Airflow's `dag.test` (one healthy run, one SRM run that fails)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from reco.data.lake import EventLake
from reco.experiments.report import ReportError
from reco.experiments.simulate import SimConfig, simulate_events
from reco.pipeline.report_tasks import MLFLOW_EXPERIMENT, SRMFlagged, run_ab_report

pytestmark = [pytest.mark.integration]

DAG_FILE = Path(__file__).resolve().parents[1] / "dags" / "reco_ab_report.py"
END = "2026-01-16"


def _lake(root: Path, **kw) -> Path:
    cfg = SimConfig(users=600, sessions=3000, days=16, **kw)
    EventLake(root).write_partitions(simulate_events(cfg))
    return root


@pytest.fixture(scope="module")
def lakes(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("ab-lakes")
    return {"ok": _lake(base / "ok", pre_days=7), "srm": _lake(base / "srm", arms={"control": 0.62, "treatment": 0.38})}


def _config(path: Path, name: str, control: float) -> Path:
    """An experiment config with one experiment `name` (control / treatment shares)."""
    path.write_text(
        f"version: 1\nexperiments:\n  - name: {name}\n    salt: s-{name}\n    arms:\n"
        f"      - {{name: control, traffic: {control}, alias: arm-control}}\n"
        f"      - {{name: treatment, traffic: {1 - control:.2f}, alias: arm-treatment}}\n"
    )
    return path


def _runs(uri: str, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
    return client.search_runs([exp.experiment_id], filter_string=f"tags.ab_experiment = '{experiment}'")


def test_pipeline_rerun_overwrites_and_reuses_the_run(lakes, mlflow_server, tmp_path: Path) -> None:
    name = f"exp-{uuid.uuid4().hex[:6]}"
    kw = dict(experiment=name, control="control", end=END, lake_dir=lakes["ok"], reports_dir=tmp_path,
              tracking_uri=mlflow_server, traffic={"control": 0.5, "treatment": 0.5})  # fmt: skip
    first, second = run_ab_report(**kw), run_ab_report(**kw)
    assert first["mlflow_run_id"] == second["mlflow_run_id"]
    assert sorted(p.name for p in (tmp_path / name).iterdir()) == [f"{END}.html", f"{END}.json"]
    rep = json.loads(Path(first["json"]).read_text())
    assert rep["window"] | {"rule": ""} == {"start": "2026-01-01", "end": END, "days": 16, "days_with_data": 16,
                                            "rule": ""}  # fmt: skip
    # the 14 days of lake before the experiment's first exposure are CUPED's pre-period (7 of them have data)
    cuped = rep["comparisons"][0]["cuped"]
    assert cuped["applied"] and cuped["pre_window"] == ["2025-12-18", "2025-12-31"] and rep["phase"]["id"] == 1
    (run,) = _runs(mlflow_server, name)
    assert run.data.tags["model_versions.treatment"] == "treatment-v1"
    assert run.data.tags["decision"] == rep["decision"]["action"]
    from mlflow.tracking import MlflowClient

    arts = [a.path for a in MlflowClient(mlflow_server).list_artifacts(run.info.run_id, "ab_report")]
    assert arts == [f"ab_report/{END}.html", f"ab_report/{END}.json"]


def test_pipeline_srm_raises_after_writing(lakes, tmp_path: Path) -> None:
    """No traffic given: the shares come from the experiment config (the built-in one by default)."""
    with pytest.raises(SRMFlagged, match="sample ratio mismatch"):  # built-in ranker-v2: 50/50
        run_ab_report(experiment=None, control="control", end=END, lake_dir=lakes["srm"], reports_dir=tmp_path)
    rep = json.loads((tmp_path / "ranker-v2" / f"{END}.json").read_text())
    assert rep["srm"]["flagged"] is True and rep["config"]["traffic_source"] == "experiment config <built-in>"
    # the same users against the shares this experiment is configured with: no mismatch
    cfg = _config(tmp_path / "exp.yaml", "split-62", 0.62)
    out = run_ab_report(experiment="split-62", control="control", end=END, lake_dir=lakes["srm"],
                        reports_dir=tmp_path, experiments_path=cfg)  # fmt: skip
    rep = json.loads(Path(out["json"]).read_text())
    assert not out["srm_flagged"] and rep["config"]["traffic"] == {"control": 0.62, "treatment": 0.38}
    with pytest.raises(ReportError, match=r"no experiment 'nope'.*--traffic"):
        run_ab_report(experiment="nope", control="control", end=END, lake_dir=lakes["ok"], reports_dir=tmp_path)


def test_dag_parses_without_heavy_imports() -> None:
    code = (f"import runpy, sys; runpy.run_path({str(DAG_FILE)!r}); "
            "print([m for m in ('reco', 'mlflow', 'pandas', 'matplotlib') if m in sys.modules])")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _load_dag():
    spec = importlib.util.spec_from_file_location("dag_reco_ab_report", DAG_FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ab_report_dag


@pytest.mark.slow
def test_dag_runs_and_fails_loudly_on_srm(airflow_db, lakes, mlflow_server, tmp_path: Path) -> None:
    dag = _load_dag()
    name = f"dag-{uuid.uuid4().hex[:6]}"
    conf = {"experiment": name, "control": "control", "end": END, "reports_dir": str(tmp_path),
            "tracking_uri": mlflow_server, "traffic": {"control": 0.5, "treatment": 0.5}}  # fmt: skip
    dr = dag.test(run_conf=conf | {"lake_dir": str(lakes["ok"])})
    assert dr.state == "success"
    assert (tmp_path / name / f"{END}.html").is_file() and len(_runs(mlflow_server, name)) == 1

    dr = dag.test(run_conf=conf | {"lake_dir": str(lakes["srm"]), "experiment": f"{name}-srm"})
    assert dr.state == "failed"
    rep = json.loads((tmp_path / f"{name}-srm" / f"{END}.json").read_text())
    assert rep["srm"]["flagged"] and rep["decision"]["action"] == "stop"
    (run,) = _runs(mlflow_server, f"{name}-srm")
    assert run.data.tags["srm_flagged"] == "true"
