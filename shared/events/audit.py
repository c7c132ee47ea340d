"""The audit log (`billing.audit`, keyed by organisation): every owner's and operator's action,
who did it, what, when, under which request id, and how it ended. Append-only where it is
kept; announced once per entry."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

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
