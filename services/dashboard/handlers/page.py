# ruff: noqa: E501  (HTML templates read better unwrapped)
"""The Billing page, rendered on the server. The live part (`main`) is rendered by `main()`,
both for the first load and for every update pushed to an open page."""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from ..domain.notices import Notice
from ..domain.pricing import Choice, choices
from ..domain.view import Actions, Runway, actions, bar_colour, runway
from ..store import Stored

STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330;line-height:1.4}
header{background:#1d2330;color:#fff;padding:14px 24px;font-weight:600}
main,#notices{max-width:980px;margin:0 auto;padding:0 24px}main{padding-bottom:24px}
section{background:#fff;border:1px solid #e2e5ea;border-radius:10px;padding:16px 20px;margin:14px 0}
h2{font-size:15px;margin:0 0 10px;color:#3d4454;text-transform:uppercase;letter-spacing:.04em}
.bar{height:18px;background:#e8ebef;border-radius:9px;overflow:hidden}
.fill{height:100%;transition:width .3s}
.green{background:#2fa84f}.amber{background:#f0a202}.red{background:#d64545}.grey{background:#9aa1ac}
.big{font-size:26px;font-weight:700}.muted{color:#555d6d;font-size:13px}
.banner{border-radius:8px;padding:10px 14px;margin:8px 0;font-weight:500}
.warn{background:#fff4d6;border:1px solid #f0c75e}.danger{background:#fde8e8;border:1px solid #e9a0a0}
.info{background:#e8f1fd;border:1px solid #9cc0ef}
#notice{display:flex;gap:12px;align-items:flex-start;justify-content:space-between;margin-top:14px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:14px}td,th{padding:4px 6px;text-align:left}
th{color:#555d6d;font-weight:500}.cols{display:flex;gap:16px}.cols>div{flex:1;min-width:0}
button,.button{font:inherit;padding:7px 14px;border-radius:6px;border:1px solid #1d2330;background:#1d2330;
color:#fff;cursor:pointer;text-decoration:none;display:inline-block}
button.secondary{background:#fff;color:#1d2330}
button[disabled]{background:#e2e5ea;border-color:#c9cdd4;color:#4a5263;cursor:not-allowed}
button:focus-visible,a:focus-visible{outline:3px solid #5b7bd5;outline-offset:2px}
form{display:inline-block;margin:4px 8px 4px 0}
.chart{display:flex;align-items:flex-end;gap:2px;height:80px}.chart div{flex:1;background:#5b7bd5;min-height:1px}
dialog{border:none;border-radius:12px;padding:0;max-width:min(980px,96vw);width:100%}
dialog::backdrop{background:rgba(20,24,33,.55)}
.dialog-head{display:flex;justify-content:space-between;align-items:center;padding:14px 20px;border-bottom:1px solid #e2e5ea}
.plans{display:grid;grid-template-columns:repeat(auto-fit,minmax(200px,1fr));gap:12px;padding:16px 20px}
.plan{border:1px solid #e2e5ea;border-radius:10px;padding:12px}.plan.current{border:2px solid #2fa84f}
.plan h3{margin:0 0 4px;font-size:17px}.plan ul{padding-left:18px;margin:6px 0;font-size:13px}
.option{border-top:1px solid #eef0f3;padding-top:8px;margin-top:8px}.option p{margin:4px 0}
.tag{display:inline-block;background:#1d6b34;color:#fff;border-radius:4px;padding:0 6px;font-size:12px}
.saving{color:#1f7a3a;font-weight:600}
.periods a{margin-right:10px;color:#2f4fb0}
h3{font-size:15px;margin:14px 0 6px}
form.recharge{display:grid;grid-template-columns:max-content minmax(8rem,16rem);gap:8px 12px;align-items:center}
.recharge label:first-child,.recharge button{grid-column:1/-1;justify-self:start}
.recharge input[type=number],.recharge select{font:inherit;padding:5px 8px}
@media (max-width:600px){
 form.recharge{grid-template-columns:1fr}
 header{padding:12px 14px}main,#notices{padding:0 10px}section{padding:12px}
 .cols{flex-direction:column}.big{font-size:22px}form{display:block}
 form button,.button,#change-plan{width:100%;margin:4px 0}
 dialog{max-width:100vw;width:100vw;max-height:100vh;height:100vh;margin:0;border-radius:0}
}
"""

SCRIPT = """
const live = document.getElementById('live');
let waiting = null;
function apply(update) {
  const focused = document.activeElement && live.contains(document.activeElement)
    ? document.activeElement.id : null;
  live.innerHTML = update.html;
  document.body.dataset.version = update.version;
  const again = focused && document.getElementById(focused);
  if (again) { again.focus(); }
}
function pricing() { return document.getElementById('pricing'); }
const source = new EventSource(window.location.pathname + '/stream' + window.location.search);
source.addEventListener('view', (event) => {
  const update = JSON.parse(event.data);
  const open = pricing();
  if (open && open.open) { waiting = update; } else { apply(update); }
});
document.addEventListener('click', (event) => {
  const opener = event.target.closest('[data-opens]');
  if (opener) { document.getElementById(opener.dataset.opens).showModal(); }
  const closer = event.target.closest('[data-closes]');
  if (closer) { document.getElementById(closer.dataset.closes).close(); }
  if (event.target.closest('#dismiss-notice')) {
    document.getElementById('notice').remove();
    const address = new URL(window.location);
    ['outcome', 'checkout', 'portal'].forEach((p) => address.searchParams.delete(p));
    history.replaceState(null, '', address);
  }
});
document.addEventListener('close', (event) => {
  if (event.target.id === 'pricing' && waiting) { apply(waiting); waiting = null; }
}, true);
"""


def _money(cents: int, currency: str) -> str:
    symbol = {"usd": "$", "eur": "€", "gbp": "£"}.get(currency, "")
    amount = f"{cents / 100:,.2f}".removesuffix(".00")
    return f"{symbol}{amount}" if symbol else f"{amount} {currency.upper()}"


def _when(value: str | None) -> str:
    if not value:
        return "—"
    return datetime.fromisoformat(value.replace("Z", "+00:00")).strftime("%d %b %Y, %H:%M UTC")


def _credits(stored: Stored, now: datetime) -> str:
    credits = stored.credits
    if credits is None:
        return (
            "<section id='credits'><h2>Credits</h2><p class='muted'>No credits yet.</p></section>"
        )
    percent = int(credits["percent_left"])
    colour = bar_colour(percent, credits["level"])
    left = max(0, int(credits["balance"]))
    allotment = int(credits["allotment"])
    of = (
        f"of {allotment:,} credits left"
        if left <= allotment
        else f"credits left: this period's {allotment:,} and your packs"
    )
    return f"""<section id='credits'><h2>Credits</h2>
<div class='big'><span id='credits-left'>{left:,}</span> {of}
<span class='muted'>({percent} %)</span></div>
<div class='bar' role='progressbar' aria-label='Credits left' aria-valuenow='{percent}' aria-valuemin='0' aria-valuemax='100'>
<div id='credit-bar' class='fill {colour}' data-colour='{colour}' data-percent='{percent}'
 style='width:{percent}%'></div></div>
<p class='muted'>Renews {_when(credits.get("renews_at"))} · {int(credits["used"]):,} used this period</p>
{_runway(runway(credits, now))}{_buckets(stored.buckets)}</section>"""


_SOURCES = {
    "plan": "Plan",
    "upgrade_top_up": "Upgrade top-up",
    "rollover": "Rolled over",
    "pack": "Credit pack",
    "auto_recharge": "Auto-recharge",
    "promotion": "Promotion",
    "operator": "Granted by us",
}


def _buckets(buckets: list[dict[str, Any]] | None) -> str:
    """Where the credits are, in the order they are spent."""
    if not buckets:
        return ""
    items = []
    for b in buckets:
        if b["ends_with_period"]:
            ends = f"ends with the period ({_when(b['expires_at'])})"
        elif b["expires_at"]:
            ends = f"expires {_when(b['expires_at'])}"
        else:
            ends = "does not expire"
        items.append(
            f"<li data-source='{escape(b['source'])}'><b>{escape(_SOURCES.get(b['source'], b['source']))}</b>: "
            f"{int(b['remaining']):,} of {int(b['granted']):,} left · {ends}</li>"
        )
    return (
        "<h3>Where your credits are</h3>"
        f"<ul id='buckets'>{''.join(items)}</ul>"
        "<p class='muted'>The credits that expire first are used first.</p>"
    )


def _runway(found: Runway | None) -> str:
    if found is None:
        return ""
    renews = found.renews_at.strftime("%d %b %Y")
    if found.runs_out_at is None:
        return f"<p id='runway' class='muted'>No credits used yet this period; they renew on {renews}.</p>"
    out = found.runs_out_at.strftime("%d %b %Y")
    if not found.before_renewal:
        return (
            f"<p id='runway' class='muted'>At this pace ({found.per_day:,} a day) your credits "
            f"last until {out}, after they renew on {renews}.</p>"
        )
    return (
        f"<div id='runway' class='banner warn' role='alert'>At this pace ({found.per_day:,} a "
        f"day) your credits run out on <b>{out}</b>, before they renew on {renews}. Members "
        "cannot send messages to agents once they are gone: consider a larger plan.</div>"
    )


def _invoices(stored: Stored, can: Actions, catalogue: dict[str, Any] | None) -> str:
    """The latest invoices from Stripe, for owners: date, amount, status, Stripe's page and PDF."""
    if not can.allowed or (
        stored.invoices is None and not (stored.subscription or {}).get("stripe_subscription_id")
    ):
        return ""
    if stored.invoices is None:
        return (
            "<section id='invoices'><h2>Invoices</h2><p class='muted' id='invoices-unavailable'>"
            "Invoices are unavailable right now; they show again in a moment.</p></section>"
        )
    currency = (catalogue or {}).get("currency", "usd")
    rows = (
        "".join(
            f"<tr><td>{escape(_day(i.get('period_start')))}</td>"
            f"<td>{_money(int(i['amount_due']), i.get('currency') or currency)}</td>"
            f"<td><span class='status-{escape(i['status'])}'>{escape(i['status'])}</span></td><td>"
            + (
                f"<a href='{escape(i['hosted_url'])}' rel='noopener'>View</a> "
                if i.get("hosted_url")
                else ""
            )
            + (
                f"<a href='{escape(i['pdf_url'])}' rel='noopener'>PDF</a>"
                if i.get("pdf_url")
                else ""
            )
            + "</td></tr>"
            for i in stored.invoices
        )
        or "<tr><td colspan='4' class='muted'>No invoices yet.</td></tr>"
    )
    return f"""<section id='invoices'><h2>Invoices</h2>
<div class='scroll' tabindex='0' role='region' aria-label='Invoices'><table id='invoice-list'>
<tr><th>Date</th><th>Amount</th><th>Status</th><th>Invoice</th></tr>{rows}</table></div></section>"""


def _day(value: str | None) -> str:
    if not value:
        return "—"
    return datetime.fromisoformat(value.replace("Z", "+00:00")).strftime("%d %b %Y")


def _audit(stored: Stored, can: Actions) -> str:
    """The audit log, for owners, on a plan that has it (Max, Enterprise)."""
    if not can.allowed:
        return ""
    features = (stored.subscription or {}).get("features", [])
    if "audit_log" not in features:
        return (
            "<section id='audit'><h2>Audit log</h2><p class='muted' id='audit-upsell'>"
            "Who changed the plan or billing, and when: the audit log comes with Max and "
            "Enterprise.</p></section>"
        )
    rows = (
        "".join(
            f"<tr><td>{escape(a.occurred_at.strftime('%d %b %H:%M'))}</td>"
            f"<td>{escape(a.actor)}</td><td>{escape(a.action.replace('_', ' '))}</td>"
            f"<td>{escape(a.target or '')}</td><td>{escape(a.outcome)}</td>"
            f"<td class='muted'>{escape(a.request_id)}</td></tr>"
            for a in stored.audit
        )
        or "<tr><td colspan='6' class='muted'>Nothing recorded yet.</td></tr>"
    )
    return f"""<section id='audit'><h2>Audit log</h2><div class='scroll' tabindex='0' role='region' aria-label='Audit log'><table id='audit-log'>
<tr><th>When</th><th>Who</th><th>What</th><th>To</th><th>Outcome</th><th>Request</th></tr>{rows}
</table></div></section>"""


def _usage(stored: Stored, query: str) -> str:
    """Usage as metering's ledger holds it, for the credit period shown; the earlier periods
    as links."""
    denied = (
        "".join(
            f"<tr><td>{escape(d.occurred_at.strftime('%d %b %H:%M'))}</td><td>{escape(d.member_id)}</td>"
            f"<td>{escape(d.agent_id or '')}</td><td>{escape(d.reason or '')}</td></tr>"
            for d in stored.denials
        )
        or "<tr><td colspan='4' class='muted'>No denied sends.</td></tr>"
    )
    denials = f"""<h2 style='margin-top:14px'>Denied sends</h2>
<div class='scroll' tabindex='0' role='region' aria-label='Denied sends'><table id='denied'><tr><th>When</th><th>Member</th><th>Agent</th><th>Reason</th></tr>{denied}</table></div>"""
    usage = stored.usage
    if stored.period is None:
        return f"<section id='usage'><h2>Usage</h2><p class='muted'>No credit period yet.</p>{denials}</section>"
    start, end = stored.period
    span = f"{start:%d %b %Y} – {'now' if stored.current_period else f'{end:%d %b %Y}'}"
    if usage is None:
        return (
            f"<section id='usage'><h2>Usage · {span}</h2><p class='muted' id='usage-unavailable'>"
            f"Usage is unavailable right now; it shows again in a moment.</p>{denials}</section>"
        )
    days = usage["by_day"]
    peak = max((d["credits"] for d in days), default=0) or 1
    bars = "".join(
        f"<div title='{escape(d['name'])}: {d['credits']:,}' style='height:{round(d['credits'] * 100 / peak)}%'></div>"
        for d in days
    )
    members = "".join(
        f"<tr><td>{escape(m['name'] or '—')}</td><td>{m['credits']:,}</td></tr>"
        for m in usage["by_member"][:8]
    )
    agents = "".join(
        f"<tr><td>{escape(a['name'] or '—')}</td><td>{a['credits']:,}</td></tr>"
        for a in usage["by_agent"][:8]
    )
    rows = (
        "".join(
            f"<tr><td>{escape(datetime.fromisoformat(d['occurred_at']).strftime('%d %b %H:%M'))}</td>"
            f"<td>{escape(d['member_id'] or '')}</td><td>{escape(d['agent_id'] or '')}</td><td>{d['credits']:,}</td></tr>"
            for d in usage["recent"]
        )
        or "<tr><td colspan='4' class='muted'>No usage yet.</td></tr>"
    )
    return f"""<section id='usage'><h2>Usage · {span}</h2>
<p><span class='big' id='usage-total'>{usage["total"]:,}</span> credits used by
<span id='usage-messages'>{usage["messages"]:,}</span> messages</p>
<div class='chart' id='usage-chart' role='img' aria-label='Credits per day'>{bars}</div><p class='muted'>Credits per day (UTC)</p>
<div class='cols'><div><table id='by-member'><tr><th>By member</th><th>Credits</th></tr>{members}</table></div>
<div><table id='by-agent'><tr><th>By agent</th><th>Credits</th></tr>{agents}</table></div></div>
<h2 style='margin-top:14px'>Recent debits</h2>
<div class='scroll' tabindex='0' role='region' aria-label='Recent debits'><table id='recent'><tr><th>When</th><th>Member</th><th>Agent</th><th>Credits</th></tr>{rows}</table></div>
<p><a id='drill-link' href='/billing/usage?{_hidden_link(query)}'>Usage by day, agent, conversation and message</a></p>
{_periods(usage, stored, query)}{denials}</section>"""


def _periods(usage: dict[str, Any], stored: Stored, query: str) -> str:
    starts = [datetime.fromisoformat(p) for p in usage.get("periods", [])]
    current = stored.period[0] if stored.current_period and stored.period else None
    links = []
    base = dict(parse_qsl(query.lstrip("?")))
    if not stored.current_period:
        links.append(
            f"<a href='/billing?{escape(urlencode(base))}' id='period-current'>Current period</a>"
        )
    for start in starts:
        if start == current or (stored.period and start == stored.period[0]):
            continue
        address = urlencode({**base, "period": start.isoformat()})
        links.append(f"<a href='/billing?{escape(address)}'>{start:%d %b %Y}</a>")
    if not links:
        return ""
    return f"<p class='periods' id='periods'>Earlier periods: {''.join(links)}</p>"


def _plan(stored: Stored, can: Actions, query: str) -> str:
    sub = stored.subscription
    if sub is None:
        return "<section id='plan'><h2>Plan</h2><p class='muted'>No subscription yet.</p></section>"
    banners = []
    if sub.get("standing") == "past_due":
        banners.append(
            "<div class='banner danger' id='past-due'>A payment failed. Update your payment "
            "method in Manage billing; your plan continues while Stripe retries.</div>"
        )
    if sub.get("cancel_at_period_end"):
        reactivate = (
            f"<form method='post' action='/billing/reactivate{query}'>"
            f"<button id='reactivate' {'disabled' if not can.reactivate else ''}>Reactivate plan</button></form>"
        )
        banners.append(
            f"<div class='banner warn' id='cancelled'>Your plan is cancelled and ends on "
            f"{_when(sub.get('paid_period_end'))}; then the organisation moves to Free. {reactivate}</div>"
        )
    if sub.get("pending_plan"):
        banners.append(
            f"<div class='banner info' id='pending'>Changes to {escape(sub['pending_plan'].title())} "
            f"on {_when(sub.get('paid_period_end'))}.</div>"
        )
    cycle = f" · billed {escape(sub['cycle'])}" if sub.get("cycle") else ""
    end = sub.get("paid_period_end") or sub.get("credit_period_end")
    return f"""<section id='plan'><h2>Plan</h2>
<div class='big' id='plan-name'>{escape(sub["plan"].title())}</div>
<p class='muted'>{int(sub["monthly_credits"]):,} credits a month{cycle} · current period ends {_when(end)}</p>
{"".join(banners)}</section>"""


def _seats(stored: Stored) -> str:
    seats = stored.seats
    if seats is None:
        return "<section id='seats'><h2>Seats</h2><p class='muted'>No members yet.</p></section>"
    limit = "unlimited" if seats.get("seat_limit") is None else f"{seats['seat_limit']:,}"
    over = (
        "<div class='banner danger' id='over-limit'>More members than the plan's seats: nobody "
        "was removed, but no one can be added until members leave or the plan changes.</div>"
        if seats.get("over_limit")
        else ""
    )
    return f"""<section id='seats'><h2>Seats</h2>
<div class='big'><span id='seats-used'>{seats["seats_used"]:,}</span> of <span id='seat-limit'>{limit}</span> seats used</div>
<p class='muted'>Owners: {escape(", ".join(seats.get("owners", [])) or "none")}</p>{over}</section>"""


def _actions(stored: Stored, can: Actions, catalogue: dict[str, Any] | None, query: str) -> str:
    def disabled(allowed: bool) -> str:
        return "" if allowed else "disabled"

    sub = stored.subscription or {}
    notes = []
    if can.reason:
        notes.append(f"<p class='muted' id='actions-reason'>{escape(can.reason)}</p>")
    elif not can.manage_billing:
        notes.append(
            "<p class='muted' id='billing-reason'>Manage billing (payment methods, invoices, "
            "billing details) and Cancel apply to a paid plan.</p>"
        )
    elif sub.get("cancel_at_period_end"):
        notes.append(
            "<p class='muted' id='billing-reason'>Your plan is cancelled: reactivate it to "
            "change plan or cancel again.</p>"
        )
    return f"""<section id='actions'><h2>Billing actions</h2>{"".join(notes)}
<button type='button' id='change-plan' data-opens='pricing' aria-haspopup='dialog' {disabled(can.change_plan)}>Change plan</button>
<form method='post' action='/billing/portal{query}'><button id='manage-billing' class='secondary' {disabled(can.manage_billing)}>Manage billing</button></form>
<form method='get' action='/billing/cancel'>{_hidden(query)}<button id='cancel' class='secondary' {disabled(can.cancel)}>Cancel subscription</button></form>
{_pricing(stored, can, catalogue, query) if can.change_plan else ""}
</section>"""


def _packs(stored: Stored, can: Actions, catalogue: dict[str, Any] | None, query: str) -> str:
    """Credit packs to buy now, and auto-recharge (owners act; everyone sees)."""
    packs = (catalogue or {}).get("packs") or []
    if not packs:
        return ""
    currency = (catalogue or {}).get("currency", "usd")
    off = "" if can.allowed else "disabled"
    buy = "".join(
        f"<form method='post' action='/billing/credit-packs{query}'>"
        f"<input type='hidden' name='pack' value='{escape(p['pack'])}'>"
        f"<button id='buy-{escape(p['pack'])}' class='secondary' {off}>Buy {int(p['credits']):,} credits "
        f"for {_money(int(p['price']), currency)}</button></form>"
        for p in packs
    )
    return f"""<section id='packs'><h2>More credits</h2>
<p class='muted'>A pack's credits are yours for {int(packs[0]["valid_days"])} days, through renewals; the plan's are used first.</p>
<div class='pack-buttons'>{buy}</div>{_recharge(stored.recharge, packs, can, currency, query)}</section>"""


def _recharge(
    recharge: dict[str, Any] | None,
    packs: list[dict[str, Any]],
    can: Actions,
    currency: str,
    query: str,
) -> str:
    if recharge is None:
        return ""
    state = _recharge_state(recharge, packs)
    off = "" if can.allowed else "disabled"
    chosen = recharge.get("pack") or packs[0]["pack"]
    options = "".join(
        f"<option value='{escape(p['pack'])}' {'selected' if p['pack'] == chosen else ''}>"
        f"{int(p['credits']):,} credits for {_money(int(p['price']), currency)}</option>"
        for p in packs
    )
    first = int(packs[0]["credits"])
    threshold = int(recharge.get("threshold") or 0) if recharge.get("pack") else first // 10
    cap = int(recharge.get("monthly_cap") or 0) or 2 * first
    return f"""<h3>Auto-recharge</h3>{state}
<form method='post' action='/billing/auto-recharge{query}' id='auto-recharge' class='recharge'>
<label><input type='checkbox' name='enabled' value='on' id='recharge-enabled' {"checked" if recharge.get("enabled") else ""} {off}> Buy credits automatically</label>
<label for='recharge-threshold'>when credits fall to</label>
<input type='number' id='recharge-threshold' name='threshold' min='0' value='{threshold}' {off}>
<label for='recharge-pack'>buy</label><select id='recharge-pack' name='pack' {off}>{options}</select>
<label for='recharge-cap'>at most this many credits a month</label>
<input type='number' id='recharge-cap' name='monthly_cap' min='1' value='{cap}' {off}>
<button id='save-recharge' {off}>Save auto-recharge</button></form>"""


def _recharge_state(recharge: dict[str, Any], packs: list[dict[str, Any]]) -> str:
    if recharge.get("disabled_reason"):
        return (
            "<div class='banner danger' id='recharge-off'>Auto-recharge turned itself off after "
            "payments failed repeatedly. Update your card in Manage billing, then save it again."
            "</div>"
        )
    failure = recharge.get("last_failure")
    if failure == "monthly_cap_reached":
        return (
            "<div class='banner warn' id='recharge-capped'>Auto-recharge reached this month's "
            "cap: nothing more is bought until next month.</div>"
        )
    if failure:
        return (
            f"<div class='banner warn' id='recharge-failed'>The last auto-recharge failed "
            f"({escape(failure.replace('_', ' '))}); it tries again later. "
            f"Check your card in Manage billing.</div>"
        )
    if not recharge.get("enabled"):
        return "<p class='muted' id='recharge-state'>Auto-recharge is off.</p>"
    return (
        f"<p class='muted' id='recharge-state'>Auto-recharge is on: "
        f"{int(recharge['recharged_this_month']):,} of {int(recharge['monthly_cap']):,} credits "
        f"bought this month.</p>"
    )


def _pricing(stored: Stored, can: Actions, catalogue: dict[str, Any] | None, query: str) -> str:
    """The pricing modal: the plans side by side, the current one marked, what each choice
    does now."""
    sub = stored.subscription or {}
    end = _when(sub.get("paid_period_end") or sub.get("credit_period_end"))
    currency = (catalogue or {}).get("currency", "usd")
    found = choices(sub, catalogue, end)
    cards = []
    for plan in dict.fromkeys(c.plan for c in found):
        mine = [c for c in found if c.plan == plan]
        first = mine[0]
        seats = "unlimited seats" if first.seat_limit is None else f"up to {first.seat_limit} seats"
        features = "".join(f"<li>{escape(f.replace('_', ' '))}</li>" for f in first.features)
        current = any(c.current for c in mine)
        options = "".join(_option(c, currency, query) for c in mine)
        cards.append(
            f"<div class='plan{' current' if current else ''}' id='plan-{plan}'>"
            f"<h3>{escape(first.name)} {'<span class=tag>Current plan</span>' if current else ''}</h3>"
            f"<p class='muted'>{first.monthly_credits:,} credits a month · {seats}</p>"
            f"<ul>{features}</ul>{options}</div>"
        )
    return f"""<dialog id='pricing' aria-labelledby='pricing-title'>
<div class='dialog-head'><h2 id='pricing-title'>Choose a plan</h2>
<button type='button' class='secondary' data-closes='pricing' aria-label='Close the plans'>Close</button></div>
<div class='plans'>{"".join(cards)}</div></dialog>"""


def _option(choice: Choice, currency: str, query: str) -> str:
    if choice.per_seat is not None:
        price = f"{_money(choice.per_seat, currency)} per seat per {'year' if choice.cycle == 'annual' else 'month'}"
    else:
        price = "Free" if choice.plan == "free" else "Priced with sales"
    saving = (
        f" <span class='saving'>save {choice.annual_saving_percent} %</span>"
        if choice.annual_saving_percent
        else ""
    )
    label = {
        "checkout": "Choose",
        "upgrade": "Upgrade",
        "downgrade": "Downgrade",
        "withdraw": "Keep this plan",
    }.get(choice.kind, "")
    cycle = f" {choice.cycle}" if choice.cycle else ""
    if choice.kind == "contact_sales":
        act = "<a class='button' href='mailto:sales@billing.example?subject=Enterprise'>Contact sales</a>"
    elif choice.selectable:
        act = (
            f"<form method='post' action='/billing/change{query}'>"
            f"<input type='hidden' name='choice' value='{escape(choice.value)}'>"
            f"<button id='choose-{escape(choice.value.replace(':', '-'))}'>{label} {escape(choice.name)}{cycle}</button></form>"
        )
    else:
        act = ""
    return (
        f"<div class='option' data-kind='{choice.kind}'><p><b>{price}</b>{saving}</p>"
        f"<p class='muted'>{escape(choice.consequence)}</p>{act}</div>"
    )


def _hidden(query: str) -> str:
    return "".join(
        f"<input type='hidden' name='{escape(k)}' value='{escape(v)}'>"
        for k, v in parse_qsl(query.lstrip("?"))
    )


def main(
    stored: Stored, member_id: str, catalogue: dict[str, Any] | None, query: str, now: datetime
) -> str:
    can = actions(member_id, stored.seats, stored.subscription)
    return (
        _credits(stored, now)
        + _plan(stored, can, query)
        + _seats(stored)
        + _actions(stored, can, catalogue, query)
        + _packs(stored, can, catalogue, query)
        + _budgets(stored.budgets, query)
        + _invoices(stored, can, catalogue)
        + _usage(stored, query)
        + _audit(stored, can)
    )


def _cap(value: int | None) -> str:
    return "no cap" if value is None else f"{value:,}"


def _budget_rows(lines: list[dict[str, Any]], kind: str) -> str:
    return (
        "".join(
            f"<tr><td>{escape(b['subject_id'])}</td><td>{_cap(b['cap'])}"
            f"{'' if b['own'] or b['cap'] is None or kind == 'agent' else ' <span class=muted>(default)</span>'}</td>"
            f"<td>{b['spent']:,}</td><td>{b['held']:,}</td><td>{_cap(b['left'])}</td></tr>"
            for b in lines
        )
        or f"<tr><td colspan='5' class='muted'>No {kind} budgets or use yet.</td></tr>"
    )


def _budgets(budgets: dict[str, Any] | None, query: str) -> str:
    """Monthly caps per member and per agent, with their use this credit period: an owner
    sees and sets them all, a member sees their own."""
    if budgets is None:
        return "<section id='budgets'><h2>Budgets</h2><p class='muted' id='budgets-unavailable'>Budgets are unavailable right now.</p></section>"
    head = "<tr><th>{}</th><th>Monthly cap</th><th>Spent</th><th>Held</th><th>Left</th></tr>"
    if not budgets["editable"]:
        mine = budgets["members"][0] if budgets["members"] else None
        if mine is None or mine["cap"] is None:
            text = "You have no budget of your own: you may use the organisation's credits."
        else:
            text = (
                f"Your budget this period: <b id='my-budget-left'>{_cap(mine['left'])}</b> of "
                f"{mine['cap']:,} credits left ({mine['spent']:,} spent, {mine['held']:,} held)."
            )
        return f"<section id='budgets'><h2>Your budget</h2><p id='my-budget'>{text}</p></section>"
    default = budgets["member_default"]
    return f"""<section id='budgets'><h2>Budgets</h2>
<p class='muted'>Caps restart with the credit period. A message is sent only if the organisation, the member and the agent can all cover it. Default for members without their own: <b id='member-default'>{_cap(default)}</b>.</p>
<div class='cols'><div class='scroll' tabindex='0' role='region' aria-label='Member budgets'><table id='member-budgets'>{head.format("Member")}{_budget_rows(budgets["members"], "member")}</table></div>
<div class='scroll' tabindex='0' role='region' aria-label='Agent budgets'><table id='agent-budgets'>{head.format("Agent")}{_budget_rows(budgets["agents"], "agent")}</table></div></div>
<form method='post' action='/billing/budgets{query}' id='set-budget' class='recharge'>
<label for='budget-scope'>Budget for</label><select id='budget-scope' name='scope'>
<option value='member'>a member</option><option value='agent'>an agent</option><option value='member_default'>every member without their own</option></select>
<label for='budget-subject'>member or agent id</label><input id='budget-subject' name='subject' maxlength='128'>
<label for='budget-cap'>credits a month (empty: no cap)</label><input type='number' id='budget-cap' name='cap' min='0'>
<button id='save-budget'>Save budget</button></form></section>"""


def _hidden_link(query: str, **params: str) -> str:
    base = dict(parse_qsl(query.lstrip("?")))
    return escape(urlencode({**base, **{k: v for k, v in params.items() if v}}))


def drill_down(
    organisation_id: str, found: dict[str, Any] | None, given: dict[str, str], query: str
) -> str:
    """Usage one level down, each row a link to the next; messages link to their receipt."""
    trail: list[tuple[str, dict[str, str]]] = [("All days", {})]
    params: dict[str, str] = {}
    for key, label in (("day", "day"), ("agent_id", "agent"), ("conversation_id", "conversation")):
        if given.get(key):
            params = params | {key: given[key]}
            trail.append((f"{label} {given[key]}", params))
    crumbs = " › ".join(
        f"<a href='/billing/usage?{_hidden_link(query, **params)}'>{escape(text)}</a>"
        for text, params in trail
    )
    if found is None:
        body = "<p class='muted' id='usage-unavailable'>Usage is unavailable right now.</p>"
    else:
        level = found["level"]
        down = {"day": "day", "agent": "agent_id", "conversation": "conversation_id"}.get(level)
        rows = []
        for r in found["rows"]:
            if down:
                href = f"/billing/usage?{_hidden_link(query, **given, **{down: r['key']})}"
            else:
                href = f"/billing/receipts/{quote(r['key'], safe='')}?{_hidden_link(query)}"
            rows.append(
                f"<tr><td><a href='{href}'>{escape(r['key'] or '—')}</a></td>"
                f"<td>{r['credits']:,}</td><td>{r['messages']:,}</td></tr>"
            )
        more = (
            "<p class='muted'>More rows than shown; the total counts them all.</p>"
            if found["more"]
            else ""
        )
        body = f"""<p><span class='big' id='drill-total'>{found["total"]:,}</span> credits, {found["messages"]:,} messages</p>
<div class='scroll' tabindex='0' role='region' aria-label='Usage by {escape(level)}'><table id='drill-down'>
<tr><th>{escape(level.title())}</th><th>Credits</th><th>Messages</th></tr>{"".join(rows)}</table></div>{more}"""
    section = f"<section id='usage-drill'><h2>Usage</h2><p id='trail'>{crumbs}</p>{body}<p><a href='/billing?{_hidden_link(query)}'>Back to Billing</a></p></section>"
    return f"""{_head(f"Usage · {organisation_id}")}
<body><header>Billing · {escape(organisation_id)}</header><main>{section}</main></body></html>"""


def receipt(organisation_id: str, message_id: str, found: dict[str, Any] | None, query: str) -> str:
    """One message: reserved, settled (and priced how), the buckets it used, what was released."""
    if found is None:
        body = "<p class='muted' id='receipt-missing'>No receipt for this message (yet).</p>"
    else:
        reserved = found["reserved"]
        settled = found["settled"]
        lines = [
            f"<tr><th>Member</th><td>{escape(found['member_id'] or '—')}</td></tr>",
            f"<tr><th>Agent</th><td>{escape(found['agent_id'] or '—')}</td></tr>",
            f"<tr><th>Conversation</th><td>{escape(found['conversation_id'] or '—')}</td></tr>",
        ]
        if reserved:
            outcome = (
                reserved["status"]
                if reserved["decision"] == "allowed"
                else f"denied ({reserved['reason']})"
            )
            lines.append(
                f"<tr><th>Reserved</th><td id='receipt-reserved'>{reserved['estimate']:,} credits, {escape(outcome)}, {escape(_when(reserved['decided_at']))}</td></tr>"
            )
        if settled:
            priced = settled["priced"]
            how = (
                f"rate card {escape(priced['version'])}, {escape(priced['model'])}: {priced['input_tokens']:,} input and {priced['output_tokens']:,} output tokens, {priced['tool_calls']:,} tool calls"
                if priced
                else "credits reported by the agent"
            )
            lines.append(
                f"<tr><th>Settled</th><td id='receipt-settled'>{settled['credits']:,} credits ({how})</td></tr>"
            )
            paid = (
                ", ".join(f"{b['credits']:,} from {escape(b['source'])}" for b in found["buckets"])
                or "—"
            )
            lines.append(f"<tr><th>Paid from</th><td id='receipt-buckets'>{paid}</td></tr>")
        lines.append(
            f"<tr><th>Released</th><td id='receipt-released'>{found['released']:,} credits</td></tr>"
        )
        body = f"<table id='receipt'>{''.join(lines)}</table>"
    section = f"<section id='receipt-section'><h2>Receipt · {escape(message_id)}</h2>{body}<p><a href='/billing/usage?{_hidden_link(query)}'>Usage</a> · <a href='/billing?{_hidden_link(query)}'>Back to Billing</a></p></section>"
    return f"""{_head(f"Receipt · {organisation_id}")}
<body><header>Billing · {escape(organisation_id)}</header><main>{section}</main></body></html>"""


def _notice(notice: Notice | None) -> str:
    if notice is None:
        return ""
    return (
        f"<div class='banner {notice.tone}' id='notice' role='status' data-code='{escape(notice.code)}'>"
        f"<span>{escape(notice.text)}</span>"
        "<button type='button' class='secondary' id='dismiss-notice' aria-label='Dismiss this message'>Dismiss</button></div>"
    )


def _head(title: str) -> str:
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
    )


def page(organisation_id: str, body: str, version: str, notice: Notice | None = None) -> str:
    return f"""{_head(f"Billing · {organisation_id}")}
<body data-version='{escape(version)}'><header>Billing · {escape(organisation_id)}</header>
<div id='notices'>{_notice(notice)}</div>
<main id='live'>{body}</main><script>{SCRIPT}</script></body></html>"""


def confirm_cancel(organisation_id: str, stored: Stored, query: str) -> str:
    sub = stored.subscription or {}
    end = _when(sub.get("paid_period_end"))
    body = f"""<section id='confirm'><h2>Cancel subscription</h2>
<p>Your {escape(str(sub.get("plan", "")).title())} plan stays in force until <b>{end}</b>; then the
organisation moves to Free with Free's credits. You can reactivate until then.</p>
<form method='post' action='/billing/cancel{query}'><button id='confirm-cancel'>Cancel subscription</button></form>
<form method='get' action='/billing'>{_hidden(query)}<button id='keep' class='secondary'>Keep my plan</button></form></section>"""
    return f"""{_head(f"Cancel · {organisation_id}")}
<body><header>Billing · {escape(organisation_id)}</header><main>{body}</main></body></html>"""
