"""What the gateway holds of Stripe's objects: each organisation's customer, subscriptions,
invoices and one-off payments as last observed (with their versions), and the checkout sessions
it follows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import asyncpg

from shared.events.stripe import InvoiceStatus, PaymentStatus, SubscriptionStatus

from ..domain.projection import Held
from ..domain.stripe_objects import Invoice, Payment, Subscription

Db = asyncpg.Connection | asyncpg.Pool

# Organisations and customers --------------------------------------------------------------------


async def customer_of(db: Db, organisation_id: str) -> str | None:
    return await db.fetchval(
        "SELECT customer_id FROM organisations WHERE organisation_id = $1", organisation_id
    )


async def organisation_of(db: Db, customer_id: str) -> str | None:
    return await db.fetchval(
        "SELECT organisation_id FROM organisations WHERE customer_id = $1", customer_id
    )


async def remember_customer(db: Db, organisation_id: str, customer_id: str, now: datetime) -> str:
    """Record the organisation's customer unless it has one; returns the one recorded."""
    return await db.fetchval(
        """INSERT INTO organisations (organisation_id, customer_id, updated_at)
           VALUES ($1, $2, $3)
           ON CONFLICT (organisation_id) DO UPDATE
               SET customer_id = coalesce(organisations.customer_id, excluded.customer_id),
                   updated_at = excluded.updated_at
           RETURNING customer_id""",
        organisation_id,
        customer_id,
        now,
    )


# Subscriptions ---------------------------------------------------------------------------------

_SUBSCRIPTION = """subscription_id, organisation_id, customer_id, status, price_id, item_id,
    quantity, period_start, period_end, cancel_at_period_end, deleted, version"""


def _held(row: asyncpg.Record) -> Held:
    return Held(
        subscription=Subscription(
            subscription_id=row["subscription_id"],
            customer_id=row["customer_id"],
            organisation_id=row["organisation_id"],
            status=SubscriptionStatus(row["status"]),
            price_id=row["price_id"],
            item_id=row["item_id"],
            quantity=row["quantity"],
            period_start=row["period_start"],
            period_end=row["period_end"],
            cancel_at_period_end=row["cancel_at_period_end"],
        ),
        organisation_id=row["organisation_id"],
        deleted=row["deleted"],
        version=row["version"],
    )


async def subscription_version(db: Db, subscription_id: str) -> int:
    """The version held (0: none); read before fetching, checked when applying."""
    found = await db.fetchval(
        "SELECT version FROM subscriptions WHERE subscription_id = $1", subscription_id
    )
    return found or 0


async def lock_subscription(db: asyncpg.Connection, subscription_id: str) -> Held | None:
    row = await db.fetchrow(
        f"SELECT {_SUBSCRIPTION} FROM subscriptions WHERE subscription_id = $1 FOR UPDATE",
        subscription_id,
    )
    return None if row is None else _held(row)


async def save_subscription(
    db: asyncpg.Connection,
    subscription: Subscription,
    *,
    organisation_id: str,
    deleted: bool,
    version: int,
    now: datetime,
) -> None:
    await db.execute(
        f"""INSERT INTO subscriptions ({_SUBSCRIPTION}, observed_at, updated_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13)
            ON CONFLICT (subscription_id) DO UPDATE SET
                customer_id = excluded.customer_id,
                status = excluded.status, price_id = excluded.price_id,
                item_id = excluded.item_id, quantity = excluded.quantity,
                period_start = excluded.period_start, period_end = excluded.period_end,
                cancel_at_period_end = excluded.cancel_at_period_end,
                deleted = subscriptions.deleted OR excluded.deleted,
                version = excluded.version, observed_at = excluded.observed_at,
                updated_at = excluded.updated_at""",
        subscription.subscription_id,
        organisation_id,
        subscription.customer_id,
        subscription.status.value,
        subscription.price_id,
        subscription.item_id,
        subscription.quantity,
        subscription.period_start,
        subscription.period_end,
        subscription.cancel_at_period_end,
        deleted,
        version,
        now,
    )


async def touch_subscription(db: asyncpg.Connection, subscription_id: str, now: datetime) -> None:
    """An observation that found nothing new."""
    await db.execute(
        "UPDATE subscriptions SET observed_at = $2 WHERE subscription_id = $1",
        subscription_id,
        now,
    )


async def live_subscription(db: Db, organisation_id: str) -> Held | None:
    """The organisation's newest subscription that Stripe has not ended."""
    row = await db.fetchrow(
        f"""SELECT {_SUBSCRIPTION} FROM subscriptions
            WHERE organisation_id = $1 AND NOT deleted
            ORDER BY period_start DESC NULLS LAST, updated_at DESC LIMIT 1""",
        organisation_id,
    )
    return None if row is None else _held(row)


async def subscriptions_of(db: Db, organisation_id: str) -> Sequence[Held]:
    rows = await db.fetch(
        f"""SELECT {_SUBSCRIPTION} FROM subscriptions WHERE organisation_id = $1
            ORDER BY period_start DESC NULLS LAST, updated_at DESC""",
        organisation_id,
    )
    return [_held(r) for r in rows]


