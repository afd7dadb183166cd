"""The scheduler's clock: real time, or simulated time running ``speed`` times faster.

The demo and the tests replay weeks of retries in minutes: simulated time starts at
``origin`` when the wall clock reads ``wall_origin`` and runs ``speed`` times faster. Every
process of one run (scheduler, Stripe stand-in) gets the same three numbers, so a scheduler
restarted after a crash keeps the same time line. With the defaults it is the wall clock.
"""

from __future__ import annotations

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
