"""Wiring: the subscription service on the shared kernel (`shared.service`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx

from shared.service import Kernel, Service
from shared.topics import STRIPE_EVENTS, WORKSPACE_MEMBERS

from . import PRODUCER
from .domain.catalogue import Catalogue
from .handlers import http
from .service import Gateway, Links, Subscriptions
from .settings import SubscriptionSettings


@dataclass(frozen=True)
class Parts:
    """What the HTTP handlers use (`request.app.state.parts`)."""

    subscriptions: Subscriptions


async def build(kernel: Kernel[SubscriptionSettings]) -> Parts:
    settings = kernel.settings
    client = httpx.AsyncClient(
        base_url=str(settings.gateway_url).rstrip("/"),
        headers={"Authorization": f"Bearer {settings.gateway_token.get_secret_value()}"},
        timeout=30,
    )
    subscriptions = Subscriptions(
        kernel.pool,
        kernel.clock,
        Catalogue.load(settings.catalogue),
        Gateway(client),
        Links(
            success_url=str(settings.checkout_success_url),
            cancel_url=str(settings.checkout_cancel_url),
            portal_return_url=str(settings.portal_return_url),
        ),
        topic_prefix=settings.topic_prefix,
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
        description="What Stripe reports: checkouts, paid periods, cancellations, payments.",
    )
    kernel.periodic(
        "renewals",
        lambda: subscriptions.renew_due(settings.renewal_batch),
        settings.renewal_poll_seconds,
        batch=settings.renewal_batch,
    )
    kernel.on_stop(client.aclose)
    return Parts(subscriptions)


SERVICE = Service(
    name=PRODUCER,
    module="services.subscriptions",
    title="Subscriptions",
    summary="Plans, owner-only changes, billing cycles and monthly credit renewal.",
    settings=SubscriptionSettings,
    migrations=Path(__file__).parent / "migrations",
    build=build,
    routers=(http.router,),
)
