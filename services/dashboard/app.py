"""Wiring: the dashboard on the shared kernel (`shared.service`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from shared import directory
from shared.service import DevResources, Kernel, Service
from shared.topics import (
    BILLING_AUDIT,
    CREDIT_AUTHORIZATIONS,
    CREDIT_BALANCE,
    SEATS_STATE,
    STRIPE_EVENTS,
    SUBSCRIPTION_STATE,
    WORKSPACE_MEMBERS,
)

from . import PRODUCER
from .handlers import http
from .service import Dashboard
from .settings import DashboardSettings
from .sources import MeteringUsage, StripeInvoices


@dataclass
class Parts:
    """What the HTTP handlers use (`request.app.state.parts`)."""

    dashboard: Dashboard
    subscriptions: httpx.AsyncClient
    """The subscription service's API (owner actions, the plan catalogue)."""
    metering: httpx.AsyncClient
    """Metering's API for the acting member (budgets), with the front credential."""
    catalogue: dict[str, Any] | None = field(default=None)


async def build(kernel: Kernel[DashboardSettings]) -> Parts:
    settings = kernel.settings
    metering = httpx.AsyncClient(
        base_url=str(settings.metering_url).rstrip("/"),
        headers={"Authorization": f"Bearer {settings.metering_token.get_secret_value()}"},
        timeout=5,
    )
    kernel.on_stop(metering.aclose)
    gateway = httpx.AsyncClient(
        base_url=str(settings.gateway_url).rstrip("/"),
        headers={"Authorization": f"Bearer {settings.gateway_token.get_secret_value()}"},
        timeout=5,
    )
    kernel.on_stop(gateway.aclose)
    dashboard = Dashboard(
        kernel.pool,
        kernel.clock,
        schema=settings.db_schema,
        usage=MeteringUsage(metering),
        invoices=StripeInvoices(gateway),
    )
    for spec, name, apply, what in (
        (CREDIT_BALANCE, "credits", dashboard.on_credits, "The credit bar (newest revision)."),
        (CREDIT_AUTHORIZATIONS, "denials", dashboard.on_authorizations, "Denied sends."),
        (SUBSCRIPTION_STATE, "subscriptions", dashboard.on_subscriptions, "Plan and period."),
        (SEATS_STATE, "seats", dashboard.on_seats, "Seats and owners."),
        (BILLING_AUDIT, "audit", dashboard.on_audit, "The audit log, for owners."),
        (STRIPE_EVENTS, "invoices", dashboard.on_stripe, "Invoices changed: pages refresh."),
    ):
        kernel.consume(spec, name, apply, max_records=2000, description=what)
    kernel.consume(
        WORKSPACE_MEMBERS,
        "directory",
        directory.projector(kernel.pool, kernel.clock),
        max_records=2000,
        description="Who is an active member (only they see the page).",
    )
    kernel.background(
        "page-notifications",
        lambda: dashboard.listen(settings.database_url.get_secret_value(), settings.db_schema),
    )
    client = httpx.AsyncClient(
        base_url=str(settings.subscriptions_url).rstrip("/"),
        headers={"Authorization": f"Bearer {settings.subscriptions_token.get_secret_value()}"},
        timeout=30,
    )
    kernel.on_stop(client.aclose)
    metering_front = httpx.AsyncClient(
        base_url=str(settings.metering_url).rstrip("/"),
        headers={"Authorization": f"Bearer {settings.metering_front_token.get_secret_value()}"},
        timeout=5,
    )
    kernel.on_stop(metering_front.aclose)
    return Parts(dashboard, client, metering_front)


@contextlib.contextmanager
def development(data: Path, env: dict[str, str], port: int) -> Iterator[DevResources]:
    """Under `make run`: a plain browser sends no signed identity, so the page stands in for
    the front proxy and signs one (development key) for its `organisation` and `member`
    query parameters."""
    yield DevResources(
        env={"DASHBOARD_IDENTITY_FROM_QUERY": "true"},
        lines=(
            f"billing page   http://127.0.0.1:{port}/billing?organisation=org_demo&member=member_ada",
        ),
    )


SERVICE = Service(
    name=PRODUCER,
    module="services.dashboard",
    title="Billing dashboard",
    summary="Each organisation's Billing page, live: credits, usage, plan, seats, actions.",
    settings=DashboardSettings,
    migrations=Path(__file__).parent / "migrations",
    build=build,
    routers=(http.router,),
    development=development,
    directory=True,
)