async def held_subscriptions(db: Db, organisation_id: str | None) -> dict[str, Held]:
    """Every subscription held (or the organisation's), by id: what the reconciler compares."""
    rows = await db.fetch(
        f"""SELECT {_SUBSCRIPTION} FROM subscriptions
            WHERE $1::text IS NULL OR organisation_id = $1""",
        organisation_id,
    )
    return {r["subscription_id"]: _held(r) for r in rows}


async def page_of_subscriptions(db: Db, *, after: str | None, limit: int) -> Sequence[Held]:
    """Subscriptions in id order, from after `after`: for other services' reconcilers."""
    rows = await db.fetch(
        f"""SELECT {_SUBSCRIPTION} FROM subscriptions
            WHERE $1::text IS NULL OR subscription_id > $1
            ORDER BY subscription_id LIMIT $2""",
        after,
        limit,
    )
    return [_held(r) for r in rows]


# Invoices --------------------------------------------------------------------------------------

_INVOICE = """invoice_id, customer_id, subscription_id, status, amount_paid, amount_due, currency,
    billing_reason, period_start, period_end, attempt_count, next_payment_attempt, hosted_url,
    pdf_url"""


@dataclass(frozen=True, slots=True)
class HeldInvoice:
    invoice: Invoice
    organisation_id: str
    version: int


async def invoice_version(db: Db, invoice_id: str) -> int:
    found = await db.fetchval("SELECT version FROM invoices WHERE invoice_id = $1", invoice_id)
    return found or 0


async def lock_invoice(db: asyncpg.Connection, invoice_id: str) -> HeldInvoice | None:
    row = await db.fetchrow(
        f"SELECT {_INVOICE}, organisation_id, version FROM invoices WHERE invoice_id = $1 "
        "FOR UPDATE",
        invoice_id,
    )
    if row is None:
        return None
    return HeldInvoice(_invoice(row), row["organisation_id"], row["version"])


def _invoice(row: asyncpg.Record) -> Invoice:
    return Invoice(
        invoice_id=row["invoice_id"],
        customer_id=row["customer_id"],
        subscription_id=row["subscription_id"],
        status=InvoiceStatus(row["status"]),
        amount_paid=row["amount_paid"],
        amount_due=row["amount_due"],
        currency=row["currency"],
        billing_reason=row["billing_reason"],
        period_start=row["period_start"],
        period_end=row["period_end"],
        attempt_count=row["attempt_count"],
        next_payment_attempt=row["next_payment_attempt"],
        organisation_id=row["organisation_id"],
        hosted_url=row["hosted_url"],
        pdf_url=row["pdf_url"],
    )


async def invoices_of(db: Db, organisation_id: str, limit: int) -> list[Invoice]:
    """The organisation's invoices as last observed in Stripe, newest first."""
    rows = await db.fetch(
        f"""SELECT {_INVOICE}, organisation_id FROM invoices WHERE organisation_id = $1
            ORDER BY coalesce(period_start, observed_at) DESC, invoice_id DESC LIMIT $2""",
        organisation_id,
        limit,
    )
    return [_invoice(r) for r in rows]


async def save_invoice(
    db: asyncpg.Connection, invoice: Invoice, *, organisation_id: str, version: int, now: datetime
) -> None:
    await db.execute(
        f"""INSERT INTO invoices ({_INVOICE}, organisation_id, version, observed_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
            ON CONFLICT (invoice_id) DO UPDATE SET
                hosted_url = coalesce(excluded.hosted_url, invoices.hosted_url),
                pdf_url = coalesce(excluded.pdf_url, invoices.pdf_url),
                status = excluded.status, amount_paid = excluded.amount_paid,
                amount_due = excluded.amount_due, attempt_count = excluded.attempt_count,
                next_payment_attempt = excluded.next_payment_attempt,
                period_start = excluded.period_start, period_end = excluded.period_end,
                version = excluded.version, observed_at = excluded.observed_at""",
        invoice.invoice_id,
        invoice.customer_id,
        invoice.subscription_id,
        invoice.status.value,
        invoice.amount_paid,
        invoice.amount_due,
        invoice.currency,
        invoice.billing_reason,
        invoice.period_start,
        invoice.period_end,
        invoice.attempt_count,
        invoice.next_payment_attempt,
        invoice.hosted_url,
        invoice.pdf_url,
        organisation_id,
        version,
        now,
    )


# Checkout sessions -----------------------------------------------------------------------------


async def follow_checkout(db: Db, session_id: str, organisation_id: str, now: datetime) -> None:
    """A session the gateway created: followed until Stripe holds it complete or expired."""
    await db.execute(
        """INSERT INTO checkout_sessions (session_id, organisation_id, status, created_at)
           VALUES ($1, $2, 'open', $3) ON CONFLICT (session_id) DO NOTHING""",
        session_id,
        organisation_id,
        now,
    )


