"""delivery/fsyncs.py: calls wait together while the disk is slow, one by one while it is fast."""

from __future__ import annotations

import threading
import time

import pytest
from mailstack.delivery import fsyncs


def test_slow_calls_run_at_once_and_fail_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fsyncs, "SLOW_S", 0.0)
    monkeypatch.setattr(fsyncs, "_latency", 1.0)
    barrier = threading.Barrier(4, timeout=10)  # passes only if all four wait at the same time

    def call(n: int) -> int:
        barrier.wait()
        if n == 2:
            raise OSError(28, "No space left on device")
        return n * 10

    outcomes = fsyncs.run_all(call, [0, 1, 2, 3])
    assert outcomes[:2] == [0, 10] and outcomes[3] == 30
    assert isinstance(outcomes[2], OSError) and outcomes[2].errno == 28


def test_fast_calls_stay_in_the_callers_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fsyncs, "_latency", 0.0)
    threads = fsyncs.run_all(lambda _n: threading.get_ident(), [0, 1, 2])
    assert threads == [threading.get_ident()] * 3
    assert not fsyncs.slow()  # calls of microseconds keep the average low


def test_the_average_follows_the_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fsyncs, "_latency", 0.0)
    for _ in range(20):
        fsyncs.run_all(lambda _n: time.sleep(0.005), [0])
    assert fsyncs.slow()  # 5 ms calls: concurrent from now on
