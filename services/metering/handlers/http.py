"""The metering HTTP API, for internal callers with a bearer token:
- the chat gateway's credit authorizations (hold, release, look up);
- an organisation's credits (the credit bar, R7) and its ledger."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from shared import metrics
from shared.access import READERS, Scope, allow
from shared.audit import audited
from shared.events import MAX_CREDITS_PER_MESSAGE, CreditLevel
from shared.events.audit import SYSTEM_ORGANISATION, AuditAction
from shared.events.envelope import Identifier, OrganisationId
from shared.events.usage import ModelName
from shared.http import (
    PROBLEM_RESPONSES,
    Answer,
    Delegate,
    HotRequest,
    HotRoute,
    OrganisationPath,
    Problem,
)

from .. import usage
from ..authorizer import (
    Ask,
    Authorization,
    Authorizer,
    ConcurrentChange,
    HoldClosed,
    HoldNotFound,
    Overloaded,
)
from ..service import Metering
from ..settings import MeteringSettings

BIGINT_MAX = 2**63 - 1

router = APIRouter(prefix="/v1", responses=PROBLEM_RESPONSES)


def _metering(request: Request) -> Metering:
    return request.app.state.parts.metering


def _authorizer(request: Request) -> Authorizer:
    return request.app.state.parts.authorizer


# Authorizations -------------------------------------------------------------------------------


class AuthorizationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    organisation_id: OrganisationId
    member_id: Identifier
    message_id: Identifier
    """The gateway's id of the member's message: the idempotency key of the decision."""
    agent_id: Identifier | None = None
    estimate: Annotated[int, Field(strict=True, gt=0, le=MAX_CREDITS_PER_MESSAGE)] | None = None
    """Credits to hold. Default: the rate card's estimate for `model`, else the agent's
    configured estimate, else the default estimate."""
    model: ModelName | None = None
    """The model the agent will use, if known (a line of the rate card in force)."""


class AuthorizationOut(BaseModel):
    authorization_id: UUID
    """Also the hold id."""
    organisation_id: str
    message_id: str
    member_id: str
    agent_id: str | None
    decision: str
    """`allowed` or `denied`."""
    reason: str | None
    """Why denied: `credits_exhausted`, `insufficient_credits`, `member_budget_exhausted`,
    `agent_budget_exhausted`, `no_wallet`."""
    estimate: int
    held: int
    """Credits this hold reserves now (0 once settled, released or expired, or if denied)."""
    status: str
    """`held`, `settled`, `released`, `expired` or `denied`."""
    decided_at: datetime
    expires_at: datetime | None
    closed_at: datetime | None
    settled_credits: int | None
    balance: int | None
    available: int | None
    """Balance minus active holds, right after the decision (null on later reads)."""
    renews_at: datetime | None


def _out(authorization: Authorization) -> AuthorizationOut:
    return AuthorizationOut.model_validate(authorization, from_attributes=True)


@router.post(
    "/authorizations",
    dependencies=[allow(Scope.CHAT)],
    response_model=AuthorizationOut,
    tags=["authorizations"],
    responses={503: {"description": "Too many requests waiting, or the wallet kept changing"}},
)
async def authorize(body: AuthorizationIn, request: Request, response: Response) -> dict[str, Any]:
    """May this member's message go to the agent? If so, its estimate is held until the usage
    event for the same message settles it, the gateway releases it, or it expires. Asking again
    for the same message returns the same decision and hold (header `Idempotent-Replayed`).
    503 with `Retry-After` when the service is saturated: ask again. (Served by
    `HOT_AUTHORIZE` in front of the framework; this route answers what it leaves.)"""
    answer = await _authorize(request.app.state, body)
    response.headers.update(answer.headers or {})
    return answer.body


async def _authorize(state: Any, body: AuthorizationIn) -> Answer:
    settings: MeteringSettings = state.settings
    started = time.perf_counter()
    try:
        decided = await state.parts.authorizer.authorize(
            Ask(
                organisation_id=body.organisation_id,
                member_id=body.member_id,
                message_id=body.message_id,
                agent_id=body.agent_id,
                estimate=settings.estimate_for(
                    body.agent_id,
                    body.estimate,
                    state.parts.metering.rate_card.estimate(body.model, state.runtime.clock.now())
                    if body.model and body.estimate is None
                    else None,
                ),
            )
        )
    except Overloaded:
        raise Problem(
            503,
            "overloaded",
            "Too many authorizations waiting",
            "The decision queue is full; ask again shortly.",
            headers={"Retry-After": "1"},
        ) from None
    except ConcurrentChange:
        raise Problem(
            503,
            "wallet-busy",
            "The wallet kept changing",
            "The organisation's credits changed during every attempt to decide; ask again.",
            headers={"Retry-After": "1"},
        ) from None
    metrics.AUTHORIZATION_SECONDS.observe(time.perf_counter() - started)
    metrics.AUTHORIZATIONS.labels(decided.decision, decided.reason or "").inc()
    headers = {"Idempotent-Replayed": "true"} if decided.replayed else None
    return Answer(_out(decided).model_dump(mode="json"), headers)


async def _hot_authorize(request: HotRequest) -> Answer:
    try:
        body = AuthorizationIn.model_validate_json(request.body)
    except ValidationError:
        raise Delegate from None
    return await _authorize(request.state, body)


HOT_AUTHORIZE = HotRoute(
    path=re.compile(r"^/v1/authorizations$"),
    answer=_hot_authorize,
    scopes=frozenset({Scope.CHAT}),
    method="POST",
)


@router.get(
    "/authorizations/{authorization_id}",
    dependencies=[allow(Scope.CHAT, Scope.OPERATOR)],
    response_model=AuthorizationOut,
    tags=["authorizations"],
)
async def get_authorization(authorization_id: UUID, request: Request) -> AuthorizationOut:
    found = await _authorizer(request).get(authorization_id)
    if found is None:
        raise Problem(404, "authorization-not-found", "No such authorization")
    return _out(found)


@router.post(
    "/authorizations/{authorization_id}/release",
    dependencies=[allow(Scope.CHAT)],
    response_model=AuthorizationOut,
    tags=["authorizations"],
    responses={409: {"description": "The hold was settled, expired or denied"}},
)
async def release(authorization_id: UUID, request: Request) -> AuthorizationOut:
    """The message was never sent: give the held credits back. Idempotent."""
    try:
        return _out(await _authorizer(request).release(authorization_id))
    except HoldNotFound:
        raise Problem(404, "authorization-not-found", "No such authorization") from None
    except HoldClosed as closed:
        raise Problem(
            409,
            "hold-closed",
            f"The hold is {closed.authorization.status}",
            "Only an active hold can be released.",
            status_detail=closed.authorization.status,
        ) from None


# Credits and ledger ----------------------------------------------------------------------------


class BucketOut(BaseModel):
    bucket_id: UUID
    source: str
    """`plan`, `upgrade_top_up`, `rollover`, `pack`, `auto_recharge`, `promotion`, `operator`."""
    grant_key: str
    granted: int
    remaining: int
    priority: int
    effective_from: datetime
    expires_at: datetime | None
    ends_with_period: bool
    """A plan's credits end when the next period starts (`expires_at` is its end)."""


