"""The audit log (`billing.audit`, keyed by organisation): every owner's and operator's action,
who did it, what, when, under which request id, and how it ended. Append-only where it is
kept; announced once per entry."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from .envelope import TEXT_PATTERN, Body, Event, Identifier

SYSTEM_ORGANISATION = "org__system"
"""Where an action over every organisation (a whole reconciliation sweep) is recorded."""


class ActorKind(StrEnum):
    MEMBER = "member"
    """An organisation's member, proven by the front proxy's signed identity."""
    OPERATOR = "operator"
    """An operator's credential (its fingerprint) and the name the operator gave."""


class AuditAction(StrEnum):
    PLAN_CHANGE = "plan_change"
    CANCEL = "cancel"
    REACTIVATE = "reactivate"
    BILLING_PORTAL = "billing_portal"
    ENTERPRISE_TERMS = "enterprise_terms"
    CREDIT_GRANT = "credit_grant"
    REPLAY = "replay"
    RECONCILIATION = "reconciliation"
    LEDGER_CHECK = "ledger_check"


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    REFUSED = "refused"
    """Refused by a rule (not an owner, not allowed from this plan, …): nothing changed."""
    FAILED = "failed"
    """It could not be done (a dependency did not answer): nothing changed."""


class AuditEntry(Body):
    service: Identifier
    actor: Identifier
    """A member id, or `operator:<credential fingerprint>[:<name given>]`."""
    actor_kind: ActorKind
    action: AuditAction
    target: Identifier | None = None
    """What it acted on beyond the organisation: a plan, an event id, a reconciliation."""
    request_id: Identifier
    outcome: Outcome
    detail: Annotated[str, Field(max_length=500, pattern=TEXT_PATTERN)] = ""


class AuditRecordedV1(Event):
    type: Literal["audit.recorded.v1"]
    data: AuditEntry


AuditActionV2 = StrEnum(  # type: ignore[misc]
    "AuditActionV2",
    {
        **{action.name: action.value for action in AuditAction},
        "BUDGET": "budget",
        "CREDIT_PACK": "credit_pack",
        "AUTO_RECHARGE": "auto_recharge",
    },
)
"""Version 2's actions: version 1's, and an owner's budget set or removed (`budget`), credit
pack bought (`credit_pack`) and auto-recharge set (`auto_recharge`)."""


class AuditEntryV2(AuditEntry):
    action: AuditActionV2  # type: ignore[assignment]


class AuditRecordedV2(Event):
    """An action that version 1 cannot name. Actions version 1 names are still announced as
    version 1, so that its readers keep seeing them."""

    type: Literal["audit.recorded.v2"]
    data: AuditEntryV2


def recorded(
    organisation_id: str, entry: AuditEntry | AuditEntryV2, *, producer: str, occurred_at: datetime
) -> AuditRecordedV1 | AuditRecordedV2:
    """The announcement of an entry: version 1 if it names the action, else version 2."""
    if entry.action.value in {a.value for a in AuditAction}:
        fields = entry.model_dump() | {"action": AuditAction(entry.action.value)}
        return AuditRecordedV1.new(
            organisation_id=organisation_id,
            producer=producer,
            occurred_at=occurred_at,
            data=AuditEntry(**fields),
        )
    return AuditRecordedV2.new(
        organisation_id=organisation_id,
        producer=producer,
        occurred_at=occurred_at,
        data=AuditEntryV2(**entry.model_dump()),
    )


AUDITED: TypeAdapter[AuditRecordedV1 | AuditRecordedV2] = TypeAdapter(
    Annotated[AuditRecordedV1 | AuditRecordedV2, Field(discriminator="type")]
)
"""Reads an announced entry of either version."""
