"""The Billing page for people, behind the front proxy, which sends the member's signed
identity; only an active member of the organisation sees its page. The page, its live stream,
and the owner's actions, which the page forwards to the subscription service's API with the
member's identity."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Annotated
from urllib.parse import quote

import httpx
import orjson
from fastapi import APIRouter, Depends, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from pydantic import AwareDatetime

from shared import identity
from shared.acting import prove
from shared.events.envelope import ORGANISATION_ID_PATTERN
from shared.http import Problem
from shared.identity import IDENTITY_HEADER

from ..domain import notices
from ..service import Dashboard
from ..settings import DashboardSettings
from . import page

router = APIRouter()

HEARTBEAT_SECONDS = 15
BUDGETS_REFRESH_SECONDS = 2.0
"""An open page asks metering for its budgets at most this often (their use changes with
every message)."""
DEV_SESSION = "billing_dev_identity"
"""Development only: who the page was opened for, so that coming back from Stripe finds it."""


@dataclass(frozen=True)
class Viewer:
    organisation_id: str
    member_id: str
    identity: str
    """The signed identity, forwarded with the owner's actions."""
    query: str = ""
    """What links and forms carry along (the identity, when it came from the query)."""


async def viewer(request: Request) -> Viewer:
    """Who looks at which organisation: the front proxy's signed identity (or, in development
    only, one signed here for the `organisation` and `member` query parameters); an active
    member of that organisation (`shared.acting`)."""
    settings: DashboardSettings = request.app.state.settings
    token, query = request.headers.get(IDENTITY_HEADER), ""
    if not token and settings.identity_from_query:
        organisation = request.query_params.get("organisation", "")
        member = request.query_params.get("member", "")
        if not organisation and not member:  # back from Stripe: the development session
            organisation, _, member = request.cookies.get(DEV_SESSION, "").partition("|")
        if not re.fullmatch(ORGANISATION_ID_PATTERN, organisation) or not 0 < len(member) <= 128:
            raise Problem(400, "invalid-identity", "Give `organisation` and `member`")
        token = identity.sign(organisation, member, request.app.state.runtime.clock.now())
        query = "?" + str(httpx.QueryParams({"organisation": organisation, "member": member}))
    if not token:
        raise Problem(
            401,
            "missing-identity",
            "Who is looking is unknown",
            f"The front proxy sends the member's signed identity in {IDENTITY_HEADER}.",
        )
    acting = await prove(request, token)
    return Viewer(acting.organisation_id, acting.member_id, token, query)


Looking = Annotated[Viewer, Depends(viewer)]
Period = Annotated[AwareDatetime | None, Query(description="An earlier period's start")]


def same_origin(request: Request) -> None:
    """The owner's actions come from this page, not from another site: a browser says where a
    form was posted from (`Origin`, `Sec-Fetch-Site`); anything else is refused with 403. The
    front proxy's session cookie should be `SameSite=Lax` as well."""
    settings: DashboardSettings = request.app.state.settings
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    allowed = {own, *settings.allowed_origins}
    origin = request.headers.get("origin")
    if origin is None:
        referer = httpx.URL(request.headers.get("referer", ""))
        origin = f"{referer.scheme}://{referer.netloc.decode()}" if referer.host else None
    site = request.headers.get("sec-fetch-site")
    if origin not in allowed or (site in {"cross-site", "same-site"} and origin != own):
        raise Problem(
            403,
            "cross-origin-refused",
            "Refused: this request did not come from the Billing page",
            "Change your plan from the Billing page itself.",
        )


def _dashboard(request: Request) -> Dashboard:
    return request.app.state.parts.dashboard


async def _catalogue(request: Request) -> dict | None:
    parts = request.app.state.parts
    if parts.catalogue is None:
        try:
            response = await parts.subscriptions.get("/v1/catalogue")
            if response.status_code == 200:
                parts.catalogue = response.json()
        except httpx.HTTPError:
            return None
    return parts.catalogue


