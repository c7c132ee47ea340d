"""Calendar arithmetic for billing periods (R8: anniversary day, clamped to the month's end)."""

from __future__ import annotations

import calendar
from datetime import datetime


def add_months(instant: datetime, months: int, *, anchor_day: int | None = None) -> datetime:
    """`instant` moved by whole months, on `anchor_day` (default: its own day), clamped to the
    last day of the target month: Jan 31 + 1 month = Feb 28 (or 29), + 2 months = Mar 31."""
    day = anchor_day or instant.day
    index = instant.year * 12 + (instant.month - 1) + months
    year, month = divmod(index, 12)
    last = calendar.monthrange(year, month + 1)[1]
    return instant.replace(year=year, month=month + 1, day=min(day, last))
