"""Credit authorization for the chat gateway: reserve an estimate, settle with the actual cost.

Group commit. Requests go to one of a few lanes by organisation (a stable hash), so one
organisation's requests always share a lane and keep their order of arrival. A lane decides
whatever is waiting, for all its organisations, in one cycle: one read of the wallets and one
statement that writes every decision, hold and announcement. While a cycle runs, new requests
wait for the next one. Nothing is delayed on purpose: a lone request gets a cycle of its own;
under load a cycle decides many, so neither a hot organisation nor many busy ones pay one
transaction per request.

The write is a compare-and-set per organisation: an organisation whose wallet changed between
the read and the write (a usage debit, a grant, the sweeper) writes nothing and is decided again
in the same cycle, from the new state. No lock is held while Python decides. An organisation's
budgets are read in the same statement as its wallet, and whatever changes what its members and
agents used (a debit, a hold taken, settled, released or expired) changes its wallet too, so
the same compare and set covers them.

Isolation. A failure belongs to the request or organisation that caused it: when a cycle fails
(other than by a transient outage), its requests are split, by organisation first, and decided
again in smaller groups until the failing ones stand alone; only those get the error. An
organisation whose wallet keeps changing through `max_conflicts` attempts gets
`ConcurrentChange` for its own requests; the others are decided. The requests waiting for a
cycle are bounded (`max_waiting`); beyond it `Overloaded` is raised at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID, uuid4

import asyncpg

from shared.clock import Clock
from shared.events import AuthorizationDecision, CreditAuthorizationDecidedV1
from shared.failures import is_transient
from shared.logging import get_logger

from . import PRODUCER
from .domain.authorization import Request, decide
from .domain.budgets import NO_BUDGETS
from .store import holds as store

log = get_logger("metering.authorizer")

_ATTEMPTS = 4
_CONFLICTS = 20


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

    def as_new_decision(self) -> store.NewDecision:
        return store.NewDecision(
            self.authorization_id,
            self.organisation_id,
            self.message_id,
            self.member_id,
            self.agent_id,
            self.reason,
            self.estimate,
            self.expires_at,
        )


class HoldNotFound(LookupError):
    pass


class ConcurrentChange(Exception):
    """The wallet kept changing between reading it and writing the decisions."""


class Overloaded(Exception):
    """Too many requests are waiting for a decision cycle."""


class HoldClosed(Exception):
    def __init__(self, authorization: Authorization) -> None:
        super().__init__(f"hold is {authorization.status}")
        self.authorization = authorization


@dataclass
class _Lane:
    pending: list[tuple[Ask, asyncio.Future[Authorization]]] = field(default_factory=list)
    busy: bool = False


class Authorizer:
    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Clock,
        *,
        hold_ttl: timedelta,
        topic_prefix: str,
        lanes: int = 2,
        max_waiting: int = 2_000,
        max_conflicts: int = _CONFLICTS,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._ttl = hold_ttl
        self._prefix = topic_prefix
        self._lanes = [_Lane() for _ in range(lanes)]
        self._tasks: set[asyncio.Task[None]] = set()
        self._max_waiting = max_waiting
        self._max_conflicts = max_conflicts
        self.waiting = 0
        """Requests waiting for a decision cycle, across lanes."""
        self.cycles = 0
        """Decision cycles written: fewer than requests when group commit groups."""
        self.conflicts = 0
        """Organisations decided again because their wallet changed between read and write."""

    async def authorize(self, ask: Ask) -> Authorization:
        """Decide once per (organisation, message id); asking again returns that decision."""
        if self.waiting >= self._max_waiting:
            raise Overloaded(f"{self.waiting} requests are waiting for a decision")
        lane = self._lanes[zlib.crc32(ask.organisation_id.encode()) % len(self._lanes)]
        future: asyncio.Future[Authorization] = asyncio.get_running_loop().create_future()
        lane.pending.append((ask, future))
        self.waiting += 1
        if not lane.busy:
            lane.busy = True
            task = asyncio.create_task(self._drain(lane))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self, lane: _Lane) -> None:
        try:
            while lane.pending:
                group, lane.pending = lane.pending, []
                self.waiting -= len(group)
                try:
                    outcomes = await self._decide_isolating([a for a, _ in group])
                except Exception as exc:  # a transient outage: every request of the cycle
                    outcomes = {(a.organisation_id, a.message_id): exc for a, _ in group}
                for ask, future in group:
                    if future.done():
                        continue
                    outcome = outcomes[(ask.organisation_id, ask.message_id)]
                    if isinstance(outcome, Exception):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            lane.busy = False

    async def _decide_isolating(
        self, asks: Sequence[Ask]
    ) -> dict[tuple[str, str], Authorization | Exception]:
        """Decide `asks`; a failure that is not transient is narrowed down to the requests
        that cause it, which alone get it."""
        try:
            return await self._decide_with_retries(asks)
        except Exception as exc:
            if is_transient(exc):
                raise
            if len(asks) == 1:
                ask = asks[0]
                log.warning(
                    "authorization failed",
                    organisation_id=ask.organisation_id,
                    message_id=ask.message_id,
                    error=repr(exc),
                )
                return {(ask.organisation_id, ask.message_id): exc}
            organisations = sorted({a.organisation_id for a in asks})
            if len(organisations) > 1:
                half = set(organisations[: len(organisations) // 2])
                parts = [
                    [a for a in asks if a.organisation_id in half],
                    [a for a in asks if a.organisation_id not in half],
                ]
            else:
                parts = [list(asks[: len(asks) // 2]), list(asks[len(asks) // 2 :])]
            outcomes: dict[tuple[str, str], Authorization | Exception] = {}
            for part in parts:
                outcomes.update(await self._decide_isolating(part))
            return outcomes

    async def _decide_with_retries(
        self, asks: Sequence[Ask]
    ) -> dict[tuple[str, str], Authorization | Exception]:
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                return await self._decide(asks)
            except Exception as exc:
                if attempt == _ATTEMPTS or not is_transient(exc):
                    raise
                await asyncio.sleep(0.005 * attempt)
        raise AssertionError("unreachable")

    async def _decide(
        self, asks: Sequence[Ask]
    ) -> dict[tuple[str, str], Authorization | Exception]:
        """One cycle: read the wallets, decide, write (compare and set); organisations whose
        wallet changed meanwhile are read and decided again, up to `max_conflicts` times."""
        waiting: dict[str, dict[str, Ask]] = {}
        for ask in asks:
            waiting.setdefault(ask.organisation_id, {}).setdefault(ask.message_id, ask)
        decided: dict[tuple[str, str], Authorization | Exception] = {}
        states: dict[str, store.DecisionState] = {}
        async with self._pool.acquire() as conn:
            for _ in range(self._max_conflicts):
                now = self._clock.now()
                message_ids = [m for org in waiting.values() for m in org]
                asked = [a for org in waiting.values() for a in org.values()]
                states = await store.decision_states(
                    conn,
                    list(waiting),
                    message_ids,
                    now,
                    horizon=now + self._ttl,
                    members=sorted({a.member_id for a in asked}),
                    agents=sorted({a.agent_id for a in asked if a.agent_id is not None}),
                )
                views = [
                    view
                    for organisation, org_asks in waiting.items()
                    for view in self._views(organisation, org_asks, states.get(organisation), now)
                ]
                if not views:
                    waiting = {}
                    break
                recorded = await store.record_decisions(
                    conn,
                    [v.as_new_decision() for v in views],
                    [_announcement(v, now) for v in views],
                    seen={o: states[o] for o in waiting if o in states},
                    prefix=self._prefix,
                    now=now,
                )
                for view in views:
                    key = (view.organisation_id, view.message_id)
                    if key in recorded.inserted:
                        decided[key] = view
                changed = set(waiting) - recorded.proceeded
                waiting = {o: waiting[o] for o in changed}
                if not waiting:
                    break
                self.conflicts += len(changed)
        self.cycles += 1
        for organisation, org_asks in waiting.items():
            log.warning(
                "wallet kept changing; requests not decided",
                organisation_id=organisation,
                requests=len(org_asks),
                attempts=self._max_conflicts,
            )
            for message_id in org_asks:
                decided[(organisation, message_id)] = ConcurrentChange(organisation)
        replays = [
            (a.organisation_id, a.message_id)
            for a in asks
            if (a.organisation_id, a.message_id) not in decided
        ]
        if replays:
            for row in await store.decisions_for(self._pool, sorted(set(replays))):
                state = states.get(row["organisation_id"])
                decided[(row["organisation_id"], row["message_id"])] = Authorization.from_row(
                    row,
                    balance=state.reservable if state else None,
                    available=state.reservable - state.held + state.lapsed if state else None,
                    renews_at=state.renews_at if state else None,
                    replayed=True,
                )
        return decided

    def _views(
        self,
        organisation_id: str,
        asks: dict[str, Ask],
        state: store.DecisionState | None,
        now: datetime,
    ) -> list[Authorization]:
        """New decisions for the organisation's requests not decided before, in order."""
        known = set(state.known) if state else set()
        fresh = [a for a in asks.values() if a.message_id not in known]
        balance = state.reservable if state else 0
        held = state.held - state.lapsed if state else 0
        verdicts = decide(
            [Request(a.message_id, a.estimate, a.member_id, a.agent_id) for a in fresh],
            wallet_exists=state is not None,
            balance=balance,
            held=held,
            budgets=state.budgets if state else NO_BUDGETS,
        )
        views = []
        for ask, verdict in zip(fresh, verdicts, strict=True):
            held += verdict.held
            views.append(
                Authorization(
                    authorization_id=uuid4(),
                    organisation_id=organisation_id,
                    message_id=ask.message_id,
                    member_id=ask.member_id,
                    agent_id=ask.agent_id,
                    decision="allowed" if verdict.allowed else "denied",
                    reason=verdict.reason.value if verdict.reason else None,
                    estimate=ask.estimate,
                    status="held" if verdict.allowed else "denied",
                    decided_at=now,
                    expires_at=now + self._ttl if verdict.allowed else None,
                    balance=balance if state else None,
                    available=balance - held if state else None,
                    renews_at=state.renews_at if state else None,
                )
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

    async def sweep(self, *, limit: int = 500) -> int:
        """Expire the holds past their time. Returns how many expired."""
        total = 0
        while True:
            async with self._pool.acquire() as conn, conn.transaction():
                due, expired = await store.expire_due_holds(conn, self._clock.now(), limit=limit)
            total += expired
            if due < limit or expired == 0:
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