async def _budgets(request: Request, who: Viewer) -> dict | None:
    """The budgets as the viewer may see them (metering decides); None if not answered."""
    try:
        answer = await request.app.state.parts.metering.get(
            "/v1/budgets", headers={IDENTITY_HEADER: who.identity}
        )
    except httpx.HTTPError:
        return None
    return answer.json() if answer.status_code == 200 else None


async def _recharge(request: Request, who: Viewer) -> dict | None:
    """The organisation's auto-recharge, as the viewer may see it; None if not answered."""
    try:
        answer = await request.app.state.parts.subscriptions.get(
            "/v1/subscription/auto-recharge", headers={IDENTITY_HEADER: who.identity}
        )
    except httpx.HTTPError:
        return None
    return answer.json() if answer.status_code == 200 else None


def _version(html: str) -> str:
    return hashlib.blake2s(html.encode(), digest_size=8).hexdigest()


@router.get("/billing", response_class=HTMLResponse, tags=["billing page"])
async def billing(
    who: Looking,
    request: Request,
    outcome: Annotated[str, Query(max_length=64)] = "",
    checkout: Annotated[str, Query(max_length=16)] = "",
    portal: Annotated[str, Query(max_length=16)] = "",
    period: Period = None,
) -> HTMLResponse:
    """The organisation's Billing page, with the outcome of what was just done (an action of
    the page, or Stripe's Checkout and Billing Portal on the way back); `period`: the usage of
    an earlier credit period."""
    stored = await _dashboard(request).view(who.organisation_id, period)
    stored = replace(
        stored, recharge=await _recharge(request, who), budgets=await _budgets(request, who)
    )
    now = request.app.state.runtime.clock.now()
    body = page.main(stored, who.member_id, await _catalogue(request), who.query, now)
    notice = notices.from_address(outcome, checkout, portal)
    answer = HTMLResponse(page.page(who.organisation_id, body, _version(body), notice))
    if who.query:
        answer.set_cookie(
            DEV_SESSION,
            f"{who.organisation_id}|{who.member_id}",
            path="/billing",
            httponly=True,
            samesite="lax",
        )
    return answer


@router.get("/billing/stream", tags=["billing page"])
async def stream(who: Looking, request: Request, period: Period = None) -> StreamingResponse:
    """Server-sent events: the page's live part, now and after every change of the view."""
    dashboard = _dashboard(request)
    settings: DashboardSettings = request.app.state.settings
    organisation, member = dashboard.open_pages(who.organisation_id, who.member_id)
    if (
        member >= settings.max_streams_per_member
        or organisation >= settings.max_streams_per_organisation
    ):
        whose = "yours" if member >= settings.max_streams_per_member else "this organisation's"
        raise Problem(
            429,
            "too-many-streams",
            "Too many live pages open",
            f"Close one of {whose} open Billing pages, or reload this one later.",
            headers={"Retry-After": "30"},
        )
    catalogue = await _catalogue(request)
    recharge = await _recharge(request, who)

    async def events() -> AsyncIterator[bytes]:
        budgets, fetched, stale = None, -BUDGETS_REFRESH_SECONDS, False
        async with dashboard.watch(who.organisation_id, who.member_id) as changed:
            stored = await dashboard.view(who.organisation_id, period)  # a reconnect catches up
            last = ""
            while True:
                if time.monotonic() - fetched >= BUDGETS_REFRESH_SECONDS:
                    budgets, fetched, stale = await _budgets(request, who), time.monotonic(), False
                stored = replace(stored, recharge=recharge, budgets=budgets)
                now = request.app.state.runtime.clock.now()
                body = page.main(stored, who.member_id, catalogue, who.query, now)
                version = _version(body)
                if version != last:
                    last = version
                    data = orjson.dumps({"html": body, "version": version}).decode()
                    yield f"event: view\ndata: {data}\n\n".encode()
                wait = HEARTBEAT_SECONDS
                if stale:  # the budgets changed with the view: refresh them when allowed
                    wait = max(0.0, fetched + BUDGETS_REFRESH_SECONDS - time.monotonic())
                try:
                    stored = await asyncio.wait_for(changed.get(), wait)
                    stale = True
                    if period is not None:
                        stored = await dashboard.view(who.organisation_id, period)
                except TimeoutError:
                    if not stale:
                        yield b": heartbeat\n\n"

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _act(
    request: Request,
    who: Viewer,
    path: str,
    body: dict | None = None,
    method: str = "POST",
    *,
    at: str = "subscriptions",
) -> httpx.Response:
    """Forward the member's action to a service's API (`at`: `subscriptions` or `metering`)
    with their signed identity."""
    try:
        return await getattr(request.app.state.parts, at).request(
            method,
            path,
            json=body,
            headers={IDENTITY_HEADER: who.identity},
        )
    except httpx.HTTPError:
        raise Problem(
            503,
            "unavailable",
            f"The {at} service did not answer",
            "Try again in a moment.",
            headers={"Retry-After": "2"},
        ) from None


