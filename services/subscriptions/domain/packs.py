"""Credit packs and auto-recharge. Pure: what a payment report changes in a purchase, and when a
balance crossing charges a recharge.

- A purchase is granted once, when Stripe first holds its payment succeeded (whatever the order
  or number of reports: the gateway's version per payment orders them; an older or repeated
  one changes nothing).
- A refund takes back, once, the credits the refunded share paid for (floored, all of them for
  a whole refund); metering takes back only what is left of the pack's bucket.
- Auto-recharge charges one pack when a balance report at or below the threshold follows one
  above it (a crossing), never while a recharge is on its way, never beyond the monthly cap.
  A failed charge is retried at the next report at least `retry_after` later (an hour by
  default); after `MAX_FAILURES` failures in a row auto-recharge turns itself off.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

MAX_FAILURES = 3


class Source(StrEnum):
    CHECKOUT = "checkout"
    AUTO_RECHARGE = "auto_recharge"


class Status(StrEnum):
    OPEN = "open"
    PAID = "paid"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Purchase:
    purchase_id: str
    organisation_id: str
    pack: str
    credits: int
    price: int
    currency: str
    valid_days: int
    source: Source
    status: Status = Status.OPEN
    payment_intent_id: str | None = None
    payment_version: int = 0
    refunded: int = 0
    """Money refunded so far (smallest unit)."""
    clawed_back: int = 0
    """Credits asked back so far."""
    failure_code: str | None = None
    paid_at: datetime | None = None

    @property
    def grant_key(self) -> str:
        return f"purchase:{self.purchase_id}"

    def expires_at(self) -> datetime | None:
        return None if self.paid_at is None else self.paid_at + timedelta(days=self.valid_days)


@dataclass(frozen=True, slots=True)
class Payment:
    """What the gateway reported of a purchase's payment."""

    payment_intent_id: str
    succeeded: bool
    amount_received: int
    amount_refunded: int
    failure_code: str | None
    version: int


@dataclass(frozen=True, slots=True)
class PaymentNews:
    purchase: Purchase
    grant: int
    """Credits to grant now (the pack, once)."""
    claw_back: int
    """Credits to take back now (a refund)."""
    failed: bool
    """The payment failed now."""


def follow_payment(purchase: Purchase, payment: Payment, now: datetime) -> PaymentNews | None:
    """What a payment report changes; None for one older than (or as old as) what was seen."""
    if payment.version <= purchase.payment_version:
        return None
    found = replace(
        purchase, payment_version=payment.version, payment_intent_id=payment.payment_intent_id
    )
    grant, claw_back, failed = 0, 0, False
    if payment.succeeded and found.status is not Status.PAID:
        found = replace(found, status=Status.PAID, paid_at=now, failure_code=None)
        grant = found.credits
    elif payment.failure_code and found.status is Status.OPEN:
        found = replace(found, status=Status.FAILED, failure_code=payment.failure_code)
        failed = True
    if found.status is Status.PAID and payment.amount_refunded > found.refunded:
        received = max(payment.amount_received, 1)
        owed = (
            found.credits
            if payment.amount_refunded >= received
            else found.credits * payment.amount_refunded // received
        )
        claw_back = max(0, owed - found.clawed_back)
        found = replace(
            found, refunded=payment.amount_refunded, clawed_back=found.clawed_back + claw_back
        )
    return PaymentNews(found, grant, claw_back, failed)


@dataclass(frozen=True, slots=True)
class AutoRecharge:
    organisation_id: str
    enabled: bool
    threshold: int
    pack: str
    monthly_cap: int
    """Credits auto-recharged in a calendar month (UTC) never exceed this."""
    armed: bool = True
    crossings: int = 0
    in_flight: str | None = None
    """The purchase on its way (charged, not yet paid or failed)."""
    failures: int = 0
    last_failure: str | None = None
    disabled_reason: str | None = None
    balance_revision: int = -1
    retry_at: datetime | None = None


def on_balance(
    rule: AutoRecharge,
    balance: int,
    revision: int,
    now: datetime,
    *,
    recharged_this_month: int,
    pack_credits: int,
) -> tuple[AutoRecharge, bool]:
    """The rule after a balance report, and whether to charge a recharge now."""
    if revision <= rule.balance_revision:
        return rule, False
    rule = replace(rule, balance_revision=revision)
    if not rule.enabled:
        return rule, False
    if balance > rule.threshold:
        return replace(rule, armed=True, retry_at=None), False
    if not rule.armed or rule.in_flight is not None:
        return rule, False
    if rule.retry_at is not None and now < rule.retry_at:
        return rule, False
    if recharged_this_month + pack_credits > rule.monthly_cap:
        return replace(rule, armed=False, last_failure="monthly_cap_reached"), False
    return replace(rule, armed=False, crossings=rule.crossings + 1, retry_at=None), True


def recharge_paid(rule: AutoRecharge) -> AutoRecharge:
    return replace(rule, in_flight=None, failures=0, last_failure=None)


def recharge_failed(
    rule: AutoRecharge, code: str, now: datetime, retry_after: timedelta
) -> AutoRecharge:
    """A failed charge: retried at the next report `retry_after` on; off after repeated
    failures."""
    failures = rule.failures + 1
    off = failures >= MAX_FAILURES
    return replace(
        rule,
        in_flight=None,
        failures=failures,
        last_failure=code,
        armed=not off,
        retry_at=now + retry_after,
        enabled=rule.enabled and not off,
        disabled_reason="payment_failed_repeatedly" if off else rule.disabled_reason,
    )
