"""Redis keys the learner owns, and the small operations other processes perform on them.

Key layout (all under the store prefix `P`):

| key | type | written by | meaning |
| --- | --- | --- | --- |
| `P:reqctx:<request_id>` | string: JSON item ids | API, at serve | session the request was ranked with (TTL) |
| `P:online:paused:<arm>` | string "1" | admin API | learning paused (events still consumed) |
| `P:online:reverts:<arm>` | integer | learner | guardrail reverts to the base weights |
| `P:online:stats:<arm>` | hash | learner | last step, holdout log-loss (online, base), counters |

The request-context record exists because the impression event has no field for the session: the learner
rebuilds the training example from exactly what the ranker saw.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from reco.state.keys import REQUEST_CONTEXT_TTL_S, request_context_key


def paused_key(prefix: str, arm: str) -> str:
    return f"{prefix}:online:paused:{arm}"


def reverts_key(prefix: str, arm: str) -> str:
    return f"{prefix}:online:reverts:{arm}"


def stats_key(prefix: str, arm: str) -> str:
    return f"{prefix}:online:stats:{arm}"


def heartbeat_key(prefix: str, consumer: str) -> str:
    return f"{prefix}:online:heartbeat:{consumer}"


#: A learner that has not beaten for this long is reported unhealthy (`reco learn --check`).
HEARTBEAT_TTL_S = 60


def beat(client: Any, prefix: str, consumer: str, now: float) -> None:
    """Record that `consumer` is alive and polling (the key expires when it stops)."""
    client.set(heartbeat_key(prefix, consumer), repr(now), ex=HEARTBEAT_TTL_S)


def last_beat(client: Any, prefix: str, consumer: str) -> float | None:
    """Unix time of the consumer's last heartbeat, None when it has not beaten within the TTL."""
    raw = client.get(heartbeat_key(prefix, consumer))
    return None if raw is None else float(raw)


def write_request_context(
    client: Any, prefix: str, request_id: str, session_items: Sequence[str], ttl_s: int = REQUEST_CONTEXT_TTL_S
) -> None:
    """Record the session items a request was ranked with. `client` may be a Redis client or a pipeline
    (the API adds this to the pipeline that logs the impressions, so it costs no extra round trip)."""
    client.set(request_context_key(prefix, request_id), json.dumps(list(session_items)), ex=ttl_s)


def read_request_contexts(client: Any, prefix: str, request_ids: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Session items per request id, for every id that has a record (one MGET round trip)."""
    ids = list(dict.fromkeys(request_ids))
    if not ids:
        return {}
    raw = client.mget([request_context_key(prefix, r) for r in ids])
    out: dict[str, tuple[str, ...]] = {}
    for rid, val in zip(ids, raw, strict=True):
        if val is not None:
            out[rid] = tuple(str(x) for x in json.loads(val))
    return out


def _store_parts(store: Any) -> tuple[Any, str]:
    """(redis client, prefix) of a `RedisStore`-like object or of a `(client, prefix)` pair."""
    if isinstance(store, tuple):
        return store
    return store.client, store.prefix


def pause(store: Any, arm: str) -> None:
    """Stop online updates of `arm` (the learner keeps consuming so that lag does not build up)."""
    client, prefix = _store_parts(store)
    client.set(paused_key(prefix, arm), "1")


def resume(store: Any, arm: str) -> None:
    client, prefix = _store_parts(store)
    client.delete(paused_key(prefix, arm))


def is_paused(store: Any, arm: str) -> bool:
    client, prefix = _store_parts(store)
    return bool(client.exists(paused_key(prefix, arm)))


def paused_arms(store: Any, arms: Sequence[str]) -> set[str]:
    """The paused arms among `arms`, in one round trip."""
    client, prefix = _store_parts(store)
    if not arms:
        return set()
    vals = client.mget([paused_key(prefix, a) for a in arms])
    return {a for a, v in zip(arms, vals, strict=True) if v is not None}


def revert_count(store: Any, arm: str) -> int:
    client, prefix = _store_parts(store)
    return int(client.get(reverts_key(prefix, arm)) or 0)


def write_stats(store: Any, arm: str, stats: Mapping[str, Any]) -> None:
    client, prefix = _store_parts(store)
    client.hset(stats_key(prefix, arm), mapping={k: str(v) for k, v in stats.items()})
