"""What every `billing` command needs: settings, publishing events, calling an HTTP API."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

import httpx
from pydantic import AliasChoices, Field, SecretStr

from shared.events import Event
from shared.kafka import make_broker
from shared.service import registered
from shared.settings import DEV_API_TOKEN, CommonSettings
from shared.topics import spec_for

PRODUCER = "billing-cli"


class CliSettings(CommonSettings):
    api_token: SecretStr = Field(
        SecretStr(DEV_API_TOKEN),
        validation_alias=AliasChoices("BILLING_API_TOKEN", "METERING_API_TOKEN"),
    )
    devstripe_url: str = Field(
        "http://127.0.0.1:8420", validation_alias=AliasChoices("DEVSTRIPE_URL")
    )


def service_urls() -> dict[str, str]:
    """Where each service listens: `<NAME>_URL` (`STRIPE_GATEWAY_URL`, …, as `make run` sets
    them for the services), else its default port on loopback. `BILLING_SERVICES` (names,
    comma-separated) limits them to a part of the stack."""
    only = {n.strip() for n in os.environ.get("BILLING_SERVICES", "").split(",") if n.strip()}
    found = {}
    for service in registered():
        if only and service.name not in only:
            continue
        variable = f"{service.name.upper().replace('-', '_')}_URL"
        found[service.name] = os.environ.get(variable, f"http://127.0.0.1:{service.default_port}")
    return found


def stack_now() -> datetime:
    """The stack's now (its clock may have been moved: `billing clock`), from the first
    service that answers; the real time if none does."""
    token = CliSettings().api_token.get_secret_value()
    for url in service_urls().values():
        try:
            response = httpx.get(
                f"{url}/v1/clock", headers={"Authorization": f"Bearer {token}"}, timeout=2
            )
        except httpx.HTTPError:
            continue
        if response.status_code == 200:
            return datetime.fromisoformat(response.json()["now"])
    return datetime.now(UTC)


async def publish(settings: CommonSettings, events: Sequence[Event]) -> None:
    """Publish `events` on their registered topics, keyed by organisation."""
    broker = make_broker(settings, client_id=PRODUCER)
    await broker.connect()
    try:
        for event in events:
            await broker.publish(
                event.to_bytes(),
                spec_for(type(event)).topic(settings.topic_prefix),
                key=event.key,
                headers={"content-type": "application/json", "event-type": event.type},
            )
    finally:
        await broker.stop()


def call(
    base_url: str,
    token: SecretStr,
    method: str,
    path: str,
    *,
    params: dict | None = None,
    body: dict | None = None,
) -> int:
    """Call a service's API and print the JSON answer. Exit code: 0 on success, 1 on an error
    answer, 2 if the service cannot be reached."""
    try:
        response = httpx.request(
            method,
            f"{base_url}{path}",
            params=params,
            json=body,
            headers={"Authorization": f"Bearer {token.get_secret_value()}"},
            timeout=5,
        )
    except httpx.HTTPError as exc:
        print(f"cannot reach {base_url}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(response.json(), indent=2))
    return 0 if response.is_success else 1
