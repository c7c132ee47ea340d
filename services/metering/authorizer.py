"""Credit authorization for the chat gateway: reserve an estimate, settle with the actual cost.

Group commit: requests for one organisation that arrive while a decision transaction for it is
in flight wait, and are then decided together, in order of arrival, in the next transaction.
Nothing is delayed on purpose: a lone request is decided at once; under load, one transaction
decides many, so a hot organisation is not limited to one commit per request. Different
organisations are decided concurrently (the pool bounds how many).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID, uuid4

import asyncpg

from shared import outbox
from shared.clock import Clock
from shared.consumer import is_transient
from shared.events import AuthorizationDecision, CreditAuthorizationDecidedV1
from shared.logging import get_logger

from . import store
from .domain.authorization import Request, Verdict, decide

log = get_logger("metering.authorizer")

PRODUCER = "metering"
_ATTEMPTS = 4


@dataclass(frozen=True, slots=True)
class Ask:
    organisation_id: str
    member_id: str
    message_id: str
    agent_id: str | None
    estimate: int


@dataclass(frozen=True, slots=True)
class Authorization:
    authorization_id: UUID
    organisation_id: str
    message_id: str
    member_id: str
    agent_id: str | None
    decision: str
    reason: str | None
    estimate: int
    status: str
    decided_at: datetime
    expires_at: datetime | None
    closed_at: datetime | None = None
    settled_credits: int | None = None
    balance: int | None = None
    available: int | None = None
    renews_at: datetime | None = None
    replayed: bool = False

    @property
    def held(self) -> int:
        return self.estimate if self.status == "held" else 0

    @classmethod
    def from_row(cls, row: asyncpg.Record, **extra: object) -> Authorization:
        return cls(**dict(row), **extra)  # type: ignore[arg-type]


class HoldNotFound(LookupError):
    pass


class HoldClosed(Exception):
    def __init__(self, authorization: Authorization) -> None:
        super().__init__(f"hold is {authorization.status}")
        self.authorization = authorization


@dataclass
class _Queue:
    pending: list[tuple[Ask, asyncio.Future[Authorization]]] = field(default_factory=list)
    busy: bool = False


class Authorizer:
    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Clock,
        *,
        hold_ttl: timedelta,
        schema: str,
        topic_prefix: str,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._ttl = hold_ttl
        self._schema = schema
        self._prefix = topic_prefix
        self._queues: dict[str, _Queue] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.transactions = 0
        """Decision transactions committed: fewer than requests when group commit groups."""

    async def authorize(self, ask: Ask) -> Authorization:
        """Decide once per (organisation, message id); asking again returns that decision."""
        queue = self._queues.get(ask.organisation_id)
        if queue is None:
            queue = self._queues[ask.organisation_id] = _Queue()
        future: asyncio.Future[Authorization] = asyncio.get_running_loop().create_future()
        queue.pending.append((ask, future))
        if not queue.busy:
            queue.busy = True
            task = asyncio.create_task(self._drain(ask.organisation_id, queue))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self, organisation_id: str, queue: _Queue) -> None:
        try:
            while queue.pending:
                group, queue.pending = queue.pending, []
                try:
                    decided = await self._decide_with_retries(
                        organisation_id, [a for a, _ in group]
                    )
                except Exception as exc:
                    log.exception("authorization failed", organisation_id=organisation_id)
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for ask, future in group:
                        if not future.done():
                            future.set_result(decided[ask.message_id])
        finally:
            queue.busy = False
            if not queue.pending:
                self._queues.pop(organisation_id, None)

    async def _decide_with_retries(
        self, organisation_id: str, asks: Sequence[Ask]
    ) -> dict[str, Authorization]:
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                return await self._decide(organisation_id, asks)
            except Exception as exc:
                if attempt == _ATTEMPTS or not is_transient(exc):
                    raise
                await asyncio.sleep(0.005 * attempt)
        raise AssertionError("unreachable")

    async def _decide(self, organisation_id: str, asks: Sequence[Ask]) -> dict[str, Authorization]:
        now = self._clock.now()
        expires_at = now + self._ttl
        unique: dict[str, Ask] = {}
        for ask in asks:
            unique.setdefault(ask.message_id, ask)
        async with self._pool.acquire() as conn, conn.transaction():
            state = await store.lock_for_decision(conn, organisation_id, list(unique), now)
            known = set(state.known) if state else set()
            fresh = [a for a in unique.values() if a.message_id not in known]
            balance, held = (state.balance, state.held) if state else (0, 0)
            verdicts = decide(
                [Request(a.message_id, a.estimate) for a in fresh],
                wallet_exists=state is not None,
                balance=balance,
                held=held,
            )
            new = [
                store.NewDecision(
                    uuid4(),
                    a.message_id,
                    a.member_id,
                    a.agent_id,
                    v.reason.value if v.reason else None,
                    a.estimate,
                    expires_at if v.allowed else None,
                )
                for a, v in zip(fresh, verdicts, strict=True)
            ]
            inserted = (
                await store.record_decisions(conn, organisation_id, new, now) if new else set()
            )
            decided = self._views(
                organisation_id, new, verdicts, inserted, balance, held, state, now
            )
            await outbox.enqueue(
                conn,
                [_announcement(d, now) for d in decided.values()],
                prefix=self._prefix,
                schema=self._schema,
                clock=self._clock,
            )
        self.transactions += 1
        replays = [m for m in unique if m not in decided]
        if replays:
            for row in await store.decisions_for(self._pool, organisation_id, replays):
                decided[row["message_id"]] = Authorization.from_row(
                    row,
                    balance=balance if state else None,
                    available=balance - held if state else None,
                    renews_at=state.renews_at if state else None,
                    replayed=True,
                )
        return decided

    @staticmethod
    def _views(
        organisation_id: str,
        new: Sequence[store.NewDecision],
        verdicts: Sequence[Verdict],
        inserted: set[str],
        balance: int,
        held: int,
        state: store.DecisionState | None,
        now: datetime,
    ) -> dict[str, Authorization]:
        views = {}
        for decision, verdict in zip(new, verdicts, strict=True):
            if decision.message_id not in inserted:
                continue  # decided concurrently by another instance: read back as a replay
            held += verdict.held
            views[decision.message_id] = Authorization(
                authorization_id=decision.authorization_id,
                organisation_id=organisation_id,
                message_id=decision.message_id,
                member_id=decision.member_id,
                agent_id=decision.agent_id,
                decision="allowed" if verdict.allowed else "denied",
                reason=decision.reason,
                estimate=decision.estimate,
                status="held" if verdict.allowed else "denied",
                decided_at=now,
                expires_at=decision.expires_at,
                balance=balance if state else None,
                available=balance - held if state else None,
                renews_at=state.renews_at if state else None,
            )
        return views

    async def get(self, authorization_id: UUID) -> Authorization | None:
        row = await store.get_authorization(self._pool, authorization_id)
        return None if row is None else Authorization.from_row(row)

    async def release(self, authorization_id: UUID) -> Authorization:
        """Give a hold's credits back (the message was never sent). Releasing a released hold
        again is a no-op; a settled, expired or denied one raises `HoldClosed`."""
        async with self._pool.acquire() as conn, conn.transaction():
            await store.release_hold(conn, authorization_id, self._clock.now())
        found = await self.get(authorization_id)
        if found is None:
            raise HoldNotFound(str(authorization_id))
        if found.status != "released":
            raise HoldClosed(found)
        return found

    async def sweep(self, *, limit: int = 1000) -> int:
        """Expire every hold past its time. Returns how many expired."""
        total = 0
        while True:
            async with self._pool.acquire() as conn:
                expired = await store.expire_due_holds(conn, self._clock.now(), limit=limit)
            total += expired
            if expired < limit:
                return total

    async def run_sweeper(self, every_seconds: float) -> None:
        while True:
            try:
                expired = await self.sweep()
                if expired:
                    log.info("holds expired", count=expired)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("hold sweep failed", error=repr(exc))
            await asyncio.sleep(every_seconds)

    async def close(self) -> None:
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task


def _announcement(decided: Authorization, now: datetime) -> CreditAuthorizationDecidedV1:
    return CreditAuthorizationDecidedV1.new(
        organisation_id=decided.organisation_id,
        producer=PRODUCER,
        occurred_at=now,
        data=AuthorizationDecision(
            authorization_id=decided.authorization_id,
            member_id=decided.member_id,
            message_id=decided.message_id,
            agent_id=decided.agent_id,
            decision=decided.decision,  # type: ignore[arg-type]
            reason=decided.reason,
            estimate=decided.estimate,
            held=decided.held,
            balance=decided.balance or 0,
            available=decided.available or 0,
            expires_at=decided.expires_at,
            renews_at=decided.renews_at,
        ),
    )
