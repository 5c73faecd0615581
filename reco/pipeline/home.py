"""Where the training DAG keeps its files under `home`, and the names of its days and jobs (shared by the
data tasks and the training tasks; the layout is described in `reco.pipeline.training_tasks`)."""

from __future__ import annotations

from datetime import date
from pathlib import Path


def day(d: str | date) -> date:
    return d if isinstance(d, date) else date.fromisoformat(str(d)[:10])


def home_paths(home: str | Path) -> dict[str, Path]:
    h = Path(home)
    return {
        "lake": h / "lake",
        "validated": h / "validated",
        "quarantine": h / "quarantine",
        "reports": h / "reports" / "validation",
        "runs": h / "runs",
        "catalog": h / "catalog.parquet",
    }


def run_key(start: str | date, end: str | date, arm: str) -> str:
    """Folder name of one training job.

    >>> run_key("2026-01-01", "2026-01-02", "treatment")
    '2026-01-01_2026-01-02_treatment'
    """
    return f"{day(start).isoformat()}_{day(end).isoformat()}_{arm}"
