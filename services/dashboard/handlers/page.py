# ruff: noqa: E501  (HTML templates read better unwrapped)
"""The Billing page, rendered on the server. The live part (`main`) is rendered by `main()`,
both for the first load and for every update pushed to an open page."""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import parse_qsl

from ..domain.view import Actions, actions, bar_colour
from ..store import Stored

STYLE = """
body{font-family:system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 24px;font-weight:600}
main{max-width:980px;margin:0 auto;padding:16px 24px}
section{background:#fff;border:1px solid #e2e5ea;border-radius:10px;padding:16px 20px;margin:14px 0}
h2{font-size:15px;margin:0 0 10px;color:#4a5263;text-transform:uppercase;letter-spacing:.04em}
.bar{height:18px;background:#e8ebef;border-radius:9px;overflow:hidden}
.fill{height:100%;transition:width .3s}
.green{background:#2fa84f}.amber{background:#f0a202}.red{background:#d64545}.grey{background:#9aa1ac}
.big{font-size:26px;font-weight:700}.muted{color:#6b7383;font-size:13px}
.banner{border-radius:8px;padding:10px 14px;margin:8px 0;font-weight:500}
.warn{background:#fff4d6;border:1px solid #f0c75e}.danger{background:#fde8e8;border:1px solid #e9a0a0}
.info{background:#e8f1fd;border:1px solid #9cc0ef}
table{border-collapse:collapse;width:100%;font-size:14px}td,th{padding:4px 6px;text-align:left}
th{color:#6b7383;font-weight:500}.cols{display:flex;gap:16px}.cols>div{flex:1}
button{font:inherit;padding:7px 14px;border-radius:6px;border:1px solid #1d2330;background:#1d2330;color:#fff;cursor:pointer}
button[disabled]{background:#c9cdd4;border-color:#c9cdd4;cursor:not-allowed}
form{display:inline-block;margin:4px 8px 4px 0}select{font:inherit;padding:6px}
.chart{display:flex;align-items:flex-end;gap:2px;height:80px}.chart div{flex:1;background:#5b7bd5;min-height:1px}
"""

SCRIPT = """
const source = new EventSource(window.location.pathname + '/stream' + window.location.search);
source.addEventListener('view', (event) => {
  const update = JSON.parse(event.data);
  document.getElementById('live').innerHTML = update.html;
  document.body.dataset.version = update.version;
});
"""


def _when(value: str | None) -> str:
    if not value:
        return "—"
    return datetime.fromisoformat(value.replace("Z", "+00:00")).strftime("%d %b %Y, %H:%M UTC")


def _credits(stored: Stored) -> str:
    credits = stored.credits
    if credits is None:
        return (
            "<section id='credits'><h2>Credits</h2><p class='muted'>No credits yet.</p></section>"
        )
    percent = int(credits["percent_left"])
    colour = bar_colour(percent, credits["level"])
    left = max(0, int(credits["balance"]))
    return f"""<section id='credits'><h2>Credits</h2>
<div class='big'><span id='credits-left'>{left:,}</span> of {int(credits["allotment"]):,} credits left
<span class='muted'>({percent} %)</span></div>
<div class='bar' role='progressbar' aria-valuenow='{percent}' aria-valuemin='0' aria-valuemax='100'>
<div id='credit-bar' class='fill {colour}' data-colour='{colour}' data-percent='{percent}'
 style='width:{percent}%'></div></div>
<p class='muted'>Renews {_when(credits.get("renews_at"))} · {int(credits["used"]):,} used this period</p>
</section>"""


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
    return f"""<section id='audit'><h2>Audit log</h2><table id='audit-log'>
<tr><th>When</th><th>Who</th><th>What</th><th>To</th><th>Outcome</th><th>Request</th></tr>{rows}
</table></section>"""


