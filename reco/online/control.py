"""The small operations other processes perform on the learner's Redis state: request contexts (the API),
pause/resume (the admin API), counters and heartbeat (`reco learn --check`).

Keys and TTLs live in `reco.state.keys`, the operations in `RedisStore` (`reco.state.online`); these
functions are the stable names the API, the simulator and the CLI call, and accept a `RedisStore` or a
``(redis client, prefix)`` pair.

The request-context record exists because the impression event has no field for the session: the learner
rebuilds the training example from exactly what the ranker saw.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from reco.state.keys import HEARTBEAT_TTL_S, REQUEST_CONTEXT_TTL_S

__all__ = [
    "HEARTBEAT_TTL_S",
    "REQUEST_CONTEXT_TTL_S",
    "beat",
    "is_paused",
    "last_beat",
    "pause",
    "paused_arms",
    "read_request_contexts",
    "resume",
    "revert_count",
    "write_request_context",
    "write_stats",
]


def _store(store: Any, prefix: str | None = None) -> Any:
    """A `RedisStore` from a store, a ``(client, prefix)`` pair, or a client and a prefix."""
    from reco.state.store import RedisStore

    if isinstance(store, RedisStore):
        return store
    if isinstance(store, tuple):
        return RedisStore(*store)
    return RedisStore(store, prefix or "")


def beat(client: Any, prefix: str, consumer: str, now: float) -> None:
    """Record that `consumer` is alive and polling (the key expires when it stops)."""
    _store(client, prefix).beat(consumer, now)


def last_beat(client: Any, prefix: str, consumer: str) -> float | None:
    """Unix time of the consumer's last heartbeat, None when it has not beaten within the TTL."""
    return _store(client, prefix).last_beat(consumer)


def write_request_context(
    client: Any, prefix: str, request_id: str, session_items: Sequence[str], ttl_s: int = REQUEST_CONTEXT_TTL_S
) -> None:
    """Record the session items a request was ranked with."""
    _store(client, prefix).write_request_context(request_id, session_items, ttl_s)


def read_request_contexts(client: Any, prefix: str, request_ids: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Session items per request id, for every id that has a record (one MGET round trip)."""
    return _store(client, prefix).read_request_contexts(request_ids)


def pause(store: Any, arm: str) -> None:
    """Stop online updates of `arm` (the learner keeps consuming so that lag does not build up)."""
    _store(store).set_paused(arm, True)


def resume(store: Any, arm: str) -> None:
    _store(store).set_paused(arm, False)


def is_paused(store: Any, arm: str) -> bool:
    return arm in _store(store).paused_arms([arm])


def paused_arms(store: Any, arms: Sequence[str]) -> set[str]:
    """The paused arms among `arms`, in one round trip."""
    return _store(store).paused_arms(list(arms))


def revert_count(store: Any, arm: str) -> int:
    return _store(store).revert_count(arm)


def write_stats(store: Any, arm: str, stats: Mapping[str, Any]) -> None:
    _store(store).write_learner_stats({arm: stats})