def _back(who: Viewer, answer: httpx.Response, done: str) -> RedirectResponse:
    """Back to the page, with the outcome as a code (`domain.notices`)."""
    outcome = done
    if answer.status_code >= 400:
        try:
            problem = answer.json()
        except ValueError:
            problem = {}
        reason = problem.get("reason") or ("unavailable" if answer.status_code >= 500 else "")
        outcome = f"refused:{reason}"
    params = httpx.QueryParams(who.query.lstrip("?")).set("outcome", outcome)
    return RedirectResponse(f"/billing?{params}", status_code=303)


@router.post("/billing/change", tags=["billing page"], dependencies=[Depends(same_origin)])
async def change(
    who: Looking, request: Request, choice: Annotated[str, Form(max_length=40)]
) -> RedirectResponse:
    """Change plan: to Stripe Checkout for a paid plan from Free, else back to the page."""
    plan, _, cycle = choice.partition(":")
    answer = await _act(
        request, who, "/v1/subscription/change", {"plan": plan, "cycle": cycle or None}
    )
    if answer.status_code == 200 and answer.json().get("checkout_url"):
        return RedirectResponse(answer.json()["checkout_url"], status_code=303)
    action = answer.json().get("action", "") if answer.status_code == 200 else ""
    return _back(who, answer, action)


@router.post("/billing/credit-packs", tags=["billing page"], dependencies=[Depends(same_origin)])
async def buy_pack(
    who: Looking, request: Request, pack: Annotated[str, Form(max_length=40)]
) -> RedirectResponse:
    """Buy a credit pack: to Stripe Checkout (payment mode), back here once paid."""
    answer = await _act(request, who, "/v1/subscription/credit-packs", {"pack": pack})
    if answer.status_code == 200:
        return RedirectResponse(answer.json()["checkout_url"], status_code=303)
    return _back(who, answer, "")


@router.post("/billing/auto-recharge", tags=["billing page"], dependencies=[Depends(same_origin)])
async def save_recharge(
    who: Looking,
    request: Request,
    threshold: Annotated[int, Form(ge=0, le=10**12)],
    pack: Annotated[str, Form(max_length=40)],
    monthly_cap: Annotated[int, Form(ge=1, le=10**12)],
    enabled: Annotated[str, Form(max_length=8)] = "",
) -> RedirectResponse:
    """Save auto-recharge (owners)."""
    body = {
        "enabled": enabled == "on",
        "threshold": threshold,
        "pack": pack,
        "monthly_cap": monthly_cap,
    }
    answer = await _act(request, who, "/v1/subscription/auto-recharge", body, method="PUT")
    return _back(who, answer, "auto_recharge_saved")


@router.post("/billing/portal", tags=["billing page"], dependencies=[Depends(same_origin)])
async def portal(who: Looking, request: Request) -> RedirectResponse:
    """Manage billing: to the Stripe Billing Portal (R11)."""
    answer = await _act(request, who, "/v1/billing-portal")
    if answer.status_code == 200:
        return RedirectResponse(answer.json()["url"], status_code=303)
    return _back(who, answer, "")


