"""Online learner against the real Redis stream (events written through `RedisStore.ingest`, the API's path),
training the served model: a real `SessionAwareRanker` (a tiny configuration of it) through `from_bundle`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import redis
import torch
from serving_helpers import tiny_bundle

from reco.data.events import Event
from reco.online import control
from reco.online.arm import ArmLearner
from reco.online.guardrails import log_loss
from reco.online.learner import OnlineLearner
from reco.online.model import ArmModel, from_bundle, logits_numpy
from reco.state.snapshots import decode_weights
from reco.state.store import RedisStore

pytestmark = pytest.mark.integration

N_ITEMS = 40
T0 = datetime(2026, 3, 1, tzinfo=UTC)
GOOD = set(range(1, 9))  # items the simulated users like


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on a loaded 2-core machine two threads spin against each other (~25x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(seed: int = 0, version: str = "7") -> ArmModel:
    """The served architecture (item ids "1".."40" are embedding rows 1..40)."""
    return from_bundle(tiny_bundle(n_items=N_ITEMS, seed=seed), version)


def _learner(**kw) -> ArmLearner:
    args = dict(lr=0.05, update_every=64, batch_size=64, replay=32, holdout_fraction=0.1, min_holdout=20, seed=0)
    args.update(kw)
    return ArmLearner(_model(), **args)


def _traffic(n_requests: int, seed: int, start: int = 0, arm: str = "treatment") -> list[Event]:
    """Requests of 5 impressions; a click on a liked item with p=0.7, else p=0.05, 5 s after the impression.
    Every request's session is one view event before it (so the stream alone rebuilds the context)."""
    rng = np.random.default_rng(seed)
    out = []
    for r in range(start, start + n_requests):
        ts = T0 + timedelta(seconds=10 * r)
        sess, user = f"s{r}", f"u{r % 50}"
        out.append(Event(event_id=f"v{r}", ts=ts, user_id=user, session_id=sess, item_id=str(rng.integers(1, N_ITEMS)),
                         event_type="view"))  # fmt: skip
        items = rng.choice(np.arange(1, N_ITEMS + 1), size=5, replace=False)
        for pos, item in enumerate(items, start=1):
            common = dict(ts=ts, user_id=user, session_id=sess, item_id=str(item), request_id=f"r{r}")
            imp = dict(position=pos, arm=arm, model_version="7", propensity=1.0, page_type="home", device="mobile")
            out.append(Event(event_id=f"r{r}:{pos}", event_type="impression", **imp, **common))
            if rng.random() < (0.7 if item in GOOD else 0.05):
                common["ts"] = ts + timedelta(seconds=5)
                out.append(Event(event_id=f"c{r}:{pos}", event_type="click", **common))
    return out


def _fresh_clicks(seed: int, n: int):
    """Labelled examples from the same click model as `_traffic` (a one-view session, home page, mobile)."""
    from reco.online.examples import Examples

    rng = np.random.default_rng(seed)
    session = np.zeros((n, 20), np.int64)
    session[:, 0] = rng.integers(1, N_ITEMS, n)
    items = rng.integers(1, N_ITEMS + 1, n)
    labels = (rng.random(n) < np.where(np.isin(items, sorted(GOOD)), 0.7, 0.05)).astype(np.float32)
    page, device = _model().context_index("home", "mobile")
    z = np.zeros(n, np.int64)
    return Examples(session, np.ones(n, np.int64), items, z + 1, z + page, z + device, np.ones(n, np.float32),
                    labels, np.full(n, np.nan, np.float32), np.arange(n))  # fmt: skip


def _close_windows(store: RedisStore, seconds: float) -> None:
    """A far-future event moves the watermark so that every open reward window closes."""
    store.ingest([Event(event_id=f"tick{seconds}", ts=T0 + timedelta(seconds=seconds), user_id="tick",
                        item_id="1", event_type="view")])  # fmt: skip


@pytest.fixture
def store(redis_url: str, redis_prefix: str) -> RedisStore:
    return RedisStore(redis.Redis.from_url(redis_url), redis_prefix)


def _online(store: RedisStore, learner: ArmLearner, **kw) -> OnlineLearner:
    return OnlineLearner(store, {"treatment": learner}, window_s=60, read_count=500, publish_every_s=0, **kw)


def _drain(ol: OnlineLearner, max_polls: int = 200) -> None:
    for _ in range(max_polls):
        if ol.poll(block_ms=None) == 0:
            break
    ol.maybe_publish(force=True)


def test_learns_publishes_and_acknowledges_everything(store: RedisStore) -> None:
    events = _traffic(600, seed=1)
    store.ingest(events)
    _close_windows(store, 10_000)
    learner = _learner()
    ol = _online(store, learner)
    _drain(ol)

    n_imp = sum(e.event_type == "impression" for e in events)
    n_clicks = sum(e.event_type == "click" for e in events)
    j = ol.joiner.counters
    assert j["positives"] == n_clicks and j["positives"] + j["negatives"] == n_imp
    # Every entry is used and acknowledged, except those of the examples still waiting for the next step.
    assert ol.lag() == {"lag": 0, "pending": ol.held_entries()}
    assert ol.held_entries() < 2 * learner.update_every
    snap = store.get_weights("treatment")
    assert snap is not None and snap.meta["base_version"] == "7" and snap.meta["snapshot"] > 0
    # The served weights changed, passed the holdout check, and learned the users' taste: on a fresh
    # seeded click simulation their log-loss beats the base's and liked items score higher than the rest.
    assert snap.meta["holdout_logloss"] < snap.meta["base_logloss"]
    base, online = _model(), _model()
    online.module.load_state_dict(decode_weights(snap.blob))
    assert any(not torch.equal(v, online.module.state_dict()[k]) for k, v in base.module.state_dict().items())
    rows = _fresh_clicks(seed=123, n=3000)
    base_loss = log_loss(logits_numpy(base, rows), rows.labels)
    online_logits = logits_numpy(online, rows)
    assert log_loss(online_logits, rows.labels) < base_loss - 0.05
    liked = np.isin(rows.items, sorted(GOOD))
    assert online_logits[liked].mean() > online_logits[~liked].mean() + 1.0