async def lock_checkout(db: asyncpg.Connection, session_id: str) -> str | None:
    """The session's status (None: not followed yet), locked."""
    return await db.fetchval(
        "SELECT status FROM checkout_sessions WHERE session_id = $1 FOR UPDATE", session_id
    )


async def checkout_completed(
    db: asyncpg.Connection,
    session_id: str,
    organisation_id: str,
    subscription_id: str | None,
    now: datetime,
) -> None:
    await db.execute(
        """INSERT INTO checkout_sessions (session_id, organisation_id, status, subscription_id,
                                          created_at, checked_at, completed_at)
           VALUES ($1, $2, 'complete', $3, $4, $4, $4)
           ON CONFLICT (session_id) DO UPDATE SET status = 'complete',
               subscription_id = excluded.subscription_id, checked_at = excluded.checked_at,
               completed_at = excluded.completed_at""",
        session_id,
        organisation_id,
        subscription_id,
        now,
    )


async def checkout_checked(db: Db, session_id: str, status: str, now: datetime) -> None:
    """Stripe still holds the session open (or expired)."""
    await db.execute(
        """UPDATE checkout_sessions SET checked_at = $3,
               status = CASE WHEN $2 = 'expired' THEN 'expired' ELSE status END
           WHERE session_id = $1 AND status = 'open'""",
        session_id,
        status,
        now,
    )


async def open_checkouts(
    db: Db, organisation_id: str | None, since: datetime
) -> list[tuple[str, str]]:
    """(session, organisation) of the sessions still open, created after `since`."""
    rows = await db.fetch(
        """SELECT session_id, organisation_id FROM checkout_sessions
           WHERE status = 'open' AND created_at >= $2
             AND ($1::text IS NULL OR organisation_id = $1)
           ORDER BY created_at""",
        organisation_id,
        since,
    )
    return [(r[0], r[1]) for r in rows]


async def expire_checkouts(db: Db, before: datetime) -> int:
    """Sessions open for longer than Stripe keeps any open (24 hours) are over."""
    done = await db.execute(
        "UPDATE checkout_sessions SET status = 'expired' WHERE status = 'open' AND created_at < $1",
        before,
    )
    return int(done.split()[-1])


# Payments --------------------------------------------------------------------------------------


class HeldPayment(NamedTuple):
    payment: Payment
    organisation_id: str
    version: int


async def payment_version(db: Db, payment_intent_id: str) -> int:
    found = await db.fetchval(
        "SELECT version FROM payments WHERE payment_intent_id = $1", payment_intent_id
    )
    return found or 0


async def lock_payment(db: asyncpg.Connection, payment_intent_id: str) -> HeldPayment | None:
    row = await db.fetchrow(
        """SELECT payment_intent_id, customer_id, status, amount, amount_received,
                  amount_refunded, currency, purchase_id, failure_code, organisation_id, version
           FROM payments WHERE payment_intent_id = $1 FOR UPDATE""",
        payment_intent_id,
    )
    if row is None:
        return None
    payment = Payment(
        payment_intent_id=row["payment_intent_id"],
        customer_id=row["customer_id"],
        organisation_id=row["organisation_id"],
        status=PaymentStatus(row["status"]),
        amount=row["amount"],
        amount_received=row["amount_received"],
        amount_refunded=row["amount_refunded"],
        currency=row["currency"],
        purchase_id=row["purchase_id"],
        failure_code=row["failure_code"],
    )
    return HeldPayment(payment, row["organisation_id"], row["version"])


async def save_payment(
    db: asyncpg.Connection, payment: Payment, *, organisation_id: str, version: int, now: datetime
) -> None:
    await db.execute(
        """INSERT INTO payments (payment_intent_id, organisation_id, customer_id, status, amount,
                                 amount_received, amount_refunded, currency, purchase_id,
                                 failure_code, version, observed_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
           ON CONFLICT (payment_intent_id) DO UPDATE SET
               status = excluded.status, amount_received = excluded.amount_received,
               amount_refunded = excluded.amount_refunded,
               failure_code = excluded.failure_code, version = excluded.version,
               observed_at = excluded.observed_at""",
        payment.payment_intent_id,
        organisation_id,
        payment.customer_id,
        payment.status.value,
        payment.amount,
        payment.amount_received,
        payment.amount_refunded,
        payment.currency,
        payment.purchase_id,
        payment.failure_code,
        version,
        now,
    )


async def payments_of(db: Db, organisation_id: str) -> list[str]:
    """The organisation's payments held that were paid."""
    rows = await db.fetch(
        """SELECT payment_intent_id FROM payments
           WHERE status = 'succeeded' AND organisation_id = $1""",
        organisation_id,
    )
    return [r[0] for r in rows]


async def known_payments(db: Db, payment_intent_ids: Sequence[str]) -> list[str]:
    """Those of these payments the gateway holds (the others are not ours)."""
    rows = await db.fetch(
        "SELECT payment_intent_id FROM payments WHERE payment_intent_id = ANY($1::text[])",
        list(dict.fromkeys(payment_intent_ids)),
    )
    return [r[0] for r in rows]
