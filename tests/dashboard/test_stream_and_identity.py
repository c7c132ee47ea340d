"""The page's live stream and its identity check, over HTTP without a browser."""

from __future__ import annotations

import contextlib
import uuid
from datetime import timedelta

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import identity
from shared.identity import IDENTITY_HEADER
from shared.testing import eventually
from tests.dashboard.conftest import Page
from tests.dashboard.test_billing_page import use
from tests.subscriptions.conftest import ADMIN, MEMBER, OWNER
from tests.subscriptions.test_lifecycle import checkout_through_stripe

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def first_view(page: Page, org: str) -> str:
    """Connect to the page's stream, read the view it sends first, disconnect."""
    headers = page.billing.acting(org)
    async with httpx.AsyncClient(base_url=page.url, timeout=20) as client:
        async with client.stream("GET", "/billing/stream", headers=headers) as response:
            if response.status_code in {403, 429}:
                return ""  # the member's join not seen yet; pages just closed not freed yet
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    return line
    raise AssertionError("no view")


async def test_a_page_that_reconnects_catches_up(dashboard: Page) -> None:
    org = f"org_{uuid.uuid4().hex[:10]}"
    await dashboard.billing.organisation(org)

    async def shown() -> bool:
        return "1,000</span> of 1,000" in await first_view(dashboard, org)

    await eventually(shown, what="the page shows the Free credits")

    await use(dashboard, org, 250)  # while no page is open
    await dashboard.billing.credits(org, balance=750)

    async def caught_up() -> bool:
        view = await first_view(dashboard, org)
        return "750</span> of 1,000" in view

    await eventually(caught_up, what="the reconnected page shows the change it missed")


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    token=st.none() | st.text(max_size=300),
    organisation=st.text(max_size=80) | st.from_regex(r"org_[a-z0-9]{1,8}", fullmatch=True),
    member=st.text(max_size=140) | st.sampled_from([OWNER, "member_ghost"]),
    signed=st.booleans(),
)
async def test_generated_identities_get_a_page_or_a_4xx(
    dashboard: Page, token: str | None, organisation: str, member: str, signed: bool
) -> None:
    """Whatever the front proxy's header holds: the page for an active member, else a 4xx."""
    headers: dict[str, bytes] = {}
    if signed:
        value = identity.sign(organisation, member, dashboard.billing.clock.now())
        headers[IDENTITY_HEADER] = value.encode()
    elif token is not None:
        headers[IDENTITY_HEADER] = token.encode("utf-8", "surrogatepass")
    async with httpx.AsyncClient(base_url=dashboard.url) as client:
        try:
            response = await client.get("/billing", headers=headers)
        except (httpx.LocalProtocolError, UnicodeError):
            return  # not a valid header value at all: nothing reaches the server
    if response.text == "Invalid HTTP request received.":
        return  # the server's HTTP parser refused the bytes before the application
    assert response.status_code in {200, 400, 401, 403}, (response.status_code, response.text)
    if response.status_code != 200:
        assert response.headers["content-type"] == "application/problem+json"
    else:
        assert signed and member == OWNER, "only a proven, active member sees a page"


async def test_a_non_member_and_a_forged_identity_see_no_page(dashboard: Page) -> None:
    org = f"org_{uuid.uuid4().hex[:10]}"
    await dashboard.billing.organisation(org)
    other = f"org_{uuid.uuid4().hex[:10]}"
    await dashboard.billing.organisation(other)
    now = dashboard.billing.clock.now()
    forger = Ed25519PrivateKey.generate()
    cases = {
        "a member of another organisation": (
            identity.sign(org, "member_of_nothing_here", now),
            403,
            "not-a-member",
        ),
        "forged with another key": (
            identity.sign(org, OWNER, now, key=forger),
            401,
            "invalid-identity",
        ),
        "expired": (
            identity.sign(org, OWNER, now - timedelta(minutes=10)),
            401,
            "invalid-identity",
        ),
    }
    async with httpx.AsyncClient(base_url=dashboard.url) as client:

        async def members_known() -> bool:
            answer = await client.get("/billing", headers=dashboard.billing.acting(org))
            return answer.status_code == 200

        await eventually(members_known, what="the dashboard knows the organisation's members")
        for what, (token, status, slug) in cases.items():
            for path in ("/billing", "/billing/stream"):
                answer = await client.get(path, headers={IDENTITY_HEADER: token})
                assert answer.status_code == status, (what, path, answer.text)
                assert answer.json()["type"].endswith(slug), (what, answer.json())
        answer = await client.post(
            "/billing/cancel",
            headers={
                IDENTITY_HEADER: identity.sign(other, OWNER, now)[:-4],
                "Origin": dashboard.url,
            },
        )
        assert answer.status_code == 401


async def test_live_pages_per_member_are_limited_with_a_clear_answer(dashboard: Page) -> None:
    org = f"org_{uuid.uuid4().hex[:10]}"
    await dashboard.billing.organisation(org)
    limit = dashboard.settings.max_streams_per_member
    await eventually(lambda: _first_is_view(dashboard, org), what="the dashboard knows the members")
    async with contextlib.AsyncExitStack() as open_pages:
        client = await open_pages.enter_async_context(
            httpx.AsyncClient(base_url=dashboard.url, timeout=20)
        )
        for _ in range(limit):
            response = await open_pages.enter_async_context(
                client.stream("GET", "/billing/stream", headers=dashboard.billing.acting(org))
            )
            assert response.status_code == 200
        refused = await client.get("/billing/stream", headers=dashboard.billing.acting(org))
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"].endswith("too-many-streams")
        assert refused.headers["Retry-After"]
        other = dashboard.billing.acting(org, ADMIN)
        async with client.stream("GET", "/billing/stream", headers=other) as response:
            assert response.status_code == 200  # another member of the organisation may
    await eventually(lambda: _first_is_view(dashboard, org), what="closed pages free their places")


async def _first_is_view(page: Page, org: str) -> bool:
    return (await first_view(page, org)).startswith("data: ")


async def test_owners_see_the_audit_log_on_a_plan_that_has_it(dashboard: Page) -> None:
    org = f"org_{uuid.uuid4().hex[:10]}"
    await dashboard.billing.organisation(org)
    await dashboard.knows(org, OWNER)

    async def page_of(member: str) -> str:
        async with httpx.AsyncClient(base_url=dashboard.url) as client:
            answer = await client.get("/billing", headers=dashboard.billing.acting(org, member))
        assert answer.status_code == 200, answer.text
        return answer.text

    async def upsold() -> bool:
        return "id='audit-upsell'" in await page_of(OWNER)

    await eventually(upsold, what="a Free owner is told the audit log comes with Max")
    await checkout_through_stripe(dashboard.billing, org, "max")

    async def listed() -> bool:
        page = await page_of(OWNER)
        return "id='audit-log'" in page and f"<td>{OWNER}</td><td>plan change</td>" in page

    await eventually(listed, what="the owner's plan change in the page's audit log")
    assert "id='audit" not in await page_of(MEMBER)
