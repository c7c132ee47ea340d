"""Usage as metering debited it, read from its API (`GET /v1/organisations/{id}/usage`): the
page's usage equals the ledger, refused and duplicate messages left out, because it is the
ledger's."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx

from shared.logging import get_logger

log = get_logger("dashboard.metering")


class MeteringUsage:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def usage(
        self, organisation_id: str, since: datetime, until: datetime
    ) -> dict[str, Any] | None:
        """The usage in [since, until), or None when metering does not answer."""
        try:
            answer = await self._client.get(
                f"/v1/organisations/{organisation_id}/usage",
                params={"since": since.isoformat(), "until": until.isoformat()},
                timeout=5,
            )
        except httpx.HTTPError as exc:
            log.warning("usage unavailable", organisation_id=organisation_id, error=repr(exc))
            return None
        if answer.status_code != 200:
            log.warning(
                "usage unavailable", organisation_id=organisation_id, status=answer.status_code
            )
            return None
        return answer.json()
