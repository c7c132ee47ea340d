"""Use cases of credit packs and auto-recharge (rules in `domain/packs.py`).

An owner buys a pack through Stripe Checkout (payment mode); credits arrive when the gateway
reports the payment succeeded, as a grant command to metering (a bucket of their own, with the
pack's expiry), exactly once however often or late it is reported; a refund claws back what is
left. Auto-recharge watches the balance metering announces and charges one pack off-session
through the gateway per crossing of the owner's threshold. Grants and charges leave through the
outbox, in the transaction that records them; no call to another service is made inside one."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

import asyncpg

from shared import outbox
from shared.clock import Clock
from shared.consumer import Decoded
from shared.events import CreditBalanceChangedV1, CreditGrantRequestedV2, CreditGrantV2, Event
from shared.events import GrantReasonV2 as Reason
from shared.events.codec import Rejection
from shared.events.stripe import (
    ChargeRequest,
    ChargeRequestedV1,
    PaymentStatus,
    StripePaymentUpdatedV1,
)
from shared.logging import get_logger

from . import PRODUCER
from . import packs_store as store
from .domain import packs as rules
from .domain.catalogue import Catalogue, Pack
from .domain.packs import AutoRecharge, Purchase, Source
from .domain.subscription import Refused, Unappliable
from .gateway import Gateway

log = get_logger("subscriptions.packs")

_PURCHASES = uuid.uuid5(uuid.NAMESPACE_URL, "https://billing.example/subscriptions/purchases")

Owner = Callable[[asyncpg.Connection, str, str], Awaitable[None]]
"""Raises unless the member is an active owner of the organisation."""


class CreditPacks:
    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Clock,
        catalogue: Catalogue,
        gateway: Gateway,
        owner: Owner,
        *,
        success_url: str,
        cancel_url: str,
        topic_prefix: str,
        retry_after: timedelta = timedelta(hours=1),
    ) -> None:
        self._retry_after = retry_after
        self._pool = pool
        self._clock = clock
        self.catalogue = catalogue
        self._gateway = gateway
        self._owner = owner
        self._success_url = success_url
        self._cancel_url = cancel_url
        self._prefix = topic_prefix

    def pack(self, pack_id: str) -> Pack:
        found = self.catalogue.packs.get(pack_id)
        if found is None:
            raise Refused("unknown_pack", f"the catalogue sells no pack {pack_id!r}")
        return found

    # Buying ------------------------------------------------------------------------------------

    async def buy(self, organisation: str, member_id: str, pack_id: str) -> tuple[Purchase, str]:
        """The purchase and the Checkout URL to send the owner to (owners only)."""
        pack = self.pack(pack_id)
        now = self._clock.now()
        purchase = self._purchase(
            f"pur_{uuid.uuid4().hex[:24]}", organisation, pack_id, pack, Source.CHECKOUT
        )
        async with self._pool.acquire() as conn, conn.transaction():
            await self._owner(conn, organisation, member_id)
            await store.add_purchase(conn, purchase, requested_by=member_id, now=now)
        _, url = await self._gateway.session(
            "/v1/payment-checkout-sessions",
            {
                "organisation_id": organisation,
                "request_id": purchase.purchase_id,
                "price_id": pack.stripe_price_id,
                "purchase_id": purchase.purchase_id,
                "success_url": self._success_url,
                "cancel_url": self._cancel_url,
            },
        )
        await store.checkout_opened(self._pool, purchase.purchase_id, url)
        log.info("credit pack checkout", organisation_id=organisation, pack=pack_id)
        return purchase, url

    async def purchases(self, organisation: str, limit: int = 50) -> list[Purchase]:
        return await store.purchases_of(self._pool, organisation, limit)

    def _purchase(
        self, purchase_id: str, organisation: str, pack_id: str, pack: Pack, source: Source
    ) -> Purchase:
        return Purchase(
            purchase_id,
            organisation,
            pack_id,
            pack.credits,
            pack.price,
            self.catalogue.currency,
            pack.valid_days,
            source,
        )

    # What Stripe reports -----------------------------------------------------------------------

    async def on_payment(
        self, conn: asyncpg.Connection, event: StripePaymentUpdatedV1, now: datetime
    ) -> None:
        """Follow a purchase's payment (in the caller's transaction): grant once when paid,
        claw back once per refund, count a failed auto-recharge. A payment for no purchase of
        the organisation is `Unappliable` (parked, replayable)."""
        data = event.data
        purchase = await store.lock_purchase(conn, data.purchase_id) if data.purchase_id else None
        if purchase is None or purchase.organisation_id != event.organisation_id:
            raise Unappliable(
                "unknown_purchase",
                f"payment {data.payment_intent_id} of {event.organisation_id} names purchase "
                f"{data.purchase_id!r}, which is not one of its purchases",
            )
        news = rules.follow_payment(
            purchase,
            rules.Payment(
                data.payment_intent_id,
                data.status is PaymentStatus.SUCCEEDED,
                data.amount_received,
                data.amount_refunded,
                data.failure_code,
                data.version,
            ),
            now,
        )
        if news is None:
            return
        found = news.purchase
        await store.save_purchase(conn, found, now)
        events: list[Event] = []
        if news.grant:
            reason = (
                Reason.AUTO_RECHARGE
                if found.source is Source.AUTO_RECHARGE
                else Reason.PACK_PURCHASE
            )
            events.append(
                self._grant(
                    found, reason, news.grant, found.grant_key, expires_at=found.expires_at()
                )
            )
        if news.claw_back:
            events.append(
                self._grant(
                    found,
                    Reason.REFUND_CLAWBACK,
                    news.claw_back,
                    f"refund:{found.purchase_id}:{found.refunded}",
                    clawback_of=found.grant_key,
                )
            )
        if found.source is Source.AUTO_RECHARGE and (news.grant or news.failed):
            await self._recharge_ended(conn, found, news.failed, now)
        await outbox.enqueue(conn, events, prefix=self._prefix, clock=self._clock)
        log.info(
            "credit purchase followed",
            organisation_id=found.organisation_id,
            purchase_id=found.purchase_id,
            status=found.status.value,
            granted=news.grant,
            clawed_back=news.claw_back,
        )

    async def on_charge_refused(
        self,
        conn: asyncpg.Connection,
        organisation: str,
        purchase_id: str,
        reason: str,
        now: datetime,
    ) -> None:
        """The gateway could not charge at all (no customer, Stripe refused the request): the
        purchase failed, and counts as a failed auto-recharge."""
        purchase = await store.lock_purchase(conn, purchase_id)
        if purchase is None or purchase.organisation_id != organisation:
            return
        if purchase.status is not rules.Status.OPEN:
            return
        failed = replace(purchase, status=rules.Status.FAILED, failure_code=reason[:64])
        await store.save_purchase(conn, failed, now)
        if failed.source is Source.AUTO_RECHARGE:
            await self._recharge_ended(conn, failed, True, now)

    def _grant(
        self, purchase: Purchase, reason: Reason, amount: int, key: str, **fields: object
    ) -> CreditGrantRequestedV2:
        return CreditGrantRequestedV2.new(
            organisation_id=purchase.organisation_id,
            producer=PRODUCER,
            occurred_at=self._clock.now(),
            data=CreditGrantV2(
                period_key=key,
                amount=amount,
                reason=reason,
                note=f"{purchase.pack}, purchase {purchase.purchase_id}",
                **fields,
            ),
        )

    async def _recharge_ended(
        self, conn: asyncpg.Connection, purchase: Purchase, failed: bool, now: datetime
    ) -> None:
        found = (await store.lock_rules(conn, [purchase.organisation_id])).get(
            purchase.organisation_id
        )
        if found is None or found.in_flight != purchase.purchase_id:
            return
        rule = (
            rules.recharge_failed(
                found, purchase.failure_code or "payment_failed", now, self._retry_after
            )
            if failed
            else rules.recharge_paid(found)
        )
        await store.save_rule(conn, rule, now)
        if failed:
            log.warning(
                "auto-recharge failed",
                organisation_id=purchase.organisation_id,
                failures=rule.failures,
                turned_off=not rule.enabled,
                code=rule.last_failure,
            )

    # Auto-recharge -----------------------------------------------------------------------------

    async def rule(self, organisation: str) -> AutoRecharge | None:
        return await store.rule_of(self._pool, organisation)

    async def recharged_this_month(self, organisation: str) -> int:
        return await store.recharged_since(self._pool, organisation, self._month_start())

    async def configure(
        self,
        organisation: str,
        member_id: str,
        *,
        enabled: bool,
        threshold: int,
        pack_id: str,
        monthly_cap: int,
    ) -> AutoRecharge:
        """Set the owner's auto-recharge (owners only). Saving re-arms it and clears a failure
        streak and a turned-off state."""
        pack = self.pack(pack_id)
        if monthly_cap < pack.credits:
            raise Refused(
                "cap_below_pack",
                f"a monthly cap of {monthly_cap} credits allows no {pack.credits}-credit pack",
            )
        now = self._clock.now()
        async with self._pool.acquire() as conn, conn.transaction():
            await self._owner(conn, organisation, member_id)
            found = (await store.lock_rules(conn, [organisation])).get(organisation)
            rule = AutoRecharge(
                organisation,
                enabled,
                threshold,
                pack_id,
                monthly_cap,
                armed=True,
                crossings=found.crossings if found else 0,
                in_flight=found.in_flight if found else None,
                balance_revision=found.balance_revision if found else -1,
            )
            await store.save_rule(conn, rule, now, updated_by=member_id)
        return rule

    async def on_balances(
        self, items: Sequence[Decoded[CreditBalanceChangedV1]]
    ) -> list[tuple[Decoded[CreditBalanceChangedV1], Rejection]]:
        """The `BatchConsumer` step for `credits.balance`: for organisations with
        auto-recharge, each report in order; a crossing charges one pack (outbox)."""
        now = self._clock.now()
        since = self._month_start()
        async with self._pool.acquire() as conn, conn.transaction():
            found = await store.lock_rules(conn, {i.event.organisation_id for i in items})
            if not found:
                return []
            changed: dict[str, AutoRecharge] = {}
            charges: list[Event] = []
            recharged_this_month: dict[str, int] = {}
            for item in items:
                event = item.event
                rule = changed.get(event.organisation_id) or found.get(event.organisation_id)
                if rule is None:
                    continue
                pack = self.catalogue.packs.get(rule.pack)
                if pack is None:
                    continue
                organisation = rule.organisation_id
                if organisation not in recharged_this_month:
                    recharged_this_month[organisation] = await store.recharged_since(
                        conn, organisation, since
                    )
                rule, charge = rules.on_balance(
                    rule,
                    event.data.balance,
                    event.data.revision,
                    now,
                    recharged_this_month=recharged_this_month[organisation],
                    pack_credits=pack.credits,
                )
                if charge:
                    purchase = self._purchase(
                        _recharge_id(rule.organisation_id, rule.crossings),
                        rule.organisation_id,
                        rule.pack,
                        pack,
                        Source.AUTO_RECHARGE,
                    )
                    await store.add_purchase(conn, purchase, requested_by=None, now=now)
                    recharged_this_month[organisation] += pack.credits
                    rule = replace(rule, in_flight=purchase.purchase_id)
                    charges.append(self._charge(purchase, pack))
                    log.info(
                        "auto-recharge charged",
                        organisation_id=rule.organisation_id,
                        balance=event.data.balance,
                        threshold=rule.threshold,
                        purchase_id=purchase.purchase_id,
                    )
                changed[rule.organisation_id] = rule
            for rule in changed.values():
                await store.save_rule(conn, rule, now)
            await outbox.enqueue(conn, charges, prefix=self._prefix, clock=self._clock)
        return []

    def _charge(self, purchase: Purchase, pack: Pack) -> ChargeRequestedV1:
        return ChargeRequestedV1.new(
            organisation_id=purchase.organisation_id,
            producer=PRODUCER,
            occurred_at=self._clock.now(),
            event_id=uuid.uuid5(_PURCHASES, purchase.purchase_id),
            data=ChargeRequest(
                purchase_id=purchase.purchase_id,
                amount=purchase.price,
                currency=purchase.currency,
                description=f"Auto-recharge: {pack.name}",
            ),
        )

    def _month_start(self) -> datetime:
        now = self._clock.now()
        return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _recharge_id(organisation: str, crossing: int) -> str:
    """One purchase per crossing: the same crossing is the same charge."""
    return f"ar_{uuid.uuid5(_PURCHASES, organisation).hex[:20]}_{crossing}"
