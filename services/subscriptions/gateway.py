"""The Stripe gateway's HTTP API, as this service uses it: Checkout and Billing Portal sessions
(a person waits for the redirect) and the subscriptions it holds (for reconciliation). The
subscription service never calls Stripe itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from .domain.subscription import Refused


class GatewayUnavailable(Exception):
    pass


@dataclass(frozen=True)
class Gateway:
    """The Stripe gateway's HTTP API: what a person waits on (Checkout, Billing Portal), and
    the subscriptions it holds (for the reconciler)."""

    client: httpx.AsyncClient

    async def session(self, path: str, body: dict[str, object]) -> tuple[str, str]:
        """A session's id and URL. A refusal that retrying cannot help (the gateway's 4xx,
        e.g. no customer yet) is `Refused` with the gateway's reason; the rest is
        `GatewayUnavailable`."""
        response = await self._call("POST", path, json=body)
        if 400 <= response.status_code < 500 and response.status_code not in (401, 403, 429):
            problem = _problem_of(response)
            raise Refused(
                str(problem.get("reason") or "stripe_refused"),
                str(problem.get("detail") or problem.get("title") or response.text)[:300],
            )
        if response.status_code != 200:
            raise GatewayUnavailable(f"{response.status_code}: {response.text[:300]}")
        answer = response.json()
        return answer["id"], answer["url"]

    async def subscriptions(
        self, organisation: str | None, *, page_size: int = 500
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The subscriptions the gateway holds (as it last observed them in Stripe): the
        organisation's, or all of them a page at a time."""
        if organisation is not None:
            yield await self._json("GET", f"/v1/organisations/{organisation}/subscriptions")
            return
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if after:
                params["after"] = after
            page = await self._json("GET", "/v1/subscriptions", params=params)
            if page:
                yield page
            if len(page) < page_size:
                return
            after = page[-1]["subscription_id"]

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._call(method, path, **kwargs)
        if response.status_code != 200:
            raise GatewayUnavailable(f"{response.status_code}: {response.text[:300]}")
        return response.json()

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise GatewayUnavailable(repr(exc)) from exc


def _problem_of(response: httpx.Response) -> dict[str, Any]:
    try:
        found = response.json()
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}