def test_request_context_record_is_used_over_the_stream(store: RedisStore) -> None:
    control.write_request_context(store.client, store.prefix, "r0", ["3", "4"])
    assert control.read_request_contexts(store.client, store.prefix, ["r0", "nope"]) == {"r0": ("3", "4")}


def test_kill_and_restart_loses_nothing_and_trains_nothing_twice(store: RedisStore) -> None:
    events = _traffic(800, seed=2)
    store.ingest(events)
    _close_windows(store, 20_000)
    n_imp = sum(e.event_type == "impression" for e in events)

    first = _online(store, _learner())
    for _ in range(3):  # read part of the stream, then "die" without a final publication
        first.poll(block_ms=None)
    assert first.lag()["pending"] > 0  # read but unused (or unpublished) entries stay pending

    second = _online(store, _learner())  # a new process: same group and consumer name
    _drain(second)
    labelled_again = second.joiner.counters["positives"] + second.joiner.counters["negatives"]
    # No loss: every impression is labelled by one of the two runs; none twice: what the first run
    # acknowledged (published) is not delivered again, what it left pending is.
    assert first.stats.acked_examples + labelled_again == n_imp
    assert second.lag() == {"lag": 0, "pending": second.held_entries()}
    assert second.arms["treatment"].snapshot_step >= first.arms["treatment"].snapshot_step


def test_pause_consumes_without_learning(store: RedisStore) -> None:
    store.ingest(_traffic(200, seed=3))
    _close_windows(store, 10_000)
    control.pause(store, "treatment")
    assert control.is_paused(store, "treatment")
    ol = _online(store, _learner())
    _drain(ol)
    assert ol.arms["treatment"].counters.steps == 0 and ol.stats.paused_examples > 0
    assert ol.lag()["pending"] == 0 and store.get_weights("treatment") is None
    control.resume(store, "treatment")
    assert not control.is_paused(store, "treatment")


def test_guardrail_revert_is_published_counted_and_exported(store: RedisStore, tmp_path) -> None:
    store.ingest(_traffic(400, seed=4))
    _close_windows(store, 10_000)
    # margin -1: every update fails its holdout check, so each is reverted to the last good (= base) weights.
    learner = _learner(margin=-1.0, patience=2)
    metrics = tmp_path / "online.prom"
    ol = _online(store, learner, metrics_path=str(metrics))
    _drain(ol)
    assert learner.counters.reverts >= 1
    assert control.revert_count(store, "treatment") == learner.counters.reverts
    assert f'reco_online_reverts_total{{arm="treatment"}} {float(learner.counters.reverts)!r}' in metrics.read_text()
    snap = store.get_weights("treatment")
    base = _model().module.state_dict()
    assert learner.snapshot_step == 0 and snap.meta["snapshot"] == 0  # nothing but the base was published
    assert all(torch.equal(base[k], v) for k, v in decode_weights(snap.blob).items())


def test_two_readers_see_the_same_snapshot_after_publication(store: RedisStore, redis_url: str) -> None:
    store.ingest(_traffic(200, seed=5))
    _close_windows(store, 10_000)
    ol = _online(store, _learner())
    _drain(ol)
    a = RedisStore(redis.Redis.from_url(redis_url), store.prefix)
    b = RedisStore(redis.Redis.from_url(redis_url), store.prefix)
    va, vb = a.latest_weights_version("treatment"), b.latest_weights_version("treatment")
    assert va == vb == ol.published_version("treatment")
    assert a.get_weights("treatment").blob == b.get_weights("treatment").blob


def test_checkpoint_hand_off_to_the_training_dag(mlflow_server: str) -> None:
    from mlflow import MlflowClient
    from reco.online.handoff import checkpoint_to_mlflow, latest_online_snapshot
    from reco.online.model import state_to_bytes

    client = MlflowClient(tracking_uri=mlflow_server)
    name = f"online-test-{np.random.default_rng().integers(1 << 30)}"
    assert latest_online_snapshot(client, name, "treatment") is None
    model = _model()
    checkpoint_to_mlflow(client, name, "treatment", state_to_bytes(model.module.state_dict()),
                         {"base_version": "7", "snapshot": 3})  # fmt: skip
    torch.nn.init.zeros_(model.module.item_emb.weight)
    newest = checkpoint_to_mlflow(client, name, "treatment", state_to_bytes(model.module.state_dict()),
                                  {"base_version": "7", "snapshot": 4})  # fmt: skip
    run_id, path, base_version = latest_online_snapshot(client, name, "treatment")
    assert (run_id, base_version) == (newest, "7")
    state = torch.load(path, weights_only=True)
    assert torch.equal(state["item_emb.weight"], model.module.item_emb.weight)
    assert latest_online_snapshot(client, name, "control") is None
