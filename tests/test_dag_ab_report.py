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
from reco.experiments.simulate import SimConfig, simulate_events
from reco.pipeline.ab_report import MLFLOW_EXPERIMENT, SRMFlagged, run_ab_report

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
    return {"ok": _lake(base / "ok"), "srm": _lake(base / "srm", arms={"control": 0.62, "treatment": 0.38})}


def _runs(uri: str, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
    return client.search_runs([exp.experiment_id], filter_string=f"tags.ab_experiment = '{experiment}'")


def test_pipeline_rerun_overwrites_and_reuses_the_run(lakes, mlflow_server, tmp_path: Path) -> None:
    name = f"exp-{uuid.uuid4().hex[:6]}"
    kw = dict(experiment=name, control="control", end=END, lake_dir=lakes["ok"], reports_dir=tmp_path,
              tracking_uri=mlflow_server)  # fmt: skip
    first, second = run_ab_report(**kw), run_ab_report(**kw)
    assert first["mlflow_run_id"] == second["mlflow_run_id"]
    assert sorted(p.name for p in (tmp_path / name).iterdir()) == [f"{END}.html", f"{END}.json"]
    rep = json.loads(Path(first["json"]).read_text())
    assert rep["window"] == {"start": "2026-01-01", "end": END, "days": 16}
    (run,) = _runs(mlflow_server, name)
    assert run.data.tags["model_versions.treatment"] == "treatment-v1"
    assert run.data.tags["decision"] == rep["decision"]["action"]
    from mlflow.tracking import MlflowClient

    arts = [a.path for a in MlflowClient(mlflow_server).list_artifacts(run.info.run_id, "ab_report")]
    assert arts == [f"ab_report/{END}.html", f"ab_report/{END}.json"]


def test_pipeline_srm_raises_after_writing(lakes, tmp_path: Path) -> None:
    with pytest.raises(SRMFlagged, match="sample ratio mismatch"):
        run_ab_report(experiment="srm", control="control", end=END, lake_dir=lakes["srm"], reports_dir=tmp_path)
    assert json.loads((tmp_path / "srm" / f"{END}.json").read_text())["srm"]["flagged"] is True


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
