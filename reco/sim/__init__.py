"""Click simulator: MovieLens-100k users with held-out ground-truth preferences (`ground_truth`), browsing
in sessions over compressed days (`users`), talking to the API over HTTP (`client`).

`replay(...)` is the entry point of `make demo` and `reco simulate`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path

from reco.sim.client import EVENT_TIME_HEADER, HttpApi
from reco.sim.ground_truth import GroundTruth, position_bias
from reco.sim.users import Browsing, SimStats, run_session, simulate_days

__all__ = [
    "EVENT_TIME_HEADER",
    "Browsing",
    "GroundTruth",
    "HttpApi",
    "SimStats",
    "position_bias",
    "replay",
    "run_session",
    "simulate_days",
]


def replay(
    *,
    api_url: str,
    data_dir: str | Path,
    users: int,
    days: int,
    start_day: date,
    sessions_per_user_day: float,
    seed: int,
    on_day: Callable[[date], None] | None = None,
    api_key: str | None = None,
    browsing: Browsing | None = None,
) -> SimStats:
    """Simulated traffic against a running API over HTTP; returns what the users saw and clicked."""
    gt = GroundTruth.fit(data_dir)
    api = HttpApi(api_url, api_key=api_key)
    try:
        return simulate_days(api, gt, users=users, days=days, start_day=start_day,
                             sessions_per_user_day=sessions_per_user_day, seed=seed, on_day=on_day,
                             browsing=browsing or Browsing())  # fmt: skip
    finally:
        api.close()
