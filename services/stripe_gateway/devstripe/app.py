"""devstripe: a Stripe for development and tests, without the network.

- The Stripe API this project uses, answered by `core.Stripe` (in memory): customers,
  prices, subscriptions of one item, invoices and their payments, lists with pagination, and
  Checkout and Billing Portal sessions, with a page per session so that a person (or a test)
  can complete a checkout (`/checkout/<id>`, or `POST /_devstripe/checkout/<id>/complete`).
  Requests to Checkout, the Portal and subscription updates are recorded for tests
  (`GET /_devstripe/requests`).
- A clock, as Stripe's test clocks: `GET /_devstripe/clock` (now, and when something next
  falls due), `POST /_devstripe/clock {"to": "<ISO 8601>"}` or `{"advance_seconds": n}` moves
  it forward and runs what fell due on the way, in time order: renewals and their invoices,
  payment retries, cancellations at period end.
- Idempotency keys, as Stripe keeps them: a POST with a key seen before is answered as the
  first time (another body with the same key: 400 `idempotency_error`).
- Webhooks: endpoints register with `POST /_config/webhooks/{name}` (`url`, `secret`) and
  unregister with `DELETE`. Every event is signed with each endpoint's secret at delivery
  time (the clock's time). Delivery is Stripe's: a delivery that is not answered 2xx is
  retried with back-off (`retry_seconds`, doubling, up to `retry_attempts`; Stripe's schedule
  spans three days, devstripe's is compressed). An endpoint may also ask for Stripe's disorder
  (`duplicate`: the probability that an event is delivered twice; `max_delay`: each delivery
  waits up to that many seconds, so events overtake each other; `seed`), and
  `GET /_devstripe/deliveries` says how many deliveries are still on their way to each.
- Drift, for reconciliation tests: a request with the header `Devstripe-Silent: 1` (or a
  checkout completed with `?silent=1`) changes Stripe without any webhook about that object.
- Faults: `POST /_devstripe/faults {"path": "/v1/subscriptions", "status": 503, "times": 2}`
  makes the next matching requests fail, as Stripe sometimes does; with `"delay": 2` they are
  answered two seconds late (without `status`: then answered normally).

It is a development tool, never used in production.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import hashlib
import hmac
import html
import random
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import httpx
import orjson
from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from shared.logging import get_logger

from .core import PAYING, Clock, Event, Stripe, StripeError, missing, new_id

log = get_logger("devstripe")

SILENCE_SECONDS = 5.0
"""How long events about an object changed silently are withheld."""


def unflatten(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding (`items[0][price]=x`) into nested dicts and lists."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        head, _, rest = key.partition("[")
        parts = [head] + ([p.rstrip("]") for p in rest.split("[")] if rest else [])
        node: Any = root
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            nxt = None if last else parts[index + 1]
            container: Any = [] if nxt is not None and (nxt.isdigit() or nxt == "") else {}
            if isinstance(node, list):
                position = int(part) if part.isdigit() else len(node)
                while len(node) <= position:
                    node.append(None)
                if last:
                    node[position] = value
                else:
                    if node[position] is None:
                        node[position] = container
                    node = node[position]
            else:
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, container)
    return root


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    signed = b"%d.%s" % (timestamp, payload)
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@dataclass
class Endpoint:
    url: str
    secret: str
    duplicate: float = 0.0
    max_delay: float = 0.0
    rng: random.Random = field(default_factory=random.Random)
    pending: int = 0


class Faults:
    """Answers injected by tests (`POST /_devstripe/faults`): Stripe failing for a while. A
    plain ASGI middleware: it costs nothing while no fault is set."""

    def __init__(self, app: Any, faults: list[list[Any]]) -> None:
        self.app, self.faults = app, faults

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            for fault in self.faults:
                prefix, status, left, delay = fault
                if left > 0 and scope["path"].startswith(prefix):
                    fault[2] -= 1
                    if delay:
                        await asyncio.sleep(delay)
                    if status < 400:
                        break
                    kind = "rate_limit_error" if status == 429 else "api_error"
                    answer = JSONResponse(
                        {"error": {"type": kind, "message": f"injected {status}"}},
                        status_code=status,
                    )
                    await answer(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def create_app(
    public_url: str,
    *,
    retry_seconds: float = 1.0,
    retry_attempts: int = 8,
    frozen_clock: bool = False,
    webhooks: dict[str, tuple[str, str]] | None = None,
) -> FastAPI:
    """`frozen_clock`: time stands still but for `POST /_devstripe/clock` (as a Stripe test
    clock's); otherwise it runs, and moving it adds to it. `webhooks`: endpoints registered
    from the start, `{name: (url, secret)}`."""
    started = datetime.now(UTC)
    stripe = Stripe(
        clock=Clock((lambda: started) if frozen_clock else (lambda: datetime.now(UTC))),
        public_url=public_url.rstrip("/"),
    )
    outbound = httpx.AsyncClient(timeout=10)
    deliveries: set[asyncio.Task[None]] = set()
    sending = asyncio.Semaphore(16)
    """Deliveries in flight at once (thousands waiting in the HTTP client's pool cost it time
    that grows with their number)."""
    idempotency: collections.defaultdict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
    state: dict[str, Any] = {
        "webhooks": {  # name -> Endpoint
            name: Endpoint(url, secret) for name, (url, secret) in (webhooks or {}).items()
        },
        "silenced": {},  # object id -> until (monotonic)
        "requests": [],
        "sessions": {},  # checkout session id -> session
        "portals": {},
        "answered": {},  # idempotency key -> (request, status, body)
        "faults": [],  # [path prefix, status, times left, delay]
    }

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            for task in deliveries:
                task.cancel()
            await outbound.aclose()

    app = FastAPI(
        title="devstripe", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )

    app.add_middleware(Faults, faults=state["faults"])

    @app.exception_handler(StripeError)
    async def stripe_error(request: Request, exc: StripeError) -> JSONResponse:
        return JSONResponse(exc.body, status_code=exc.status)

    @app.post("/_devstripe/faults")
    async def inject(request: Request) -> dict[str, Any]:
        body = orjson.loads(await request.body())
        state["faults"].append(
            [body["path"], int(body.get("status", 200)), int(body["times"]), body.get("delay", 0)]
        )
        return {"faults": state["faults"]}

    # Webhooks ----------------------------------------------------------------------------

    def silenced(obj: Mapping[str, Any]) -> bool:
        now = time.monotonic()
        return any(
            state["silenced"].get(ref, 0) > now
            for ref in (obj.get("id"), obj.get("subscription"), obj.get("payment_intent"))
            if isinstance(ref, str)
        )

    def silence(*object_ids: str | None) -> None:
        for object_id in object_ids:
            if object_id:
                state["silenced"][object_id] = time.monotonic() + SILENCE_SECONDS

    def send(events: list[Event]) -> None:
        """Queue each event for every endpoint; each delivery goes on, and is retried, on its
        own (the request that caused the event does not wait for it)."""
        for kind, obj, previous, created in events:
            if silenced(obj):
                log.info("webhook withheld", type=kind)
                continue
            data: dict[str, Any] = {"object": obj}
            if previous is not None:
                data["previous_attributes"] = previous
            event = {
                "id": new_id("evt"),
                "object": "event",
                "api_version": "2025-01-01",
                "created": created,
                "livemode": False,
                "pending_webhooks": len(state["webhooks"]),
                "request": {"id": None, "idempotency_key": None},
                "type": kind,
                "data": data,
            }
            payload = orjson.dumps(event)
            for name, endpoint in list(state["webhooks"].items()):
                copies = 2 if endpoint.rng.random() < endpoint.duplicate else 1
                for _ in range(copies):
                    endpoint.pending += 1
                    task = asyncio.create_task(deliver(name, endpoint, payload, kind))
                    deliveries.add(task)
                    task.add_done_callback(deliveries.discard)

    async def deliver(name: str, endpoint: Endpoint, payload: bytes, kind: str) -> None:
        try:
            delay = endpoint.rng.uniform(0, endpoint.max_delay) if endpoint.max_delay else 0.0
            for attempt in range(1, retry_attempts + 1):
                if delay:
                    await asyncio.sleep(delay)
                if state["webhooks"].get(name) is not endpoint:
                    return  # unregistered meanwhile
                headers = {
                    "Content-Type": "application/json; charset=utf-8",
                    "Stripe-Signature": sign(payload, endpoint.secret, stripe.clock.seconds()),
                }
                try:
                    async with sending:
                        response = await outbound.post(
                            endpoint.url, content=payload, headers=headers
                        )
                    status: int | str = response.status_code
                except httpx.HTTPError as exc:
                    status = repr(exc)
                if isinstance(status, int) and 200 <= status < 300:
                    log.info("webhook delivered", endpoint=name, type=kind, attempt=attempt)
                    return
                delay = min(retry_seconds * 2 ** (attempt - 1), 60 * retry_seconds)
                log.info(
                    "webhook not delivered; will retry",
                    endpoint=name,
                    type=kind,
                    attempt=attempt,
                    status=status,
                    retry_in=delay,
                )
            log.warning("webhook given up", endpoint=name, type=kind, attempts=retry_attempts)
        finally:
            endpoint.pending -= 1

    @app.post("/_config/webhooks/{name}")
    async def register(name: str, request: Request) -> dict[str, str]:
        form = dict(parse_qsl((await request.body()).decode()))
        state["webhooks"][name] = Endpoint(
            form["url"],
            form["secret"],
            duplicate=float(form.get("duplicate", 0)),
            max_delay=float(form.get("max_delay", 0)),
            rng=random.Random(form.get("seed")),
        )
        return {"registered": name}

    @app.delete("/_config/webhooks/{name}")
    async def unregister(name: str) -> dict[str, str]:
        state["webhooks"].pop(name, None)
        return {"unregistered": name}

    @app.get("/_devstripe/deliveries")
    async def in_flight() -> dict[str, int]:
        """Deliveries still on their way (or waiting for a retry), per endpoint."""
        return {name: e.pending for name, e in state["webhooks"].items()}

    @app.get("/_devstripe/stats")
    async def stats() -> dict[str, Any]:
        """How many of each object devstripe holds (invoices by billing reason and status)."""
        invoices: collections.Counter[str] = collections.Counter(
            f"{i.billing_reason}:{i.status}" for i in stripe.invoices.values()
        )
        return {
            "customers": len(stripe.customers),
            "subscriptions": collections.Counter(s.status for s in stripe.subscriptions.values()),
            "invoices": invoices,
        }

    @app.get("/_devstripe/requests")
    async def requests(kind: str | None = None) -> list[dict[str, Any]]:
        return [r for r in state["requests"] if kind is None or r["kind"] == kind]

    # The clock ---------------------------------------------------------------------------

    @app.get("/_devstripe/clock")
    async def clock() -> dict[str, Any]:
        due = stripe.next_due()
        return {"now": stripe.clock.now().isoformat(), "next_due": due and due.isoformat()}

    @app.post("/_devstripe/clock")
    async def move_clock(request: Request) -> dict[str, Any]:
        """Forward only: to an instant, or by a number of seconds."""
        body = orjson.loads(await request.body() or b"{}")
        now = stripe.clock.now()
        if "to" in body:
            target = datetime.fromisoformat(str(body["to"]).replace("Z", "+00:00"))
        else:
            target = now + timedelta(seconds=float(body.get("advance_seconds", 0)))
        if target < now:
            raise StripeError(400, "invalid_request_error", "the clock only moves forward")
        events = stripe.advance(target)
        send(events)
        return {"now": stripe.clock.now().isoformat(), "events": len(events)}

    # The API ------------------------------------------------------------------------------

    async def params_of(request: Request) -> dict[str, Any]:
        if request.method == "GET":
            return unflatten(list(request.query_params.multi_items()))
        return unflatten(parse_qsl((await request.body()).decode(), keep_blank_values=True))

    def record(request: Request, kind: str, params: dict[str, Any]) -> None:
        state["requests"].append(
            {
                "kind": kind,
                "method": request.method,
                "path": request.url.path,
                "params": copy.deepcopy(params),
                "idempotency_key": request.headers.get("idempotency-key"),
                "at": time.time(),
            }
        )

    @app.api_route("/v1/{path:path}", methods=["GET", "POST", "DELETE"])
    async def api(path: str, request: Request) -> Response:
        """Every `/v1` request, answered once per idempotency key."""
        key = request.headers.get("idempotency-key") if request.method == "POST" else None
        body = await request.body()
        async with idempotency[key] if key else contextlib.nullcontext():
            if key and key in state["answered"]:
                fingerprint, status, content = state["answered"][key]
                if fingerprint != (path, body):
                    raise StripeError(
                        400,
                        "idempotency_error",
                        "Keys for idempotent requests can only be used with the same "
                        "parameters they were first used with.",
                    )
                return Response(content, status_code=status, media_type="application/json")
            try:
                answer, status = await route(path, request), 200
            except StripeError as exc:
                answer, status = exc.body, exc.status
            content = orjson.dumps(answer)
            if key and status < 500:
                state["answered"][key] = ((path, body), status, content)
            return Response(content, status_code=status, media_type="application/json")

    async def route(path: str, request: Request) -> Any:
        method, parts = request.method, path.strip("/").split("/")
        params = await params_of(request)
        quiet = request.headers.get("devstripe-silent") == "1"
        match method, parts:
            case "POST", ["customers"]:
                customer, events = stripe.create_customer(params)
                return emit(customer.export(), events, quiet)
            case "GET", ["customers", customer_id]:
                return stripe.customer(customer_id).export()
            case "POST", ["customers", customer_id]:
                customer, events = stripe.update_customer(customer_id, params)
                return emit(customer.export(), events, quiet)
            case "POST", ["subscriptions"]:
                subscription, events = stripe.create_subscription(params)
                return emit(subscription.export(), events, quiet)
            case "GET", ["subscriptions"]:
                return stripe.list_subscriptions(
                    status=params.get("status"),
                    customer=params.get("customer"),
                    limit=min(100, int(params.get("limit", 10))),
                    starting_after=params.get("starting_after"),
                )
            case "GET", ["subscriptions", subscription_id]:
                return stripe.subscription(subscription_id).export()
            case "POST", ["subscriptions", subscription_id]:
                record(request, "subscription_update", params)
                subscription, events = stripe.update_subscription(subscription_id, params)
                return emit(subscription.export(), events, quiet)
            case "DELETE", ["subscriptions", subscription_id]:
                subscription, events = stripe.cancel_subscription(subscription_id)
                return emit(subscription.export(), events, quiet)
            case "GET", ["invoices", invoice_id]:
                return stripe.invoice(invoice_id).export()
            case "GET", ["prices", price_id]:
                return stripe.price(price_id).export()
            case "POST", ["checkout", "sessions"]:
                record(request, "checkout", params)
                return create_checkout(params)
            case "GET", ["checkout", "sessions", session_id]:
                return _public(session_of(session_id))
            case "POST", ["billing_portal", "sessions"]:
                record(request, "portal", params)
                return create_portal(params)
            case "POST", ["payment_intents"]:
                record(request, "payment_intent", params)
                intent, events = stripe.create_payment_intent(params)
                emit(intent.export(), events, quiet)
                if intent.last_payment_error is not None:
                    declined = StripeError(
                        402, "card_error", intent.last_payment_error["message"], "card_declined"
                    )
                    declined.body["error"]["payment_intent"] = intent.export()
                    raise declined
                return intent.export()
            case "GET", ["payment_intents", payment_intent_id]:
                expand = params.get("expand") or []
                return stripe.payment_intent(payment_intent_id).export(
                    expand_charge="latest_charge" in expand
                )
            case "POST", ["refunds"]:
                refund, events = stripe.refund(params)
                if quiet:
                    silence(refund["payment_intent"])
                return emit(refund, events, quiet)
            case "GET", ["refunds"]:
                created = params.get("created") or {}
                return stripe.list_refunds(
                    created_gte=int(created["gte"])
                    if isinstance(created, dict) and "gte" in created
                    else None,
                    limit=min(100, int(params.get("limit", 10))),
                    starting_after=params.get("starting_after"),
                )
        raise StripeError(404, "invalid_request_error", f"Unrecognized request URL: /v1/{path}")

    def emit(answer: dict[str, Any], events: list[Event], quiet: bool) -> dict[str, Any]:
        if quiet:
            silence(answer.get("id"))
        send(events)
        return answer

    # Checkout --------------------------------------------------------------------------------

    def create_checkout(params: dict[str, Any]) -> dict[str, Any]:
        session_id = new_id("cs_test")
        items = params.get("line_items") or [{}]
        stripe.customer(str(params.get("customer")))  # 404 if unknown
        session = {
            "id": session_id,
            "object": "checkout.session",
            "mode": params.get("mode"),
            "status": "open",
            "payment_status": "unpaid",
            "customer": params.get("customer"),
            "client_reference_id": params.get("client_reference_id"),
            "metadata": params.get("metadata") or {},
            "subscription": None,
            "success_url": params.get("success_url"),
            "cancel_url": params.get("cancel_url"),
            "url": f"{public_url}/checkout/{session_id}",
            "created": stripe.clock.seconds(),
            "expires_at": stripe.clock.seconds() + 24 * 3600,
            "livemode": False,
            "_line": items[0],
            "_subscription_metadata": (params.get("subscription_data") or {}).get("metadata") or {},
            "_payment_metadata": (params.get("payment_intent_data") or {}).get("metadata") or {},
            "payment_intent": None,
        }
        state["sessions"][session_id] = session
        return _public(session)

    def session_of(session_id: str) -> dict[str, Any]:
        session = state["sessions"].get(session_id)
        if session is None:
            raise missing("checkout.session", session_id)
        return session

    def complete(session_id: str, *, silent: bool = False) -> dict[str, Any]:
        """The customer pays: the subscription is created, its first invoice paid."""
        session = session_of(session_id)
        if session["status"] == "complete":
            return session
        line = session["_line"]
        if session["mode"] == "payment":
            price = stripe.price(str(line["price"]))
            intent, events = stripe.create_payment_intent(
                {
                    "customer": session["customer"],
                    "amount": price.unit_amount * int(line.get("quantity", "1")),
                    "currency": "usd",
                    "metadata": session["_payment_metadata"],
                    "confirm": "true",
                    "payment_method": PAYING,
                }
            )
            session.update(status="complete", payment_status="paid", payment_intent=intent.id)
            if silent:
                silence(session_id, intent.id)
            events.append(
                ("checkout.session.completed", _public(session), None, stripe.clock.seconds())
            )
            send(events)
            return session
        subscription, events = stripe.create_subscription(
            {
                "customer": session["customer"],
                "items": [{"price": line["price"], "quantity": line.get("quantity", "1")}],
                "metadata": session["_subscription_metadata"],
            }
        )
        session.update(status="complete", payment_status="paid", subscription=subscription.id)
        if silent:
            silence(session_id, subscription.id)
        events.append(
            ("checkout.session.completed", _public(session), None, stripe.clock.seconds())
        )
        send(events)
        return session

    @app.get("/checkout/{session_id}", response_class=HTMLResponse)
    async def checkout_page(session_id: str) -> HTMLResponse:
        session = state["sessions"].get(session_id)
        if session is None:
            return HTMLResponse("<h1>No such checkout session</h1>", status_code=404)
        line = session["_line"]
        return HTMLResponse(
            f"""<!doctype html><html><head><meta charset="utf-8"><title>Checkout</title></head>
<body style="font-family:system-ui;max-width:32rem;margin:4rem auto">
<h1>Checkout (development)</h1>
<p>Subscribe <b>{html.escape(str(session["client_reference_id"]))}</b> to
<b>{html.escape(str(line.get("price")))}</b> for {html.escape(str(line.get("quantity", 1)))}
seat(s). No card is charged: this is devstripe.</p>
<form method="post" action="/checkout/{session_id}/pay">
<button id="pay">Pay and subscribe</button></form>
<p><a id="cancel" href="{html.escape(str(session["cancel_url"]))}">Cancel</a></p>
</body></html>"""
        )

    @app.post("/checkout/{session_id}/pay")
    async def pay(session_id: str) -> Response:
        if session_id not in state["sessions"]:
            return HTMLResponse("<h1>No such checkout session</h1>", status_code=404)
        session = complete(session_id)
        return RedirectResponse(session["success_url"], status_code=303)

    @app.post("/_devstripe/checkout/{session_id}/complete")
    async def complete_for_tests(session_id: str, silent: bool = False) -> Response:
        return JSONResponse(_public(complete(session_id, silent=silent)))

    # Billing Portal --------------------------------------------------------------------------

    def create_portal(params: dict[str, Any]) -> dict[str, Any]:
        stripe.customer(str(params.get("customer")))  # 404 if unknown
        portal_id = new_id("bps")
        portal = {
            "id": portal_id,
            "object": "billing_portal.session",
            "customer": params.get("customer"),
            "return_url": params.get("return_url"),
            "url": f"{public_url}/portal/{portal_id}",
            "created": stripe.clock.seconds(),
            "livemode": False,
        }
        state["portals"][portal_id] = portal
        return portal

    @app.get("/portal/{portal_id}", response_class=HTMLResponse)
    async def portal_page(portal_id: str) -> HTMLResponse:
        portal = state["portals"].get(portal_id)
        if portal is None:
            return HTMLResponse("<h1>No such portal session</h1>", status_code=404)
        return HTMLResponse(
            f"""<!doctype html><html><head><meta charset="utf-8"><title>Billing</title></head>
<body style="font-family:system-ui;max-width:32rem;margin:4rem auto">
<h1>Billing portal (development)</h1>
<p>Customer <b>{html.escape(str(portal["customer"]))}</b>: payment methods, invoices and
billing details would be managed here.</p>
<p><a id="return" href="{html.escape(str(portal["return_url"]))}">Return</a></p>
</body></html>"""
        )

    @app.get("/_devstripe/invoices/{invoice_id}", response_class=HTMLResponse)
    async def invoice_page(invoice_id: str) -> HTMLResponse:
        """Stripe's hosted invoice page, in short."""
        invoice = stripe.invoices.get(invoice_id)
        if invoice is None:
            return HTMLResponse("<h1>No such invoice</h1>", status_code=404)
        return HTMLResponse(
            f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Invoice</title></head>
<body style="font-family:system-ui;max-width:32rem;margin:4rem auto">
<h1>Invoice {html.escape(invoice.id)}</h1>
<p id="amount">{invoice.amount_due / 100:.2f} USD, {html.escape(invoice.status)}</p>
<p><a id="pdf" href="/_devstripe/invoices/{html.escape(invoice.id)}/pdf">Download PDF</a></p>
</body></html>"""
        )

    @app.get("/_devstripe/invoices/{invoice_id}/pdf")
    async def invoice_pdf(invoice_id: str) -> Response:
        invoice = stripe.invoices.get(invoice_id)
        if invoice is None:
            return JSONResponse({"error": {"message": "No such invoice"}}, status_code=404)
        text = f"Invoice {invoice.id}: {invoice.amount_due / 100:.2f} USD, {invoice.status}"
        return Response(_pdf(text), media_type="application/pdf")

    app.state.stripe = stripe
    return app


def _pdf(text: str) -> bytes:
    """A one-page PDF with one line of text (what a viewer needs to open it)."""
    line = text.replace("\\", "").replace("(", "").replace(")", "")
    content = f"BT /F1 14 Tf 72 720 Td ({line}) Tj ET".encode("latin-1", "replace")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(content)).encode() + b" >>\nstream\n" + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010} 00000 n \n".encode() for o in offsets)
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out


def _public(session: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in session.items() if not k.startswith("_")}
