"""Every flow of the Billing page, in Chromium, on a desktop (1280×900) and on a phone
(390×844), with the keyboard alone: each ends on the page with a message that stays until
dismissed or replaced, and axe-core finds no serious or critical violation in any state.
Screenshots go to `test-artefacts/` (the README shows some)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Browser, expect
from playwright.async_api import Page as Tab

from shared.events import AgentMessageMetered, AgentMessageProcessedV2
from shared.topics import AGENT_USAGE
from tests.dashboard.conftest import ARTEFACTS, LIVE, Page
from tests.dashboard.test_billing_page import use
from tests.subscriptions.conftest import MEMBER, OWNER

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

VIEWPORTS = {"desktop": (1280, 900), "phone": (390, 844)}
AXE = Axe()


class Flow:
    """One owner's Billing page in a browser of one size."""

    def __init__(self, dashboard: Page, tab: Tab, org: str, viewport: str) -> None:
        self.dashboard, self.tab, self.org, self.viewport = dashboard, tab, org, viewport
        self.choices = 0

    async def check(self, state: str) -> None:
        """No serious or critical accessibility violation; a screenshot of the state."""
        results = await AXE.run(self.tab)
        grave = [
            (v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
            for v in results.response["violations"]
            if v["impact"] in {"serious", "critical"}
        ]
        assert grave == [], (state, self.viewport, grave)
        width = await self.tab.evaluate("document.documentElement.scrollWidth")
        assert width <= VIEWPORTS[self.viewport][0], (state, "wider than the screen", width)
        ARTEFACTS.mkdir(exist_ok=True)
        modal = await self.tab.locator("dialog[open]").count()
        await self.tab.screenshot(
            path=str(ARTEFACTS / f"flow-{state}-{self.viewport}.png"), full_page=not modal
        )

    async def notice(self, code: str) -> None:
        await expect(self.tab.locator("#notice")).to_have_attribute("data-code", code, timeout=LIVE)

    async def press(self, selector: str) -> None:
        """A button or link, with the keyboard alone: focus it, then Enter."""
        await self.tab.locator(selector).focus()
        await self.tab.keyboard.press("Enter")

    async def on_pro(self) -> None:
        """From Free to Pro monthly, paid in Stripe's Checkout."""
        await self.choose("pro:monthly")
        await self.press("#pay")
        await expect(self.tab.locator("#plan-name")).to_have_text("Pro", timeout=LIVE)

    async def choose(self, value: str) -> None:
        """Change plan → the pricing modal → a plan and cycle, with the keyboard alone."""
        await self.press("#change-plan")
        await expect(self.tab.locator("#pricing")).to_be_visible()
        await self.check(f"pricing-{self.choices}")
        self.choices += 1
        await self.press(f"#choose-{value.replace(':', '-')}")


async def flow(browser: Browser, dashboard: Page, viewport: str) -> AsyncIterator[Flow]:
    org = f"org_{uuid.uuid4().hex[:10]}"
    await dashboard.billing.organisation(org)
    await dashboard.knows(org, OWNER)
    width, height = VIEWPORTS[viewport]
    context = await browser.new_context(
        extra_http_headers=dashboard.billing.acting(org, OWNER),
        viewport={"width": width, "height": height},
        is_mobile=viewport == "phone",
        has_touch=viewport == "phone",
    )
    tab = await context.new_page()
    await tab.goto(f"{dashboard.url}/billing")
    await expect(tab.locator("#credits-left")).to_have_text("1,000", timeout=LIVE)
    try:
        yield Flow(dashboard, tab, org, viewport)
    finally:
        await context.close()


@pytest.mark.parametrize("viewport", VIEWPORTS)
async def test_checkout_from_free_and_back_with_the_outcome(
    browser: Browser, dashboard: Page, viewport: str
) -> None:
    async for f in flow(browser, dashboard, viewport):
        await f.check("free")
        await f.choose("pro:monthly")
        await expect(f.tab.locator("#cancel")).to_be_visible(timeout=LIVE)  # Stripe's page
        await f.press("#cancel")
        await f.notice("checkout_cancelled")
        await expect(f.tab.locator("#plan-name")).to_have_text("Free")

        await f.choose("pro:monthly")
        await f.press("#pay")
        await f.notice("checkout_success")
        await expect(f.tab.locator("#plan-name")).to_have_text("Pro", timeout=LIVE)
        await expect(f.tab.locator("#credits-left")).to_have_text("20,000", timeout=LIVE)
        await f.notice("checkout_success")  # live updates leave the message alone
        await f.check("paid")
        await f.press("#dismiss-notice")
        await expect(f.tab.locator("#notice")).to_have_count(0)
        assert "checkout=" not in f.tab.url

        # The invoice of the first month, from Stripe through the gateway, with its PDF.
        invoice = f.tab.locator("#invoice-list tr").nth(1)
        await expect(invoice).to_contain_text("paid", timeout=LIVE)
        held = await f.dashboard.billing.gateway.http.get(f"/v1/organisations/{f.org}/invoices")
        (first,) = held.json()
        assert first["status"] == "paid" and first["amount_due"] >= 2000
        await expect(invoice).to_contain_text(f"${first['amount_due'] // 100}")
        pdf = await invoice.get_by_role("link", name="PDF").get_attribute("href")
        answer = await f.tab.request.get(pdf)
        assert answer.ok and (await answer.body()).startswith(b"%PDF-")
        await f.check("invoices")

        # Heavy use early in the period: the runway warns (whatever the percentage left), and
        # the usage shows it by member and agent.
        await use(f.dashboard, f.org, 4000, 3000)
        await expect(f.tab.locator("#runway")).to_contain_text("run out", timeout=LIVE)
        await expect(f.tab.locator("#usage-total")).to_have_text("7,000", timeout=LIVE)
        await expect(f.tab.locator("#by-agent")).to_contain_text("agent_research")
        await f.check("runway-warning")


@pytest.mark.parametrize("viewport", VIEWPORTS)
async def test_upgrade_downgrade_and_withdraw_in_the_pricing_modal(
    browser: Browser, dashboard: Page, viewport: str
) -> None:
    async for f in flow(browser, dashboard, viewport):
        await f.on_pro()

        await f.choose("max:monthly")
        await f.notice("upgraded")
        await expect(f.tab.locator("#plan-name")).to_have_text("Max", timeout=LIVE)
        await expect(f.tab.locator("#plan-max")).to_have_class("plan current", timeout=LIVE)

        await f.choose("pro:monthly")
        await f.notice("downgrade_scheduled")
        await expect(f.tab.locator("#pending")).to_be_visible(timeout=LIVE)
        await f.check("downgrade-scheduled")

        await f.choose("max:monthly")  # "Keep this plan"
        await f.notice("downgrade_withdrawn")
        await expect(f.tab.locator("#pending")).to_have_count(0, timeout=LIVE)
        await expect(f.tab.locator("#plan-name")).to_have_text("Max")


@pytest.mark.parametrize("viewport", VIEWPORTS)
async def test_cancel_confirm_reactivate_the_portal_and_a_refusal_in_words(
    browser: Browser, dashboard: Page, viewport: str
) -> None:
    async for f in flow(browser, dashboard, viewport):
        await f.on_pro()

        await f.press("#manage-billing")
        await expect(f.tab.locator("#return")).to_be_visible(timeout=LIVE)  # Stripe's portal
        await f.press("#return")
        await f.notice("portal_returned")

        await f.press("#cancel")
        await expect(f.tab.locator("#confirm")).to_be_visible()
        await f.check("cancel-confirmation")
        await f.press("#confirm-cancel")
        await f.notice("cancelled")
        await expect(f.tab.locator("#cancelled")).to_be_visible(timeout=LIVE)
        await f.check("cancelled")
        await f.press("#reactivate")
        await f.notice("reactivated")
        await expect(f.tab.locator("#cancelled")).to_have_count(0, timeout=LIVE)

        # Cancelled elsewhere while this confirmation was open: refused, said in words.
        await f.press("#cancel")
        await expect(f.tab.locator("#confirm")).to_be_visible()
        elsewhere = await f.dashboard.billing.http.post(
            "/v1/subscription/cancel", headers=f.dashboard.billing.acting(f.org)
        )
        assert elsewhere.status_code == 200
        await f.press("#confirm-cancel")
        await f.notice("refused:already_cancelled")
        await expect(f.tab.locator("#notice")).to_contain_text("already cancelled")
        await f.check("refused")


@pytest.mark.parametrize("viewport", VIEWPORTS)
async def test_buying_credits_and_setting_auto_recharge(
    browser: Browser, dashboard: Page, viewport: str
) -> None:
    """Where the credits are, a pack bought through Stripe's Checkout (payment mode), its
    bucket beside the plan's, and auto-recharge saved: with the keyboard alone."""
    async for f in flow(browser, dashboard, viewport):
        buckets = f.tab.locator("#buckets li")
        await expect(buckets).to_have_count(1, timeout=LIVE)
        await expect(buckets.first).to_have_attribute("data-source", "plan")
        await f.press("#buy-pack_5k")
        await expect(f.tab.locator("#pay")).to_be_visible(timeout=LIVE)  # Stripe's page
        await f.press("#pay")
        await f.notice("pack_paid")
        await expect(f.tab.locator("#credits-left")).to_have_text("6,000", timeout=LIVE)
        await expect(buckets).to_have_count(2, timeout=LIVE)
        await expect(buckets.nth(1)).to_have_attribute("data-source", "pack")
        await f.check("pack-bought")

        await f.tab.locator("#recharge-enabled").focus()
        await f.tab.keyboard.press("Space")
        for field, value in (("#recharge-threshold", "500"), ("#recharge-cap", "10000")):
            await f.tab.locator(field).focus()
            await f.tab.keyboard.press("ControlOrMeta+A")
            await f.tab.keyboard.type(value)
        await f.press("#save-recharge")
        await f.notice("auto_recharge_saved")
        await expect(f.tab.locator("#recharge-state")).to_contain_text("on", timeout=LIVE)
        await expect(f.tab.locator("#recharge-threshold")).to_have_value("500")
        await f.check("auto-recharge")


@pytest.mark.parametrize("viewport", VIEWPORTS)
async def test_setting_budgets_and_following_usage_down_to_a_receipt(
    browser: Browser, dashboard: Page, viewport: str
) -> None:
    """An owner caps a member's monthly credits from the page; the member then sees their own
    budget and what is left of it; usage is followed day → agent → conversation → message to
    the message's receipt, priced by the rate card: with the keyboard alone."""
    async for f in flow(browser, dashboard, viewport):
        for field, value in (("#budget-subject", MEMBER), ("#budget-cap", "300")):
            await f.tab.locator(field).focus()
            await f.tab.keyboard.type(value)
        await f.press("#save-budget")
        await f.notice("budget_saved")
        row = f.tab.locator("#member-budgets tr", has_text=MEMBER)
        await expect(row).to_contain_text("300", timeout=LIVE)
        await f.check("budgets")

        billing = dashboard.billing
        await billing.publish(
            AGENT_USAGE,
            AgentMessageProcessedV2.new(
                organisation_id=f.org,
                producer="agent-runtime",
                occurred_at=billing.clock.now(),
                data=AgentMessageMetered(
                    member_id=MEMBER,
                    agent_id="agent_writer",
                    conversation_id="conv_plans",
                    message_id="msg_first",
                    model="claude-haiku",
                    input_tokens=40_000,
                    output_tokens=5_000,
                    tool_calls=2,
                ),
            ),
        )
        await expect(row).to_contain_text("28", timeout=LIVE)  # 16 + 10 + 2 credits spent

        member = await browser.new_context(
            extra_http_headers=billing.acting(f.org, MEMBER),
            viewport={"width": VIEWPORTS[viewport][0], "height": VIEWPORTS[viewport][1]},
        )
        try:
            mine = await member.new_page()
            await mine.goto(f"{dashboard.url}/billing")
            await expect(mine.locator("#my-budget-left")).to_have_text("272", timeout=LIVE)
            await expect(mine.locator("#save-budget")).to_have_count(0)
        finally:
            await member.close()

        await f.press("#drill-link")
        for name in (None, "agent_writer", "conv_plans", "msg_first"):
            links = f.tab.locator("#drill-down a")
            await expect(links).to_have_count(1, timeout=LIVE)
            if name:
                await expect(links.first).to_have_text(name)
            await f.press("#drill-down a")
        await expect(f.tab.locator("#receipt-settled")).to_contain_text("28 credits")
        await expect(f.tab.locator("#receipt-settled")).to_contain_text("claude-haiku")
        await expect(f.tab.locator("#receipt-buckets")).to_contain_text("28 from plan")
        await f.check("receipt")
