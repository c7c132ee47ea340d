"""The Billing page in a real headless Chromium, against the running services: the credit bar
moves and changes colour without a reload, seats follow the directory, the owner cancels
through the confirmation screen and reactivates, a non-owner sees the actions disabled.
Screenshots go to `test-artefacts/`."""

from __future__ import annotations

import uuid

import pytest
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Browser, BrowserContext, expect
from playwright.async_api import Page as Tab
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from shared.devstack import free_port
from shared.events import AgentMessageProcessed, AgentMessageProcessedV1
from shared.events.members import MemberJoinedV1, MemberRole, MemberState, MemberStatus
from shared.topics import AGENT_USAGE, WORKSPACE_MEMBERS
from tests.dashboard.conftest import ARTEFACTS, LIVE, Page, serving
from tests.subscriptions.conftest import MEMBER, OWNER
from tests.subscriptions.test_lifecycle import checkout_through_stripe

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def open_page(
    browser: Browser, page: Page, org: str, member: str
) -> tuple[BrowserContext, Tab]:
    await page.knows(org, member)
    context = await browser.new_context(
        extra_http_headers=page.billing.acting(org, member),
        viewport={"width": 1100, "height": 1400},
    )
    tab = await context.new_page()
    await tab.goto(f"{page.url}/billing")
    return context, tab


async def use(page: Page, org: str, *credits: int) -> None:
    """The agent runtime reports processed messages."""
    await page.billing.publish(
        AGENT_USAGE,
        *(
            AgentMessageProcessedV1.new(
                organisation_id=org,
                producer="agent-runtime",
                occurred_at=page.billing.clock.now(),
                data=AgentMessageProcessed(
                    member_id=OWNER,
                    agent_id="agent_research",
                    conversation_id="conv_1",
                    message_id=f"msg_{uuid.uuid4().hex[:10]}",
                    credits=amount,
                ),
            )
            for amount in credits
        ),
    )


async def shot(tab: Tab, name: str) -> None:
    ARTEFACTS.mkdir(exist_ok=True)
    await tab.screenshot(path=str(ARTEFACTS / f"{name}.png"), full_page=True)


async def test_the_billing_page_is_live(dashboard: Page, browser: Browser) -> None:
    billing = dashboard.billing
    org = f"org_{uuid.uuid4().hex[:10]}"
    await billing.organisation(org)  # Free: 1,000 credits; an owner, an admin, a member
    context, tab = await open_page(browser, dashboard, org, OWNER)
    bar = tab.locator("#credit-bar")
    await expect(bar).to_have_attribute("data-colour", "green", timeout=LIVE)
    await expect(tab.locator("#credits-left")).to_have_text("1,000", timeout=LIVE)
    await expect(tab.locator("#seats-used")).to_have_text("3", timeout=LIVE)
    await expect(tab.locator("#seat-limit")).to_have_text("3")
    loaded = await tab.evaluate("performance.timeOrigin")

    await use(dashboard, org, 400, 200)  # 40 % left
    await expect(bar).to_have_attribute("data-colour", "amber", timeout=LIVE)
    await expect(tab.locator("#credits-left")).to_have_text("400")
    await use(dashboard, org, 300)  # 10 % left
    await expect(bar).to_have_attribute("data-colour", "red", timeout=LIVE)
    await expect(tab.locator("#recent")).to_contain_text("agent_research")
    await shot(tab, "billing-free-red")
    await use(dashboard, org, 100)  # exhausted
    await expect(bar).to_have_attribute("data-colour", "grey", timeout=LIVE)

    # Seats follow the member directory: over Free's limit, nobody removed.
    await billing.publish(
        WORKSPACE_MEMBERS,
        billing.directory(
            MemberJoinedV1,
            org,
            MemberState(
                member_id="member_new",
                role=MemberRole.MEMBER,
                status=MemberStatus.ACTIVE,
                sequence=1,
            ),
        ),
    )
    await expect(tab.locator("#seats-used")).to_have_text("4", timeout=LIVE)
    await expect(tab.locator("#over-limit")).to_be_visible()

    # A paid plan (Checkout completed in devstripe, reported by the gateway).
    await checkout_through_stripe(billing, org, "pro")
    await expect(tab.locator("#plan-name")).to_have_text("Pro", timeout=LIVE)
    await expect(bar).to_have_attribute("data-colour", "green", timeout=LIVE)
    await expect(tab.locator("#over-limit")).to_have_count(0, timeout=LIVE)
    await shot(tab, "billing-pro")
    assert await tab.evaluate("performance.timeOrigin") == loaded  # all live, no reload

    # Cancel through the confirmation screen; the banner appears; reactivate; it goes.
    await tab.locator("#cancel").click()
    await expect(tab.locator("#confirm")).to_be_visible()
    await shot(tab, "billing-cancel-confirmation")
    await tab.locator("#confirm-cancel").click()
    await expect(tab.locator("#cancelled")).to_be_visible(timeout=LIVE)
    await expect(tab.locator("#reactivate")).to_be_enabled()
    await shot(tab, "billing-cancelled")
    await tab.locator("#reactivate").click()
    await expect(tab.locator("#cancelled")).to_have_count(0, timeout=LIVE)
    await context.close()


async def test_a_non_owner_sees_the_actions_disabled(dashboard: Page, browser: Browser) -> None:
    org = f"org_{uuid.uuid4().hex[:10]}"
    await dashboard.billing.organisation(org)
    context, tab = await open_page(browser, dashboard, org, MEMBER)

    await expect(tab.locator("#actions-reason")).to_have_text(
        "Only an owner can change the plan or billing", timeout=LIVE
    )
    for button in ("#change-plan", "#manage-billing", "#cancel"):
        await expect(tab.locator(button)).to_be_disabled()
    await shot(tab, "billing-non-owner")
    results = await Axe().run(tab)
    grave = [
        v["id"] for v in results.response["violations"] if v["impact"] in {"serious", "critical"}
    ]
    assert grave == []
    await context.close()


async def test_a_page_without_identity_is_refused(dashboard: Page, browser: Browser) -> None:
    context = await browser.new_context()
    tab = await context.new_page()
    response = await tab.goto(f"{dashboard.url}/billing")
    assert response is not None and response.status == 401
    await context.close()


async def test_a_page_on_another_origin_cannot_act_for_the_owner(
    dashboard: Page, browser: Browser
) -> None:
    """A site the owner visits posts the Billing page's forms (the browser would add the
    owner's session, as it adds the identity here): the dashboard refuses, nothing changes."""
    billing = dashboard.billing
    org = f"org_{uuid.uuid4().hex[:10]}"
    await billing.organisation(org)
    await checkout_through_stripe(billing, org, "pro")
    await dashboard.knows(org, OWNER)
    evil = Starlette(
        routes=[
            Route(
                "/",
                lambda _: HTMLResponse(
                    f"<form id='f' method='post' action='{dashboard.url}/billing/cancel'></form>"
                    "<script>document.getElementById('f').submit()</script>"
                ),
            )
        ]
    )
    port = free_port()
    async with serving(evil, port):
        context = await browser.new_context(extra_http_headers=billing.acting(org, OWNER))
        tab = await context.new_page()
        async with tab.expect_response(f"{dashboard.url}/billing/cancel") as answer:
            await tab.goto(f"http://localhost:{port}/")
        response = await answer.value
        assert response.status == 403
        assert (await response.json())["type"].endswith("cross-origin-refused")
        await context.close()
    assert (await billing.subscription(org))["cancel_at_period_end"] is False
