"""Decision slots: how many decisions compute at once, handed out in arrival order.

Python's ``threading.Semaphore`` is not fair: a thread that releases and at once acquires
again (a batch going from one chunk to the next) usually wins over threads already waiting,
so a single decision could wait for a whole 1,000-decision batch. Here a released slot goes
straight to the longest waiter.
"""

from __future__ import annotations

import threading
from collections import deque


class FairSlots:
    """A FIFO semaphore of ``n`` slots, used as a context manager."""

    def __init__(self, n: int):
        if n < 1:
            raise ValueError(f"need at least one slot, got {n}")
        self._free = n
        self._waiting: deque[threading.Event] = deque()
        self._lock = threading.Lock()

    def __enter__(self) -> FairSlots:
        with self._lock:
            if self._free and not self._waiting:
                self._free -= 1
                return self
            turn = threading.Event()
            self._waiting.append(turn)
        turn.wait()  # the releaser handed its slot to us
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().set()
            else:
                self._free += 1
