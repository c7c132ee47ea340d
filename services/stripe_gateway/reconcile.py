"""The backstop: compare what the gateway holds with what Stripe holds, and repair it.

Webhooks can come late, out of order, twice, or (rarely) never; a checkout can be paid while
the gateway is down. A sweep (every `RECONCILE_SECONDS`, or `billing reconcile
[organisation]`) therefore:

1. lists Stripe's subscriptions (the organisation's customer's, or all), a page at a time, and
   compares each with what the gateway holds: status, price, quantity, cancel at period end,
   current period end, customer. A subscription that differs, or that the gateway never heard
   of (of a customer it knows), is applied as a new observation: announced like any other,
   plus `drift.repaired.v1` with the fields before and after. Stripe wins. Subscriptions of
   customers the gateway does not know raise an alert and are left alone;
2. asks Stripe about every subscription the gateway holds live that the listing did not show;
3. asks Stripe about every checkout session still open on our side (within the 24 hours
   Stripe keeps one open): one that was paid is completed as if its webhook had come;
4. compares each organisation's seat quantity in Stripe with the newest count asked for, and
   sends that count again where they differ;
5. asks Stripe about the payments of credit packs refunded lately (the refunds listed since
   `REFUND_LOOKBACK`; for one organisation: each of its payments), so a refund whose webhooks
   were lost is still clawed back.

Every step reads the versions it compares before it asks Stripe, and an observation applies
only if no newer one was applied meanwhile, so a sweep never overwrites a webhook's newer
state. Requests are paced within Stripe's rate limit and 429s are retried with back-off
(`stripe_api`). Each run is recorded with its counts (`reconciliations`). Only one sweep runs
at a time across instances (its record is the claim; no transaction is held).
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import asyncpg
from pydantic import ValidationError

from shared import outbox
from shared.clock import Clock
from shared.events.operations import (
    AlertKind,
    DriftRepair,
    DriftRepairedV1,
    OperatorAlert,
    OperatorAlertRaisedV1,
)
from shared.events.stripe import ObservedBy
from shared.logging import get_logger

from . import PRODUCER
from .domain.projection import drift
from .domain.reports import ObjectKind, ObjectRef
from .domain.stripe_objects import Unreadable, read_subscription
from .service import Conflict, Observer, Repair, UnknownOrganisation
from .store import commands as commands_store
from .store import objects
from .store import reconciliations as runs
from .stripe_api import StripeApi, StripeMissing, StripeRefused, StripeUnavailable

log = get_logger("stripe_gateway.reconcile")

CHECKOUT_LIFETIME = timedelta(hours=24)
"""Stripe keeps a Checkout session open at most this long."""
REFUND_LOOKBACK = timedelta(days=7)
"""A full sweep looks at the refunds made this long ago or since (sweeps run hourly)."""
SWEEP_LEASE = timedelta(hours=1)
"""A sweep not finished by then is taken as abandoned (its instance died)."""


class Reconciler:
    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Clock,
        api: StripeApi,
        observer: Observer,
        *,
        topic_prefix: str,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._api = api
        self._observer = observer
        self._prefix = topic_prefix

    async def sweep(self, organisation: str | None = None) -> dict[str, Any]:
        """One reconciliation (all organisations, or one). Returns its record with counts, or
        `skipped` if a sweep of the same scope is running."""
        now = self._clock.now()
        run_id = await runs.start(self._pool, organisation, now, now + SWEEP_LEASE)
        if run_id is None:
            return {"skipped": "another sweep of the same scope is running"}
        repair = Repair(reconciliation_id=f"rec_{run_id}")
        counts: Counter[str] = Counter()
        error = None
        try:
            await self._subscriptions(organisation, repair, counts)
            await self._checkouts(organisation, repair, counts)
            await self._quantities(organisation, repair, counts)
            await self._refunds(organisation, repair, counts)
        except (StripeUnavailable, StripeRefused) as exc:
            error = repr(exc)[:500]
            log.warning("reconciliation stopped: stripe did not answer", error=error)
        record = await runs.finish(self._pool, run_id, counts, error, self._clock.now())
        log.info("reconciliation finished", organisation_id=organisation, **dict(counts))
        return record

    async def _subscriptions(
        self, organisation: str | None, repair: Repair, counts: Counter[str]
    ) -> None:
        customer = await objects.customer_of(self._pool, organisation) if organisation else None
        if organisation and customer is None:
            return  # no customer: nothing of the organisation's is in Stripe
        held = await objects.held_subscriptions(self._pool, organisation)
        seen: set[str] = set()
        async for page in self._api.list_subscriptions(customer=customer):
            for obj in page:
                counts["subscriptions"] += 1
                try:
                    stripe_holds = read_subscription(obj)
                except Unreadable as exc:
                    await self._alert(None, "unreadable_subscription", str(exc), obj.get("id"))
                    counts["alerts"] += 1
                    continue
                seen.add(stripe_holds.subscription_id)
                known = held.get(stripe_holds.subscription_id)
                if known is not None and (
                    known.deleted or not drift(known.subscription, stripe_holds)
                ):
                    continue
                if known is None and (stripe_holds.ended or not await self._ours(stripe_holds)):
                    if not stripe_holds.ended:
                        await self._alert(
                            stripe_holds.organisation_id,
                            "unknown_customer",
                            f"subscription {stripe_holds.subscription_id} of customer "
                            f"{stripe_holds.customer_id}, whom the gateway does not know",
                            stripe_holds.subscription_id,
                        )
                        counts["alerts"] += 1
                    continue
                counts["repaired"] += await self._apply(
                    obj, known.version if known else 0, repair, counts
                )
        for subscription_id, known in held.items():
            if known.deleted or subscription_id in seen:
                continue
            ref = ObjectRef(ObjectKind.SUBSCRIPTION, subscription_id)
            try:
                if await self._observer.observe(ref, ObservedBy.RECONCILIATION, repair):
                    counts["repaired"] += 1
            except StripeMissing:
                await self._alert(
                    known.organisation_id,
                    "subscription_missing",
                    f"Stripe does not know subscription {subscription_id}",
                    subscription_id,
                )
                counts["alerts"] += 1

    async def _ours(self, subscription: Any) -> bool:
        """A subscription of a customer the gateway recorded for an organisation."""
        return await objects.organisation_of(self._pool, subscription.customer_id) is not None

    async def _apply(
        self, obj: dict[str, Any], expected: int, repair: Repair, counts: Counter[str]
    ) -> int:
        try:
            events = await self._observer.subscription(
                obj, expected, ObservedBy.RECONCILIATION, repair
            )
        except Conflict:
            return 0  # a newer observation (a webhook's) was applied meanwhile
        except UnknownOrganisation as exc:
            await self._alert(None, "unknown_organisation", str(exc), obj.get("id"))
            counts["alerts"] += 1
            return 0
        return 1 if events else 0

    async def _checkouts(
        self, organisation: str | None, repair: Repair, counts: Counter[str]
    ) -> None:
        now = self._clock.now()
        await objects.expire_checkouts(self._pool, now - CHECKOUT_LIFETIME - timedelta(hours=1))
        for session_id, _ in await objects.open_checkouts(
            self._pool, organisation, now - CHECKOUT_LIFETIME - timedelta(hours=1)
        ):
            counts["checkouts"] += 1
            ref = ObjectRef(ObjectKind.CHECKOUT_SESSION, session_id)
            try:
                if await self._observer.observe(ref, ObservedBy.RECONCILIATION, repair):
                    counts["repaired"] += 1
            except StripeMissing:
                await objects.checkout_checked(self._pool, session_id, "expired", now)

    async def _refunds(
        self, organisation: str | None, repair: Repair, counts: Counter[str]
    ) -> None:
        """Observe again the payments refunded lately (or one organisation's payments)."""
        if organisation is not None:
            payments = await objects.payments_of(self._pool, organisation)
        else:
            refunded: list[str] = []
            since = self._clock.now() - REFUND_LOOKBACK
            async for page in self._api.list_refunds(created_since=since):
                refunded += [r["payment_intent"] for r in page if r.get("payment_intent")]
            payments = await objects.known_payments(self._pool, refunded)
        for payment in dict.fromkeys(payments):
            counts["payments"] += 1
            ref = ObjectRef(ObjectKind.PAYMENT_INTENT, payment)
            if await self._observer.observe(ref, ObservedBy.RECONCILIATION, repair):
                counts["repaired"] += 1

    async def _quantities(
        self, organisation: str | None, repair: Repair, counts: Counter[str]
    ) -> None:
        """Runs after the subscriptions were repaired: what the gateway holds is Stripe's.
        Our newer seat count goes to Stripe again (sent within the hourly budget)."""
        compared = await commands_store.quantities_against_stripe(self._pool, organisation)
        for org, wanted, in_stripe in compared:
            counts["quantities"] += 1
            if in_stripe != wanted:
                event = DriftRepairedV1.new(
                    organisation_id=org,
                    producer=PRODUCER,
                    occurred_at=self._clock.now(),
                    data=DriftRepair(
                        service=PRODUCER,
                        subject="quantity",
                        subject_id=org,
                        fields=("quantity",),
                        before={"quantity": in_stripe},
                        after={"quantity": wanted},
                        reconciliation_id=repair.reconciliation_id,
                    ),
                )
                async with self._pool.acquire() as conn, conn.transaction():
                    await commands_store.resend_quantity(conn, org, self._clock.now())
                    await outbox.enqueue(conn, [event], prefix=self._prefix, clock=self._clock)
                counts["repaired"] += 1
                log.info(
                    "seat quantity differs in Stripe; sent again",
                    organisation_id=org,
                    stripe=in_stripe,
                    wanted=wanted,
                )

    async def _alert(
        self, organisation: str | None, reason: str, detail: str, subject: Any
    ) -> None:
        log.warning(
            "reconciliation alert", organisation_id=organisation, reason=reason, detail=detail
        )
        try:
            event = OperatorAlertRaisedV1.new(
                organisation_id=organisation or "",
                producer=PRODUCER,
                occurred_at=self._clock.now(),
                data=OperatorAlert(
                    service=PRODUCER,
                    kind=AlertKind.STRIPE_MISMATCH,
                    reason=reason,
                    detail=detail[:1000],
                    subject_id=subject[:128] if isinstance(subject, str) else None,
                ),
            )
        except ValidationError:
            return  # no organisation to key it by: the log and the run's count carry it
        async with self._pool.acquire() as conn, conn.transaction():
            await outbox.enqueue(conn, [event], prefix=self._prefix, clock=self._clock)
