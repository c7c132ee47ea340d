"""What the page reads from other services' APIs, with a short timeout: usage as metering's
ledger holds it (so nothing metering refused shows), and the latest invoices as the Stripe
gateway last observed them in Stripe. A source that does not answer gives None: the page says
so and shows the rest."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from shared.logging import get_logger

log = get_logger("dashboard.sources")


async def _get(client: httpx.AsyncClient, path: str, params: dict[str, Any], what: str) -> Any:
    try:
        answer = await client.get(path, params=params, timeout=5)
    except httpx.HTTPError as exc:
        log.warning(f"{what} unavailable", path=path, error=repr(exc))
        return None
    if answer.status_code != 200:
        log.warning(f"{what} unavailable", path=path, status=answer.status_code)
        return None
    return answer.json()


class MeteringUsage:
    """`GET /v1/organisations/{id}/usage` and `.../credits` of metering."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def usage(
        self, organisation_id: str, since: datetime, until: datetime | None = None
    ) -> dict[str, Any] | None:
        """The usage in [since, until); without `until`, to the end of the credit period
        `since` falls in (metering knows where the next one began)."""
        params = {"since": since.isoformat()}
        if until is not None:
            params["until"] = until.isoformat()
        return await _get(
            self._client, f"/v1/organisations/{organisation_id}/usage", params, "usage"
        )

    async def breakdown(
        self, organisation_id: str, since: datetime, until: datetime, **given: str
    ) -> dict[str, Any] | None:
        """Usage one level down (`day`, `agent_id`, `conversation_id` narrow it)."""
        params = {"since": since.isoformat(), "until": until.isoformat(), **given}
        return await _get(
            self._client, f"/v1/organisations/{organisation_id}/usage/breakdown", params, "usage"
        )

    async def receipt(self, organisation_id: str, message_id: str) -> dict[str, Any] | None:
        return await _get(
            self._client,
            f"/v1/organisations/{organisation_id}/messages/{quote(message_id, safe='')}/receipt",
            {},
            "receipt",
        )

    async def buckets(self, organisation_id: str) -> list[dict[str, Any]] | None:
        """The live buckets of credits, in the order they are spent."""
        found = await _get(
            self._client, f"/v1/organisations/{organisation_id}/credits", {}, "credits"
        )
        return None if found is None else found.get("buckets")


class StripeInvoices:
    """`GET /v1/organisations/{id}/invoices` of the Stripe gateway."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def latest(self, organisation_id: str, limit: int = 12) -> list[dict[str, Any]] | None:
        """Newest first."""
        return await _get(
            self._client,
            f"/v1/organisations/{organisation_id}/invoices",
            {"limit": limit},
            "invoices",
        )
