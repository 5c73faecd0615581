"""reco_training end to end through Airflow (`dag.test`), a real MLflow server and MovieLens-100k:
lineage tags + `arm-treatment` alias, no new version on a rerun, quarantine of injected bad rows and
the failure above the threshold. Scale knob: 6 days of data, 1 epoch."""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reco.data.lake import EventLake

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAGS = Path(__file__).resolve().parents[1] / "dags"
START, END = "1997-09-20", "1997-09-25"


def load_dag(name: str):
    spec = importlib.util.spec_from_file_location(f"dag_{name}", DAGS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return next(v for v in vars(mod).values() if getattr(v, "dag_id", None) == name)


@pytest.fixture(scope="module")
def model_name() -> str:
    return f"reco-dag-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def env(model_name: str):
    mp = pytest.MonkeyPatch()
    mp.setenv("RECO_REGISTERED_MODEL", model_name)
    yield
    mp.undo()


def _conf(home: Path, mlflow_server: str, movielens_dir: Path, **kw) -> dict:
    return {
        "start": START,
        "end": END,
        "source": "files",
        "arm": "treatment",
        "epochs": 1,
        "home": str(home),
        "tracking_uri": mlflow_server,
        "data_dir": str(movielens_dir),
        **kw,
    }


@pytest.fixture(scope="module")
def first_run(airflow_db, mlflow_server, movielens_dir, env, model_name, tmp_path_factory):
    from reco.artifacts import registry

    home = tmp_path_factory.mktemp("reco-home")
    dr = load_dag("reco_training").test(run_conf=_conf(home, mlflow_server, movielens_dir))
    client = registry.client_for(mlflow_server)
    return home, dr, client


def test_run_registers_version_with_lineage_and_arm_alias(first_run, model_name):
    from reco.artifacts import registry

    _, dr, client = first_run
    assert dr.state == "success"
    mv = client.get_model_version_by_alias(model_name, "arm-treatment")
    for tag in registry.LINEAGE_TAGS:
        assert mv.tags.get(tag), tag
    assert mv.tags["parent_version"] == "none"  # cold start: nothing registered before
    assert int(mv.tags["data_rows"]) > 0 and mv.tags["validation_bad_rows"] == "0"
    assert client.get_model_version_by_alias(model_name, "champion").version == mv.version
    bundle, _ = registry.load_bundle(client, model_name, "arm-treatment")
    assert bundle.score(bundle.item_ids[1:4], bundle.item_ids[1:10]).scores.shape == (9,)


def test_rerun_of_same_interval_creates_no_version(first_run, mlflow_server, movielens_dir, model_name):
    home, _, client = first_run
    before = client.search_model_versions(f"name='{model_name}'")
    dr = load_dag("reco_training").test(run_conf=_conf(home, mlflow_server, movielens_dir))
    assert dr.state == "success"
    assert len(client.search_model_versions(f"name='{model_name}'")) == len(before) == 1


def _inject(home: Path, day: str, bad: pd.DataFrame) -> None:
    """Append rows to a lake partition behind EventLake's back (a producer that skipped the API):
    validation must catch what the lake boundary would not."""
    lake = EventLake(home / "lake")
    path = lake.partition_path(pd.Timestamp(day).date())
    good = pq.read_table(path).to_pandas()
    frame = pd.concat([good, bad], ignore_index=True)
    schema = pa.schema([f.with_nullable(True) for f in pq.read_schema(path)])
    pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), path)


def test_injected_bad_rows_are_quarantined_then_threshold_fails(first_run, mlflow_server, movielens_dir):
    home, _, _ = first_run
    day = "1997-09-22"
    good = EventLake(home / "lake").read_pandas(pd.Timestamp(day).date(), pd.Timestamp(day).date())
    bad = good.head(4).copy()
    bad["event_id"] = ["x-null", "x-future", "x-type", bad["event_id"].iloc[3]]  # last: a duplicate
    bad.loc[0, "user_id"] = None
    bad.loc[1, "ts"] = pd.Timestamp("2099-01-01", tz="UTC")
    bad.loc[2, "event_type"] = "teleport"
    _inject(home, day, bad)
    dr = load_dag("reco_training").test(run_conf=_conf(home, mlflow_server, movielens_dir, source="lake"))
    assert dr.state == "success"
    q = pd.read_parquet(home / "quarantine" / f"date={day}" / "part-0.parquet")
    reasons = dict(zip(q["event_id"], q["reasons"], strict=True))
    assert reasons == {
        "x-null": "user_id is null",
        "x-future": "ts outside run interval; ts in the future",
        "x-type": "event_type not allowed",
        bad["event_id"].iloc[3]: "duplicate event_id",
    }
    validated = EventLake(home / "validated").read_pandas()
    assert not validated["event_id"].isin(["x-null", "x-future", "x-type"]).any()
    assert validated["event_id"].is_unique

    dr = load_dag("reco_training").test(
        run_conf=_conf(home, mlflow_server, movielens_dir, source="lake", bad_row_threshold=0.0001)
    )
    assert dr.state == "failed"
    ti = next(t for t in dr.get_task_instances() if t.task_id == "validate")
    assert ti.state == "failed"
