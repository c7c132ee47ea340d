"""The latest invoices, as the Stripe gateway last observed them in Stripe (its API), with
Stripe's page and PDF of each."""

from __future__ import annotations

from typing import Any

import httpx

from shared.logging import get_logger

log = get_logger("dashboard.invoices")


class StripeInvoices:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def latest(self, organisation_id: str, limit: int = 12) -> list[dict[str, Any]] | None:
        """Newest first, or None when the gateway does not answer."""
        try:
            answer = await self._client.get(
                f"/v1/organisations/{organisation_id}/invoices", params={"limit": limit}, timeout=5
            )
        except httpx.HTTPError as exc:
            log.warning("invoices unavailable", organisation_id=organisation_id, error=repr(exc))
            return None
        if answer.status_code != 200:
            log.warning(
                "invoices unavailable", organisation_id=organisation_id, status=answer.status_code
            )
            return None
        return answer.json()
