"""When the seat quantity may next be sent to Stripe. Pure.

Stripe allows about 200 quantity updates per subscription per hour. The gateway keeps the
newest count asked for (the seat service's revision orders them) and sends it when the budget
allows: never more than `budget` updates in any hour, and past a small `burst` the remaining
budget spread over the hour, so a busy organisation is coalesced more as it gets busier (with
`used` sends in the last hour, the next waits `3600 / (budget - used)` seconds after the
previous). What is sent is always the newest absolute count, never a difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

HOUR = timedelta(hours=1)


def recent(sent: Sequence[datetime], now: datetime) -> list[datetime]:
    """The sends within the last hour, oldest first."""
    return sorted(t for t in sent if t > now - HOUR)


def next_send_at(sent: Sequence[datetime], now: datetime, budget: int, burst: int = 5) -> datetime:
    """The earliest instant the next update may go, given the past sends."""
    window = recent(sent, now)
    used = len(window)
    if used >= budget:
        return window[used - budget] + HOUR  # when the oldest send that counts leaves the hour
    if used < burst:
        return now
    spacing = timedelta(seconds=HOUR.total_seconds() / (budget - used))
    return max(now, window[-1] + spacing)


def within_budget(sent: Sequence[datetime], budget: int) -> bool:
    """No hour-long window holds more than `budget` sends."""
    ordered = sorted(sent)
    return all(
        ordered[i + budget] - ordered[i] >= HOUR for i in range(max(0, len(ordered) - budget))
    )
