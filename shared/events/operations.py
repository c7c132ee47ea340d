"""What operators need to see (`billing.operations`, keyed by organisation): every repair a
reconciler made, with the state before and after, and every alert (a report that could not be
applied and was parked, a wallet that differs from its ledger, …)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field

from .envelope import TEXT_PATTERN, Body, Event, Identifier

Value = (
    Annotated[str, Field(max_length=300, pattern=TEXT_PATTERN)]
    | Annotated[int, Field(strict=True, ge=-(2**63), le=2**63 - 1)]
    | bool
    | None
)
"""One field's value as the repair saw it (instants as ISO 8601 strings)."""


class DriftRepair(Body):
    service: Identifier
    """The service that found and repaired the drift."""
    subject: Identifier
    """What was repaired: `subscription`, `checkout_session`, `quantity`, `organisation`."""
    subject_id: Identifier
    fields: Annotated[tuple[Identifier, ...], Field(max_length=100)]
    """The fields that differed."""
    before: Annotated[dict[Identifier, Value], Field(max_length=100)]
    after: Annotated[dict[Identifier, Value], Field(max_length=100)]
    reconciliation_id: Identifier | None = None
    """The sweep that found it (the reconciler's run), if any."""


class DriftRepairedV1(Event):
    """A reconciler found our state differing from Stripe's (Stripe wins for what is paid) and
    repaired it."""

    type: Literal["drift.repaired.v1"]
    data: DriftRepair


class AlertKind(StrEnum):
    REPORT_PARKED = "report_parked"
    """A report could not be applied: parked on the dead-letter topic, replayable."""
    LEDGER_MISMATCH = "ledger_mismatch"
    """A wallet's balance differs from the sum of its ledger entries (never fixed silently)."""
    STRIPE_MISMATCH = "stripe_mismatch"
    """Something in Stripe that no reconciler may fix by itself (a customer of another
    organisation, a subscription Stripe no longer knows, two live subscriptions)."""


class OperatorAlert(Body):
    service: Identifier
    kind: AlertKind
    reason: Identifier
    """Machine-readable: `unknown_organisation`, `unknown_price`, `ledger_mismatch`, …"""
    detail: Annotated[str, Field(max_length=1000, pattern=TEXT_PATTERN)]
    subject_id: Identifier | None = None
    """The event id, subscription, wallet, … that the alert is about."""


class OperatorAlertRaisedV1(Event):
    type: Literal["operator_alert.raised.v1"]
    data: OperatorAlert
