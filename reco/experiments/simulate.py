"""Seeded synthetic experiment logs in the lake's event schema (tests, benchmarks, demos).

Vectorised end to end (no Python loop per event), so 10 million events take seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reco.data.events import EVENT_SCHEMA


@dataclass(frozen=True)
class SimConfig:
    """An experiment to simulate. `ctr` per arm is the mean per-user click probability; users differ
    (Beta-distributed) so impressions are clustered within users. `novelty` multiplies a treatment arm's
    lift by `1 + novelty * exp(-k / 3)` on day k after a user's first exposure."""

    arms: Mapping[str, float] = field(default_factory=lambda: {"control": 0.5, "treatment": 0.5})
    ctr: Mapping[str, float] = field(default_factory=lambda: {"control": 0.10, "treatment": 0.10})
    users: int = 2000
    sessions: int = 8000
    days: int = 14
    pre_days: int = 0
    impressions_per_session: float = 5.0
    start: date = date(2026, 1, 1)
    novelty: float = 0.0
    purchase_rate: float = 0.0  # purchases per click
    phase: int = 1  # written to the `phase` column when the event schema has one
    seed: int = 0


PAGE_TYPES = ("home", "product", "category")
DEVICES = ("web", "ios", "android")


def simulate_events(cfg: SimConfig) -> pa.Table:
    """Impression, click (and purchase) events for `cfg`, as an Arrow table in `EVENT_SCHEMA`.

    >>> t = simulate_events(SimConfig(users=50, sessions=100, days=3))
    >>> sorted(set(t.column("event_type").to_pylist()))
    ['click', 'impression']
    """
    rng = np.random.default_rng(cfg.seed)
    names = list(cfg.arms)
    shares = np.array([cfg.arms[a] for a in names], dtype=float)
    user_arm = rng.choice(len(names), size=cfg.users, p=shares / shares.sum())
    base = np.array([cfg.ctr[a] for a in names])
    control_ctr = base[0]
    conc = 20.0  # Beta concentration: per-user CTR heterogeneity
    p_user = rng.beta(conc * control_ctr, conc * (1 - control_ctr), cfg.users)
    # sessions: heavy users have more of them
    activity = rng.gamma(0.7, 1.0, cfg.users)
    s_user = rng.choice(cfg.users, size=cfg.sessions, p=activity / activity.sum())
    s_day = rng.integers(-cfg.pre_days, cfg.days, cfg.sessions)
    first = np.full(cfg.users, np.iinfo(np.int64).max)
    in_exp = s_day >= 0
    np.minimum.at(first, s_user[in_exp], s_day[in_exp])
    n_imp = rng.poisson(cfg.impressions_per_session - 1, cfg.sessions) + 1
    sess = np.repeat(np.arange(cfg.sessions), n_imp)
    position = np.arange(sess.size) - np.repeat(np.cumsum(n_imp) - n_imp, n_imp) + 1
    user, day = s_user[sess], s_day[sess]
    arm = user_arm[user]
    k = np.where(day >= 0, day - first[user], 0)
    rel = base[arm] / control_ctr - 1.0
    rel = rel * (1.0 + cfg.novelty * np.exp(-k / 3.0))
    p = np.clip(p_user[user] * np.where(day >= 0, 1.0 + rel, 1.0), 0, 1)
    clicked = rng.random(sess.size) < p
    n = sess.size
    secs = rng.integers(0, 86_400, cfg.sessions)[sess] + position  # clicks come a few seconds later
    t0 = int(datetime(cfg.start.year, cfg.start.month, cfg.start.day, tzinfo=UTC).timestamp())
    ts_imp = (t0 + day * 86_400 + np.minimum(secs, 86_390)) * 1_000_000
    item = rng.integers(1, 5000, n)
    propensity = np.round(rng.uniform(0.05, 1.0, n), 4)

    # page type per session and device per user, from their own stream (the other draws keep their seeds)
    attr_rng = np.random.default_rng([cfg.seed, 1])
    page = attr_rng.choice(len(PAGE_TYPES), size=cfg.sessions, p=[0.5, 0.3, 0.2])[sess]
    device = attr_rng.choice(len(DEVICES), size=cfg.users, p=[0.5, 0.3, 0.2])[user]

    def ids(prefix: str, values: np.ndarray) -> pa.Array:
        return pc.binary_join_element_wise(prefix, pa.array(values).cast(pa.string()), "")

    arm_names = pa.array(names)
    arm_col = pc.take(arm_names, pa.array(arm))
    arm_col = pc.if_else(pa.array(day >= 0), arm_col, pa.nulls(n, pa.string()))  # pre-period: no experiment
    version_col = pc.binary_join_element_wise(arm_col, "-v1", "")
    ci = np.flatnonzero(clicked)
    m = ci.size
    kinds = np.concatenate([np.zeros(n, np.int8), np.ones(m, np.int8)])
    cols = {
        "event_id": pa.concat_arrays([ids("i", np.arange(n)), ids("c", ci)]),
        "ts": pa.array(np.concatenate([ts_imp, ts_imp[ci] + 5_000_000]), pa.timestamp("us", tz="UTC")),
        "user_id": ids("u", np.concatenate([user, user[ci]])),
        "session_id": ids("s", np.concatenate([sess, sess[ci]])),
        "item_id": ids("m", np.concatenate([item, item[ci]])),
        "event_type": pc.take(pa.array(["impression", "click"]), pa.array(kinds)),
        "request_id": ids("r", np.concatenate([sess, sess[ci]])),
        "position": pa.array(np.concatenate([position, position[ci]]).astype(np.int32)),
        "arm": pa.concat_arrays([arm_col, arm_col.take(pa.array(ci))]),
        "model_version": pa.concat_arrays([version_col, version_col.take(pa.array(ci))]),
        "propensity": pa.array(np.concatenate([propensity, propensity[ci]])),
        "is_exploration": pa.array(np.zeros(n + m, bool)),
        "page_type": pc.take(pa.array(PAGE_TYPES), pa.array(np.concatenate([page, page[ci]]))),
        "device": pc.take(pa.array(DEVICES), pa.array(np.concatenate([device, device[ci]]))),
        "value": pa.nulls(n + m, pa.float64()),
    }
    if "phase" in EVENT_SCHEMA.names:
        cols["phase"] = pa.array(np.full(n + m, cfg.phase, dtype=np.int64), EVENT_SCHEMA.field("phase").type)
    table = pa.Table.from_pydict(cols, schema=EVENT_SCHEMA)
    if cfg.purchase_rate > 0:
        table = pa.concat_tables([table, _purchases(rng, table.slice(n), cfg.purchase_rate)])
    return table


