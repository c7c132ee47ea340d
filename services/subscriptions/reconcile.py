"""Reconciliation: every paid organisation against what Stripe holds for it.

The Stripe gateway compares Stripe with what it holds and repairs that first (its own sweep);
this then compares what the gateway holds (`GET /v1/subscriptions`, a page at a time) with each
organisation's subscription here, and applies Stripe's state again over ours: the same rule as
a report (`domain.subscription.stripe_reported`, forced at the version already applied), so what
was asked for and never reached Stripe gives way. Each repair is announced with the fields
before and after (`drift.repaired.v1`); an organisation Stripe bills that the member directory
never announced, or a plan paid here by a subscription the gateway does not hold, raises an
alert. An organisation changed within `grace` is left for the next round: its command may
still be on its way to Stripe.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from shared import outbox
from shared.clock import Clock
from shared.events.operations import (
    AlertKind,
    DriftRepair,
    DriftRepairedV1,
    OperatorAlert,
    OperatorAlertRaisedV1,
)
from shared.logging import get_logger

from . import PRODUCER, store
from .domain import subscription as machine
from .domain.catalogue import Catalogue
from .domain.subscription import StripeFacts, Subscription, Unappliable
from .gateway import Gateway
from .service import Subscriptions

log = get_logger("subscriptions.reconcile")


class Reconciler:
    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Clock,
        catalogue: Catalogue,
        gateway: Gateway,
        subscriptions: Subscriptions,
        *,
        topic_prefix: str,
        grace: timedelta,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._catalogue = catalogue
        self._gateway = gateway
        self._subscriptions = subscriptions
        self._prefix = topic_prefix
        self._grace = grace

    async def run(self, organisation: str | None = None) -> dict[str, Any]:
        """Compare every paid organisation (or one) with what the Stripe gateway holds of
        Stripe (run the gateway's reconciliation first to have that fresh), and repair: what
        Stripe holds wins for what is paid, over what was asked for and never reached it.
        Each repair is announced with the fields before and after (`drift.repaired.v1`). An
        organisation changed in the last `grace` is left for the next round: its command
        may still be on its way to Stripe."""
        counts: Counter[str] = Counter()
        repairs: list[dict[str, Any]] = []
        seen: set[str] = set()
        async for page in self._gateway.subscriptions(organisation):
            for held in page:
                counts["compared"] += 1
                seen.add(held["subscription_id"])
                repaired = await self._reconcile_one(held, counts)
                if repaired is not None:
                    repairs.append(repaired)
        for sub in await store.paid(self._pool, organisation):
            if sub.stripe_subscription_id and sub.stripe_subscription_id not in seen:
                counts["alerts"] += 1
                await self._alert(
                    sub.organisation_id,
                    AlertKind.STRIPE_MISMATCH,
                    "subscription_unknown_to_gateway",
                    f"{sub.stripe_subscription_id} pays {sub.organisation_id}'s plan here; the "
                    "gateway holds no such subscription",
                    sub.stripe_subscription_id,
                )
        counts["repaired"] = len(repairs)
        log.info("reconciliation finished", organisation_id=organisation, **dict(counts))
        return {
            **{k: counts[k] for k in ("compared", "repaired", "alerts", "skipped")},
            "repairs": repairs,
        }

    async def _reconcile_one(
        self, held: dict[str, Any], counts: Counter[str]
    ) -> dict[str, Any] | None:
        organisation = held["organisation_id"]
        facts = StripeFacts(
            subscription_id=held["subscription_id"],
            status=held["status"],
            price_id=held["price_id"],
            period_start=_instant(held["current_period_start"]),
            period_end=_instant(held["current_period_end"]),
            cancel_at_period_end=held["cancel_at_period_end"],
            deleted=held["deleted"],
            version=held["version"] or None,
            quantity=held["quantity"],
        )
        now = self._clock.now()
        async with self._pool.acquire() as conn, conn.transaction():
            sub = await store.lock(conn, organisation)
            if sub is None:
                if facts.live:
                    counts["alerts"] += 1
                    await self._alert(
                        organisation,
                        AlertKind.STRIPE_MISMATCH,
                        "unknown_organisation",
                        f"Stripe bills {organisation} on {facts.subscription_id}; the member "
                        "directory has not announced that organisation",
                        facts.subscription_id,
                        conn=conn,
                    )
                return None
            if facts.subscription_id != sub.stripe_subscription_id and not facts.live:
                return None  # an ended subscription that is not the organisation's
            if await store.changed_since(conn, organisation, now - self._grace):
                counts["skipped"] += 1
                return None
            try:
                outcome = machine.stripe_reported(sub, facts, now, self._catalogue, force=True)
            except Unappliable as exc:
                counts["alerts"] += 1
                await self._alert(
                    organisation,
                    AlertKind.STRIPE_MISMATCH,
                    exc.reason,
                    exc.detail,
                    facts.subscription_id,
                    conn=conn,
                )
                return None
            if not outcome.changed:
                return None
            before, after = _compared(sub), _compared(outcome.subscription)
            fields = sorted(k for k in before if before[k] != after[k])
            repair = DriftRepair(
                service=PRODUCER,
                subject="organisation",
                subject_id=organisation,
                fields=tuple(fields),
                before={k: before[k] for k in fields},
                after={k: after[k] for k in fields},
            )
            await self._subscriptions.record(conn, [outcome], now)
            await outbox.enqueue(
                conn,
                [
                    DriftRepairedV1.new(
                        organisation_id=organisation,
                        producer=PRODUCER,
                        occurred_at=now,
                        data=repair,
                    )
                ],
                prefix=self._prefix,
                clock=self._clock,
            )
        log.warning(
            "organisation repaired from stripe", organisation_id=organisation, fields=fields
        )
        return {
            "organisation_id": organisation,
            **repair.model_dump(include={"fields", "before", "after"}),
        }

    async def _alert(
        self,
        organisation: str,
        kind: AlertKind,
        reason: str,
        detail: str,
        subject: str | None,
        *,
        conn: asyncpg.Connection | None = None,
    ) -> None:
        event = OperatorAlertRaisedV1.new(
            organisation_id=organisation,
            producer=PRODUCER,
            occurred_at=self._clock.now(),
            data=OperatorAlert(
                service=PRODUCER, kind=kind, reason=reason, detail=detail[:1000], subject_id=subject
            ),
        )
        if conn is not None:
            await outbox.enqueue(conn, [event], prefix=self._prefix, clock=self._clock)
            return
        async with self._pool.acquire() as own, own.transaction():
            await outbox.enqueue(own, [event], prefix=self._prefix, clock=self._clock)


def _instant(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _compared(sub: Subscription) -> dict[str, str | bool | None]:
    """What a reconciliation compares of an organisation's subscription."""
    return {
        "plan": sub.plan.value,
        "cycle": sub.cycle.value if sub.cycle else None,
        "standing": sub.standing.value,
        "cancel_at_period_end": sub.cancel_at_period_end,
        "pending_plan": sub.pending_plan.value if sub.pending_plan else None,
        "pending_cycle": sub.pending_cycle.value if sub.pending_cycle else None,
        "paid_period_end": sub.paid_period_end.isoformat() if sub.paid_period_end else None,
        "stripe_subscription_id": sub.stripe_subscription_id,
    }
