"""Wiring: the metering service on the shared kernel (`shared.service`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from shared import directory
from shared.service import Kernel, Service
from shared.topics import AGENT_USAGE, CREDIT_GRANT_REQUESTS, WORKSPACE_MEMBERS

from . import PRODUCER
from .authorizer import Authorizer
from .budgets import BudgetBook
from .domain.credits import CreditPolicy
from .domain.pricing import RateCard
from .handlers import budgets as budget_routes
from .handlers import http
from .handlers import receipts as receipt_routes
from .ledger_check import LedgerCheck
from .service import Metering
from .settings import MeteringSettings


@dataclass(frozen=True)
class Parts:
    """What the HTTP handlers use (`request.app.state.parts`)."""

    metering: Metering
    authorizer: Authorizer
    ledger_check: LedgerCheck
    budgets: BudgetBook


async def build(kernel: Kernel[MeteringSettings]) -> Parts:
    settings = kernel.settings
    metering = Metering(
        kernel.pool,
        kernel.clock,
        CreditPolicy(low_percent=settings.low_credit_percent),
        topic_prefix=settings.topic_prefix,
        max_grant_lead=timedelta(days=settings.max_grant_lead_days),
        auditor=kernel.auditor,
        rate_card=RateCard.load(settings.rate_card),
    )
    authorizer = Authorizer(
        kernel.pool,
        kernel.clock,
        hold_ttl=timedelta(seconds=settings.hold_ttl_seconds),
        topic_prefix=settings.topic_prefix,
        lanes=settings.authorization_lanes,
        max_waiting=settings.max_waiting_authorizations,
    )
    kernel.consume(
        AGENT_USAGE,
        "usage",
        metering.record_usage,
        lanes=settings.write_lanes,
        max_records=settings.batch_max_records,
        description="Debits one ledger entry per usage event, exactly once.",
    )
    kernel.consume(
        CREDIT_GRANT_REQUESTS,
        "grants",
        metering.apply_grants,
        lanes=settings.write_lanes,
        max_records=1000,
        description="Applies each grant command once per (organisation, period key), as a "
        "bucket of credits.",
    )
    kernel.consume(
        WORKSPACE_MEMBERS,
        "directory",
        directory.projector(kernel.pool, kernel.clock),
        max_records=2000,
        description="Who is an active member or owner (budgets are set by owners).",
    )
    kernel.background("hold-sweeper", lambda: authorizer.run_sweeper(settings.hold_sweep_seconds))
    ledger_check = LedgerCheck(kernel.pool, kernel.clock, topic_prefix=settings.topic_prefix)
    if settings.ledger_check_seconds > 0 and settings.run_consumers:
        kernel.periodic(
            "ledger-check",
            ledger_check.run,
            settings.ledger_check_seconds,
            first_after=True,
            alone=True,
        )
    if settings.run_consumers:
        kernel.periodic(
            "bucket-expiry", metering.expire_buckets, settings.bucket_sweep_seconds, batch=500
        )
        kernel.due(
            "bucket expiries",
            lambda: kernel.pool.fetchval(
                """SELECT min(expires_at) FROM buckets
                   WHERE live AND NOT ends_with_period AND expires_at IS NOT NULL"""
            ),
        )
    kernel.due(
        "hold expiries",
        lambda: kernel.pool.fetchval(
            "SELECT min(expires_at) FROM authorizations WHERE status = 'held'"
        ),
    )
    kernel.on_stop(authorizer.close)
    return Parts(metering, authorizer, ledger_check, BudgetBook(kernel.pool, kernel.clock))


SERVICE = Service(
    name=PRODUCER,
    module="services.metering",
    title="Credit metering",
    summary="Credit authorization for the chat gateway, wallets, the credit ledger and the "
    "credit bar of each organisation.",
    settings=MeteringSettings,
    migrations=Path(__file__).parent / "migrations",
    build=build,
    routers=(http.router, receipt_routes.router, budget_routes.router),
    hot_routes=(http.HOT_AUTHORIZE,),
    audit=True,
    directory=True,
)