def _purchases(rng: np.random.Generator, clicks: pa.Table, rate: float) -> pa.Table:
    pick = np.flatnonzero(rng.random(clicks.num_rows) < rate)
    p = clicks.take(pa.array(pick))
    p = p.set_column(0, "event_id", pc.binary_join_element_wise("p", p.column("event_id"), ""))
    p = p.set_column(5, "event_type", pa.array(np.full(p.num_rows, "purchase")))
    p = p.set_column(14, "value", pa.array(np.round(rng.gamma(2.0, 15.0, p.num_rows), 2)))
    return p.cast(EVENT_SCHEMA)


@dataclass(frozen=True)
class SlateSimConfig:
    """Logged ranking traffic with a known click model, for off-policy tests: each request (one session,
    preceded by up to `max_views` views) gets a random slate of `slate_size` of `items`, which the logging
    policy orders by Plackett-Luce sampling (temperature `logging_tau`) over per-item scores plus request
    noise, logging the per-slot propensity. P(click | item, slot) = item CTR x position bias."""

    requests: int = 3000
    items: tuple[str, ...] = tuple(str(i) for i in range(1, 9))
    slate_size: int = 4
    max_views: int = 3
    logging_tau: float = 1.0
    logging_spread: float = 1.0  # sd of the logging policy's per-item scores (larger: more extreme weights)
    start: date = date(2026, 1, 1)
    seed: int = 0


