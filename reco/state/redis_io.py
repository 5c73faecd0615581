"""Talking to Redis: a client with short timeouts, one exception type for "not there", raw replies
decoded by hand, and one round trip for several commands (the request path's reads)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

import redis
from redis.utils import HIREDIS_AVAILABLE

__all__ = [
    "StoreUnavailable",
    "connect",
    "guard",
    "hash_fields",
    "id_key",
    "next_id",
    "number",
    "pack",
    "pairs",
    "round_trip",
    "run_script",
    "text",
]


# redis-py packs commands with hiredis when this says so (else in Python, through the connection's encoder).
_pack_command: Callable[[tuple[Any, ...]], bytes] | None = None
if HIREDIS_AVAILABLE:
    import hiredis

    _pack_command = hiredis.pack_command


class StoreUnavailable(RuntimeError):
    """Redis cannot be reached (connection refused, timeout, loading). Callers degrade on this one type."""


def connect(url: str, *, socket_timeout: float = 0.5, connect_timeout: float = 0.5) -> redis.Redis:
    """A client with short timeouts and no retries, so a dead Redis costs one timeout, not seconds.

    Connecting is lazy: this never touches the network.

    >>> c = connect("redis://127.0.0.1:1/0")
    >>> c.connection_pool.connection_kwargs["socket_timeout"]
    0.5
    """
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


P = ParamSpec("P")
R = TypeVar("R")

#: Redis errors that mean "the store is not there" (as opposed to a programming error).
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError)


def guard(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn redis connection/timeout errors into `StoreUnavailable`."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except UNAVAILABLE as exc:
            raise StoreUnavailable(f"redis unavailable: {exc}") from exc

    return wrapper


def text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def texts(values: list[Any]) -> list[str]:
    """A reply's list of strings decoded (one type throughout: bytes, or str with decode_responses): half the
    CPU of `text` per value (41 vs 83 us for a user's 500-item history), which every request reads.

    >>> texts([b"a", b"b"]), texts(["c"]), texts([])
    (['a', 'b'], ['c'], [])
    """
    return list(map(bytes.decode, values)) if values and isinstance(values[0], bytes) else list(values)


def number(value: bytes | str | float | None) -> float:
    return 0.0 if value is None else float(value)


def pairs(flat: Any) -> list[tuple[Any, Any]]:
    """A raw reply of pairs (RESP2: a flat [a1, b1, a2, b2, ...] list; RESP3: a map or a list of pairs)."""
    if isinstance(flat, dict):
        return list(flat.items())
    if flat and isinstance(flat[0], list):
        return [(a, b) for a, b in flat]
    return list(zip(flat[::2], flat[1::2], strict=True))


def hash_fields(raw: Any) -> dict[str, str]:
    """A raw HGETALL reply as a str -> str dict."""
    return {text(k): text(v) for k, v in pairs(raw)}


def round_trip(client: redis.Redis, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Send `commands` in one write on one pooled connection and read their raw replies (no response
    callbacks: callers decode, see `pairs`).

    This is redis-py's non-transactional pipeline without its Python: on the request path the `Pipeline`
    object, its callbacks and its retry wrapper cost ~0.12 ms a call warm and ~0.35 ms after the process
    idled for 10 ms, against ~0.06 / ~0.35 ms for the whole round trip here (docs/benchmarks.md,
    "Serving"). An error reply or a broken socket drops the connection (later replies may be pending on it)
    and raises.
    """
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command(pack(conn, commands))
        replies = [conn.read_response() for _ in commands]
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)
    return replies


def pack(conn: Any, commands: Sequence[tuple[Any, ...]]) -> list[bytes]:
    """`commands` in the protocol, as `conn.pack_commands` packs them: with hiredis (redis-py's packer when
    it is installed) each command is `hiredis.pack_command` of its arguments, the same bytes without
    redis-py's Python around it (a generator over every argument, for bytearray and memoryview): 13.4 -> 5.2 us
    for the impression write's ~100 arguments, 10.1 -> 3.0 us for the request read's commands.

    >>> c = connect("redis://127.0.0.1:1/0").connection_pool.make_connection()
    >>> commands = [("LRANGE", "k", 0, -1), ("EVALSHA", "f" * 40, 1, "k\u00e9", 1.5, b"x")]
    >>> pack(c, commands) == [b"".join(c.pack_commands(commands))]
    True
    """
    if _pack_command is None:
        return conn.pack_commands(commands)
    return [b"".join(map(_pack_command, commands))]


def run_script(client: redis.Redis, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
    """`script(keys=keys, args=args)` (a registered `redis.commands.core.Script`) as one raw EVALSHA through
    `round_trip`; the script is loaded only when Redis does not know it (NOSCRIPT: a restart, SCRIPT FLUSH).
    redis-py's `Script` call spent ~0.1 ms more of the impression thread's CPU per request in its command
    wrappers (20 % of the impression write, ~100 arguments). The reply is raw (the scripts return integers).
    """
    command = ("EVALSHA", script.sha, len(keys), *keys, *args)
    try:
        return round_trip(client, [command])[0]
    except redis.exceptions.NoScriptError:
        client.script_load(script.script)
        return round_trip(client, [command])[0]


def next_id(entry_id: str) -> str:
    """The smallest stream id after entry_id ("5-3" -> "5-4")."""
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


def id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
