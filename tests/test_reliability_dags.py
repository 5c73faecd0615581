"""DAG robustness: every DAG file parses (a DagBag with no import errors), and every task has retries,
a retry delay (exponential backoff where it retries more than once) and an execution timeout. Rerun
idempotency is tested by the pipeline owners (tests/test_dag_training.py, tests/test_dag_ab_report.py)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[1] / "dags"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_every_dag_file_parses(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert {p.stem for p in DAGS.glob("reco_*.py")} <= set(dagbag.dag_ids)


def test_every_task_retries_with_backoff_and_has_a_timeout(dagbag) -> None:
    problems: list[str] = []
    n_tasks = 0
    for dag_id in dagbag.dag_ids:
        for task in dagbag.dags[dag_id].tasks:
            n_tasks += 1
            where = f"{dag_id}.{task.task_id}"
            if task.retries < 1:
                problems.append(f"{where}: retries={task.retries}")
            if task.retry_delay is None or task.retry_delay < timedelta(seconds=5):
                problems.append(f"{where}: retry_delay={task.retry_delay}")
            if task.retries > 1 and not task.retry_exponential_backoff:
                problems.append(f"{where}: {task.retries} retries without exponential backoff")
            if task.execution_timeout is None or task.execution_timeout > timedelta(hours=4):
                problems.append(f"{where}: execution_timeout={task.execution_timeout}")
    assert n_tasks >= 5 and problems == []
