"""How often a failing step is tried again, and how long to wait in between."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for one step (or a workflow's default).

    `max_attempts` counts every try, the first included; a worker that dies mid-step also
    uses up an attempt, so a step that kills its worker every time is dead-lettered
    (`worker-lost`) instead of being delivered forever. The delay before attempt n+1 is
    `initial_delay * multiplier**(n-1)`, capped at `max_delay`, then spread by +/- `jitter`
    (a fraction) so that many tasks failing together do not retry together.

    `retry_on` limits retries to these exception types (by default anything the step
    raises, `BaseException`s such as `SystemExit` from `sys.exit()` included); `give_up_on`
    fails at once on these, whatever `retry_on` says.
    """

    max_attempts: int = 3
    initial_delay: float = 1.0
    max_delay: float = 300.0
    multiplier: float = 2.0
    jitter: float = 0.1
    retry_on: tuple[type[BaseException], ...] = (BaseException,)
    give_up_on: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be at least 1 (the first try)")
        if self.initial_delay < 0 or self.max_delay < 0:
            raise ValueError("RetryPolicy delays must not be negative")
        if self.multiplier < 1:
            raise ValueError("RetryPolicy.multiplier must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("RetryPolicy.jitter is a fraction between 0 and 1")

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether attempt number `attempt`, which raised `exc`, earns another try."""
        if attempt >= self.max_attempts or isinstance(exc, self.give_up_on):
            return False
        return isinstance(exc, self.retry_on)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        base = min(self.initial_delay * self.multiplier ** (attempt - 1), self.max_delay)
        if self.jitter:
            base *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(0.0, base)


#: No retries: one try, then the task fails (or compensates).
NO_RETRY = RetryPolicy(max_attempts=1)
