"""What kind of failure an exception is, for consumers and request handlers alike.

- transient: a dependency did not answer or asked to try again (the database or broker
  unreachable, a serialization conflict, a deadlock, a lock not available): retry;
- poison: the input itself was refused (PostgreSQL SQLSTATE classes 22 "data exception" and 23
  "integrity constraint violation", or a value the driver cannot encode): refuse that input,
  with its reason, and go on with the others;
- systemic: anything else (a bug, a missing table, a permission): stop and say so.
"""

from __future__ import annotations

import asyncio
from enum import StrEnum

import asyncpg
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from asyncpg.exceptions import _base as asyncpg_base

_TRANSIENT_SQLSTATE_CLASSES = {"08", "40", "53", "55", "57", "58"}
_POISON_SQLSTATE_CLASSES = {"22", "23"}


class Failure(StrEnum):
    TRANSIENT = "transient"
    POISON = "poison"
    SYSTEMIC = "systemic"


class Poison(Exception):
    """Raised by an `Apply` to say that the input itself is refused."""


def classify(exc: BaseException) -> Failure:
    """What kind of failure `exc` is; see the module docstring."""
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str):
        if sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES:
            return Failure.TRANSIENT
        if sqlstate[:2] in _POISON_SQLSTATE_CLASSES:
            return Failure.POISON
        return Failure.SYSTEMIC
    # The driver's own refusal to encode a value (asyncpg's client-side DataError is also an
    # InterfaceError, so it is checked first).
    if isinstance(exc, (Poison, asyncpg_base.DataError, OverflowError, UnicodeError)):
        return Failure.POISON
    if isinstance(exc, (OSError, asyncio.TimeoutError, asyncpg.ConnectionDoesNotExistError)):
        return Failure.TRANSIENT
    if isinstance(exc, asyncpg.InterfaceError) and "connection" in str(exc).lower():
        return Failure.TRANSIENT
    if isinstance(exc, (KafkaConnectionError, KafkaTimeoutError)):
        return Failure.TRANSIENT
    if isinstance(exc, KafkaError) and getattr(exc, "retriable", False):
        return Failure.TRANSIENT
    return Failure.SYSTEMIC


FAILURE_TYPES: tuple[type[Exception], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    KafkaError,
    OSError,
    TimeoutError,
    Poison,
    OverflowError,
    UnicodeError,
)
"""The exception classes `classify` tells apart (everything else is systemic)."""


def is_transient(exc: BaseException) -> bool:
    return classify(exc) is Failure.TRANSIENT


def exponential(attempt: int, *, first: float, cap: float) -> float:
    """`first`, doubled for each attempt after the first, at most `cap`."""
    return min(cap, first * 2 ** min(max(attempt - 1, 0), 30))


class Backoff:
    """Growing delays between attempts, back to the first delay after a success."""

    def __init__(self, *, first: float = 0.2, cap: float = 5.0) -> None:
        self.first = first
        self.cap = cap
        self.attempts = 0

    def next_delay(self) -> float:
        self.attempts += 1
        return exponential(self.attempts, first=self.first, cap=self.cap)

    def reset(self) -> None:
        self.attempts = 0
