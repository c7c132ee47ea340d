"""The page's live stream and its identity check, over HTTP without a browser."""

from __future__ import annotations

import uuid

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.testing import eventually
from tests.dashboard.conftest import Page
from tests.dashboard.test_billing_page import use
from tests.subscriptions.conftest import OWNER

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def first_view(page: Page, org: str) -> str:
    """Connect to the page's stream, read the view it sends first, disconnect."""
    headers = {page.settings.organisation_header: org, page.settings.member_header: OWNER}
    async with httpx.AsyncClient(base_url=page.url, timeout=20) as client:
        async with client.stream("GET", "/billing/stream", headers=headers) as response:
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
    organisation=st.none()
    | st.text(max_size=80)
    | st.from_regex(r"org_[a-z0-9]{1,8}", fullmatch=True),
    member=st.none() | st.text(max_size=140),
)
async def test_generated_identities_get_a_page_or_a_4xx(
    dashboard: Page, organisation: str | None, member: str | None
) -> None:
    headers: dict[str, bytes] = {}
    for name, value in (
        (dashboard.settings.organisation_header, organisation),
        (dashboard.settings.member_header, member),
    ):
        if value is not None:
            headers[name] = value.encode("utf-8", "surrogatepass")
    async with httpx.AsyncClient(base_url=dashboard.url) as client:
        try:
            response = await client.get("/billing", headers=headers)
        except (httpx.LocalProtocolError, UnicodeError):
            return  # not a valid header value at all: nothing reaches the server
    assert response.status_code in {200, 400, 401}, (response.status_code, response.text)
    if response.text == "Invalid HTTP request received.":
        return  # the server's HTTP parser refused the bytes before the application
    if response.status_code != 200:
        assert response.headers["content-type"] == "application/problem+json"
