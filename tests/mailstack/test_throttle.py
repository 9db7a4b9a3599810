from __future__ import annotations

from mailstack.base.throttle import LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_delay_grows_after_free_failures_and_resets_on_success() -> None:
    clock = Clock()
    t = LoginThrottle(free_failures=2, base_delay_s=1, max_delay_s=8, clock=clock)
    delays = []
    for _ in range(7):
        delays.append(t.delay_s("192.0.2.1"))
        t.record_failure("192.0.2.1", "alice@example.com")
    assert delays == [0, 0, 1, 2, 4, 8, 8]
    assert t.delay_s("192.0.2.99") == 0  # another client is not slowed down
    t.record_success("192.0.2.1", "alice@example.com")
    assert t.delay_s("192.0.2.1") == 0


def test_account_lockout_applies_from_every_address_until_the_window_passes() -> None:
    clock = Clock()
    t = LoginThrottle(lockout_failures=5, window_s=600, clock=clock)
    for i in range(5):
        t.record_failure(f"198.51.100.{i}", "Alice@example.com")
    assert t.is_locked_out("203.0.113.7", "alice@example.com")
    assert not t.is_locked_out("203.0.113.7", "bob@example.com")
    clock.now += 601
    assert not t.is_locked_out("203.0.113.7", "alice@example.com")
