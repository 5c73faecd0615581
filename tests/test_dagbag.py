"""The DAG folder parses without errors, and parsing imports no heavy library and opens no socket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

DAGS = Path(__file__).resolve().parents[1] / "dags"

PROBE = r"""
import json, socket, sys
opened = []
_real = socket.socket.connect
def _spy(self, addr):
    opened.append(repr(addr))
    return _real(self, addr)
socket.socket.connect = _spy
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
heavy = sorted(m for m in ("torch", "mlflow", "great_expectations") if m in sys.modules)
print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": sorted(bag.dag_ids),
                  "heavy": heavy, "connections": opened}))
"""


def test_dag_folder_parses_cleanly_and_lightly(airflow_db):
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(DAGS)], capture_output=True, text=True, env=os.environ.copy(), timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == {}
    assert {"reco_training", "reco_promote"} <= set(result["dags"])
    assert result["heavy"] == []
    assert result["connections"] == []