@router.get("/billing/cancel", response_class=HTMLResponse, tags=["billing page"])
async def confirm_cancel(who: Looking, request: Request) -> HTMLResponse:
    """The confirmation screen before cancelling (R12)."""
    stored = await _dashboard(request).view(who.organisation_id)
    return HTMLResponse(page.confirm_cancel(who.organisation_id, stored, who.query))


@router.post("/billing/cancel", tags=["billing page"], dependencies=[Depends(same_origin)])
async def cancel(who: Looking, request: Request) -> RedirectResponse:
    answer = await _act(request, who, "/v1/subscription/cancel")
    return _back(who, answer, "cancelled")


@router.post("/billing/reactivate", tags=["billing page"], dependencies=[Depends(same_origin)])
async def reactivate(who: Looking, request: Request) -> RedirectResponse:
    answer = await _act(request, who, "/v1/subscription/reactivate")
    return _back(who, answer, "reactivated")


@router.post("/billing/budgets", tags=["billing page"], dependencies=[Depends(same_origin)])
async def save_budget(
    who: Looking,
    request: Request,
    scope: Annotated[str, Form(max_length=20)],
    subject: Annotated[str, Form(max_length=128)] = "",
    cap: Annotated[str, Form(max_length=14)] = "",
) -> RedirectResponse:
    """Set or remove a budget (owners): a member's, an agent's, or the members' default."""
    paths = {"member": "members/", "agent": "agents/", "member_default": "member-default"}
    subject = subject.strip()
    if (
        scope not in paths
        or (scope != "member_default") != bool(subject)
        or (cap.strip() and not cap.strip().isdigit())
    ):
        params = httpx.QueryParams(who.query.lstrip("?")).set("outcome", "refused:invalid_budget")
        return RedirectResponse(f"/billing?{params}", status_code=303)
    path = f"/v1/budgets/{paths[scope]}{quote(subject, safe='') if subject else ''}"
    body = {"monthly_cap": int(cap) if cap.strip() else None}
    answer = await _act(request, who, path, body, method="PUT", at="metering")
    return _back(who, answer, "budget_saved")


@router.get("/billing/usage", response_class=HTMLResponse, tags=["billing page"])
async def usage_drill_down(
    who: Looking,
    request: Request,
    day: Annotated[str, Query(max_length=10, pattern=r"^(\d{4}-\d{2}-\d{2})?$")] = "",
    agent_id: Annotated[str, Query(max_length=128)] = "",
    conversation_id: Annotated[str, Query(max_length=128)] = "",
    period: Period = None,
) -> HTMLResponse:
    """The credit period's usage one level down: days, a day's agents, an agent's
    conversations that day, a conversation's messages (each with its receipt)."""
    dashboard = _dashboard(request)
    now = request.app.state.runtime.clock.now()
    if period is None:
        bounds = await dashboard.current_period(who.organisation_id)
    else:
        bounds = (await dashboard.view(who.organisation_id, period)).period
    since, until = bounds or (now - timedelta(days=31), now)
    given = {"day": day, "agent_id": agent_id, "conversation_id": conversation_id}
    given = {k: v for k, v in given.items() if v}
    found = None
    if dashboard.usage is not None:
        found = await dashboard.usage.breakdown(who.organisation_id, since, until, **given)
    return HTMLResponse(page.drill_down(who.organisation_id, found, given, who.query))


@router.get("/billing/receipts/{message_id}", response_class=HTMLResponse, tags=["billing page"])
async def message_receipt(
    who: Looking, request: Request, message_id: Annotated[str, Path(max_length=128)]
) -> HTMLResponse:
    """One message's receipt: reserved, settled and how it was priced, paid from, released."""
    dashboard = _dashboard(request)
    found = None
    if dashboard.usage is not None:
        found = await dashboard.usage.receipt(who.organisation_id, message_id)
    return HTMLResponse(page.receipt(who.organisation_id, message_id, found, who.query))
