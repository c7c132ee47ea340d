"""Injected time. Every timestamp the services write comes from a `Clock`, always UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware, in UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FrozenClock:
    """A clock that only moves when told to; for tests of renewals and expiries."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FrozenClock needs a timezone-aware start")
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> datetime:
        self._now += delta
        return self._now

    def set(self, instant: datetime) -> None:
        self._now = instant.astimezone(UTC)


class MovableClock:
    """Real time (or another clock) plus an offset that only grows: the stack's clock when it
    may be moved (`CLOCK_CONTROL`, development and tests only; `billing clock`). Time keeps
    running; moving it forward adds to the offset; nothing moves it back."""

    def __init__(self, base: Clock | None = None, offset: timedelta = timedelta(0)) -> None:
        if offset < timedelta(0):
            raise ValueError("the clock's offset cannot be negative")
        self._base = base or SystemClock()
        self.offset = offset

    def now(self) -> datetime:
        return self._base.now() + self.offset

    def move_to(self, instant: datetime) -> timedelta:
        """Move forward to `instant` (an instant already past is refused); returns the new
        offset."""
        if instant.tzinfo is None:
            raise ValueError("an instant needs a timezone")
        now = self.now()
        if instant < now:
            raise ValueError(f"the clock only moves forward: it is {now.isoformat()} already")
        self.offset += instant - now
        return self.offset
