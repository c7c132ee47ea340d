"""Use cases of the dashboard: project the topics into per-organisation views (each part keeps
its producer's newest revision), and tell open pages when their organisation's view changed.

Live updates work across instances: a consumer's transaction ends with `pg_notify` naming the
organisations it changed; every instance listens and wakes its open pages for them, which
read the committed view (a page that reconnects reads it too, so it catches up)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

import asyncpg

from shared.clock import Clock
from shared.consumer import Decoded
from shared.events import Event
from shared.events.codec import Rejection
from shared.logging import get_logger

from . import store
from .sources import MeteringUsage, StripeInvoices

log = get_logger("dashboard.service")

Applied = list[tuple[Decoded[Event], Rejection]]


def channel(schema: str) -> str:
    return f"dashboard_{schema}"


class Dashboard:
    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Clock,
        *,
        schema: str,
        usage: MeteringUsage | None = None,
        invoices: StripeInvoices | None = None,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._channel = channel(schema)
        self.usage = usage
        self.invoices = invoices
        self._pages: dict[str, set[asyncio.Queue[store.Stored]]] = {}
        self._members: Counter[tuple[str, str]] = Counter()
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()

    # Consumers --------------------------------------------------------------------------------

    async def on_credits(self, items: Sequence[Decoded[Event]]) -> Applied:
        return await self._keep("credits", items)

    async def on_subscriptions(self, items: Sequence[Decoded[Event]]) -> Applied:
        return await self._keep("subscription", items)

    async def on_seats(self, items: Sequence[Decoded[Event]]) -> Applied:
        return await self._keep("seats", items)

    async def _keep(self, part: str, items: Sequence[Decoded[Event]]) -> Applied:
        newest: dict[str, tuple[str, int, dict]] = {}
        for item in items:
            event = item.event
            data = event.data.model_dump(mode="json")
            known = newest.get(event.organisation_id)
            if known is None or data["revision"] > known[1]:
                newest[event.organisation_id] = (event.organisation_id, data["revision"], data)
        async with self._pool.acquire() as conn, conn.transaction():
            changed = await store.keep_newest(
                conn, part, [newest[o] for o in sorted(newest)], self._clock.now()
            )
            await self._notify(conn, changed)
        return []

    async def on_authorizations(self, items: Sequence[Decoded[Event]]) -> Applied:
        denials = [
            store.Denial(
                i.event.event_id,
                i.event.organisation_id,
                i.event.data.member_id,  # type: ignore[attr-defined]
                i.event.data.agent_id,  # type: ignore[attr-defined]
                i.event.data.reason,  # type: ignore[attr-defined]
                i.event.data.estimate,  # type: ignore[attr-defined]
                i.event.occurred_at,
            )
            for i in items
            if i.event.data.decision == "denied"  # type: ignore[attr-defined]
        ]
        async with self._pool.acquire() as conn, conn.transaction():
            await self._notify(conn, await store.add_denials(conn, denials))
        return []

    async def on_audit(self, items: Sequence[Decoded[Event]]) -> Applied:
        entries = [
            store.Audited(
                i.event.event_id,
                i.event.organisation_id,
                i.event.data.actor,  # type: ignore[attr-defined]
                i.event.data.action.value,  # type: ignore[attr-defined]
                i.event.data.target,  # type: ignore[attr-defined]
                i.event.data.outcome.value,  # type: ignore[attr-defined]
                i.event.data.request_id,  # type: ignore[attr-defined]
                i.event.data.detail,  # type: ignore[attr-defined]
                i.event.occurred_at,
            )
            for i in items
        ]
        async with self._pool.acquire() as conn, conn.transaction():
            await self._notify(conn, await store.add_audit(conn, entries))
        return []

    async def on_stripe(self, items: Sequence[Decoded[Event]]) -> Applied:
        """An invoice Stripe made, paid or failed to collect: the page's invoices change."""
        organisations = sorted(
            {i.event.organisation_id for i in items if i.event.type.startswith("stripe_invoice.")}
        )
        if organisations:
            async with self._pool.acquire() as conn:
                await self._notify(conn, organisations)
        return []

    async def _notify(self, conn: asyncpg.Connection, organisations: Sequence[str]) -> None:
        """At commit, wake the open pages of these organisations, on every instance."""
        chunk: list[str] = []
        for organisation in organisations:
            chunk.append(organisation)
            if len(chunk) == 100:
                await conn.execute("SELECT pg_notify($1, $2)", self._channel, " ".join(chunk))
                chunk = []
        if chunk:
            await conn.execute("SELECT pg_notify($1, $2)", self._channel, " ".join(chunk))

    # Pages ------------------------------------------------------------------------------------

    async def view(self, organisation_id: str, period: datetime | None = None) -> store.Stored:
        """The organisation's page: its parts, and metering's usage of the current credit period
        (or of the earlier one that began at `period`)."""
        stored = await store.view(self._pool, organisation_id)
        if self.invoices is not None and (stored.subscription or {}).get("stripe_subscription_id"):
            stored = replace(stored, invoices=await self.invoices.latest(organisation_id))
        if self.usage is not None and stored.credits is not None:
            stored = replace(stored, buckets=await self.usage.buckets(organisation_id))
        current = self._current_period(stored)
        if self.usage is None or current is None:
            return stored
        if period is not None and period < current[0]:
            found = await self.usage.usage(organisation_id, period)
            until = datetime.fromisoformat(found["until"]) if found else current[0]
            return replace(stored, usage=found, period=(period, until), current_period=False)
        found = await self.usage.usage(organisation_id, *current)
        return replace(stored, usage=found, period=current, current_period=True)

    async def current_period(self, organisation_id: str) -> tuple[datetime, datetime] | None:
        """The current credit period, [start, the renewal or now), as the credit bar knows it
        (from this service's own store; nothing asked of other services)."""
        return self._current_period(await store.view(self._pool, organisation_id))

    def _current_period(self, stored: store.Stored) -> tuple[datetime, datetime] | None:
        credits = stored.credits or {}
        start = credits.get("period_start")
        if not start:
            return None
        now = self._clock.now()
        current = datetime.fromisoformat(start)
        renews = credits.get("renews_at")
        end = datetime.fromisoformat(renews) if renews else now
        return current, max(end, now, current + timedelta(seconds=1))

    def open_pages(self, organisation_id: str, member_id: str) -> tuple[int, int]:
        """How many live pages are open on this instance: the organisation's, the member's."""
        return len(self._pages.get(organisation_id, ())), self._members[organisation_id, member_id]

    @contextlib.asynccontextmanager
    async def watch(
        self, organisation_id: str, member_id: str
    ) -> AsyncIterator[asyncio.Queue[store.Stored]]:
        """A queue that gets the organisation's view after each change (the newest only)."""
        queue: asyncio.Queue[store.Stored] = asyncio.Queue(maxsize=1)
        self._pages.setdefault(organisation_id, set()).add(queue)
        self._members[organisation_id, member_id] += 1
        try:
            yield queue
        finally:
            self._members[organisation_id, member_id] -= 1
            if not self._members[organisation_id, member_id]:
                del self._members[organisation_id, member_id]
            pages = self._pages.get(organisation_id, set())
            pages.discard(queue)
            if not pages:
                self._pages.pop(organisation_id, None)

    def wake(self, organisations: Sequence[str]) -> None:
        """The views of these organisations changed: read each once, for all its open pages."""
        for organisation in organisations:
            if organisation not in self._pages:
                continue
            if organisation in self._refreshing:
                self._again.add(organisation)
                continue
            task = asyncio.create_task(self._refresh(organisation))
            self._refreshing[organisation] = task

    async def _refresh(self, organisation_id: str) -> None:
        try:
            while True:
                self._again.discard(organisation_id)
                try:
                    stored = await self.view(organisation_id)
                except Exception as exc:
                    log.warning("view not read", organisation_id=organisation_id, error=repr(exc))
                    await asyncio.sleep(1)
                    self._again.add(organisation_id)
                else:
                    for queue in self._pages.get(organisation_id, ()):
                        if queue.full():
                            queue.get_nowait()
                        queue.put_nowait(stored)
                if organisation_id not in self._again or organisation_id not in self._pages:
                    return
        finally:
            self._refreshing.pop(organisation_id, None)

    async def listen(self, dsn: str, schema: str) -> None:
        """Wake pages on the consumers' notifications (of any instance). Reconnects."""
        while True:
            try:
                conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
                closed = asyncio.Event()
                try:
                    conn.add_termination_listener(lambda _, done=closed: done.set())
                    await conn.add_listener(self._channel, lambda *args: self.wake(args[3].split()))
                    self.wake(list(self._pages))  # catch up on what was missed meanwhile
                    await closed.wait()
                finally:
                    with contextlib.suppress(Exception):
                        await conn.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("dashboard listener failed; reconnecting", error=repr(exc))
            await asyncio.sleep(1)
