"""Every Redis key of reco and its TTL: the layout `RedisStore` (`reco.state.store`) reads and writes.

Redis key layout (``P`` is the configurable prefix, `RecoSettings.redis_prefix`, default ``reco``)::

    P:events                    stream   one entry per accepted event, field ``e`` = the Event as JSON.
                                         XADD MAXLEN ~ stream_maxlen (a memory guard, default 1,000,000);
                                         consumers trim what every group has acknowledged
                                         (`trim_acknowledged`), so the cap is never reached in the demo
    P:seen:<event_id>           string   dedup marker, SET NX EX seen_ttl_s (default 7 days)
    P:session:<session_id>      list     item ids viewed/clicked in the session, oldest first, the last
                                         session_max kept (RPUSH + LTRIM), TTL session_ttl_s renewed per event
    P:cart:<session_id>         zset     the session's cart: items added to it (add_to_cart), score = event time;
                                         a purchase removes its item; the last cart_max kept, TTL session_ttl_s
    P:uitems:<user_id>          list     the user's last user_items_max viewed/clicked items, oldest first,
                                         TTL user_ttl_s: history for a user who starts a new session
    P:user:<user_id>            hash     user profile: ``n:<event_type>`` counters, ``last_ts``, plus any fields
                                         written with `put_user_profile`
    P:item:<item_id>            hash     item features (``category``, ``title``, ...; `put_item_features`)
    P:trending                  zset     time-decayed view/click counts (forward decay, half-life
                                         trending_half_life_s): a member's score is sum(w * 2^((ts - E)/H)); the
                                         current score is score * 2^(-(now - E)/H). Kept to trending_max members
    P:trending:epoch            string   E, the forward-decay epoch (unix seconds); rebased (all scores
                                         rescaled in the same Lua call) once it is 32 half-lives old
    P:popular                   zset     all-time view/click counts (plus `set_popular` seeds)
    P:req:<request_id>          hash     served impressions of one request: item_id -> "<arm>\\t<category>",
                                         TTL feedback_ttl_s; lets feedback find its arm and category
    P:fb:<request_id>:<item_id> string   marker: the first feedback on this served impression was counted
    P:ts:<arm>                  hash     Thompson evidence per category: ``<cat>:a`` successes,
                                         ``<cat>:b`` failures; ``_n`` counted feedback events (interactions)
    P:weights:<arm>             string   latest published online-weights version (int)
    P:weights:<arm>:seq         string   version allocator (INCR)
    P:weights:<arm>:<version>   hash     ``blob`` (bytes, `reco.state.snapshots` codec) and ``meta`` (JSON, with
                                         the writer's fencing ``token``); the last keep_weights kept
    P:reqctx:<request_id>       string   JSON list of the session items a request was ranked with (written by
                                         the API's impression log), TTL REQUEST_CONTEXT_TTL_S
    P:online:paused:<arm>       string   set = online learning of the arm paused (admin API); no TTL
    P:online:reverts:<arm>      string   guardrail reverts of the arm (INCR)
    P:online:stats:<arm>        hash     the learner's counters per arm (snapshot, steps, examples, reverts,
                                         version, holdout log-losses)
    P:online:heartbeat:<name>   string   last poll time of learner <name>, TTL HEARTBEAT_TTL_S
    P:online:lease:<arm>        string   "<owner> <token>": the one learner that may write the arm's weights,
                                         SET NX PX LEASE_TTL_MS, renewed by its holder (`reco.state.lease`)
    P:online:lease:<arm>:token  string   the arm's fencing-token counter (INCR per acquisition, never reset)
    P:sim:clock                 hash     simulations only (RECO_SIMULATED_CLOCK): epoch, simulated time, the
                                         stream id the learner must reach (`reco.state.simclock`)
    P:sim:done                  string   the last epoch of the simulated clock the learner finished

Thompson statistics are counted per served impression, never per raw click: an impression of an item
served by arm A in category c adds 1 to ``c:b`` (a failure until proven otherwise); the first feedback
event (click, add_to_cart or purchase) naming that impression's request and item moves one from ``c:b`` to
``c:a``. Later feedback on the same impression (a purchase after the click) counts nothing more. Feedback
that names no served impression (unknown request, expired, or item not served) updates no statistics.
Feedback that arrives before its impression counts nothing (the server logs impressions as it
answers, long before a person clicks). `thompson_stats` returns the evidence (successes, failures),
floored at 0 defensively; the bandit adds its prior.

The API's impression log (`log_impressions` with a request context) runs its own script over one
request's impressions: the per-event steps of the general ingest for an impression (dedup, XADD, the
served-item record, the Thompson failure count), with the user counters, TTLs and the learner's
request-context record (``P:reqctx:<request_id>``, key and TTL below, read by `reco.online.control`) written once per
request in the same call (a test holds the resulting state equal to the general ingest's).

Ingest is one Lua script per batch: dedup + XADD + session/user/trending/Thompson updates run atomically
in one round trip, so an accepted event is never lost and never counted twice. Keys are computed in
Python and passed to the script; on Redis Cluster every key of a request would need one hash tag
(not needed for one Redis server or a replica set).
"""

from __future__ import annotations

__all__ = [
    "HEARTBEAT_TTL_S",
    "LEASE_TTL_MS",
    "REQUEST_CONTEXT_TTL_S",
    "heartbeat_key",
    "lease_key",
    "lease_token_key",
    "paused_key",
    "request_context_key",
    "reverts_key",
    "stats_key",
]

#: Default lifetime of a request-context record (seconds of wall time). Must exceed the reward window
#: (in wall time) plus the learner's lag.
REQUEST_CONTEXT_TTL_S = 6 * 3600


def request_context_key(prefix: str, request_id: str) -> str:
    """``P:reqctx:<request_id>``: the served session (a JSON list of item ids) of one request.

    >>> request_context_key("reco", "r1")
    'reco:reqctx:r1'
    """
    return f"{prefix}:reqctx:{request_id}"


#: A learner that has not beaten for this long is reported unhealthy (`reco learn --check`).
HEARTBEAT_TTL_S = 60

#: Default lease lifetime: a standby learner takes over at most this long (plus one retry interval,
#: a third of it) after the holder died.
LEASE_TTL_MS = 10_000


def paused_key(prefix: str, arm: str) -> str:
    return f"{prefix}:online:paused:{arm}"


def reverts_key(prefix: str, arm: str) -> str:
    return f"{prefix}:online:reverts:{arm}"


def stats_key(prefix: str, arm: str) -> str:
    return f"{prefix}:online:stats:{arm}"


def heartbeat_key(prefix: str, consumer: str) -> str:
    return f"{prefix}:online:heartbeat:{consumer}"


def lease_key(prefix: str, arm: str) -> str:
    """``P:online:lease:<arm>``.

    >>> lease_key("reco", "control"), lease_token_key("reco", "control")
    ('reco:online:lease:control', 'reco:online:lease:control:token')
    """
    return f"{prefix}:online:lease:{arm}"


def lease_token_key(prefix: str, arm: str) -> str:
    return f"{lease_key(prefix, arm)}:token"
