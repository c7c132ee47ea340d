"""Receiving Stripe's webhooks: verified and stored before they are answered; nothing else.

The `Stripe-Signature` header is verified with the official SDK and the endpoint secret
(tolerance 300 s, either way). A bad or missing signature, a stale or future timestamp or a
body that is not an event is refused (400), never processed; anyone can send such requests, so
only a sample is recorded in `webhook_rejections` (at most `rejections_per_minute`, the first
512 bytes of each) and kept for a few days, the rest counted. A verified event is
stored once under Stripe's event id (a redelivery finds it there and is answered 2xx again);
types the gateway does not handle are stored as `ignored`. Processing is `service.Reports`.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import asyncpg
import orjson
import stripe

from shared.clock import Clock
from shared.logging import get_logger

from .domain.reports import HANDLED
from .domain.stripe_objects import Unreadable, instant
from .store import inbox as inbox_store

log = get_logger("stripe_gateway.inbox")


class WebhookRejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Inbox:
    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Clock,
        *,
        webhook_secret: str,
        tolerance_seconds: int,
        rejections_per_minute: int = 10,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._secret = webhook_secret
        self._tolerance = tolerance_seconds
        self._rejections_per_minute = rejections_per_minute
        self.rejections_unrecorded = 0
        """Refusals beyond the sample, since start."""

    async def receive(self, payload: bytes, signature: str | None) -> bool:
        """Verify and store one webhook delivery. True if the event is new, False if it was
        received before. Raises `WebhookRejected` (after recording it) otherwise."""
        try:
            event = self._verified(payload, signature)
        except WebhookRejected as rejected:
            recorded = await inbox_store.record_rejection(
                self._pool,
                reason=rejected.reason,
                detail=rejected.detail,
                signature=signature,
                body_sha256=hashlib.sha256(payload).hexdigest(),
                body=payload,
                now=self._clock.now(),
                per_minute=self._rejections_per_minute,
            )
            if recorded:
                log.warning("webhook refused", reason=rejected.reason, detail=rejected.detail)
            else:
                self.rejections_unrecorded += 1
            raise

        new = await inbox_store.store_event(
            self._pool,
            event_id=event["id"],
            type=event["type"][:200],
            created=instant(event["created"]),  # type: ignore[arg-type]
            payload=payload,
            status="pending" if event["type"] in HANDLED else "ignored",
            now=self._clock.now(),
        )
        log.info(
            "webhook received" if new else "webhook received again",
            stripe_event_id=event["id"],
            stripe_event_type=event["type"][:200],
        )
        return new

    async def prune(self, kept: timedelta) -> int:
        """Forget recorded refusals older than `kept`."""
        return await inbox_store.prune_rejections(self._pool, self._clock.now() - kept)

    def _recent(self, signature: str) -> None:
        """The signed timestamp lies within the tolerance of the clock's now (the injected
        clock, not the SDK's wall clock: a stack whose clock was moved signs with its time)."""
        stamps = [p[2:] for p in signature.split(",") if p.startswith("t=")]
        if not stamps or not stamps[0].isdigit():
            raise WebhookRejected("bad_signature", "no timestamp in Stripe-Signature")
        age = self._clock.now().timestamp() - int(stamps[0])
        if age > self._tolerance:
            raise WebhookRejected("stale_timestamp", f"signed {int(age)} s ago")
        if age < -self._tolerance:
            raise WebhookRejected("future_timestamp", f"signed {int(-age)} s ahead")

    def _verified(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        if not signature:
            raise WebhookRejected("missing_signature", "no Stripe-Signature header")
        try:
            stripe.WebhookSignature.verify_header(payload, signature, self._secret)
        except stripe.SignatureVerificationError as exc:
            raise WebhookRejected("bad_signature", str(exc)[:300]) from None
        except UnicodeDecodeError:
            raise WebhookRejected("not_an_event", "the body is not UTF-8") from None
        self._recent(signature)
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise WebhookRejected("not_an_event", f"not JSON: {exc}") from None
        if not (
            isinstance(event, dict)
            and isinstance(event.get("id"), str)
            and event["id"].startswith("evt_")
            and len(event["id"]) <= 255
            and isinstance(event.get("type"), str)
            and isinstance(event.get("created"), int)
            and isinstance((event.get("data") or {}).get("object"), dict)
        ):
            raise WebhookRejected("not_an_event", "no event id, type, created or data.object")
        try:
            instant(event["created"])
        except Unreadable:
            raise WebhookRejected("not_an_event", "`created` is not a time") from None
        return event
