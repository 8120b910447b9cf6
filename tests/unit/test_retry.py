"""Retry arithmetic: how many tries, which exceptions, how long in between."""

from __future__ import annotations

import pytest

from salvador_core.errors import BackendUnavailableError
from salvador_core.retry import NO_RETRY, RetryPolicy


def test_attempts_are_counted_from_one_including_the_first() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy.should_retry(ValueError(), 1)
    assert policy.should_retry(ValueError(), 2)
    assert not policy.should_retry(ValueError(), 3)
    assert not NO_RETRY.should_retry(ValueError(), 1)


def test_by_default_anything_a_step_raises_is_retried() -> None:
    policy = RetryPolicy()
    for exc in (ValueError(), SystemExit(2), KeyboardInterrupt(), BackendUnavailableError("down")):
        assert policy.should_retry(exc, 1), exc


def test_retry_on_and_give_up_on_select_exceptions() -> None:
    policy = RetryPolicy(retry_on=(ConnectionError,), give_up_on=(ConnectionRefusedError,))
    assert policy.should_retry(ConnectionResetError(), 1)
    assert not policy.should_retry(ConnectionRefusedError(), 1)
    assert not policy.should_retry(ValueError(), 1)


def test_delays_grow_geometrically_up_to_the_cap_without_jitter() -> None:
    policy = RetryPolicy(initial_delay=0.5, multiplier=3.0, max_delay=10.0, jitter=0.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.5, 4.5, 10.0]


def test_jitter_spreads_delays_within_its_fraction() -> None:
    policy = RetryPolicy(initial_delay=1.0, jitter=0.2)
    delays = {policy.delay(1) for _ in range(200)}
    assert min(delays) >= 0.8
    assert max(delays) <= 1.2
    assert len(delays) > 100


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"initial_delay": -1}, {"multiplier": 0.5}, {"jitter": 1.5}],
)
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="RetryPolicy"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
