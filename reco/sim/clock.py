"""`ClockedApi`: the simulator drives the simulated clock (`reco.state.simclock.SimClock`).

Each recommendation request's simulated time falls in an epoch of `tick_s` seconds (an hour by default). The
clock follows the latest request time seen (sessions overlap, so request times are not sorted): before the
first request of a later epoch, the simulator stops at a barrier (`SimClock.tick`) until the learner has
learned from every event written so far and published, then tells the API the new epoch (`adopt_epoch`),
which adopts those snapshots before serving the request. `finish()` runs one last tick after the traffic,
so that the learner has learned from the last hour too.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from reco.state.simclock import SimClock


class ClockedApi:
    """Wraps an `Api` (`HttpApi` or `InProcessApi`: both have `adopt_epoch`) with the simulated clock."""

    def __init__(self, api: Any, clock: SimClock, *, tick_s: float = 3600.0, timeout_s: float = 600.0) -> None:
        self.api = api
        self.clock = clock
        self.tick_s = tick_s
        self.timeout_s = timeout_s
        self.epoch = -1
        self.ticks = 0

    def _advance(self, epoch: int) -> None:
        self.clock.tick(epoch, epoch * self.tick_s, timeout_s=self.timeout_s)
        self.epoch = epoch
        self.ticks += 1
        self.api.adopt_epoch(epoch)

    def recommend(self, user_id: str, *, ts: datetime, **kw: Any) -> dict[str, Any]:
        epoch = int(ts.timestamp() // self.tick_s)
        if epoch > self.epoch:
            self._advance(epoch)
        return self.api.recommend(user_id, ts=ts, **kw)

    def send_events(self, events: Sequence[dict[str, Any]]) -> None:
        self.api.send_events(events)

    def finish(self) -> None:
        """One more tick: the learner learns from (and publishes) the traffic of the last epoch too."""
        if self.epoch >= 0:
            self._advance(self.epoch + 1)
