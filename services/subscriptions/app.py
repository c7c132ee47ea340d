"""Wiring: the subscription service on the shared kernel (`shared.service`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx

from shared.service import Kernel, Service
from shared.topics import CREDIT_BALANCE, STRIPE_EVENTS, WORKSPACE_MEMBERS

from . import PRODUCER
from .domain.catalogue import Catalogue
from .gateway import Gateway
from .handlers import http
from .packs import CreditPacks
from .reconcile import Reconciler
from .service import Links, Subscriptions, require_owner
from .settings import SubscriptionSettings


@dataclass(frozen=True)
class Parts:
    """What the HTTP handlers use (`request.app.state.parts`)."""

    subscriptions: Subscriptions
    reconciler: Reconciler
    packs: CreditPacks


async def build(kernel: Kernel[SubscriptionSettings]) -> Parts:
    settings = kernel.settings
    client = httpx.AsyncClient(
        base_url=str(settings.gateway_url).rstrip("/"),
        headers={"Authorization": f"Bearer {settings.gateway_token.get_secret_value()}"},
        timeout=30,
    )
    catalogue, gateway = Catalogue.load(settings.catalogue), Gateway(client)
    packs = CreditPacks(
        kernel.pool,
        kernel.clock,
        catalogue,
        gateway,
        require_owner,
        success_url=str(settings.pack_success_url),
        cancel_url=str(settings.checkout_cancel_url),
        topic_prefix=settings.topic_prefix,
        retry_after=timedelta(seconds=settings.recharge_retry_seconds),
    )
    subscriptions = Subscriptions(
        kernel.pool,
        kernel.clock,
        catalogue,
        gateway,
        Links(
            success_url=str(settings.checkout_success_url),
            cancel_url=str(settings.checkout_cancel_url),
            portal_return_url=str(settings.portal_return_url),
        ),
        topic_prefix=settings.topic_prefix,
        packs=packs,
    )
    reconciler = Reconciler(
        kernel.pool,
        kernel.clock,
        catalogue,
        gateway,
        subscriptions,
        topic_prefix=settings.topic_prefix,
        grace=timedelta(seconds=settings.reconcile_grace_seconds),
    )
    kernel.consume(
        WORKSPACE_MEMBERS,
        "directory",
        subscriptions.on_directory,
        max_records=1000,
        description="Organisations (a new one starts on Free) and members (owners act).",
    )
    kernel.consume(
        STRIPE_EVENTS,
        "stripe",
        subscriptions.on_stripe,
        max_records=500,
        description="What Stripe holds, as the gateway observed it: checkouts, paid periods, "
        "prices, cancellations, standing. Ordered by the gateway's version per subscription.",
    )
    kernel.consume(
        CREDIT_BALANCE,
        "balances",
        packs.on_balances,
        max_records=1000,
        description="Balances announced by metering: a crossing of an owner's auto-recharge "
        "threshold charges one pack.",
    )
    kernel.periodic(
        "renewals",
        lambda: subscriptions.renew_due(settings.renewal_batch),
        settings.renewal_poll_seconds,
        batch=settings.renewal_batch,
    )
    if settings.reconcile_seconds > 0:
        kernel.periodic(
            "reconcile", reconciler.run, settings.reconcile_seconds, first_after=True, alone=True
        )
    kernel.due(
        "renewals",
        lambda: kernel.pool.fetchval("SELECT min(next_renewal_at) FROM subscriptions"),
    )
    kernel.on_stop(client.aclose)
    return Parts(subscriptions, reconciler, packs)


SERVICE = Service(
    name=PRODUCER,
    module="services.subscriptions",
    title="Subscriptions",
    summary="Plans, owner-only changes, billing cycles and monthly credit renewal.",
    settings=SubscriptionSettings,
    migrations=Path(__file__).parent / "migrations",
    build=build,
    routers=(http.router,),
    directory=True,
    audit=True,
)
