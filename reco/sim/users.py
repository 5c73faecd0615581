"""Simulated users browsing in sessions over compressed days.

A session: the user opens the home page and gets recommendations; they examine the list top-down and
click the first item they like (cascade: P(click) from the ground truth, with position bias); a click is
followed by a view of that item's page (the session grows) and a product-page request with it as the
context item. Without a click the session ends with probability `p_leave` (else the user reloads the home
page); every session ends after `max_requests`. Sessions start at seeded times spread over each
simulated day; the clock advances by a seeded exponential think time between requests; every event sent
carries the simulated time.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np

from reco.sim.client import Api
from reco.sim.ground_truth import GroundTruth


@dataclass
class ArmTally:
    requests: int = 0
    impressions: int = 0
    clicks: int = 0

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0


@dataclass
class SimStats:
    arms: dict[str, ArmTally] = field(default_factory=lambda: defaultdict(ArmTally))
    sessions: int = 0
    errors: int = 0
    # per (arm, user): [impressions, clicks], for user-level statistics
    per_user: dict[tuple[str, str], list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))


@dataclass
class Browsing:
    """Behaviour knobs (defaults are the documented ones)."""

    limit: int = 10
    max_requests: int = 6
    p_leave: float = 0.6
    think_s: float = 40.0


def _event(rng: np.random.Generator, **fields: Any) -> dict[str, Any]:
    fields["event_id"] = uuid.UUID(bytes=rng.bytes(16), version=4).hex
    fields["ts"] = fields["ts"].isoformat()
    return fields


def run_session(
    api: Api,
    gt: GroundTruth,
    user: str,
    start: datetime,
    rng: np.random.Generator,
    stats: SimStats,
    browsing: Browsing = Browsing(),
) -> datetime:
    """One session; returns the simulated time it ended."""
    session_id = uuid.UUID(bytes=rng.bytes(16), version=4).hex[:16]
    now, page, context = start, "home", None
    for _ in range(browsing.max_requests):
        resp = api.recommend(user, session_id=session_id, page_type=page, context_item_id=context,
                             limit=browsing.limit, ts=now)  # fmt: skip
        items = [it["item_id"] for it in resp["items"]]
        arm = resp.get("experiment_group", "")
        tally = stats.arms[arm]
        tally.requests += 1
        tally.impressions += len(items)
        stats.per_user[(arm, user)][0] += len(items)
        clicked = np.flatnonzero(
            rng.random(len(items)) < gt.p_click(user, items, [it["position"] for it in resp["items"]])
        )
        now += timedelta(seconds=float(rng.exponential(browsing.think_s)) + 1.0)
        if len(clicked) == 0:
            if rng.random() < browsing.p_leave:
                break
            page, context = "home", None
            continue
        hit = resp["items"][int(clicked[0])]
        tally.clicks += 1
        stats.per_user[(arm, user)][1] += 1
        common = dict(user_id=user, session_id=session_id, item_id=hit["item_id"])
        api.send_events([
            _event(rng, ts=now, event_type="click", request_id=resp["request_id"], position=hit["position"],
                   arm=arm, **common),
            _event(rng, ts=now + timedelta(seconds=1), event_type="view", page_type="product", **common),
        ])  # fmt: skip
        page, context = "product", hit["item_id"]
    stats.sessions += 1
    return now


def simulate_days(
    api: Api,
    gt: GroundTruth,
    *,
    users: int,
    days: int,
    start_day: date,
    sessions_per_user_day: float,
    seed: int,
    browsing: Browsing = Browsing(),
    on_day: Callable[[date], None] | None = None,
    user_ids: Sequence[str] | None = None,
) -> SimStats:
    """`days` simulated days; each day round(users * sessions_per_user_day) sessions of seeded users,
    starting at seeded times between 08:00 and 23:00 (UTC), in time order."""
    rng = np.random.default_rng(seed)
    pool = list(user_ids) if user_ids is not None else list(rng.choice(gt.users, size=min(users, len(gt.users)),
                                                                      replace=False))  # fmt: skip
    stats = SimStats()
    per_day = max(1, round(users * sessions_per_user_day))
    for d in range(days):
        day = start_day + timedelta(days=d)
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        starts = np.sort(rng.uniform(8 * 3600, 23 * 3600, per_day))
        who = rng.choice(len(pool), size=per_day)
        for t, u in zip(starts, who, strict=True):
            run_session(api, gt, str(pool[u]), midnight + timedelta(seconds=float(t)), rng, stats, browsing)
        if on_day is not None:
            on_day(day)
    return stats