class CreditsOut(BaseModel):
    organisation_id: str
    balance: int
    held: int
    """Credits reserved by active holds."""
    available: int
    """Balance minus held, without credits already expired: what new authorizations can
    reserve."""
    debt: int
    """What usage took beyond every bucket (the balance is below zero by this much)."""
    buckets: list[BucketOut]
    """The live buckets, in the order they are spent."""
    allotment: int
    used: int
    percent_left: int
    level: CreditLevel
    period_start: datetime | None
    renews_at: datetime | None
    revision: int
    updated_at: datetime


class AllocationOut(BaseModel):
    bucket_id: UUID
    credits: int
    """Credits taken from the bucket (positive)."""


class LedgerEntryOut(BaseModel):
    seq: int
    entry_id: UUID
    kind: str
    amount: int
    reason: str | None
    period_key: str | None
    source_event_id: UUID
    member_id: str | None
    agent_id: str | None
    conversation_id: str | None
    message_id: str | None
    occurred_at: datetime
    recorded_at: datetime
    rate_card: str | None
    """A debit of raw usage: the rate card version that priced it, its line (`model`) and
    what was priced. Null for usage that came with its credits."""
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    tool_calls: int | None
    buckets: list[AllocationOut]
    """The buckets the entry took credits from (a debit, an expiry, a clawback)."""


class LedgerPageOut(BaseModel):
    organisation_id: str
    entries: list[LedgerEntryOut]
    next_before: int | None
    """Pass as `before` to get the next (older) page; null on the last page."""


def _no_wallet(organisation_id: str) -> Problem:
    return Problem(
        404,
        "wallet-not-found",
        "No wallet for this organisation",
        f"{organisation_id} has neither received credits nor used any.",
        organisation_id=organisation_id,
    )


@router.get(
    "/organisations/{organisation_id}/credits",
    dependencies=[allow(*READERS)],
    response_model=CreditsOut,
    tags=["credits"],
)
async def get_credits(organisation_id: OrganisationPath, request: Request) -> CreditsOut:
    """Balance, holds, allotment, used this period, percent left, level and renewal time."""
    found = await _metering(request).credits(organisation_id)
    if found is None:
        raise _no_wallet(organisation_id)
    b = found.balance
    return CreditsOut(
        organisation_id=organisation_id,
        balance=b.balance,
        held=found.wallet.held,
        available=found.spendable - found.wallet.held,
        debt=found.wallet.debt,
        buckets=[
            BucketOut(
                bucket_id=k.bucket_id,
                source=k.source.value,
                grant_key=k.key,
                granted=k.granted,
                remaining=k.remaining,
                priority=k.priority,
                effective_from=k.effective_from,
                expires_at=k.expires_at,
                ends_with_period=k.ends_with_period,
            )
            for k in found.buckets
        ],
        allotment=b.allotment,
        used=b.used,
        percent_left=b.percent_left,
        level=b.level,
        period_start=b.period_start,
        renews_at=b.renews_at,
        revision=b.revision,
        updated_at=found.updated_at,
    )


