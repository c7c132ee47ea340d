"""The calls the gateway makes to Stripe, through the official SDK (async, over httpx).

Every call that creates or changes something carries an idempotency key derived from the
command that asked for it, so a command delivered twice never creates a second object or
charge (Stripe keeps keys for 24 hours; the gateway's `commands` table remembers longer).
A 429, a 5xx or no answer at all is retried with back-off; other refusals are final.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import stripe

from shared.failures import Backoff
from shared.logging import get_logger

from .domain.stripe_objects import ORGANISATION_KEY

log = get_logger("stripe_gateway.api")


class StripeRefused(Exception):
    """Stripe refused the request (4xx other than 429): retrying would not help."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class StripeUnavailable(Exception):
    """Stripe did not answer, or kept answering 429 or 5xx, through every attempt."""


def _retryable(exc: stripe.StripeError) -> bool:
    if isinstance(exc, (stripe.RateLimitError, stripe.APIConnectionError)):
        return True
    status = exc.http_status
    return status is None or status == 429 or status >= 500


class StripeApi:
    def __init__(
        self,
        *,
        api_key: str,
        api_base: str,
        timeout: float,
        attempts: int,
        first_delay: float = 0.5,
    ) -> None:
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base, "files": api_base, "connect": api_base},
            http_client=stripe.HTTPXClient(timeout=timeout),
            max_network_retries=0,
        )
        self._attempts = attempts
        self._first_delay = first_delay

    async def _call(self, what: str, request: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
        backoff = Backoff(first=self._first_delay, cap=8.0)
        for attempt in range(1, self._attempts + 1):
            try:
                answer = await request()
            except stripe.StripeError as exc:
                if not _retryable(exc):
                    code = getattr(exc, "code", None) or type(exc).__name__
                    raise StripeRefused(
                        "stripe_invalid_request", f"{what}: {code}: {exc.user_message or exc}"[:500]
                    ) from exc
                if attempt == self._attempts:
                    raise StripeUnavailable(f"{what}: {exc!r}"[:500]) from exc
                delay = backoff.next_delay()
                log.warning(
                    "stripe did not answer; retrying",
                    request=what,
                    attempt=attempt,
                    status=exc.http_status,
                    retry_in=delay,
                )
                await asyncio.sleep(delay)
            else:
                return answer.to_dict()
        raise AssertionError("unreachable")

    async def create_customer(
        self, organisation_id: str, *, email: str | None, name: str | None, idempotency_key: str
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"metadata": {ORGANISATION_KEY: organisation_id}}
        if email:
            params["email"] = email
        if name:
            params["name"] = name
        return await self._call(
            "create customer",
            lambda: self._client.v1.customers.create_async(
                params, {"idempotency_key": idempotency_key}
            ),
        )

    async def create_checkout_session(
        self,
        organisation_id: str,
        *,
        customer_id: str,
        price_id: str,
        quantity: int,
        success_url: str,
        cancel_url: str,
        request_id: str,
        idempotency_key: str,
    ) -> dict[str, Any]:
        """A subscription-mode session: the organisation is its client reference and in the
        metadata of the session and of the subscription it creates."""
        params = {
            "mode": "subscription",
            "customer": customer_id,
            "client_reference_id": organisation_id,
            "line_items": [{"price": price_id, "quantity": quantity}],
            "success_url": success_url,
            "cancel_url": cancel_url,
            "subscription_data": {"metadata": {ORGANISATION_KEY: organisation_id}},
            "metadata": {
                ORGANISATION_KEY: organisation_id,
                "request_id": request_id,
                "price_id": price_id,
                "quantity": str(quantity),
            },
        }
        return await self._call(
            "create checkout session",
            lambda: self._client.v1.checkout.sessions.create_async(
                params,  # type: ignore[arg-type]
                {"idempotency_key": idempotency_key},
            ),
        )

    async def create_portal_session(
        self, *, customer_id: str, return_url: str, idempotency_key: str
    ) -> dict[str, Any]:
        return await self._call(
            "create billing portal session",
            lambda: self._client.v1.billing_portal.sessions.create_async(
                {"customer": customer_id, "return_url": return_url},
                {"idempotency_key": idempotency_key},
            ),
        )

    async def retrieve_subscription(self, subscription_id: str) -> dict[str, Any]:
        return await self._call(
            "retrieve subscription",
            lambda: self._client.v1.subscriptions.retrieve_async(subscription_id),
        )

    async def update_subscription(
        self, subscription_id: str, params: dict[str, Any], *, idempotency_key: str
    ) -> dict[str, Any]:
        return await self._call(
            "update subscription",
            lambda: self._client.v1.subscriptions.update_async(
                subscription_id,
                params,  # type: ignore[arg-type]
                {"idempotency_key": idempotency_key},
            ),
        )
