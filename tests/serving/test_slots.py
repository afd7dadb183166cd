"""Decision slots go to waiters in arrival order, so a batch moving from one chunk to the next
cannot starve a single decision."""

from __future__ import annotations

import threading
import time

import pytest

from reclaim.serving.slots import FairSlots


def _wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the waiter never queued"
        time.sleep(0.001)


def test_a_released_slot_goes_to_the_longest_waiter_not_back_to_the_releaser():
    slots = FairSlots(1)
    order: list[str] = []
    slots.__enter__()  # someone holds the only slot

    def batch() -> None:  # two chunks, back to back
        with slots:
            order.append("batch chunk 1")
        with slots:
            order.append("batch chunk 2")

    def single() -> None:
        with slots:
            order.append("single")

    b = threading.Thread(target=batch)
    b.start()
    _wait_for(lambda: len(slots._waiting) == 1)
    s = threading.Thread(target=single)
    s.start()
    _wait_for(lambda: len(slots._waiting) == 2)
    slots.__exit__(None, None, None)
    b.join(30)
    s.join(30)
    assert order == ["batch chunk 1", "single", "batch chunk 2"]


def test_slots_count_and_refuse_zero():
    slots = FairSlots(2)
    with slots, slots:  # two at once
        assert slots._free == 0
    assert slots._free == 2
    with pytest.raises(ValueError, match="at least one slot"):
        FairSlots(0)
