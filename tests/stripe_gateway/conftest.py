"""Fixtures for the Stripe gateway: devstripe (localstripe plus Checkout and the Billing
Portal) once per session, and per test a gateway serving HTTP on a real port, so that
devstripe's signed webhooks reach it. Webhook payloads are built from Stripe's own fixtures
(`fixtures/`) and signed as Stripe signs them."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import orjson
import pytest
import uvicorn

from services.stripe_gateway.app import SERVICE
from services.stripe_gateway.devstripe import Devstripe
from services.stripe_gateway.devstripe.app import sign
from services.stripe_gateway.settings import DEV_WEBHOOK_SECRET, StripeGatewaySettings
from shared.clock import SystemClock
from shared.devstack import free_port
from shared.events import Event
from shared.service import Kernel, create_app
from shared.settings import DEV_API_TOKEN
from shared.testing import eventually, produce, read_topic
from shared.testing.plugin import Infrastructure, Isolation
from shared.topics import STRIPE_COMMANDS, STRIPE_EVENTS, TopicSpec

FIXTURES = Path(__file__).parent / "fixtures"
HOUR = 3600


def fixture(name: str) -> dict[str, Any]:
    return orjson.loads((FIXTURES / f"{name}.json").read_bytes())


def subscription_object(
    subscription_id: str,
    customer_id: str,
    *,
    organisation: str | None = None,
    status: str = "active",
    price: str = "price_pro_monthly",
    quantity: int = 1,
    start: int = 1_795_000_000,
    cancel_at_period_end: bool = False,
    shape: str = "current",
) -> dict[str, Any]:
    """Stripe's subscription fixture, made to say what the test needs. `current`: the
    billing period on the items; `legacy`: on the subscription."""
    obj = fixture("subscription")
    item = copy.deepcopy(obj["items"]["data"][0])
    item.update(id=f"si_{subscription_id[4:]}", quantity=quantity, subscription=subscription_id)
    item["price"]["id"] = price
    item.pop("plan", None)
    end = start + 30 * 24 * HOUR
    obj.update(
        id=subscription_id,
        customer=customer_id,
        status=status,
        cancel_at_period_end=cancel_at_period_end,
        metadata={"organisation_id": organisation} if organisation else {},
    )
    if shape == "current":
        item.update(current_period_start=start, current_period_end=end)
        obj.pop("current_period_start", None)
        obj.pop("current_period_end", None)
    else:
        item.pop("current_period_start", None)
        item.pop("current_period_end", None)
        obj.update(current_period_start=start, current_period_end=end, quantity=quantity)
    obj["items"]["data"] = [item]
    return obj


def invoice_object(
    invoice_id: str, customer_id: str, subscription_id: str, *, paid: bool, amount: int = 2500
) -> dict[str, Any]:
    obj = fixture("invoice")
    obj.update(
        id=invoice_id,
        customer=customer_id,
        amount_paid=amount if paid else 0,
        amount_due=amount,
        billing_reason="subscription_cycle",
        attempt_count=1 if paid else 2,
        next_payment_attempt=None if paid else 1_795_500_000,
        status="paid" if paid else "open",
    )
    obj["parent"] = {
        "type": "subscription_details",
        "quote_details": None,
        "subscription_details": {"metadata": None, "subscription": subscription_id},
    }
    obj["lines"]["data"][0]["period"] = {"start": 1_795_000_000, "end": 1_797_592_000}
    return obj


def checkout_object(
    session_id: str, customer_id: str, subscription_id: str, organisation: str
) -> dict[str, Any]:
    obj = fixture("checkout.session")
    obj.update(
        id=session_id,
        customer=customer_id,
        subscription=subscription_id,
        client_reference_id=organisation,
        mode="subscription",
        status="complete",
        payment_status="paid",
        metadata={
            "organisation_id": organisation,
            "request_id": "req_from_test",
            "price_id": "price_pro_monthly",
            "quantity": "3",
        },
    )
    return obj


def stripe_event(
    kind: str, obj: dict[str, Any], *, created: int | None = None, event_id: str | None = None
) -> dict[str, Any]:
    event = fixture("event")
    event.update(
        id=event_id or f"evt_{uuid.uuid4().hex[:24]}",
        type=kind,
        created=created if created is not None else int(time.time()),
        data={"object": obj},
    )
    return event


def signed(
    event: dict[str, Any], *, secret: str = DEV_WEBHOOK_SECRET, timestamp: int | None = None
) -> tuple[bytes, str]:
    payload = orjson.dumps(event)
    return payload, sign(payload, secret, timestamp if timestamp is not None else int(time.time()))


@pytest.fixture
def gateway_env(
    infrastructure: Infrastructure, isolation: Isolation, devstripe: Devstripe
) -> dict[str, str]:
    return {
        **isolation.env(infrastructure, SERVICE.env_prefix),
        "STRIPE_GATEWAY_API_BASE": devstripe.url,
        "STRIPE_GATEWAY_INBOX_MAX_ATTEMPTS": "3",
        "STRIPE_GATEWAY_INBOX_RETRY_SECONDS": "0.05",
        "STRIPE_GATEWAY_API_ATTEMPTS": "3",
    }


@pytest.fixture
def gateway_settings(gateway_env: dict[str, str]) -> StripeGatewaySettings:
    with mock.patch.dict(os.environ, gateway_env):
        return StripeGatewaySettings()


@dataclass
class GatewayHarness:
    kernel: Kernel[StripeGatewaySettings]
    http: httpx.AsyncClient
    settings: StripeGatewaySettings
    devstripe: Devstripe
    url: str

    @property
    def parts(self) -> Any:
        return self.kernel.parts

    @property
    def bootstrap(self) -> str:
        return self.settings.kafka_bootstrap_servers

    def topic(self, spec: TopicSpec) -> str:
        return spec.topic(self.settings.topic_prefix)

    async def deliver(self, event: dict[str, Any], **signing: Any) -> httpx.Response:
        payload, signature = signed(event, **signing)
        return await self.http.post(
            "/stripe/webhook",
            content=payload,
            headers={"Stripe-Signature": signature, "Content-Type": "application/json"},
        )

    async def command(self, *commands: Event) -> None:
        await produce(
            self.bootstrap, self.topic(STRIPE_COMMANDS), [(c.key, c.to_bytes()) for c in commands]
        )

    async def inbox(self, event_id: str) -> dict[str, Any] | None:
        row = await self.kernel.pool.fetchrow(
            "SELECT status, attempts, last_error FROM inbox WHERE event_id = $1", event_id
        )
        return None if row is None else dict(row)

    async def processed(self, event_id: str, status: str = "done") -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            found = await self.inbox(event_id)
            return found if found and found["status"] == status else None

        return await eventually(check, what=f"{event_id} {status}")

    async def announced(self, at_least: int = 1) -> list[dict[str, Any]]:
        records = await read_topic(self.bootstrap, self.topic(STRIPE_EVENTS), at_least=at_least)
        return [orjson.loads(r.value) for r in records]

    async def stripe(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """Ask devstripe (the Stripe API here) directly."""
        async with httpx.AsyncClient(base_url=self.devstripe.url, auth=("sk_test_x", "")) as c:
            response = await c.request(method, path, **kwargs)
            response.raise_for_status()
            return response.json()


@contextlib.asynccontextmanager
async def running_gateway(
    settings: StripeGatewaySettings, devstripe: Devstripe
) -> AsyncIterator[GatewayHarness]:
    app = create_app(SERVICE, settings, SystemClock())
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    serving = asyncio.create_task(server.serve())
    await eventually(lambda: _started(server), what="gateway serving")
    name = f"test-{uuid.uuid4().hex[:8]}"
    url = f"http://127.0.0.1:{port}"
    devstripe.register_webhook(name, f"{url}/stripe/webhook", DEV_WEBHOOK_SECRET)
    try:
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {DEV_API_TOKEN}"}, timeout=30
        ) as http:
            yield GatewayHarness(app.state.runtime, http, settings, devstripe, url)
    finally:
        devstripe.unregister_webhook(name)
        server.should_exit = True
        await serving


async def _started(server: uvicorn.Server) -> bool:
    return server.started


@pytest.fixture
async def gateway(
    gateway_settings: StripeGatewaySettings, devstripe: Devstripe
) -> AsyncIterator[GatewayHarness]:
    async with running_gateway(gateway_settings, devstripe) as harness:
        yield harness
