"""Click simulator: MovieLens-100k users with held-out ground-truth preferences (`ground_truth`), browsing
in sessions over compressed days (`users`), talking to the API over HTTP (`client`).

`replay(...)` is the entry point of `make demo` and `reco simulate`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path

from reco.sim.client import EVENT_TIME_HEADER, Api, HttpApi
from reco.sim.clock import ClockedApi
from reco.sim.ground_truth import GroundTruth, position_bias
from reco.sim.users import Browsing, SimStats, run_session, simulate_days
from reco.state.simclock import SimClock

__all__ = [
    "EVENT_TIME_HEADER",
    "Browsing",
    "ClockedApi",
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
    clock: SimClock | None = None,
    tick_s: float = 3600.0,
) -> SimStats:
    """Simulated traffic against a running API over HTTP; returns what the users saw and clicked.

    With `clock` (an API and a learner running with RECO_SIMULATED_CLOCK on the same Redis prefix), the
    simulator drives simulated time (`ClockedApi`, a barrier every `tick_s` simulated seconds): the same
    seed then gives the same traffic, online learning and clicks, whatever the machine's speed."""
    gt = GroundTruth.fit(data_dir)
    http = HttpApi(api_url, api_key=api_key)
    api: Api = http if clock is None else ClockedApi(http, clock, tick_s=tick_s)
    try:
        stats = simulate_days(api, gt, users=users, days=days, start_day=start_day,
                              sessions_per_user_day=sessions_per_user_day, seed=seed, on_day=on_day,
                              browsing=browsing or Browsing())  # fmt: skip
        if isinstance(api, ClockedApi):
            api.finish()
        return stats
    finally:
        http.close()