@dataclass(frozen=True)
class SlateLog:
    events: pa.Table  # EVENT_SCHEMA: views, impressions (with propensities), clicks
    sessions: list[list[str]]  # per request i (request_id f"r{i}"): the items viewed before it
    slates: np.ndarray  # (requests, slate_size) indices into cfg.items, in logged order
    click_prob: np.ndarray  # (n_items, slate_size): P(click | item, slot)
    propensity: np.ndarray  # (requests, slate_size): logged per-slot propensities
    clicked: np.ndarray  # (requests, slate_size) bool


def simulate_slate_log(cfg: SlateSimConfig, with_events: bool = True) -> SlateLog:
    """Simulate `cfg` (seeded).

    >>> log = simulate_slate_log(SlateSimConfig(requests=5))
    >>> log.slates.shape, sorted(set(log.events.column("event_type").to_pylist()))[-2:]
    ((5, 4), ['impression', 'view'])
    """
    from reco.experiments.offpolicy import plackett_luce_propensities

    rng = np.random.default_rng(cfg.seed)
    n_items, k, n = len(cfg.items), cfg.slate_size, cfg.requests
    click_prob = np.outer(rng.uniform(0.05, 0.4, n_items), 1.0 / np.sqrt(np.arange(1, k + 1)))
    slate_sets = np.argsort(rng.random((n, n_items)), axis=1)[:, :k]
    log_scores = rng.normal(0, cfg.logging_spread, n_items)[slate_sets] + rng.normal(0, 0.5, (n, k))
    gumbel = -np.log(-np.log(rng.random((n, k))))
    order = np.argsort(-(log_scores / cfg.logging_tau + gumbel), axis=1)  # Plackett-Luce sample
    slates = np.take_along_axis(slate_sets, order, 1)
    propensity = plackett_luce_propensities(np.take_along_axis(log_scores, order, 1), cfg.logging_tau)
    clicked = rng.random((n, k)) < click_prob[slates, np.arange(k)]
    n_views = rng.integers(0, cfg.max_views + 1, n)
    if not with_events:  # arrays only (fast repeated simulations)
        sessions = [[cfg.items[i] for i in rng.integers(0, n_items, v)] for v in n_views]
        return SlateLog(pa.table({}), sessions, slates, click_prob, propensity, clicked)
    t0 = datetime(cfg.start.year, cfg.start.month, cfg.start.day, tzinfo=UTC)
    rows: list[dict[str, object]] = []
    sessions = []
    for r in range(n):
        base = dict(user_id=f"u{r % max(n // 3, 1)}", session_id=f"s{r}", page_type="home", device="web")
        t_req = t0 + timedelta(seconds=60 * r + 30)
        viewed = [cfg.items[i] for i in rng.integers(0, n_items, n_views[r])]
        sessions.append(viewed)
        for v, item in enumerate(viewed):
            rows.append(base | dict(event_id=f"v{r}.{v}", ts=t_req - timedelta(seconds=20 - v), item_id=item,
                                    event_type="view"))  # fmt: skip
        for j in range(k):
            imp = base | dict(item_id=cfg.items[slates[r, j]], request_id=f"r{r}", position=j + 1, arm="control",
                              model_version="log-v1")  # fmt: skip
            rows.append(imp | dict(event_id=f"r{r}:{j + 1}", ts=t_req, event_type="impression",
                                   propensity=float(propensity[r, j]), is_exploration=False))  # fmt: skip
            if clicked[r, j]:
                rows.append(imp | dict(event_id=f"c{r}.{j}", ts=t_req + timedelta(seconds=5), event_type="click"))
    return SlateLog(pa.Table.from_pylist(rows, schema=EVENT_SCHEMA), sessions, slates, click_prob, propensity, clicked)