@router.get(
    "/organisations/{organisation_id}/ledger",
    dependencies=[allow(*READERS)],
    response_model=LedgerPageOut,
    tags=["credits"],
)
async def get_ledger(
    organisation_id: OrganisationPath,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[
        int | None,
        Query(ge=1, le=BIGINT_MAX, description="`next_before` of the previous page"),
    ] = None,
) -> LedgerPageOut:
    """Ledger entries, newest first, paginated."""
    metering = _metering(request)
    rows = await metering.ledger(organisation_id, limit=limit + 1, before=before)
    if not rows and before is None and await metering.credits(organisation_id) is None:
        raise _no_wallet(organisation_id)
    page = rows[:limit]
    return LedgerPageOut(
        organisation_id=organisation_id,
        entries=[
            LedgerEntryOut(
                **{
                    **e._asdict(),
                    "buckets": [AllocationOut(bucket_id=b, credits=c) for b, c in e.buckets],
                }
            )
            for e in page
        ],
        next_before=page[-1].seq if len(rows) > limit else None,
    )


class UsageRowOut(BaseModel):
    name: str
    credits: int


class DebitOut(BaseModel):
    entry_id: UUID
    member_id: str | None
    agent_id: str | None
    credits: int
    occurred_at: datetime


class UsageOut(BaseModel):
    organisation_id: str
    since: datetime
    until: datetime
    total: int
    """Credits debited in [since, until): each accepted message once, nothing refused."""
    messages: int
    by_day: list[UsageRowOut]
    by_member: list[UsageRowOut]
    by_agent: list[UsageRowOut]
    recent: list[DebitOut]
    periods: list[datetime]
    """Where the latest credit periods began (a plan start or a renewal), newest first."""


@router.get(
    "/organisations/{organisation_id}/usage",
    dependencies=[allow(*READERS)],
    response_model=UsageOut,
    tags=["credits"],
)
async def get_usage(
    organisation_id: OrganisationPath,
    request: Request,
    since: Annotated[AwareDatetime, Query()],
    until: Annotated[
        AwareDatetime | None, Query(description="Default: where the next credit period began")
    ] = None,
) -> UsageOut:
    """What the ledger debited between two instants (at most 400 days), by day (UTC), member
    and agent, the latest debits, and where the credit periods began. Without `until`: to
    the end of the credit period `since` falls in (the next one's start, or now)."""
    runtime = request.app.state.runtime
    if until is None:
        until = await usage.period_end(runtime.pool, organisation_id, since)
        until = until or max(runtime.clock.now(), since + timedelta(seconds=1))
    if not since < until or until - since > timedelta(days=400):
        raise Problem(400, "invalid-range", "Give `since` before `until`, at most 400 days apart")
    found = await usage.usage(runtime.pool, organisation_id, since, until)
    return UsageOut(
        organisation_id=organisation_id,
        since=since,
        until=until,
        total=found.total,
        messages=found.messages,
        by_day=[UsageRowOut(name=n, credits=c) for n, c in found.by_day],
        by_member=[UsageRowOut(name=n, credits=c) for n, c in found.by_member],
        by_agent=[UsageRowOut(name=n, credits=c) for n, c in found.by_agent],
        recent=[DebitOut.model_validate(d) for d in found.recent],
        periods=found.periods,
    )


class LedgerCheckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    organisation_id: OrganisationId | None = None
    """One organisation's wallet; none: every wallet."""


class LedgerMismatchOut(BaseModel):
    organisation_id: str
    balance: int | None = None
    ledger: int | None = None
    """The sum of the wallet's ledger entries."""
    buckets: int | None = None
    """What remains in the wallet's buckets, less its debt."""
    bucket_id: str | None = None
    """A bucket whose remaining differs from what it was granted less what entries took."""
    remaining: int | None = None
    allocated: int | None = None
    budget: str | None = None
    """What budgets count that differs: `held|spent:member|agent:<id>`."""
    counted: int | None = None
    actual: int | None = None


class LedgerCheckOut(BaseModel):
    wallets: int
    mismatches: list[LedgerMismatchOut]
    """Reported, never fixed: each is also an `operator_alert.raised.v1`."""


@router.post(
    "/ledger-checks",
    dependencies=[allow(Scope.OPERATOR)],
    response_model=LedgerCheckOut,
    response_model_exclude_none=True,
    tags=["operations"],
)
async def ledger_check(body: LedgerCheckIn, request: Request) -> LedgerCheckOut:
    """Check that every wallet's balance (or one's) equals the sum of its ledger entries and
    what remains in its buckets less its debt, and every bucket against its entries."""
    organisation = body.organisation_id or SYSTEM_ORGANISATION
    async with audited(request, organisation, AuditAction.LEDGER_CHECK) as entry:
        found = await request.app.state.parts.ledger_check.run(body.organisation_id)
        entry.detail = f"{len(found['mismatches'])} mismatches"
    return LedgerCheckOut.model_validate(found)
