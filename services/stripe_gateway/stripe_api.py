"""The calls the gateway makes to Stripe, through the official SDK (async, over httpx).

Every call that creates or changes something carries an idempotency key derived from the
command that asked for it, scoped by organisation, so a command delivered twice never creates a
second object or charge (Stripe keeps keys for 24 hours; the gateway's `commands` table
remembers longer). Requests are paced to stay within Stripe's rate limit
(`API_REQUESTS_PER_SECOND`); a 429, a 5xx or no answer at all is retried with back-off; other
refusals are final. A 404 (`resource_missing`) is told apart: the object does not exist.

No call here is ever made while a database transaction is open (the callers fetch first, then
open their transaction).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import stripe

from shared.failures import Backoff
from shared.logging import get_logger

from .domain.stripe_objects import ORGANISATION_KEY, PURCHASE_KEY

log = get_logger("stripe_gateway.api")


class StripeRefused(Exception):
    """Stripe refused the request (4xx other than 429): retrying would not help."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class StripeMissing(StripeRefused):
    """Stripe does not know the object (404 `resource_missing`)."""


class StripeUnavailable(Exception):
    """Stripe did not answer, or kept answering 429 or 5xx, through every attempt."""


class Pacer:
    """At most `per_second` requests started per second, spread evenly (Stripe counts
    requests per second; a burst above its limit is answered 429)."""

    def __init__(self, per_second: float) -> None:
        self._interval = 1.0 / per_second
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self._interval
        if start > now:
            await asyncio.sleep(start - now)


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
        requests_per_second: float = 20.0,
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
        self._pacer = Pacer(requests_per_second)
        self.requests = 0
        """Requests sent (each attempt counts), for measurements."""

    async def _call(self, what: str, request: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
        backoff = Backoff(first=self._first_delay, cap=8.0)
        for attempt in range(1, self._attempts + 1):
            await self._pacer.wait()
            self.requests += 1
            try:
                answer = await request()
            except stripe.StripeError as exc:
                if not _retryable(exc):
                    code = getattr(exc, "code", None) or type(exc).__name__
                    kind = StripeMissing if exc.http_status == 404 else StripeRefused
                    raise kind(
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

    async def create_payment_checkout_session(
        self,
        organisation_id: str,
        *,
        customer_id: str,
        price_id: str,
        purchase_id: str,
        success_url: str,
        cancel_url: str,
        idempotency_key: str,
    ) -> dict[str, Any]:
        """A payment-mode session for one item (a credit pack): the organisation and the
        purchase are in the metadata of the session and of its payment."""
        metadata = {ORGANISATION_KEY: organisation_id, PURCHASE_KEY: purchase_id}
        params = {
            "mode": "payment",
            "customer": customer_id,
            "client_reference_id": organisation_id,
            "line_items": [{"price": price_id, "quantity": 1}],
            "success_url": success_url,
            "cancel_url": cancel_url,
            "payment_intent_data": {"metadata": metadata, "setup_future_usage": "off_session"},
            "metadata": metadata,
        }
        return await self._call(
            "create payment checkout session",
            lambda: self._client.v1.checkout.sessions.create_async(
                params,  # type: ignore[arg-type]
                {"idempotency_key": idempotency_key},
            ),
        )

    async def charge(
        self,
        organisation_id: str,
        *,
        customer_id: str,
        amount: int,
        currency: str,
        description: str,
        purchase_id: str,
        idempotency_key: str,
    ) -> dict[str, Any]:
        """Charge the customer's default payment method off-session. A declined card is not an
        error here: the payment intent is returned as Stripe left it (unpaid, with its last
        payment error)."""
        params = {
            "customer": customer_id,
            "amount": amount,
            "currency": currency,
            "description": description,
            "confirm": True,
            "off_session": True,
            "metadata": {ORGANISATION_KEY: organisation_id, PURCHASE_KEY: purchase_id},
        }
        try:
            return await self._call(
                "charge",
                lambda: self._client.v1.payment_intents.create_async(
                    params,  # type: ignore[arg-type]
                    {"idempotency_key": idempotency_key},
                ),
            )
        except StripeRefused as exc:
            declined = exc.__cause__
            intent = getattr(getattr(declined, "error", None), "payment_intent", None)
            if isinstance(declined, stripe.CardError) and intent is not None:
                return intent.to_dict() if hasattr(intent, "to_dict") else dict(intent)
            raise

    async def retrieve_payment_intent(self, payment_intent_id: str) -> dict[str, Any]:
        return await self._call(
            "retrieve payment intent",
            lambda: self._client.v1.payment_intents.retrieve_async(
                payment_intent_id, {"expand": ["latest_charge"]}
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

    async def retrieve_invoice(self, invoice_id: str) -> dict[str, Any]:
        return await self._call(
            "retrieve invoice", lambda: self._client.v1.invoices.retrieve_async(invoice_id)
        )

    async def retrieve_checkout_session(self, session_id: str) -> dict[str, Any]:
        return await self._call(
            "retrieve checkout session",
            lambda: self._client.v1.checkout.sessions.retrieve_async(session_id),
        )

    async def list_subscriptions(
        self, *, customer: str | None = None, page_size: int = 100
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Every subscription in the account (or the customer's), canceled ones included, a
        page at a time."""
        params: dict[str, Any] = {"status": "all", "limit": page_size}
        if customer:
            params["customer"] = customer
        async for page in self._pages("list subscriptions", self._client.v1.subscriptions, params):
            yield page

    async def list_refunds(
        self, *, created_since: datetime, page_size: int = 100
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The refunds made since `created_since`, newest first, a page at a time."""
        params = {"created": {"gte": int(created_since.timestamp())}, "limit": page_size}
        async for page in self._pages("list refunds", self._client.v1.refunds, params):
            yield page

    async def _pages(
        self, what: str, resource: Any, params: dict[str, Any]
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """A Stripe list, a page at a time (`starting_after` the last object of each)."""
        after: str | None = None
        while True:
            asked = {**params, **({"starting_after": after} if after else {})}
            page = await self._call(what, lambda: resource.list_async(asked))  # noqa: B023
            data = page.get("data") or []
            if data:
                yield data
            if not page.get("has_more") or not data:
                return
            after = data[-1]["id"]

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
