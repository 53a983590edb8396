"""The pause between failed tries of a loop step (Redis away, the spool full, an unexpected error).

Both services use this one: the delay doubles from a first to a largest value, as the hand-written loops
did, with redis-py's ``EqualJitterBackoff`` drawing each delay from ``[d/2, d]``. The jitter keeps
gateways and workers that lost Redis at the same moment from coming back in step; the lower half keeps
a reconnect loop from spinning. Only the count of failures is kept here: redis-py's classes compute a
delay from it but leave the counting to their caller.
"""
from __future__ import annotations

from redis.backoff import EqualJitterBackoff

SMALLEST_S = 0.01
"""The base delay when a service asks for 0 (seconds): never a busy loop."""


class Backoff:
    """Delays for one operation: ``next()`` after each failure, ``reset()`` after a success."""

    def __init__(self, first_s: float, max_s: float) -> None:
        """``first_s``: the delay after the first failure (at most; seconds); ``max_s``: the largest."""
        self._policy = EqualJitterBackoff(cap=max_s, base=max(first_s, SMALLEST_S))
        self.failures = 0

    def next(self) -> float:
        """The delay to wait now, seconds: in ``[d/2, d]`` for ``d = min(max_s, first_s * 2**failures)``."""
        delay = self._policy.compute(self.failures)
        self.failures += 1
        return delay

    def reset(self) -> None:
        """The operation succeeded: the next failure waits about ``first_s`` again."""
        self.failures = 0
