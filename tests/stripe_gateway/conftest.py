"""Fixtures for the Stripe gateway: devstripe (the part of Stripe this project uses, in
memory) once per session, and a gateway serving HTTP on a real port, so that devstripe's
signed webhooks reach it: once per test module (`gateway`; its tests use organisations of
their own), or per test where a test needs its own settings (`running_gateway`). Webhook
payloads are built from Stripe's own fixtures (`fixtures/`) and signed as Stripe signs them;
the objects they name exist in devstripe (`stripe_subscription`), because the gateway fetches
what a webhook names."""

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
import pytest_asyncio
import uvicorn

from services.stripe_gateway.app import SERVICE
from services.stripe_gateway.devstripe import Devstripe
from services.stripe_gateway.devstripe.app import sign
from services.stripe_gateway.settings import DEV_WEBHOOK_SECRET, StripeGatewaySettings
from shared.clock import Clock, SystemClock
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


def env_for(
    infrastructure: Infrastructure, isolation: Isolation, devstripe: Devstripe
) -> dict[str, str]:
    """The gateway's environment in tests: devstripe, quick retries, no periodic sweep."""
    return {
        **isolation.env(infrastructure, SERVICE.env_prefix),
        "STRIPE_GATEWAY_API_BASE": devstripe.url,
        "STRIPE_GATEWAY_INBOX_MAX_ATTEMPTS": "3",
        "STRIPE_GATEWAY_INBOX_RETRY_SECONDS": "0.05",
        "STRIPE_GATEWAY_API_ATTEMPTS": "3",
        "STRIPE_GATEWAY_API_REQUESTS_PER_SECOND": "100",
        "STRIPE_GATEWAY_QUANTITY_POLL_SECONDS": "0.1",
        "STRIPE_GATEWAY_RECONCILE_SECONDS": "0",
        "STRIPE_GATEWAY_WEBHOOK_REJECTIONS_PER_MINUTE": "1000",
    }


def settings_from(env: dict[str, str]) -> StripeGatewaySettings:
    with mock.patch.dict(os.environ, env):
        return StripeGatewaySettings()


@pytest.fixture
def gateway_env(
    infrastructure: Infrastructure, isolation: Isolation, devstripe: Devstripe
) -> dict[str, str]:
    return env_for(infrastructure, isolation, devstripe)


@pytest.fixture
def gateway_settings(gateway_env: dict[str, str]) -> StripeGatewaySettings:
    return settings_from(gateway_env)


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

    async def stripe(self, method: str, path: str, **kwargs: Any) -> Any:
        """Ask devstripe (the Stripe API here) directly."""
        return await stripe_call(self.devstripe, method, path, **kwargs)

    async def mine(
        self, organisation: str, at_least: int = 1, *, kind: str = ""
    ) -> list[dict[str, Any]]:
        """What the gateway announced for the organisation, in order (only the types that
        start with `kind`)."""

        async def found() -> list[dict[str, Any]] | None:
            records = await read_topic(self.bootstrap, self.topic(STRIPE_EVENTS))
            mine = [orjson.loads(r.value) for r in records if r.key == organisation.encode()]
            mine = [e for e in mine if e["type"].startswith(kind)]
            return mine if len(mine) >= at_least else None

        return await eventually(found, what=f"{at_least} events of {organisation}")

    async def held(self, organisation: str, **expected: Any) -> dict[str, Any]:
        """The organisation's newest subscription as the gateway holds it, once it matches."""

        async def matches() -> dict[str, Any] | None:
            found = (await self.http.get(f"/v1/organisations/{organisation}/subscriptions")).json()
            if found and all(found[0].get(k) == v for k, v in expected.items()):
                return found[0]
            return None

        return await eventually(matches, what=f"{organisation} held with {expected}")

    async def quiet(self) -> None:
        """Until devstripe has no delivery on its way and the inbox nothing pending."""

        async def done() -> bool:
            if any(self.devstripe.deliveries().values()):
                return False
            pending = await self.kernel.pool.fetchval(
                "SELECT count(*) FROM inbox WHERE status = 'pending'"
            )
            return pending == 0

        await eventually(done, timeout=30, what="no delivery on its way, nothing pending")


async def stripe_call(devstripe: Devstripe, method: str, path: str, **kwargs: Any) -> Any:
    async with httpx.AsyncClient(base_url=devstripe.url, auth=("sk_test_x", ""), timeout=30) as c:
        response = await c.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()


async def stripe_update(
    devstripe: Devstripe,
    subscription: dict[str, Any],
    *,
    silent: bool = True,
    quantity: int | None = None,
    price: str | None = None,
    **fields: str,
) -> dict[str, Any]:
    """Change a subscription directly in devstripe (as a person in Stripe's dashboard would);
    `silent`: no webhook about it, as if Stripe never sent one."""
    data = dict(fields)
    if quantity is not None or price is not None:
        data["items[0][id]"] = subscription["items"]["data"][0]["id"]
        if quantity is not None:
            data["items[0][quantity]"] = str(quantity)
        if price is not None:
            data["items[0][price]"] = price
    return await stripe_call(
        devstripe,
        "POST",
        f"/v1/subscriptions/{subscription['id']}",
        data=data,
        headers={"Devstripe-Silent": "1"} if silent else {},
    )


async def stripe_subscription(
    devstripe: Devstripe,
    organisation: str | None,
    *,
    price: str = "price_pro_monthly",
    quantity: int = 1,
    customer: str | None = None,
) -> dict[str, Any]:
    """A customer and a subscription made directly in devstripe (as in Stripe's dashboard),
    naming the organisation in their metadata unless it is None."""
    metadata = {"metadata[organisation_id]": organisation} if organisation else {}
    if customer is None:
        customer = (await stripe_call(devstripe, "POST", "/v1/customers", data=metadata))["id"]
    return await stripe_call(
        devstripe,
        "POST",
        "/v1/subscriptions",
        data={
            "customer": customer,
            "items[0][price]": price,
            "items[0][quantity]": str(quantity),
            **metadata,
        },
    )


@contextlib.asynccontextmanager
async def running_gateway(
    settings: StripeGatewaySettings,
    devstripe: Devstripe,
    *,
    port: int | None = None,
    name: str | None = None,
    clock: Clock | None = None,
    **disorder: float | int,
) -> AsyncIterator[GatewayHarness]:
    """The gateway serving on `port` (a free one by default), registered with devstripe as
    the endpoint `name` (with Stripe's `disorder`, see `Devstripe.register_webhook`)."""
    app = create_app(SERVICE, settings, clock or SystemClock())
    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    serving = asyncio.create_task(server.serve())
    await eventually(lambda: _started(server), what="gateway serving")
    owned = name is None
    name = name or f"test-{uuid.uuid4().hex[:8]}"
    url = f"http://127.0.0.1:{port}"
    if owned:
        devstripe.register_webhook(name, f"{url}/stripe/webhook", DEV_WEBHOOK_SECRET, **disorder)
    try:
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {DEV_API_TOKEN}"}, timeout=30
        ) as http:
            yield GatewayHarness(app.state.runtime, http, settings, devstripe, url)
    finally:
        if owned:
            devstripe.unregister_webhook(name)
        server.should_exit = True
        await serving


async def _started(server: uvicorn.Server) -> bool:
    return server.started


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(
    infrastructure: Infrastructure, module_isolation: Isolation, devstripe: Devstripe
) -> AsyncIterator[GatewayHarness]:
    """One gateway for the test module (its tests use organisations of their own)."""
    settings = settings_from(env_for(infrastructure, module_isolation, devstripe))
    async with running_gateway(settings, devstripe) as harness:
        yield harness
