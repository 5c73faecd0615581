"""One writer per arm: a lease in Redis with a fencing token.

Keys (`reco.state.keys`): ``P:online:lease:<arm>`` holds "<owner> <token>" of the learner that may
write the arm's online weights (SET NX PX, renewed with PEXPIRE by its holder);
``P:online:lease:<arm>:token`` is the arm's fencing-token counter (INCR once per acquisition, never
reset), so a newer holder always has a larger token.

A learner writes an arm's weights only while it holds the arm's lease, and every snapshot carries the
token it was written under (`meta["token"]`). `RedisStore.put_weights(..., token=t)` refuses, atomically
inside Redis, a write whose token is no longer the arm's newest (a paused or partitioned old holder that
wakes up after its lease expired and another learner took it), and the API refuses a snapshot whose token
is older than one it already served. So a second learner is harmless: it waits as a standby
(`acquire` fails while the lease is held) and takes over at most `ttl_ms` plus one retry interval after
the holder dies (its lease expires; nobody deletes it for a process killed with SIGKILL).

Time: Redis expires the key on its own clock; the holder decides *when* to renew from `clock`
(injectable, default `time.time`), renewing every `ttl_ms / 3`.

>>> import redis
>>> lease = Lease(redis.Redis.from_url("redis://127.0.0.1:1/0"), "demo", "treatment", "learner-1")
>>> lease.key, lease.token_key, lease.token
('demo:online:lease:treatment', 'demo:online:lease:treatment:token', None)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from reco.state.keys import LEASE_TTL_MS, lease_key, lease_token_key
from reco.state.redis_io import StoreUnavailable, guard, text

__all__ = ["LEASE_TTL_MS", "Lease", "LeaseSet"]

# Acquire: take the free lease and draw the next token in one atomic call.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local token = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. token, 'PX', ARGV[2])
  return token
end
return false
"""
# Renew / release only what is still ours (owner and token), never a successor's lease.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Lease:
    """The lease of one arm, as one owner sees it. `token` is set while held (None otherwise)."""

    def __init__(
        self,
        client: Any,
        prefix: str,
        arm: str,
        owner: str,
        *,
        ttl_ms: int = LEASE_TTL_MS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl_ms <= 0 or not owner or " " in owner:
            raise ValueError(f"a lease needs ttl_ms > 0 and an owner without spaces, got {ttl_ms}, {owner!r}")
        self.client = client
        self.prefix = prefix
        self.arm = arm
        self.owner = owner
        self.ttl_ms = ttl_ms
        self.clock = clock
        self.key = lease_key(prefix, arm)
        self.token_key = lease_token_key(prefix, arm)
        self.token: int | None = None
        self._renewed_at = float("-inf")
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    @property
    def held(self) -> bool:
        return self.token is not None

    def _value(self) -> str:
        return f"{self.owner} {self.token}"

    @guard
    def acquire(self) -> int | None:
        """Take the lease if nobody holds it; the new fencing token, or None (someone else holds it)."""
        token = self._acquire(keys=[self.key, self.token_key], args=[self.owner, self.ttl_ms])
        if token is None:
            return None
        self.token = int(token)
        self._renewed_at = self.clock()
        return self.token

    @guard
    def renew(self) -> bool:
        """Extend the lease; False when it was lost (expired, then possibly taken by another owner)."""
        if self.token is None:
            return False
        if not self._renew(keys=[self.key], args=[self._value(), self.ttl_ms]):
            self.token = None
            return False
        self._renewed_at = self.clock()
        return True

    def renew_due(self) -> bool:
        """Renew when a third of the lifetime has passed since the last renewal; False = lost."""
        if self.token is None:
            return False
        if self.clock() - self._renewed_at < self.ttl_ms / 3000.0:
            return True
        return self.renew()

    @guard
    def release(self) -> None:
        """Give the lease up now (a clean stop), so that a standby need not wait for it to expire."""
        if self.token is not None:
            self._release(keys=[self.key], args=[self._value()])
        self.token = None

    @guard
    def holder(self) -> tuple[str, int] | None:
        """(owner, token) of the current holder, None when the lease is free."""
        raw = text(self.client.get(self.key))
        if not raw or " " not in raw:
            return None
        owner, _, token = raw.rpartition(" ")
        return owner, int(token)

    @guard
    def newest_token(self) -> int:
        """The arm's newest token ever drawn (0 before the first acquisition)."""
        return int(self.client.get(self.token_key) or 0)


class LeaseSet:
    """The leases of several arms, held together: taken all or none (in sorted order, so two standbys never
    deadlock on half the arms each), renewed and released together.

    >>> import redis
    >>> leases = LeaseSet(redis.Redis.from_url("redis://127.0.0.1:1/0"), "demo", ["b", "a"], "learner-1")
    >>> sorted(leases.leases), leases.held, leases.token("a")
    (['a', 'b'], False, None)
    >>> LeaseSet(None, "demo", [], "learner-1").held   # no arms: nothing to hold
    True
    """

    def __init__(
        self,
        client: Any,
        prefix: str,
        arms: Any,
        owner: str,
        *,
        ttl_ms: int = LEASE_TTL_MS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.leases = {arm: Lease(client, prefix, arm, owner, ttl_ms=ttl_ms, clock=clock) for arm in sorted(arms)}

    @property
    def held(self) -> bool:
        return all(lease.held for lease in self.leases.values())

    def token(self, arm: str) -> int | None:
        lease = self.leases.get(arm)
        return None if lease is None else lease.token

    def take(self) -> bool:
        """Acquire every lease not yet held; on the first refusal give back what was taken. True = all held."""
        taken = []
        for lease in self.leases.values():
            if lease.held or lease.acquire() is not None:
                taken.append(lease)
                continue
            for held in taken:
                held.release()
            return False
        return True

    def renew_due(self) -> bool:
        """Renew what is due; False when a lease was lost."""
        return all(lease.renew_due() for lease in self.leases.values())

    def release(self) -> None:
        """Give every lease up (best effort: one that cannot be released expires on its own)."""
        for lease in self.leases.values():
            try:
                lease.release()
            except StoreUnavailable:
                lease.token = None

    def holders(self) -> dict[str, tuple[str, int] | None]:
        """arm -> (owner, token) of whoever holds its lease now (None: free)."""
        return {arm: lease.holder() for arm, lease in self.leases.items()}
