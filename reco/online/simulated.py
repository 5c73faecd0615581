"""The learner on simulated time (`RECO_SIMULATED_CLOCK`; `reco learn` in the demo and the tests).

In production the learner reads entries as they arrive and publishes every `publish_every_s` of wall time,
so what a snapshot holds depends on the machine's speed. Here it reads nothing between ticks of the
simulator's clock (`reco.state.simclock.SimClock`): at each tick it reads every entry up to the tick's
target in fixed-size reads from where the previous tick stopped, learns (the reward join runs on the
events' own time, mini-batches are counted in examples), publishes each arm that took a step, acknowledges
what is used, and tells the simulator it is done. Every read, join, step and publication is then a
function of the seed alone. The `OnlineLearner` must be built with `publish_every_s=math.inf` (no
publication between ticks) and no MLflow checkpoint (that one is paced by wall time).

Leases stay on wall time: they measure whether a process is alive, not simulated time.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch

from reco.online.learner import OnlineLearner
from reco.state.simclock import SimClock
from reco.state.snapshots import StaleToken

log = logging.getLogger(__name__)


def finish_epoch(learner: OnlineLearner) -> int:
    """Read and learn every entry written so far, publish and acknowledge; returns the entries read.

    The simulator writes nothing while it waits at the barrier, so a read that returns nothing means every
    entry up to the tick's target has been delivered."""
    read = 0
    while n := learner.poll(block_ms=None):
        read += n
    learner.maybe_publish(force=True)
    return read


def run_simulated(
    learner: OnlineLearner,
    clock: SimClock,
    stop: Callable[[], bool] = lambda: False,
    *,
    sleep: Callable[[float], None] = time.sleep,
    idle_s: float = 0.01,
    seed: int = 0,
) -> None:
    """Serve the simulator's ticks until `stop()`: for each epoch due, `finish_epoch`, then `clock.finish`.

    torch's global generator is seeded with `seed` first: the training step draws from it (the ranker's
    dropout), so an unseeded process learns differently from run to run."""
    if not math.isinf(learner.publish_every_s) or learner.checkpoint is not None:
        raise ValueError("a learner on simulated time publishes only at ticks: publish_every_s=inf, no checkpoint")
    torch.manual_seed(seed)
    last_beat = float("-inf")
    while not stop():
        if time.time() - last_beat >= 5.0:  # `reco learn --check` sees the loop alive
            learner.store.beat(learner.consumer, time.time())
            last_beat = time.time()
        try:
            if not learner.hold_leases():
                sleep((learner.lease_ttl_ms or 0) / 3000.0 or idle_s)
                continue
            due = clock.due()
            if due is None:
                sleep(idle_s)
                continue
            epoch, _target = due
            read = finish_epoch(learner)
            clock.finish(epoch)
            log.debug("epoch %s done: %s entries read, versions %s", epoch, read,
                      {a: learner.published_version(a) for a in learner.arms})  # fmt: skip
        except StaleToken as exc:
            learner.step_down(str(exc))
    if learner.leading:
        learner.release()
