"""`SimClock`: the simulated time of a simulation (`RECO_SIMULATED_CLOCK`, the demo and the tests), kept in
Redis under the deployment's prefix and owned by the click simulator.

Time advances in *epochs* (ticks of simulated time, an hour in the demo). Before the first request of a new
epoch the simulator calls `tick(epoch)`: a barrier. It records the stream's last entry id as the target and
waits until the learner (`reco.online.simulated`) has read every entry up to it, learned, published a
snapshot per arm and called `finish(epoch)`. The simulator writes nothing while it waits and every write of
the epoch before it has landed (impressions are logged before the API answers in this mode), so what the
learner learned at each epoch boundary depends on the seed only, never on the wall clock, read chunk sizes
or machine load. The API adopts the published snapshots when it first sees a request of the new epoch.

Keys (P = the prefix)::

    P:sim:clock   hash     epoch, time (simulated unix seconds) and target (the stream id the learner must reach)
    P:sim:done    string   the last epoch the learner finished
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class SimClockTimeout(RuntimeError):
    """The learner did not finish an epoch in time (the message says what to check)."""


def _text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


class SimClock:
    """The simulated clock of one deployment (`client`: a redis.Redis, `prefix`: its key prefix).

    `stream_key` is the event stream the learner reads (default `<prefix>:events`, `RedisStore.stream_key`).
    """

    def __init__(self, client: Any, prefix: str, stream_key: str | None = None) -> None:
        self.client = client
        self.prefix = prefix
        self.stream_key = stream_key or f"{prefix}:events"
        self.clock_key = f"{prefix}:sim:clock"
        self.done_key = f"{prefix}:sim:done"

    def reset(self) -> None:
        """Forget the epochs of a previous simulation."""
        self.client.delete(self.clock_key, self.done_key)

    def last_entry(self) -> str:
        """The id of the stream's newest entry ("0-0" when there is no stream yet)."""
        newest = self.client.xrevrange(self.stream_key, count=1)
        return _text(newest[0][0]) if newest else "0-0"

    def tick(
        self, epoch: int, sim_time: float, *, timeout_s: float = 600.0, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        """Start `epoch` at simulated time `sim_time` and wait until the learner has finished it."""
        self.client.hset(self.clock_key, mapping={"epoch": epoch, "time": repr(float(sim_time)),
                                                  "target": self.last_entry()})  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while self.done() < epoch:
            if time.monotonic() > deadline:
                raise SimClockTimeout(
                    f"simulated clock: the learner did not finish epoch {epoch} within {timeout_s:.0f} s "
                    f"(last finished: {self.done()}); is `reco learn` running with RECO_SIMULATED_CLOCK=true "
                    f"and RECO_REDIS_PREFIX={self.prefix}? See its log."
                )
            sleep(0.01)

    def due(self) -> tuple[int, str] | None:
        """(epoch, target stream id) when an epoch waits for the learner, else None."""
        epoch, target = self.client.hmget(self.clock_key, "epoch", "target")
        if epoch is None or int(_text(epoch)) <= self.done():
            return None
        return int(_text(epoch)), _text(target or "0-0")

    def finish(self, epoch: int) -> None:
        """The learner has read every entry up to the epoch's target and published: release the simulator."""
        self.client.set(self.done_key, epoch)

    def done(self) -> int:
        value = self.client.get(self.done_key)
        return -1 if value is None else int(_text(value))

    def now(self) -> float | None:
        """The simulated time of the current epoch's start (None before the first tick)."""
        value = self.client.hget(self.clock_key, "time")
        return None if value is None else float(_text(value))
