"""`OnlineLearner`: the single writer of online weights. Stream -> reward join -> per-arm updates ->
versioned snapshots in Redis, with acknowledgements that make a restart lose nothing.

One writer, enforced. With `lease_ttl_ms` set (`reco learn` always sets it), the learner writes only
while it holds every one of its arms' leases (`reco.state.lease`: SET NX PX + a fencing token per arm).
A second learner waits as a standby: it reads nothing from the stream (a group's consumers would split
the entries) and retries every third of the lease lifetime; when the holder dies its leases expire and the
standby takes over within `lease_ttl_ms` plus one retry. A holder that cannot renew (a long pause, a lost
connection) steps down like a restarted process. Every snapshot is written under the arm's token and the
write is refused inside Redis when a newer token exists (`StaleToken`: the learner steps down).

Delivery contract. The learner reads the event stream through a consumer group. An entry is
acknowledged (XACK) only once it is fully used: a view or unrelated event right after it is read; an
impression and its feedback only after the update that trained on them was *published* (or the example was
routed to the holdout / dropped, and the publication after that went out). A learner killed at any point
restarts from its pending entries (XAUTOCLAIM of what other consumers of the group left pending for at
least `claim_idle_ms`, then its own from id 0), rebuilding the reward join from them, and resumes from the
last published snapshot. Entries another consumer left pending more recently are claimed later (every
`claim_idle_ms`, XPENDING IDLE + XCLAIM, never this consumer's own). So no event is lost, and an event is
trained on twice only if the process dies between a publication and the XACK that follows it (one
publication's worth of examples: the documented at-least-once window).

Snapshots. Each publication is `store.put_weights(arm, encode_weights(state_dict), meta, token=...)` with
meta naming `base_version`, `snapshot` (accepted updates since the base), `steps`, `examples`, `reverts`,
holdout log-losses of the published weights and of the base, and the fencing `token`. Only weights that
passed the holdout check are ever published (`ArmLearner.good_state`). The API adopts a newer version
between requests.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from reco.online.arm import ArmLearner, StepReport
from reco.online.examples import encode
from reco.online.history import HistoryTracker
from reco.online.join import Labelled, RewardJoiner
from reco.online.model import ArmModel
from reco.state.lease import LeaseSet
from reco.state.online import Row, decode_event
from reco.state.snapshots import StaleToken, decode_weights, encode_weights
from reco.state.store import StoreUnavailable

log = logging.getLogger(__name__)

DEFAULT_GROUP = "reco-learner"

#: Errors after which the learner reconnects instead of exiting (BusyLoadingError, a Redis still loading its
#: AOF after a restart, is a ConnectionError).
RECONNECTABLE: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError, StoreUnavailable)

#: `rebase(arm, current_base_version)` -> a new `ArmLearner` on the version the arm's alias now points at,
#: or None when it has not moved.
Rebase = Callable[[str, str], "ArmLearner | None"]


#: A stream entry as the learner reads it (`reco.state.online.decode_event`; kept under its old name).
decode_entry = decode_event


@dataclass
class LearnerStats:
    read: int = 0
    undecodable: int = 0
    acked: int = 0
    acked_examples: int = 0  # labelled impressions whose entries were acknowledged after use
    publications: int = 0
    dropped_unknown: int = 0  # labelled impressions of an arm not learned here, or items outside the vocabulary
    paused_examples: int = 0
    reconnects: int = 0  # lost Redis connections survived
    rebases: int = 0  # arms switched to a new registry base version
    claimed: int = 0  # entries taken over from other consumers of the group
    leaderships: int = 0  # times this learner took the leases (became the writer)
    stepped_down: int = 0  # times it lost a lease (or a publication was refused as stale) and stood by
    led_at: float | None = None  # `clock()` when it last became the writer
    reports: list[StepReport] = field(default_factory=list)


def default_owner(consumer: str) -> str:
    """A lease owner name unique to this process (host, pid, random suffix)."""
    return f"{consumer}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class OnlineLearner:
    """Consumes the event stream and keeps the online weights of `arms` (arm -> ArmLearner).

    `store` is a `reco.state.store.RedisStore`. `checkpoint(arm, blob, meta)` (optional, e.g. the MLflow
    hand-off) is called with the last good snapshot at most every `checkpoint_every_s` seconds of wall time.
    `lease_ttl_ms` (None: no lease, for single-process tests and benchmarks) enables the per-arm leases;
    `clock` (default `time.time`) drives lease renewal and the claim interval.
    """

    def __init__(
        self,
        store: Any,
        arms: Mapping[str, ArmLearner],
        *,
        group: str = DEFAULT_GROUP,
        consumer: str = "learner-1",
        window_s: float = 1800.0,
        read_count: int = 5000,
        publish_every_s: float = 1.0,
        checkpoint: Callable[[str, bytes, dict[str, Any]], None] | None = None,
        checkpoint_every_s: float = 300.0,
        metrics_path: str | None = None,
        keep_reports: int = 1000,
        reconnect_backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        rebase: Rebase | None = None,
        base_poll_s: float = 30.0,
        joiner_args: Mapping[str, Any] | None = None,
        history_args: Mapping[str, Any] | None = None,
        lease_ttl_ms: int | None = None,
        owner: str | None = None,
        claim_idle_ms: int = 10_000,
        clock: Callable[[], float] = time.time,
    ):
        if claim_idle_ms <= 0:
            raise ValueError("claim_idle_ms must be > 0: a live consumer's entries are never taken from it")
        self.store = store
        self.arms = dict(arms)
        self.group = group
        self.consumer = consumer
        self.window_s = window_s
        self.read_count = read_count
        self.publish_every_s = publish_every_s
        self.checkpoint = checkpoint
        self.checkpoint_every_s = checkpoint_every_s
        self.metrics_path = metrics_path
        self.reconnect_backoff_s = reconnect_backoff_s
        self.max_backoff_s = max_backoff_s
        self.rebase = rebase
        self.base_poll_s = base_poll_s
        self.joiner_args = joiner_args
        self.history_args = history_args
        self.lease_ttl_ms = lease_ttl_ms
        self.owner = owner
        self.claim_idle_ms = claim_idle_ms
        self.clock = clock
        self.stats = LearnerStats()
        self._last_beat = float("-inf")
        self._joiner_args = {"window_s": window_s, **(joiner_args or {})}
        self._history_args = dict(history_args or {})
        self.joiner = RewardJoiner(**self._joiner_args)
        self.history = HistoryTracker(**self._history_args)
        self._last_base_poll = time.monotonic()
        self._keep_reports = keep_reports
        self._tag = 0
        self._unacked: dict[str, deque[tuple[int, list[str]]]] = {a: deque() for a in self.arms}
        self._dirty: set[str] = set()
        self._last_publish = 0.0
        self._last_checkpoint = time.monotonic()
        self._last_claim = clock()
        self._versions: dict[str, int | None] = {}
        self._recovered = False
        name = owner or default_owner(consumer)
        arms_leased = list(self.arms) if lease_ttl_ms is not None else []
        self._leases = LeaseSet(store.client, store.prefix, arms_leased, name, ttl_ms=lease_ttl_ms or 1, clock=clock)

    # -- one writer: the leases --------------------------------------------------------------------------
    @property
    def leading(self) -> bool:
        """True when this learner may write (it holds every arm's lease, or runs without leases)."""
        return self._leases.held

    def token(self, arm: str) -> int | None:
        return self._leases.token(arm)

    def lease_holders(self) -> dict[str, tuple[str, int] | None]:
        """arm -> (owner, token) of whoever holds its lease now (None: free)."""
        return self._leases.holders()

    def hold_leases(self) -> bool:
        """Renew the leases when due, or try to take them all. True = this learner may write."""
        if self._leases.held:
            if self._leases.renew_due():
                return True
            self.step_down("a lease was lost")
            return False
        if not self._leases.take():
            return False
        self.stats.leaderships += 1
        self.stats.led_at = self.clock()
        self._recovered = False  # resume from the last snapshot and take over the pending entries
        log.info("leases taken (tokens %s): this learner writes now", {a: self.token(a) for a in self.arms})
        return True

    def keep_leases(self) -> None:
        """Renew the leases when due, between steps of a long batch; `StaleToken` when one was lost (the
        run loop then steps down)."""
        if not self._leases.renew_due():
            raise StaleToken("a lease was lost while learning")

    def step_down(self, why: str) -> None:
        """Stop writing: forget what was not published (the next holder replays it) and free the leases."""
        log.warning("stepping down (%s): standing by", why)
        self.stats.stepped_down += 1
        self._forget_unpublished()
        self._leases.release()

    def release(self) -> None:
        """Give the leases up at a clean stop, so that a standby takes over at once."""
        self._leases.release()

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Create the group if needed, resume each arm from its last published snapshot on the same base,
        and replay this group's pending entries (what a previous run read but did not finish)."""
        if not self.hold_leases():
            raise RuntimeError("another learner holds the leases of these arms (run() waits as a standby)")
        self.store.ensure_group(self.group, start_id="0")
        for arm, learner in self.arms.items():
            self._resume_weights(arm, learner)
        self._recover_pending()

    def _resume_weights(self, arm: str, learner: ArmLearner) -> None:
        snap = self.store.get_weights(arm)
        if snap is None or str(snap.meta.get("base_version")) != learner.model.base_version:
            return
        learner.resume_from(decode_weights(snap.blob), int(snap.meta.get("snapshot", 0)))
        self._versions[arm] = snap.version
        log.info("arm %s resumes from snapshot version %s", arm, snap.version)

    def _recover_pending(self) -> None:
        # Take over what other (dead) consumers of the group left pending for a real idle time, then replay
        # this consumer's pending entries, oldest first.
        self.stats.claimed += self.store.claim_idle(self.group, self.consumer, min_idle_ms=self.claim_idle_ms,
                                                    count=self.read_count)  # fmt: skip
        self._last_claim = self.clock()
        start = "0-0"
        while True:
            rows = self.store.read_pending_after(self.group, self.consumer, start, count=self.read_count)
            if not rows:
                break
            self._process(rows)
            start = rows[-1][0]
        self._recovered = True

    def _claim_orphans(self) -> None:
        """Every `claim_idle_ms`: entries another consumer left pending that long (it died after a
        takeover's claim, or it was a learner without a lease)."""
        if self.clock() - self._last_claim < self.claim_idle_ms / 1000.0:
            return
        self._last_claim = self.clock()
        rows = self.store.claim_from_others(self.group, self.consumer, min_idle_ms=self.claim_idle_ms,
                                            count=self.read_count)  # fmt: skip
        if rows:
            self.stats.claimed += len(rows)
            self._process(rows)

    def poll(self, block_ms: int | None = 200) -> int:
        """Read, join and learn from one batch of new entries; publish and acknowledge what is due.
        Returns the number of entries read."""
        if not self._recovered:
            self.start()
        self._claim_orphans()
        rows = self.store.read_events(self.group, self.consumer, count=self.read_count, block_ms=block_ms)
        self._process(rows)
        self.maybe_publish()
        return len(rows)

    def run(
        self,
        stop: Callable[[], bool] = lambda: False,
        idle_exit_s: float | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Poll until `stop()` is true (or nothing arrived for `idle_exit_s`); publish what is left.

        Without the leases (another learner holds them) it stands by, retrying every third of the lease
        lifetime. A lost Redis connection (restart, failover, timeout) is not fatal: the learner forgets
        what it had not published (`_forget_unpublished`), waits `reconnect_backoff_s` (doubling up to
        `max_backoff_s`) and starts over like a restarted process: resume from the last published
        snapshot, replay the group's pending entries. Base-version changes are polled every
        `base_poll_s` seconds when a `rebase` callback was given. A clean stop releases the leases.
        """
        idle_since = time.monotonic()
        backoff = self.reconnect_backoff_s

        def wait(seconds: float) -> None:
            waited = 0.0
            while waited < seconds and not stop():  # short slices: a stop request is honoured quickly
                sleep(min(0.1, seconds))
                waited += min(0.1, seconds)

        while not stop():
            try:
                if not self.hold_leases():
                    self._heartbeat()
                    wait((self.lease_ttl_ms or 0) / 3000.0)
                    idle_since = time.monotonic()
                    continue
                self.maybe_rebase()
                n = self.poll()
                self._heartbeat()
            except StaleToken as exc:
                self.step_down(str(exc))
                continue
            except RECONNECTABLE as exc:
                self._on_disconnect(exc, backoff)
                wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            backoff = self.reconnect_backoff_s
            if n:
                idle_since = time.monotonic()
            elif idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                break
        try:
            if self.leading and self._recovered:
                self.maybe_publish(force=True)
            self.release()
        except (*RECONNECTABLE, StaleToken) as exc:  # the pending entries stay pending: the next run replays them
            log.warning("final publication skipped: %s", exc)

    def _heartbeat(self) -> None:
        """At most every 5 s: tell `reco learn --check` (the compose healthcheck) that this loop runs."""
        now = self.clock()
        if now - self._last_beat >= 5.0:
            self.store.beat(self.consumer, now)
            self._last_beat = now

    def _on_disconnect(self, exc: BaseException, backoff: float) -> None:
        self.stats.reconnects += 1
        log.warning("redis unavailable (%s: %s); retrying in %.1f s", type(exc).__name__, exc, backoff)
        self._forget_unpublished()

    def _forget_unpublished(self) -> None:
        """Drop the state a restarted process would not have: the reward join, the stream history, the
        examples waiting for a step and the weights not yet published. Their entries are still pending in
        the group and come back on the next `start()`, which also resumes each arm from its last published
        snapshot. Replay buffers, holdouts and counters are kept (history, not delivery state)."""
        counters = dict(self.joiner.counters)
        self.joiner = RewardJoiner(**self._joiner_args)
        self.joiner.counters.update(counters)
        self.history = HistoryTracker(**self._history_args)
        self._unacked = {a: deque() for a in self.arms}
        self._dirty.clear()
        for learner in self.arms.values():
            learner.rewind()
        self._recovered = False

    # -- one batch ---------------------------------------------------------------------------------------
    def _process(self, rows: list[Row]) -> None:
        events, done = [], []
        contexts: dict[str, tuple[str, ...]] = {}  # one fallback tuple per request, shared by its impressions
        for sid, ev in rows:
            if ev is None:  # unparseable or trimmed while pending: nothing to learn, do not keep it pending
                self.stats.undecodable += 1
                done.append(sid)
                continue
            if ev["event_type"] == "impression":
                rid = ev.get("request_id") or ""
                ctx = contexts.get(rid)
                ev["context"] = contexts[rid] = self.history.context(ev) if ctx is None else ctx
            else:
                self.history.observe(ev)
            events.append(ev)
        self.stats.read += len(rows)
        labelled, finished = self.joiner.add(events)
        done += finished
        self._learn(labelled, done)
        self._ack(done)

    def _learn(self, labelled: list[Labelled], done: list[str]) -> None:
        by_arm: dict[str, list[Labelled]] = {}
        for x in labelled:
            if x.imp.arm in self.arms:
                by_arm.setdefault(x.imp.arm, []).append(x)
            else:
                self.stats.dropped_unknown += 1
                self.stats.acked_examples += 1
                done.extend(x.sids)
        if not by_arm:
            return
        contexts = self.store.read_request_contexts(x.imp.request_id for xs in by_arm.values() for x in xs)
        paused = self.store.paused_arms(list(by_arm))
        for arm, xs in by_arm.items():
            if arm in paused:  # consumed and acknowledged, not learned: lag stays flat while paused
                self.stats.paused_examples += len(xs)
                self.stats.acked_examples += len(xs)
                done.extend(s for x in xs for s in x.sids)
                continue
            self._learn_arm(arm, xs, contexts)

    def _learn_arm(self, arm: str, xs: list[Labelled], contexts: Mapping[str, tuple[str, ...]]) -> None:
        learner = self.arms[arm]
        model: ArmModel = learner.model
        ctx = {x.imp.request_id: contexts.get(x.imp.request_id, x.imp.context) for x in xs}
        ex, kept = encode(xs, ctx, model.index_of, learner.max_session, model.context_index, model.min_session)
        tags = range(self._tag, self._tag + len(xs))
        self._tag += len(xs)
        ex.tag[:] = [t for t, k in zip(tags, kept, strict=True) if k]
        self.stats.dropped_unknown += int((~kept).sum())
        queue = self._unacked[arm]
        queue.extend((t, x.sids) for t, x in zip(tags, xs, strict=True))
        reports: list[StepReport] = []
        for start in range(0, len(ex), learner.update_every):  # at most one step per chunk
            self.keep_leases()  # a long batch must not outlive the lease it writes under
            reports += learner.learn_many(ex.take(slice(start, start + learner.update_every)))
        if reports:
            self.stats.reports.extend(reports)
            del self.stats.reports[: -self._keep_reports]
            self._dirty.add(arm)
            for r in reports:
                if r.outcome in ("reverted", "reverted_to_base"):
                    self._on_revert(arm, r)

    def _on_revert(self, arm: str, report: StepReport) -> None:
        self.store.count_revert(arm)
        log.warning(
            "arm %s: update %s refused, back to the last good snapshot (holdout log-loss %.4f vs %.4f good,"
            " %.4f base)", arm, report.step, report.holdout_after, report.holdout_before, report.holdout_base,
        )  # fmt: skip

    # -- base-version changes ----------------------------------------------------------------------------
    def maybe_rebase(self, force: bool = False) -> list[str]:
        """Every `base_poll_s`, ask `rebase` whether each arm's registry alias moved; switch the arms that
        moved. Returns the arms switched. A registry error keeps the current bases (logged)."""
        now = time.monotonic()
        if self.rebase is None or (not force and now - self._last_base_poll < self.base_poll_s):
            return []
        self._last_base_poll = now
        switched = []
        for arm, learner in list(self.arms.items()):
            try:
                new = self.rebase(arm, learner.model.base_version)
            except Exception as exc:  # an unreachable registry must not stop learning
                log.warning("arm %s: base version not checked (%s: %s)", arm, type(exc).__name__, exc)
                continue
            if new is not None and new.model.base_version != learner.model.base_version:
                self._switch_base(arm, new)
                switched.append(arm)
        return switched

    def _switch_base(self, arm: str, new: ArmLearner) -> None:
        """Learn `arm` on a new base from now on: fresh replay buffer, holdout and revert rule (they were
        scored against the old base); the new base weights are published at once (snapshot 0), so the API,
        which serves a snapshot only on its own base version, never mixes the two. The old base's labelled
        examples still waiting for a step are acknowledged unlearned (at most `update_every` per arm)."""
        old = self.arms[arm].model.base_version
        queue = self._unacked[arm]
        done = [s for _, sids in queue for s in sids]
        self.stats.acked_examples += len(queue)
        queue.clear()
        self.arms[arm] = new
        self._dirty.discard(arm)
        self._publish(arm)
        self._ack(done)
        self.stats.rebases += 1
        log.info("arm %s: base version %s -> %s (published snapshot version %s)", arm, old,
                 new.model.base_version, self._versions.get(arm))  # fmt: skip

    # -- publication and acknowledgement -----------------------------------------------------------------
    def maybe_publish(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_publish < self.publish_every_s:
            return
        self._last_publish = now
        for arm in sorted(self._dirty):
            self._publish(arm)
        self._dirty.clear()
        # Whatever is older than each arm's oldest unstepped example is used and published: acknowledge it.
        done: list[str] = []
        for arm, queue in self._unacked.items():
            floor = self.arms[arm].oldest_fresh_tag()
            while queue and (floor is None or queue[0][0] < floor):
                done.extend(queue.popleft()[1])
                self.stats.acked_examples += 1
        self._ack(done)
        self._write_stats()
        if self.checkpoint is not None and (force or now - self._last_checkpoint >= self.checkpoint_every_s):
            self._last_checkpoint = now
            for arm, learner in self.arms.items():
                if learner.snapshot_step > 0:
                    self.checkpoint(arm, encode_weights(learner.good_state()), self._meta(arm))

    def _meta(self, arm: str) -> dict[str, Any]:
        learner = self.arms[arm]
        online, base = learner.good_losses()
        c = learner.counters
        return {
            "base_version": learner.model.base_version,
            "snapshot": learner.snapshot_step,
            "steps": c.steps,
            "examples": c.examples,
            "reverts": c.reverts,
            "holdout_logloss": None if math.isnan(online) else round(online, 6),
            "base_logloss": None if math.isnan(base) else round(base, 6),
            "published_at": self.clock(),
        }

    def _publish(self, arm: str) -> None:
        learner = self.arms[arm]
        blob = encode_weights(learner.good_state())
        self._versions[arm] = self.store.put_weights(arm, blob, self._meta(arm), token=self.token(arm))
        self.stats.publications += 1

    def held_entries(self) -> int:
        """Stream entries of labelled examples kept pending until a publication covers them."""
        return sum(len(sids) for q in self._unacked.values() for _, sids in q)

    def state_sizes(self) -> dict[str, int]:
        """Entries held by each bounded in-memory structure (what O-1's memory audit reads)."""
        sizes = {f"join_{k}": v for k, v in self.joiner.sizes().items()}
        sizes.update({f"history_{k}": v for k, v in self.history.sizes().items()})
        sizes["unacked"] = sum(len(q) for q in self._unacked.values())
        sizes["reports"] = len(self.stats.reports)
        for arm, learner in self.arms.items():
            sizes[f"replay[{arm}]"] = len(learner._buffer)
            sizes[f"holdout[{arm}]"] = len(learner._holdout)
            sizes[f"fresh[{arm}]"] = learner.n_fresh
        return sizes

    def published_version(self, arm: str) -> int | None:
        return self._versions.get(arm)

    def _ack(self, sids: list[str]) -> None:
        if sids:
            self.stats.acked += self.store.ack(self.group, sids)

    # -- observability -----------------------------------------------------------------------------------
    def lag(self) -> dict[str, int]:
        """Entries not yet delivered to the group (`lag`) and delivered but not acknowledged (`pending`)."""
        return self.store.group_lag(self.group)

    def metrics(self) -> dict[str, float]:
        """Flat metrics (Prometheus-style names; `{arm}` labels inlined)."""
        m: dict[str, float] = {
            "reco_online_events_read_total": self.stats.read,
            "reco_online_events_acked_total": self.stats.acked,
            "reco_online_publications_total": self.stats.publications,
            "reco_online_pending_impressions": self.joiner.n_pending,
            "reco_online_leading": float(self.leading),
            "reco_online_stepped_down_total": self.stats.stepped_down,
        }
        for k, v in self.joiner.counters.items():
            m[f"reco_online_join_{k}_total"] = v
        for arm, learner in self.arms.items():
            c = learner.counters
            lbl = f'{{arm="{arm}"}}'
            m[f"reco_online_examples_total{lbl}"] = c.examples
            m[f"reco_online_steps_total{lbl}"] = c.steps
            m[f"reco_online_skipped_nonfinite_total{lbl}"] = c.skipped_nonfinite
            m[f"reco_online_restored_total{lbl}"] = c.restored
            m[f"reco_online_reverts_total{lbl}"] = c.reverts
            m[f"reco_online_reverts_to_base_total{lbl}"] = c.reverts_to_base
            m[f"reco_online_snapshot{lbl}"] = learner.snapshot_step
        return m

    def _write_stats(self) -> None:
        stats = {}
        for arm, learner in self.arms.items():
            c, (online, base) = learner.counters, learner.good_losses()
            stats[arm] = {"snapshot": learner.snapshot_step, "steps": c.steps, "examples": c.examples,
                          "reverts": c.reverts, "version": self._versions.get(arm) or 0,
                          "holdout_logloss": online, "base_logloss": base}  # fmt: skip
        self.store.write_learner_stats(stats)
        if self.metrics_path:
            write_prometheus(self.metrics_path, self.metrics())


def write_prometheus(path: str, metrics: Mapping[str, float]) -> None:
    """Write metrics in the Prometheus text format (node-exporter textfile collector), atomically."""
    lines = [f"{k} {float(v)!r}" for k, v in sorted(metrics.items())]
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
