"""The metering HTTP API, for internal callers with a bearer token:
- the chat gateway's credit authorizations (hold, release, look up);
- an organisation's credits (the credit bar, R7) and its ledger."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from shared.access import READERS, Scope, allow
from shared.acting import Acting
from shared.audit import audited
from shared.events import MAX_CREDITS_PER_MESSAGE, CreditLevel
from shared.events.audit import SYSTEM_ORGANISATION, AuditAction, AuditActionV2
from shared.events.envelope import NO_CONTROL_CHARACTERS, Identifier, OrganisationId
from shared.events.members import MemberRole
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

from .. import receipts, usage
from ..authorizer import (
    Ask,
    Authorization,
    Authorizer,
    ConcurrentChange,
    HoldClosed,
    HoldNotFound,
    Overloaded,
)
from ..budgets import BudgetBook, BudgetUse, BudgetView
from ..domain.budgets import MAX_CAP
from ..domain.budgets import Scope as BudgetScope
from ..service import Metering
from ..settings import MeteringSettings

BIGINT_MAX = 2**63 - 1

router = APIRouter(prefix="/v1", responses=PROBLEM_RESPONSES)

SubjectPath = Annotated[str, Path(min_length=1, max_length=128, pattern=NO_CONTROL_CHARACTERS)]
"""A member's, agent's or message's id in a path."""


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
    """Why denied: `credits_exhausted`, `insufficient_credits`, `no_wallet`."""
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


class ReservationOut(BaseModel):
    authorization_id: UUID
    decision: str
    reason: str | None
    estimate: int
    status: str
    decided_at: datetime
    expires_at: datetime | None
    closed_at: datetime | None


class PricedOut(BaseModel):
    version: str
    model: str
    input_tokens: int
    output_tokens: int
    tool_calls: int
    line: dict[str, int] | None
    """The rate card line that priced it (rates in credits per million tokens, per call)."""


class SettledOut(BaseModel):
    entry_id: UUID
    credits: int
    occurred_at: datetime
    recorded_at: datetime
    priced: PricedOut | None
    """How the rate card priced raw usage; null when the usage carried its credits."""


class ReceiptBucketOut(BaseModel):
    bucket_id: UUID
    source: str
    credits: int


class ReceiptOut(BaseModel):
    organisation_id: str
    message_id: str
    member_id: str | None
    agent_id: str | None
    conversation_id: str | None
    reserved: ReservationOut | None
    """The authorization, if the chat gateway asked for one."""
    settled: SettledOut | None
    """The ledger's debit, once the usage arrived."""
    buckets: list[ReceiptBucketOut]
    """What the debit took from each bucket (in spending order); what no bucket covered
    became debt."""
    released: int
    """Held credits given back unspent (a released or expired hold; a settled one's estimate
    beyond its cost)."""


@router.get(
    "/organisations/{organisation_id}/messages/{message_id}/receipt",
    dependencies=[allow(*READERS)],
    response_model=ReceiptOut,
    tags=["credits"],
)
async def get_receipt(
    organisation_id: OrganisationPath, message_id: SubjectPath, request: Request
) -> ReceiptOut:
    """One message: what was reserved, what was settled and how it was priced (rate card
    version and line), the buckets it used and what was released."""
    metering = _metering(request)
    found = await receipts.receipt(request.app.state.runtime.pool, organisation_id, message_id)
    if found is None:
        raise Problem(
            404,
            "message-not-found",
            "No such message",
            f"{organisation_id} has neither an authorization nor a debit for {message_id!r}.",
        )
    reservation, debit = found.reservation, found.debit
    whose = debit or reservation or {}
    priced = None
    if debit is not None and debit["rate_card"] is not None:
        version = next(
            (v for v in metering.rate_card.versions if v.version == debit["rate_card"]), None
        )
        line = version.lines.get(debit["model"]) if version else None
        priced = PricedOut(
            version=debit["rate_card"],
            model=debit["model"],
            input_tokens=debit["input_tokens"],
            output_tokens=debit["output_tokens"],
            tool_calls=debit["tool_calls"],
            line=line.model_dump() if line else None,
        )
    return ReceiptOut(
        organisation_id=organisation_id,
        message_id=message_id,
        member_id=whose.get("member_id"),
        agent_id=whose.get("agent_id"),
        conversation_id=debit["conversation_id"] if debit else None,
        reserved=ReservationOut.model_validate(reservation) if reservation else None,
        settled=SettledOut(
            entry_id=debit["entry_id"],
            credits=debit["credits"],
            occurred_at=debit["occurred_at"],
            recorded_at=debit["recorded_at"],
            priced=priced,
        )
        if debit
        else None,
        buckets=[ReceiptBucketOut.model_validate(b) for b in found.buckets],
        released=found.released,
    )


