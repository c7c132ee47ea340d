"""Wiring: the Stripe gateway on the shared kernel (`shared.service`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from shared.devstack.processes import ensure_free
from shared.service import DevResources, Kernel, Service
from shared.topics import STRIPE_COMMANDS

from . import PRODUCER
from .commands import Commands, Quantities
from .devstripe import Devstripe
from .handlers import http
from .inbox import Inbox
from .parts import Parts
from .reconcile import Reconciler
from .service import Observer, Reports
from .settings import DEV_API_KEY, DEV_WEBHOOK_SECRET, StripeGatewaySettings
from .store import inbox as inbox_store
from .stripe_api import StripeApi


async def build(kernel: Kernel[StripeGatewaySettings]) -> Parts:
    settings = kernel.settings
    pool, clock, prefix = kernel.pool, kernel.clock, settings.topic_prefix
    api = StripeApi(
        api_key=settings.api_key.get_secret_value(),
        api_base=settings.api_base_url,
        timeout=settings.api_timeout_seconds,
        attempts=settings.api_attempts,
        requests_per_second=settings.api_requests_per_second,
    )
    inbox = Inbox(
        pool,
        clock,
        webhook_secret=settings.webhook_secret.get_secret_value(),
        tolerance_seconds=settings.webhook_tolerance_seconds,
        rejections_per_minute=settings.webhook_rejections_per_minute,
    )
    observer = Observer(pool, clock, api, topic_prefix=prefix)
    reports = Reports(
        pool,
        clock,
        observer,
        max_attempts=settings.inbox_max_attempts,
        retry_seconds=settings.inbox_retry_seconds,
        batch_size=settings.inbox_batch_size,
        claim_seconds=settings.inbox_claim_seconds,
    )
    quantities = Quantities(
        pool,
        clock,
        api,
        observer,
        budget_per_hour=settings.quantity_updates_per_hour,
        burst=settings.quantity_burst,
    )
    commands = Commands(
        pool,
        clock,
        api,
        observer,
        quantities,
        topic_prefix=prefix,
        claim_seconds=settings.command_claim_seconds,
    )
    reconciler = Reconciler(pool, clock, api, observer, topic_prefix=prefix)
    kernel.consume(
        STRIPE_COMMANDS,
        "commands",
        commands.apply,
        max_records=50,
        description="Executes each command once, its key scoped by organisation.",
    )
    if settings.process_inbox:
        kernel.background(
            "webhook-reports",
            lambda: reports.run(settings.database_url.get_secret_value(), settings.db_schema),
        )
        kernel.background(
            "seat-quantities", lambda: quantities.run(settings.quantity_poll_seconds, 100)
        )
        if settings.reconcile_seconds > 0:
            kernel.periodic(
                "reconcile",
                reconciler.sweep,
                settings.reconcile_seconds,
                first_after=True,
                alone=True,
            )
    kept = timedelta(days=settings.webhook_rejections_kept_days)
    kernel.periodic("prune-rejections", lambda: inbox.prune(kept), 3600, alone=True)
    kernel.detail("parked_webhooks", lambda: inbox_store.parked_count(pool))

    async def refused() -> dict[str, int]:
        return {"unrecorded_since_start": inbox.rejections_unrecorded}

    kernel.detail("refused_webhooks", refused)
    kernel.due(
        "webhook retries",
        lambda: pool.fetchval("SELECT min(next_attempt_at) FROM inbox WHERE status = 'pending'"),
    )
    kernel.due("seat quantities", lambda: pool.fetchval("SELECT min(due_at) FROM quantities"))
    return Parts(api, inbox, observer, reports, commands, quantities, reconciler)


@contextlib.contextmanager
def development(data_dir: Path, env: dict[str, str], port: int) -> Iterator[DevResources]:
    """Under `make run`: devstripe (the part of Stripe this project uses, in memory, on a
    clock) as the Stripe API, its webhooks delivered here; unless a Stripe key is
    configured."""
    webhook = f"http://127.0.0.1:{port}/stripe/webhook"
    if "STRIPE_GATEWAY_API_KEY" in env:
        yield DevResources(lines=(f"stripe webhooks: point your endpoint at {webhook}",))
        return
    devstripe = Devstripe(
        port=int(env.get("DEVSTACK_DEVSTRIPE_PORT", "8420")), log_file=data_dir / "devstripe.log"
    )
    ensure_free(devstripe.port, "devstripe", "DEVSTACK_DEVSTRIPE_PORT")
    devstripe.start()
    try:
        devstripe.register_webhook("stripe-gateway", webhook, DEV_WEBHOOK_SECRET)
        yield DevResources(
            env={
                "STRIPE_GATEWAY_API_BASE": devstripe.url,
                "STRIPE_GATEWAY_API_KEY": DEV_API_KEY,
                "STRIPE_GATEWAY_WEBHOOK_SECRET": DEV_WEBHOOK_SECRET,
            },
            lines=(
                f"{'devstripe':<15}{devstripe.url}  (Stripe in memory, Checkout and Billing Portal "
                f"pages; log {data_dir / 'devstripe.log'})",
                f"{'stripe webhook':<15}{webhook}",
            ),
        )
    finally:
        devstripe.stop()


SERVICE = Service(
    name=PRODUCER,
    module="services.stripe_gateway",
    title="Stripe gateway",
    summary="Stripe's webhooks verified and processed once; Checkout, Billing Portal and "
    "subscription commands with idempotency keys.",
    settings=StripeGatewaySettings,
    migrations=Path(__file__).parent / "migrations",
    build=build,
    routers=(http.webhooks, http.router),
    development=development,
    audit=True,
)
