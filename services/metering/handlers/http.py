"""The metering HTTP API: an organisation's credits (the credit bar, R7) and its ledger."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel

from shared.events import CreditLevel
from shared.events.envelope import ORGANISATION_ID_PATTERN
from shared.http import PROBLEM_RESPONSES, Problem

from ..service import Metering

router = APIRouter(prefix="/v1/organisations/{organisation_id}", tags=["credits"])

OrganisationPath = Annotated[
    str,
    Path(pattern=ORGANISATION_ID_PATTERN, description="`org_` and 1–64 letters, digits, _ or -"),
]


class CreditsOut(BaseModel):
    organisation_id: str
    balance: int
    allotment: int
    used: int
    percent_left: int
    level: CreditLevel
    period_start: datetime | None
    renews_at: datetime | None
    revision: int
    updated_at: datetime


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


class LedgerPageOut(BaseModel):
    organisation_id: str
    entries: list[LedgerEntryOut]
    next_before: int | None
    """Pass as `before` to get the next (older) page; null on the last page."""


def _metering(request: Request) -> Metering:
    return request.app.state.runtime.metering


def _no_wallet(organisation_id: str) -> Problem:
    return Problem(
        404,
        "wallet-not-found",
        "No wallet for this organisation",
        f"{organisation_id} has neither received credits nor used any.",
        organisation_id=organisation_id,
    )


@router.get("/credits", response_model=CreditsOut, responses=PROBLEM_RESPONSES)
async def get_credits(organisation_id: OrganisationPath, request: Request) -> CreditsOut:
    """Balance, allotment, used this period, percent left, level and renewal time."""
    found = await _metering(request).credits(organisation_id)
    if found is None:
        raise _no_wallet(organisation_id)
    b = found.balance
    return CreditsOut(
        organisation_id=organisation_id,
        balance=b.balance,
        allotment=b.allotment,
        used=b.used,
        percent_left=b.percent_left,
        level=b.level,
        period_start=b.period_start,
        renews_at=b.renews_at,
        revision=b.revision,
        updated_at=found.updated_at,
    )


@router.get("/ledger", response_model=LedgerPageOut, responses=PROBLEM_RESPONSES)
async def get_ledger(
    organisation_id: OrganisationPath,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[
        int | None, Query(ge=1, description="`next_before` of the previous page")
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
        entries=[LedgerEntryOut(**dict(r)) for r in page],
        next_before=page[-1]["seq"] if len(rows) > limit else None,
    )
