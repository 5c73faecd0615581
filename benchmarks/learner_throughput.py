"""Online learner throughput and lag: prints one JSON line.

A producer thread writes API-shaped traffic (requests of 10 impressions, a click on ~5% of them, a view
per click; request-context records with 10-item sessions) into the real Redis stream through
`RedisStore.ingest` at `--rate` labelled impressions/s for `--seconds`; the learner (a
`SessionAwareRanker` with the MovieLens-100k vocabulary, update every `--update-every` examples) consumes
it in the same process. Reported: labelled events/s the learner processed, the group's lag (undelivered
+ pending entries) sampled every 5 s, and its slope (entries/s; ~0 = not growing).

    .venv/bin/python benchmarks/learner_throughput.py --seconds 600 --rate 6000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np


def produce(redis_url: str, prefix: str, rate: float, n_items: int, stop, counter, max_session: int = 10) -> None:
    """The traffic producer, in its own process (as the API is): `rate` labelled impressions/s."""
    import redis

    from reco.data.events import Event
    from reco.online.control import write_request_context
    from reco.state.store import RedisStore

    client = redis.Redis.from_url(redis_url)
    store = RedisStore(client, prefix, stream_maxlen=None)
    rng = np.random.default_rng(0)
    t_sim = datetime(2026, 1, 1, tzinfo=UTC)
    per_tick = max(10, int(rate * 0.1))  # impressions per 100 ms tick
    next_tick = time.monotonic()
    r = 0
    while not stop.is_set():
        events, pipe = [], client.pipeline(transaction=False)
        for _ in range(per_tick // 10):
            rid, r = f"r{r}", r + 1
            t_sim += timedelta(milliseconds=50)
            length = 10 if max_session == 10 else int(rng.integers(1, max_session + 1))  # varied widths: real sessions
            write_request_context(pipe, prefix, rid, [str(x) for x in rng.integers(1, n_items + 1, length)])
            for pos, item in enumerate(rng.integers(1, n_items + 1, 10), 1):
                common = dict(user_id=f"u{r % 1000}", session_id=f"s{r}", item_id=str(item), request_id=rid)
                events.append(Event(event_id=f"{rid}:{pos}", ts=t_sim, event_type="impression", position=pos,
                                    arm="treatment", model_version="1", propensity=1.0, **common))  # fmt: skip
                if rng.random() < 0.05:
                    events.append(Event(event_id=f"c{rid}:{pos}", ts=t_sim + timedelta(seconds=3),
                                        event_type="click", **common))  # fmt: skip
        pipe.execute()
        store.ingest(events)
        counter.value += per_tick
        next_tick += 0.1
        time.sleep(max(0.0, next_tick - time.monotonic()))


def rss_mb() -> float:
    """This process's resident set size (MB), from /proc."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_summary(samples: list[tuple[float, float]]) -> dict[str, float]:
    """RSS at the start, the end, per minute (MB at the last sample of each minute) and the slope of the
    second half (MB/min; ~0 = a plateau)."""
    if not samples:
        return {}
    ts, mb = np.array([t for t, _ in samples]), np.array([m for _, m in samples])
    half = len(mb) // 2
    slope = float(np.polyfit(ts[half:], mb[half:], 1)[0]) * 60 if len(mb[half:]) >= 2 else float("nan")
    per_min = {int(t // 60): round(m, 1) for t, m in samples}
    return {"first": round(mb[0], 1), "last": round(mb[-1], 1), "max": round(mb.max(), 1),
            "slope_second_half_mb_per_min": round(slope, 2), "per_minute": list(per_min.values())}  # fmt: skip


def state_sizes(learner) -> dict[str, int]:
    """Entries held by the learner's bounded structures at the end of the run."""
    sizes = getattr(learner, "state_sizes", None)
    return sizes() if callable(sizes) else {}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--minutes", type=float, default=None, help="overrides --seconds")
    ap.add_argument("--rate", type=float, default=6000.0, help="labelled impressions per second produced")
    ap.add_argument("--update-every", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the learner")
    ap.add_argument("--replay", type=int, default=0, help="replay rows per mini-batch")
    ap.add_argument("--max-session", type=int, default=10, help="session length (10: fixed; else uniform 1..N)")
    ap.add_argument("--read-count", type=int, default=5000, help="stream entries per XREADGROUP")
    ap.add_argument("--no-learner", action="store_true", help="producer only (the baseline of a p99 A/B)")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = ap.parse_args()
    if args.minutes is not None:
        args.seconds = args.minutes * 60.0

    import redis
    import torch

    from reco.models.ranker import RankerConfig, SessionAwareRanker
    from reco.online import ArmLearner, OnlineLearner
    from reco.online.model import ArmModel
    from reco.state.store import RedisStore

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n_items = 1682
    ranker = SessionAwareRanker(RankerConfig(n_items=n_items + 1, n_categories=20)).eval()
    index = {str(i): i for i in range(1, n_items + 1)}

    def fwd(m, b):
        return m(b.session, b.items.unsqueeze(1), b.page, b.device)[0][:, 0]

    model = ArmModel(ranker, index, "1", fwd, context_index=ranker.context_index, min_session=1)
    client = redis.Redis.from_url(args.redis_url)
    prefix = f"bench-learn-{uuid.uuid4().hex[:8]}"
    store = RedisStore(client, prefix, stream_maxlen=None)
    arm = ArmLearner(model, update_every=args.update_every, batch_size=args.batch_size, replay=args.replay, seed=0)
    learner = OnlineLearner(store, {"treatment": arm}, window_s=60, read_count=args.read_count,
                             publish_every_s=1.0)  # fmt: skip
    learner.start()

    stop = mp.Event()
    counter = mp.Value("q", 0)
    producer = mp.Process(
        target=produce, args=(args.redis_url, prefix, args.rate, n_items, stop, counter, args.max_session)
    )
    lags: list[tuple[float, int]] = []
    rss: list[tuple[float, float]] = []
    t0 = time.monotonic()
    producer.start()
    next_sample = t0
    while time.monotonic() - t0 < args.seconds:
        if args.no_learner:
            time.sleep(0.1)
        else:
            learner.poll(block_ms=100)
        if time.monotonic() >= next_sample:
            lag = learner.lag()
            lags.append((time.monotonic() - t0, lag["lag"] + lag["pending"]))
            rss.append((time.monotonic() - t0, rss_mb()))
            next_sample += 5.0
    stop.set()
    producer.join(timeout=30)
    elapsed = time.monotonic() - t0
    j = learner.joiner.counters
    labelled = j["positives"] + j["negatives"]
    ts, ls = np.array([t for t, _ in lags]), np.array([v for _, v in lags], float)
    half = len(ls) // 2
    slope = float(np.polyfit(ts[half:], ls[half:], 1)[0]) if len(ls[half:]) >= 2 else float("nan")
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for k in range(0, len(keys), 1000):
        client.delete(*keys[k : k + 1000])
    print(json.dumps({
        "benchmark": "learner_throughput", "seconds": round(elapsed, 1), "rate_target": args.rate,
        "produced_impressions_per_s": round(counter.value / elapsed),
        "labelled_per_s": round(labelled / elapsed), "steps": arm.counters.steps,
        "publications": learner.stats.publications, "lag_first": int(ls[0]) if len(ls) else None,
        "lag_last": int(ls[-1]) if len(ls) else None, "lag_max": int(ls.max()) if len(ls) else None,
        "lag_slope_second_half_per_s": round(slope, 2), "torch_threads": args.threads,
        "rss_mb": rss_summary(rss), "state_sizes": state_sizes(learner),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