def _usage(stored: Stored) -> str:
    rows = (
        "".join(
            f"<tr><td>{escape(d.occurred_at.strftime('%d %b %H:%M'))}</td><td>{escape(d.member_id)}</td>"
            f"<td>{escape(d.agent_id)}</td><td>{d.credits:,}</td></tr>"
            for d in stored.recent
        )
        or "<tr><td colspan='4' class='muted'>No usage yet.</td></tr>"
    )
    peak = max((c for _, c in stored.daily), default=0) or 1
    bars = "".join(
        f"<div title='{day:%d %b}: {c:,}' style='height:{round(c * 100 / peak)}%'></div>"
        for day, c in stored.daily
    )
    members = "".join(
        f"<tr><td>{escape(m)}</td><td>{c:,}</td></tr>" for m, c in stored.by_member[:8]
    )
    agents = "".join(f"<tr><td>{escape(a)}</td><td>{c:,}</td></tr>" for a, c in stored.by_agent[:8])
    denied = (
        "".join(
            f"<tr><td>{escape(d.occurred_at.strftime('%d %b %H:%M'))}</td><td>{escape(d.member_id)}</td>"
            f"<td>{escape(d.agent_id or '')}</td><td>{escape(d.reason or '')}</td></tr>"
            for d in stored.denials
        )
        or "<tr><td colspan='4' class='muted'>No denied sends.</td></tr>"
    )
    return f"""<section id='usage'><h2>Usage</h2>
<div class='chart' id='usage-chart'>{bars}</div><p class='muted'>Credits per day, this period</p>
<div class='cols'><div><table><tr><th>By member</th><th>Credits</th></tr>{members}</table></div>
<div><table><tr><th>By agent</th><th>Credits</th></tr>{agents}</table></div></div>
<h2 style='margin-top:14px'>Recent debits</h2>
<table id='recent'><tr><th>When</th><th>Member</th><th>Agent</th><th>Credits</th></tr>{rows}</table>
<h2 style='margin-top:14px'>Denied sends</h2>
<table id='denied'><tr><th>When</th><th>Member</th><th>Agent</th><th>Reason</th></tr>{denied}</table>
</section>"""


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

    current = stored.subscription or {}
    options = []
    for plan in (catalogue or {}).get("plans", []):
        if plan["plan"] == "enterprise":
            continue
        cycles = [p["cycle"] for p in plan.get("prices", [])] or ["monthly"]
        for cycle in cycles:
            if plan["plan"] == current.get("plan") and cycle == (current.get("cycle") or "monthly"):
                continue  # the plan in force
            label = f"{plan['name']} ({cycle})" if plan.get("prices") else plan["name"]
            options.append(f"<option value='{plan['plan']}:{cycle}'>{escape(label)}</option>")
    reason = f"<p class='muted' id='actions-reason'>{escape(can.reason)}</p>" if can.reason else ""
    return f"""<section id='actions'><h2>Billing actions</h2>{reason}
<form method='post' action='/billing/change{query}'><select name='choice' {disabled(can.change_plan)}>{"".join(options)}</select>
<button id='change-plan' {disabled(can.change_plan)}>Change plan</button></form>
<form method='post' action='/billing/portal{query}'><button id='manage-billing' {disabled(can.manage_billing)}>Manage billing</button></form>
<form method='get' action='/billing/cancel'>{_hidden(query)}<button id='cancel' {disabled(can.cancel)}>Cancel subscription</button></form>
</section>"""


def _hidden(query: str) -> str:
    return "".join(
        f"<input type='hidden' name='{escape(k)}' value='{escape(v)}'>"
        for k, v in parse_qsl(query.lstrip("?"))
    )


def main(
    stored: Stored, member_id: str, catalogue: dict[str, Any] | None, query: str, notice: str = ""
) -> str:
    can = actions(member_id, stored.seats, stored.subscription)
    note = f"<div class='banner info' id='notice'>{escape(notice)}</div>" if notice else ""
    return (
        note
        + _credits(stored)
        + _plan(stored, can, query)
        + _seats(stored)
        + _actions(stored, can, catalogue, query)
        + _usage(stored)
        + _audit(stored, can)
    )


def page(organisation_id: str, body: str, version: str) -> str:
    return f"""<!doctype html><html lang='en'><head><meta charset='utf-8'>
<title>Billing · {escape(organisation_id)}</title><style>{STYLE}</style></head>
<body data-version='{escape(version)}'><header>Billing · {escape(organisation_id)}</header>
<main id='live'>{body}</main><script>{SCRIPT}</script></body></html>"""


def confirm_cancel(organisation_id: str, stored: Stored, query: str) -> str:
    sub = stored.subscription or {}
    end = _when(sub.get("paid_period_end"))
    body = f"""<section id='confirm'><h2>Cancel subscription</h2>
<p>Your {escape(str(sub.get("plan", "")).title())} plan stays in force until <b>{end}</b>; then the
organisation moves to Free with Free's credits. You can reactivate until then.</p>
<form method='post' action='/billing/cancel{query}'><button id='confirm-cancel'>Cancel subscription</button></form>
<form method='get' action='/billing'>{_hidden(query)}<button id='keep'>Keep my plan</button></form></section>"""
    return f"""<!doctype html><html lang='en'><head><meta charset='utf-8'>
<title>Cancel · {escape(organisation_id)}</title><style>{STYLE}</style></head>
<body><header>Billing · {escape(organisation_id)}</header><main>{body}</main></body></html>"""
