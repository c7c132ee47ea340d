"""devstripe: a Stripe for development and tests, without the network.

- localstripe (PyPI; a fake, stateful Stripe API in its own process) answers what it
  implements: customers, legacy plans, subscriptions, invoices.
- This app fronts it on the same base URL and adds what localstripe lacks:
  - Checkout sessions and Billing Portal sessions, answered here and recorded for tests
    (`GET /_devstripe/requests`), with a small page per session so that a person (or a test)
    can complete a checkout: the subscription is then created in localstripe and a signed
    `checkout.session.completed` is delivered;
  - `customer.subscription.updated` webhooks after every subscription update (localstripe
    sends none);
  - the current request shape: `items[][price]` becomes localstripe's `items[][plan]` (a plan
    with the price's id is created on first use, free of charge); `proration_behavior`,
    which localstripe does not take, is dropped; an item's quantity, which Stripe keeps when
    only the price changes and localstripe resets to 1, is sent along (localstripe gives the
    item a new id on every change: the only item is the one meant).
- Idempotency keys, as Stripe keeps them: a POST with a key seen before is answered as the
  first time (another body with the same key: 400 `idempotency_error`).
- Faults: `POST /_devstripe/faults {"path": "/v1/subscriptions", "status": 503, "times": 2}`
  makes the next matching requests fail, as Stripe sometimes does; with `"delay": 2` they are
  answered two seconds late (without `status`: then answered normally).
- Webhooks: endpoints register with `POST /_config/webhooks/{name}` (`url`, `secret`), as with
  localstripe, and unregister with `DELETE`. Every event from localstripe or from here is
  signed with each endpoint's secret at delivery time. Delivery is Stripe's: a delivery that
  is not answered 2xx is retried with back-off (`retry_seconds`, doubling, up to
  `retry_attempts`; Stripe's schedule spans three days, devstripe's is compressed). An endpoint
  may also ask for Stripe's disorder (`duplicate`: the probability that an event is delivered
  twice; `max_delay`: each delivery waits up to that many seconds, so events overtake each
  other; `seed`), and `GET /_devstripe/deliveries` says how many deliveries are still on their
  way to each endpoint.
- Drift, for reconciliation tests: a request with the header `Devstripe-Silent: 1` (or a
  checkout completed with `?silent=1`) changes Stripe without any webhook about that object
  for a few seconds, as if Stripe never sent it.

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
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import orjson
from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from shared.logging import get_logger

log = get_logger("devstripe")


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


def flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for key, value in data.items():
        name = f"{prefix}[{key}]" if prefix else str(key)
        if isinstance(value, Mapping):
            pairs += flatten(value, name)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, Mapping):
                    pairs += flatten(item, f"{name}[{index}]")
                else:
                    pairs.append((f"{name}[{index}]", str(item)))
        elif value is not None:
            pairs.append((name, str(value).lower() if isinstance(value, bool) else str(value)))
    return pairs


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    signed = b"%d.%s" % (timestamp, payload)
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


SILENCE_SECONDS = 5.0
"""How long events about an object changed silently are dropped (localstripe sends its own
events a second after the change)."""


@dataclass
class Endpoint:
    url: str
    secret: str
    duplicate: float = 0.0
    max_delay: float = 0.0
    rng: random.Random = field(default_factory=random.Random)
    pending: int = 0


def create_app(
    localstripe: str, public_url: str, *, retry_seconds: float = 1.0, retry_attempts: int = 8
) -> FastAPI:
    client = httpx.AsyncClient(base_url=localstripe, timeout=30)
    outbound = httpx.AsyncClient(timeout=10)
    deliveries: set[asyncio.Task[None]] = set()
    idempotency: collections.defaultdict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await register_relay()
        try:
            yield
        finally:
            for task in deliveries:
                task.cancel()
            await client.aclose()
            await outbound.aclose()

    app = FastAPI(
        title="devstripe", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    state: dict[str, Any] = {
        "webhooks": {},  # name -> Endpoint
        "silenced": {},  # object id -> until (monotonic)
        "requests": [],
        "sessions": {},  # checkout session id -> session
        "portals": {},
        "by_key": {},  # idempotency key -> object (Checkout, Portal)
        "answered": {},  # idempotency key -> (request, status, body, media type) (localstripe)
        "relay_secret": secrets.token_hex(16),
        "plans": set(),
        "faults": [],  # [path prefix, status, times left]
    }

    @app.middleware("http")
    async def faults(request: Request, call_next: Any) -> Response:
        """Answers injected by tests (`POST /_devstripe/faults`): Stripe failing for a while."""
        for fault in state["faults"]:
            prefix, status, left, delay = fault
            if left > 0 and request.url.path.startswith(prefix):
                fault[2] -= 1
                if delay:
                    await asyncio.sleep(delay)
                if status < 400:
                    break
                kind = "rate_limit_error" if status == 429 else "api_error"
                return JSONResponse(
                    {"error": {"type": kind, "message": f"injected {status}"}}, status_code=status
                )
        return await call_next(request)

    @app.post("/_devstripe/faults")
    async def inject(request: Request) -> dict[str, Any]:
        body = orjson.loads(await request.body())
        state["faults"].append(
            [body["path"], int(body.get("status", 200)), int(body["times"]), body.get("delay", 0)]
        )
        return {"faults": state["faults"]}

    async def register_relay() -> None:
        for _ in range(100):
            try:
                response = await client.post(
                    "/_config/webhooks/devstripe",
                    data={"url": f"{public_url}/_devstripe/relay", "secret": state["relay_secret"]},
                )
                if response.status_code < 300:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError(f"localstripe does not answer at {localstripe}")

    def silenced(event: dict[str, Any]) -> bool:
        obj = (event.get("data") or {}).get("object") or {}
        now = time.monotonic()
        return any(
            state["silenced"].get(ref, 0) > now
            for ref in (obj.get("id"), obj.get("subscription"))
            if isinstance(ref, str)
        )

    def silence(*object_ids: str | None) -> None:
        for object_id in object_ids:
            if object_id:
                state["silenced"][object_id] = time.monotonic() + SILENCE_SECONDS

    async def deliver(event: dict[str, Any]) -> None:
        """Queue the event for every endpoint; each delivery goes on, and is retried, on its
        own (the request that caused the event does not wait for it)."""
        if silenced(event):
            log.info("webhook withheld", type=event["type"])
            return
        payload = orjson.dumps(event)
        for name, endpoint in list(state["webhooks"].items()):
            copies = 2 if endpoint.rng.random() < endpoint.duplicate else 1
            for _ in range(copies):
                endpoint.pending += 1
                task = asyncio.create_task(deliver_one(name, endpoint, payload, event["type"]))
                deliveries.add(task)
                task.add_done_callback(deliveries.discard)

    async def deliver_one(name: str, endpoint: Endpoint, payload: bytes, kind: str) -> None:
        try:
            delay = endpoint.rng.uniform(0, endpoint.max_delay) if endpoint.max_delay else 0.0
            for attempt in range(1, retry_attempts + 1):
                if delay:
                    await asyncio.sleep(delay)
                if state["webhooks"].get(name) is not endpoint:
                    return  # unregistered meanwhile
                headers = {
                    "Content-Type": "application/json; charset=utf-8",
                    "Stripe-Signature": sign(payload, endpoint.secret, int(time.time())),
                }
                try:
                    response = await outbound.post(endpoint.url, content=payload, headers=headers)
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

    def event(kind: str, obj: dict[str, Any], previous: dict[str, Any] | None = None) -> dict:
        data: dict[str, Any] = {"object": obj}
        if previous is not None:
            data["previous_attributes"] = previous
        return {
            "id": _id("evt"),
            "object": "event",
            "api_version": "2025-01-01",
            "created": int(time.time()),
            "livemode": False,
            "pending_webhooks": len(state["webhooks"]),
            "request": {"id": None, "idempotency_key": None},
            "type": kind,
            "data": data,
        }

    def record(request: Request, kind: str, params: dict[str, Any]) -> None:
        state["requests"].append(
            {
                "kind": kind,
                "method": request.method,
                "path": request.url.path,
                "params": params,
                "idempotency_key": request.headers.get("idempotency-key"),
                "at": time.time(),
            }
        )

    async def ensure_plan(price_id: str) -> None:
        if price_id in state["plans"]:
            return
        interval = "year" if ("annual" in price_id or "year" in price_id) else "month"
        response = await client.post(
            "/v1/plans",
            data={
                "id": price_id,
                "amount": "0",
                "currency": "usd",
                "interval": interval,
                "product[name]": price_id,
            },
            headers={"Authorization": "Bearer sk_test_devstripe"},
        )
        if response.status_code >= 300 and response.status_code != 409:
            log.warning("plan not created", price=price_id, status=response.status_code)
        state["plans"].add(price_id)

    # Webhook endpoints ---------------------------------------------------------------------

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

    @app.get("/_devstripe/deliveries")
    async def in_flight() -> dict[str, int]:
        """Deliveries still on their way (or waiting for a retry), per endpoint."""
        return {name: e.pending for name, e in state["webhooks"].items()}

    @app.delete("/_config/webhooks/{name}")
    async def unregister(name: str) -> dict[str, str]:
        state["webhooks"].pop(name, None)
        return {"unregistered": name}

    @app.post("/_devstripe/relay")
    async def relay(request: Request) -> dict[str, bool]:
        """Events from localstripe, delivered to every endpoint with its own signature."""
        await deliver(orjson.loads(await request.body()))
        return {"relayed": True}

    @app.get("/_devstripe/requests")
    async def requests(kind: str | None = None) -> list[dict[str, Any]]:
        return [r for r in state["requests"] if kind is None or r["kind"] == kind]

    # Checkout ------------------------------------------------------------------------------

    async def received(request: Request, kind: str) -> tuple[dict[str, Any], Any]:
        """The request's parameters (recorded), and what was answered before under its
        idempotency key, if anything."""
        params = unflatten(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        record(request, kind, params)
        key = request.headers.get("idempotency-key")
        return params, state["by_key"].get(key) if key else None

    def answered(request: Request, obj: dict[str, Any]) -> dict[str, Any]:
        key = request.headers.get("idempotency-key")
        if key:
            state["by_key"][key] = obj
        return obj

    @app.post("/v1/checkout/sessions")
    async def create_checkout(request: Request) -> dict[str, Any]:
        params, before = await received(request, "checkout")
        if before is not None:
            return before
        session_id = _id("cs_test")
        items = params.get("line_items") or [{}]
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
            "created": int(time.time()),
            "livemode": False,
            "_line": items[0],
            "_subscription_metadata": (params.get("subscription_data") or {}).get("metadata") or {},
        }
        state["sessions"][session_id] = session
        return answered(request, _public(session))

    @app.get("/v1/checkout/sessions/{session_id}")
    async def get_checkout(session_id: str) -> Response:
        session = state["sessions"].get(session_id)
        if session is None:
            return _missing("checkout.session", session_id)
        return JSONResponse(_public(session))

    async def complete(session_id: str, *, silent: bool = False) -> dict[str, Any] | None:
        session = state["sessions"].get(session_id)
        if session is None:
            return None
        if session["status"] == "complete":
            return session
        line = session["_line"]
        await ensure_plan(line["price"])
        form = flatten(
            {
                "customer": session["customer"],
                "items": [{"plan": line["price"], "quantity": line.get("quantity", "1")}],
                "metadata": session["_subscription_metadata"],
            }
        )
        response = await client.post(
            "/v1/subscriptions",
            content=urlencode(form),
            headers={
                "Authorization": "Bearer sk_test_devstripe",
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        response.raise_for_status()
        session.update(status="complete", payment_status="paid", subscription=response.json()["id"])
        if silent:
            silence(session_id, session["subscription"])
        else:
            await deliver(event("checkout.session.completed", _public(session)))
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
        session = await complete(session_id)
        if session is None:
            return HTMLResponse("<h1>No such checkout session</h1>", status_code=404)
        return RedirectResponse(session["success_url"], status_code=303)

    @app.post("/_devstripe/checkout/{session_id}/complete")
    async def complete_for_tests(session_id: str, silent: bool = False) -> Response:
        session = await complete(session_id, silent=silent)
        if session is None:
            return _missing("checkout.session", session_id)
        return JSONResponse(_public(session))

    # Billing Portal --------------------------------------------------------------------------

    @app.post("/v1/billing_portal/sessions")
    async def create_portal(request: Request) -> dict[str, Any]:
        params, before = await received(request, "portal")
        if before is not None:
            return before
        portal_id = _id("bps")
        portal = {
            "id": portal_id,
            "object": "billing_portal.session",
            "customer": params.get("customer"),
            "return_url": params.get("return_url"),
            "url": f"{public_url}/portal/{portal_id}",
            "created": int(time.time()),
            "livemode": False,
        }
        state["portals"][portal_id] = portal
        return answered(request, portal)

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

    # Everything else: localstripe, adapted -----------------------------------------------------

    @app.api_route("/v1/{path:path}", methods=["GET", "POST", "DELETE"])
    async def proxy(path: str, request: Request) -> Response:
        body = await request.body()
        update = request.method == "POST" and path.startswith("subscriptions/")
        quiet = request.headers.get("devstripe-silent") == "1"
        if quiet and path.startswith("subscriptions/"):
            silence(path.split("/")[1])
        previous = None
        if request.method == "POST" and path.startswith("subscriptions"):
            if update:
                before = await client.get(f"/v1/{path}", headers=_forwarded(request))
                previous = before.json() if before.status_code == 200 else None
            params = unflatten(parse_qsl(body.decode(), keep_blank_values=True))
            if update:
                record(request, "subscription_update", copy.deepcopy(params))
            params.pop("proration_behavior", None)
            current = ((previous or {}).get("items") or {}).get("data") or []
            for item in params.get("items") or []:
                if not isinstance(item, dict):
                    continue
                if item.get("price"):
                    await ensure_plan(item["price"])
                    item["plan"] = item.pop("price")
                if "quantity" not in item and len(current) == 1:
                    # Stripe keeps the item (and its id) when only its price changes;
                    # localstripe replaces the item on every change and resets it to 1.
                    item["quantity"] = current[0].get("quantity")
            body = urlencode(flatten(params)).encode()
        key = request.headers.get("idempotency-key") if request.method == "POST" else None
        async with idempotency[key] if key else contextlib.nullcontext():
            if key and key in state["answered"]:
                fingerprint, status, content, media = state["answered"][key]
                if fingerprint != (path, body):
                    return JSONResponse(
                        {
                            "error": {
                                "type": "idempotency_error",
                                "message": "Keys for idempotent requests can only be used "
                                "with the same parameters they were first used with.",
                            }
                        },
                        status_code=400,
                    )
                return Response(content, status_code=status, media_type=media)
            response = await client.request(
                request.method,
                f"/v1/{path}",
                params=list(request.query_params.multi_items()),
                content=body,
                headers=_forwarded(request),
            )
            if key and response.status_code < 500:
                state["answered"][key] = (
                    (path, body),
                    response.status_code,
                    response.content,
                    response.headers.get("content-type", "application/json"),
                )
        if update and response.status_code == 200 and previous is not None and not quiet:
            current = response.json()
            changed = {k: previous.get(k) for k in current if previous.get(k) != current.get(k)}
            await deliver(event("customer.subscription.updated", current, changed))
        return Response(
            response.content,
            status_code=response.status_code,
            media_type=response.headers.get("content-type", "application/json"),
        )

    return app


def _forwarded(request: Request) -> dict[str, str]:
    keep = ("authorization", "content-type", "stripe-version")
    return {k: v for k, v in request.headers.items() if k.lower() in keep}


def _public(session: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in session.items() if not k.startswith("_")}


def _missing(kind: str, object_id: str) -> JSONResponse:
    return JSONResponse(
        {
            "error": {
                "type": "invalid_request_error",
                "code": "resource_missing",
                "message": f"No such {kind}: '{object_id}'",
            }
        },
        status_code=404,
    )
