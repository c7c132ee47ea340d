"""The dashboard with every service it projects, real and on the same broker and database:
metering, the Stripe gateway (with devstripe), subscriptions and seats in the test's process,
and the dashboard served over HTTP on a free port for a real headless Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
import pytest_asyncio
import uvicorn
from playwright.async_api import Browser, async_playwright

from services.dashboard.app import SERVICE
from services.dashboard.settings import DashboardSettings
from services.dashboard.sources import MeteringUsage, StripeInvoices
from services.seats.app import SERVICE as SEATS
from services.seats.settings import SeatSettings
from services.subscriptions.service import Links
from shared.devstack import free_port
from shared.service import create_app
from shared.testing import eventually
from shared.testing.plugin import Infrastructure, Isolation
from shared.testing.service import running_service
from tests.subscriptions import conftest as subscriptions
from tests.subscriptions.conftest import Billing

billing = subscriptions.billing  # the services the page shows, as the subscription tests run them
clock = subscriptions.clock
from_the_start = subscriptions.from_the_start
ARTEFACTS = Path(__file__).resolve().parents[2] / "test-artefacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def settings_of(kind: type, env: dict[str, str]) -> Any:
    with mock.patch.dict(os.environ, env):
        return kind()


@dataclass
class Page:
    """The dashboard, served at `url`, beside the other services."""

    url: str
    billing: Billing
    settings: DashboardSettings

    async def knows(self, organisation: str, member: str) -> None:
        """Until the dashboard's directory has the member (it answers the page, not 403)."""

        async def answered() -> bool:
            async with httpx.AsyncClient(base_url=self.url) as client:
                page = await client.get(
                    "/billing", headers=self.billing.acting(organisation, member)
                )
            return page.status_code != 403

        await eventually(answered, what=f"the dashboard knows {member} of {organisation}")


@contextlib.asynccontextmanager
async def serving(app: Any, port: int) -> AsyncIterator[None]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        await task


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def dashboard(
    billing: Billing, infrastructure: Infrastructure, module_isolation: Isolation
) -> AsyncIterator[Page]:
    """The dashboard and the seat service beside the subscription tests' services, once per
    module (`pytestmark = pytest.mark.asyncio(loop_scope="module")`)."""
    isolation = module_isolation
    common = isolation.env(infrastructure, SERVICE.env_prefix)
    seat_settings = settings_of(
        SeatSettings, {**common, "SEATS_DB_SCHEMA": isolation.schema_for("seats")}
    )
    settings = settings_of(
        DashboardSettings,
        {**common, "DASHBOARD_DB_SCHEMA": isolation.schema_for("dashboard")},
    )
    port = free_port()
    app = create_app(SERVICE, settings, billing.clock)
    async with running_service(SEATS, seat_settings, billing.clock) as _:
        async with serving(app, port):
            app.state.parts.subscriptions = billing.http  # the subscription API, in process
            app.state.parts.dashboard.usage = MeteringUsage(billing.metering)  # and metering's
            app.state.parts.metering = billing.metering
            app.state.parts.dashboard.invoices = StripeInvoices(billing.gateway.http)
            url = f"http://127.0.0.1:{port}"
            billing.service._links = Links(  # Stripe sends people back to this page
                success_url=f"{url}/billing?checkout=success",
                cancel_url=f"{url}/billing?checkout=cancelled",
                portal_return_url=f"{url}/billing?portal=returned",
            )
            billing.service._packs._success_url = f"{url}/billing?outcome=pack_paid"
            billing.service._packs._cancel_url = f"{url}/billing?checkout=cancelled"
            yield Page(f"http://127.0.0.1:{port}", billing, settings)


LIVE = 5_000
"""How long a change may take to reach an open page here (ms); `make bench` measures it."""

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(chromium: str) -> AsyncIterator[Browser]:
    """Chromium, once per module."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture(scope="session")
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            "Chromium is missing: `make test` installs Debian's chromium package "
            "(apt-get install chromium); install it and run again."
        )
    return CHROMIUM