class BreakdownRowOut(BaseModel):
    key: str
    """The day (YYYY-MM-DD, UTC), agent, conversation or message id."""
    credits: int
    messages: int
    occurred_at: datetime | None = None
    member_id: str | None = None


class BreakdownOut(BaseModel):
    organisation_id: str
    since: datetime
    until: datetime
    level: str
    """`day`, `agent`, `conversation` or `message`: what the rows are."""
    total: int
    """Credits debited at this level (the parent row's credits)."""
    messages: int
    rows: list[BreakdownRowOut]
    more: bool


@router.get(
    "/organisations/{organisation_id}/usage/breakdown",
    dependencies=[allow(*READERS)],
    response_model=BreakdownOut,
    response_model_exclude_none=True,
    tags=["credits"],
)
async def get_breakdown(
    organisation_id: OrganisationPath,
    request: Request,
    since: Annotated[AwareDatetime, Query()],
    until: Annotated[AwareDatetime, Query()],
    day: Annotated[
        str | None, Query(max_length=10, pattern=r"^\d{4}-\d{2}-\d{2}$", description="UTC")
    ] = None,
    agent_id: Annotated[Identifier | None, Query()] = None,
    conversation_id: Annotated[Identifier | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> BreakdownOut:
    """Usage one level down: by day; a day's by agent; an agent's day by conversation; a
    conversation's day by message (each message has a receipt). Every level adds up to the
    one above it, and the days to the ledger's debits."""
    if not since < until or until - since > timedelta(days=400):
        raise Problem(400, "invalid-range", "Give `since` before `until`, at most 400 days apart")
    try:
        found = await receipts.breakdown(
            request.app.state.runtime.pool,
            organisation_id,
            since,
            until,
            day=date.fromisoformat(day) if day else None,
            agent_id=agent_id,
            conversation_id=conversation_id,
            limit=limit,
        )
    except ValueError as exc:
        raise Problem(
            400, "invalid-drill-down", "Choose a day, then an agent, then a conversation", str(exc)
        ) from None
    return BreakdownOut(
        organisation_id=organisation_id,
        since=since,
        until=until,
        level=found.level,
        total=found.total,
        messages=found.messages,
        rows=[BreakdownRowOut.model_validate(r) for r in found.rows],
        more=found.more,
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


# The rate card ----------------------------------------------------------------------------------


@router.get("/rate-card", dependencies=[allow(*READERS, Scope.FRONT)], tags=["credits"])
async def rate_card(request: Request) -> dict[str, Any]:
    """Every version of the rate card (what raw usage costs), oldest first, with the one in
    force now; the rounding rule is in the file and in the service's README."""
    card = _metering(request).rate_card
    now = request.app.state.runtime.clock.now()
    current = card.in_force(now)
    return {
        "in_force": current.version if current else None,
        "versions": [v.model_dump(mode="json") for v in card.versions],
    }


# Budgets --------------------------------------------------------------------------------------


def _budgets(request: Request) -> BudgetBook:
    return request.app.state.parts.budgets


class BudgetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    monthly_cap: Annotated[int, Field(strict=True, ge=0, le=MAX_CAP)] | None
    """Credits per credit period; null removes the budget."""


class BudgetUseOut(BaseModel):
    subject_id: str
    """The member's or agent's id."""
    cap: int | None
    """The cap in force (for a member without one of their own: the members' default)."""
    own: bool
    spent: int
    """Debited this credit period."""
    held: int
    """Reserved by messages not yet settled."""
    left: int | None


class BudgetsOut(BaseModel):
    organisation_id: str
    period_key: str | None
    renews_at: datetime | None
    """Budgets restart with the credit period."""
    member_default: int | None
    members: list[BudgetUseOut]
    agents: list[BudgetUseOut]
    editable: bool
    """The viewer may set budgets (owners)."""


def _use(use: BudgetUse) -> BudgetUseOut:
    return BudgetUseOut(
        subject_id=use.subject_id,
        cap=use.cap,
        own=use.own,
        spent=use.spent,
        held=use.held,
        left=use.left,
    )


def _budgets_out(organisation_id: str, view: BudgetView, *, editable: bool) -> BudgetsOut:
    return BudgetsOut(
        organisation_id=organisation_id,
        period_key=view.period_key,
        renews_at=view.renews_at,
        member_default=view.member_default,
        members=[_use(m) for m in view.members],
        agents=[_use(a) for a in view.agents],
        editable=editable,
    )


@router.get(
    "/budgets", dependencies=[allow(Scope.FRONT)], response_model=BudgetsOut, tags=["budgets"]
)
async def my_budgets(acting: Acting, request: Request) -> BudgetsOut:
    """The organisation's budgets and their use this credit period: all of them for an owner;
    for anyone else, their own (their cap, or the members' default, and what they used)."""
    book = _budgets(request)
    view = await book.view(acting.organisation_id)
    if acting.role is MemberRole.OWNER:
        return _budgets_out(acting.organisation_id, view, editable=True)
    own = await book.member(acting.organisation_id, acting.member_id)
    mine = BudgetView(view.period_key, view.renews_at, view.member_default, [own], [])
    return _budgets_out(acting.organisation_id, mine, editable=False)


async def _set(
    acting: Acting, request: Request, scope: BudgetScope, subject: str, body: BudgetIn
) -> BudgetsOut:
    book = _budgets(request)
    async with audited(request, acting.organisation_id, AuditActionV2.BUDGET) as entry:
        entry.target = f"{scope.value}:{subject}" if subject else scope.value
        if acting.role is not MemberRole.OWNER:
            raise Problem(
                403,
                "not-owner",
                "Not allowed",
                f"only an owner may set budgets; {acting.member_id} is {acting.role.value}",
                reason="not_owner",
            )
        await book.set(
            acting.organisation_id, scope, subject, body.monthly_cap, by=acting.member_id
        )
        entry.detail = "removed" if body.monthly_cap is None else f"monthly cap {body.monthly_cap}"
    return _budgets_out(
        acting.organisation_id, await book.view(acting.organisation_id), editable=True
    )


@router.put(
    "/budgets/members/{member_id}",
    dependencies=[allow(Scope.FRONT)],
    response_model=BudgetsOut,
    tags=["budgets"],
)
async def set_member_budget(
    member_id: SubjectPath, body: BudgetIn, acting: Acting, request: Request
) -> BudgetsOut:
    """Set (or remove) one member's monthly cap (owners only); it replaces the default."""
    return await _set(acting, request, BudgetScope.MEMBER, member_id, body)


@router.put(
    "/budgets/agents/{agent_id}",
    dependencies=[allow(Scope.FRONT)],
    response_model=BudgetsOut,
    tags=["budgets"],
)
async def set_agent_budget(
    agent_id: SubjectPath, body: BudgetIn, acting: Acting, request: Request
) -> BudgetsOut:
    """Set (or remove) one agent's monthly cap, whoever sends to it (owners only)."""
    return await _set(acting, request, BudgetScope.AGENT, agent_id, body)


@router.put(
    "/budgets/member-default",
    dependencies=[allow(Scope.FRONT)],
    response_model=BudgetsOut,
    tags=["budgets"],
)
async def set_member_default(body: BudgetIn, acting: Acting, request: Request) -> BudgetsOut:
    """Set (or remove) the cap of every member without one of their own (owners only)."""
    return await _set(acting, request, BudgetScope.MEMBER_DEFAULT, "", body)


@router.get(
    "/organisations/{organisation_id}/budgets",
    dependencies=[allow(*READERS)],
    response_model=BudgetsOut,
    tags=["budgets"],
)
async def budgets_of(organisation_id: OrganisationPath, request: Request) -> BudgetsOut:
    """Any organisation's budgets and their use, for readers and operators."""
    view = await _budgets(request).view(organisation_id)
    return _budgets_out(organisation_id, view, editable=False)
