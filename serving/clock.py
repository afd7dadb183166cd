"""The scheduler's clocks: real time, accelerated time, or simulated time that moves only when
told to.

The demo and the tests replay weeks of retries in minutes: simulated time starts at
``origin`` when the wall clock reads ``wall_origin`` and runs ``speed`` times faster. Every
process of one run (scheduler, Stripe stand-in) gets the same three numbers, so a scheduler
restarted after a crash keeps the same time line. With the defaults it is the wall clock.

:class:`SimulatedClock` is for runs whose outcome must not depend on the machine's speed (the
replay, the loop tests): a driver advances it to the next thing due once all work due now is
done, so a run is a function of its seed alone.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Clock:
    """Maps between simulated time (what decisions and rules see) and the wall clock (when
    jobs actually run)."""

    speed: float = 1.0
    origin: datetime | None = None
    wall_origin: datetime = field(default_factory=_utcnow)

    def __post_init__(self) -> None:
        if self.speed <= 0:
            raise ValueError(f"clock speed must be positive, got {self.speed}")
        for name in ("origin", "wall_origin"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"clock {name} must be timezone-aware, got {value!r}")

    def now(self) -> datetime:
        """The current (simulated) time, UTC."""
        wall = _utcnow()
        if self.origin is None:
            return wall
        return self.origin + (wall - self.wall_origin) * self.speed

    def wall(self, at: datetime) -> datetime:
        """When the wall clock reaches simulated time ``at``."""
        if self.origin is None:
            return at
        return self.wall_origin + (at - self.origin) / self.speed

    def seconds(self, simulated_seconds: float) -> float:
        """Wall seconds that ``simulated_seconds`` take."""
        return simulated_seconds / self.speed


class SimulatedClock:
    """Simulated time that stands still until :meth:`advance_to` moves it.

    The same interface as :class:`Clock`; ``wall(at)`` maps a simulated moment onto the wall
    clock as if simulated time ran at wall speed from now (only metrics read it).
    """

    def __init__(self, start: datetime):
        if start.tzinfo is None:
            raise ValueError(f"clock start must be timezone-aware, got {start!r}")
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """The current simulated time, UTC."""
        with self._lock:
            return self._now

    def advance_to(self, at: datetime) -> None:
        """Move time forward to ``at`` (never backward)."""
        with self._lock:
            if at > self._now:
                self._now = at

    def wall(self, at: datetime) -> datetime:
        return _utcnow() + (at - self.now())

    def seconds(self, simulated_seconds: float) -> float:
        return 0.0
