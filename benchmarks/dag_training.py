"""Wall time of the whole `reco_training` DAG (`dag.test`) on MovieLens-100k: every day of the data,
a fresh private Airflow home, reco home and SQLite MLflow store. Prints per-task and total seconds.

    .venv/bin/python benchmarks/dag_training.py [--epochs 5] [--data /work/shared/data/movielens-100k]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "movielens-100k"))
    ap.add_argument("--start", default="1997-09-19")
    ap.add_argument("--end", default="1998-04-22")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="reco-dag-bench-"))
    os.environ.update(
        AIRFLOW_HOME=str(tmp / "airflow"),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{tmp / 'airflow' / 'airflow.db'}",
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
    )
    (tmp / "airflow").mkdir()
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True, capture_output=True)
    spec = importlib.util.spec_from_file_location("reco_training_dag", ROOT / "dags" / "reco_training.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    conf = {
        "start": args.start,
        "end": args.end,
        "epochs": args.epochs,
        "source": "files",
        "arm": "treatment",
        "data_dir": args.data,
        "home": str(tmp / "reco"),
        "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
    }
    t0 = time.perf_counter()
    dr = mod.training_dag.test(run_conf=conf)
    total = time.perf_counter() - t0
    print(f"state={dr.state} epochs={args.epochs} days={args.start}..{args.end} total_s={total:.1f}")
    for ti in sorted(dr.get_task_instances(), key=lambda t: t.start_date):
        print(f"  {ti.task_id:20s} {(ti.end_date - ti.start_date).total_seconds():7.1f} s")


if __name__ == "__main__":
    main()
