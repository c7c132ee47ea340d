"""The audit log, one piece for every service whose routes act for owners or operators
(`Service(audit=True)`): each action is kept append-only in the service's `audit_log` and
announced on `billing.audit` through the outbox, in one transaction.

A route wraps what it does in `audited(request, organisation, action)`: the entry names the
actor (the proven member, or the operator's credential by fingerprint and the name it gives in
`X-Operator`), the request id (`X-Request-Id`, or one made up), and the outcome: succeeded,
refused (an exception of `refusals`, or a 4xx problem), or failed (anything else). The entry is
written when the action has ended, in its own transaction: an action whose process dies before
that is not in the log."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from fastapi import Request

from shared import outbox
from shared.clock import Clock
from shared.db import Migrations
from shared.events.audit import (
    ActorKind,
    AuditAction,
    AuditActionV2,
    AuditEntry,
    AuditEntryV2,
    AuditRecordedV1,
    AuditRecordedV2,
    Outcome,
    recorded,
)
from shared.logging import get_logger
from shared.problems import Problem

MIGRATIONS = Migrations("audit", Path(__file__).parent / "migrations" / "audit")
OPERATOR_HEADER = "X-Operator"
REQUEST_ID_HEADER = "X-Request-Id"
_GIVEN = re.compile(r"^[A-Za-z0-9_.@:-]{1,64}$")

log = get_logger("shared.audit")


@dataclass
class Entry:
    """What the route may add while it acts."""

    target: str | None = None
    detail: str = ""


class Auditor:
    def __init__(self, pool: asyncpg.Pool, clock: Clock, *, service: str, prefix: str) -> None:
        self._pool, self._clock, self._service, self._prefix = pool, clock, service, prefix

    async def record(
        self, organisation_id: str, entry: AuditEntry | AuditEntryV2
    ) -> AuditRecordedV1 | AuditRecordedV2:
        """Keep and announce one entry, in its own transaction."""
        async with self._pool.acquire() as conn, conn.transaction():
            return (await self.add(conn, [(organisation_id, entry)]))[0]

    async def add(
        self, conn: asyncpg.Connection, entries: list[tuple[str, AuditEntry | AuditEntryV2]]
    ) -> list[AuditRecordedV1 | AuditRecordedV2]:
        """Keep and announce entries in the caller's transaction (with the effect itself)."""
        events = [
            recorded(organisation_id, entry, producer=self._service, occurred_at=self._clock.now())
            for organisation_id, entry in entries
        ]
        await conn.execute(
            """INSERT INTO audit_log (event_id, organisation_id, actor, actor_kind, action,
                   target, request_id, outcome, detail, occurred_at)
               SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                    $6::text[], $7::text[], $8::text[], $9::text[],
                                    $10::timestamptz[])""",
            [e.event_id for e in events],
            [e.organisation_id for e in events],
            [e.data.actor for e in events],
            [e.data.actor_kind.value for e in events],
            [e.data.action.value for e in events],
            [e.data.target for e in events],
            [e.data.request_id for e in events],
            [e.data.outcome.value for e in events],
            [e.data.detail for e in events],
            [e.occurred_at for e in events],
        )
        await outbox.enqueue(conn, events, prefix=self._prefix, clock=self._clock)
        return events


def actor_of(request: Request) -> tuple[str, ActorKind]:
    member = getattr(request.state, "actor", None)
    if member:
        return member, ActorKind.MEMBER
    name = f"operator:{getattr(request.state, 'credential', 'unknown')}"
    given = request.headers.get(OPERATOR_HEADER, "")
    return (f"{name}:{given}" if _GIVEN.match(given) else name), ActorKind.OPERATOR


def request_id_of(request: Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if _GIVEN.match(given) else f"req_{uuid.uuid4().hex[:16]}"


def _why(exc: Exception) -> str:
    extra = getattr(exc, "extra", None) or {}
    return (
        str(getattr(exc, "reason", "") or extra.get("reason") or getattr(exc, "slug", ""))
        or type(exc).__name__
    )


@contextlib.asynccontextmanager
async def audited(
    request: Request,
    organisation_id: str,
    action: AuditAction | AuditActionV2,
    *,
    refusals: tuple[type[Exception], ...] = (),
) -> AsyncIterator[Entry]:
    """Record the action around the block (see the module)."""
    entry, outcome = Entry(), Outcome.SUCCEEDED
    try:
        yield entry
    except Exception as exc:
        refused = isinstance(exc, refusals) or (isinstance(exc, Problem) and exc.status < 500)
        outcome = Outcome.REFUSED if refused else Outcome.FAILED
        entry.detail = entry.detail or _why(exc)
        raise
    finally:
        actor, kind = actor_of(request)
        found = AuditEntryV2(
            service=request.app.state.runtime.service.name,
            actor=actor[:128],
            actor_kind=kind,
            action=AuditActionV2(action.value),
            target=entry.target[:128] if entry.target else None,
            request_id=request_id_of(request),
            outcome=outcome,
            detail=entry.detail[:500],
        )
        try:
            await request.app.state.runtime.auditor.record(organisation_id, found)
        except Exception:
            log.exception("audit entry not recorded", action=action.value)
            if outcome is Outcome.SUCCEEDED:
                raise
