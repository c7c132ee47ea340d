"""Metering's API for reading how credits were used: one message's receipt, usage one level
down (day, agent, conversation, message), and the rate card that priced it."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Request
from pydantic import AwareDatetime, BaseModel

from shared.access import READERS, Scope, allow
from shared.events.envelope import Identifier
from shared.http import PROBLEM_RESPONSES, IdentifierPath, OrganisationPath, Problem

from .. import receipts
from ..service import Metering

router = APIRouter(prefix="/v1", responses=PROBLEM_RESPONSES)


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
    organisation_id: OrganisationPath, message_id: IdentifierPath, request: Request
) -> ReceiptOut:
    """One message: what was reserved, what was settled and how it was priced (rate card
    version and line), the buckets it used and what was released."""
    metering: Metering = request.app.state.parts.metering
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
        line = metering.rate_card.line(debit["rate_card"], debit["model"])
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


@router.get("/rate-card", dependencies=[allow(*READERS, Scope.FRONT)], tags=["credits"])
async def rate_card(request: Request) -> dict[str, Any]:
    """Every version of the rate card (what raw usage costs), oldest first, with the one in
    force now; the rounding rule is in the file and in the service's README."""
    card = request.app.state.parts.metering.rate_card
    now = request.app.state.runtime.clock.now()
    current = card.in_force(now)
    return {
        "in_force": current.version if current else None,
        "versions": [v.model_dump(mode="json") for v in card.versions],
    }
