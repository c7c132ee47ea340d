"""Budgets and what members and agents spent of them (see `domain.budgets`). Setting one locks
the organisation's wallet first, like every other change of its credits (see the package)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

import asyncpg

from ..domain.budgets import Budgets, Scope
from .budget_counts import held_per_subject, spent_per_subject
from .wallets import create_wallets


def budgets_of(lines: Sequence[tuple[str, str, str, int]]) -> Budgets:
    """Budgets from (`cap`, scope, subject, cap) and (`used`, scope, subject, credits) rows,
    what is used summed per subject."""
    members: dict[str, int] = {}
    agents: dict[str, int] = {}
    default = None
    totals: dict[tuple[Scope, str], int] = {}
    for kind, scope, subject, credits in lines:
        if kind == "used":
            key = (Scope(scope), subject)
            totals[key] = totals.get(key, 0) + credits
        elif scope == Scope.MEMBER_DEFAULT:
            default = credits
        else:
            (members if scope == Scope.MEMBER else agents)[subject] = credits
    return Budgets(members, default, agents, totals)


_LINES = """
SELECT 'cap' AS kind, scope, subject_id, monthly_cap AS credits
FROM budgets WHERE organisation_id = $1
UNION ALL
SELECT 'spent', s.scope, s.subject_id, s.spent
FROM budget_spend s JOIN wallets w USING (organisation_id)
WHERE s.organisation_id = $1 AND s.period_key = coalesce(w.period_key, '')
UNION ALL
SELECT 'held', scope, subject_id, held FROM budget_held WHERE organisation_id = $1
"""


class BudgetLine(NamedTuple):
    scope: Scope
    subject_id: str
    cap: int | None
    spent: int
    held: int


async def lines(conn: asyncpg.Connection | asyncpg.Pool, organisation_id: str) -> list[BudgetLine]:
    """Every budget of the organisation, and every member and agent who used credits this
    credit period (while it had a budget), with what they spent and hold now (as decisions
    count it); nothing if the organisation has no budget."""
    rows = await conn.fetch(_LINES, organisation_id)
    merged: dict[tuple[str, str], dict[str, int]] = {}
    for r in rows:
        line = merged.setdefault((r["scope"], r["subject_id"]), {})
        line[r["kind"]] = line.get(r["kind"], 0) + r["credits"]
    if not any("cap" in amounts for amounts in merged.values()):
        return []
    return [
        BudgetLine(
            Scope(scope),
            subject,
            amounts.get("cap"),
            amounts.get("spent", 0),
            amounts.get("held", 0),
        )
        for (scope, subject), amounts in sorted(merged.items())
    ]


_REBUILD_SPEND = f"""
INSERT INTO budget_spend (organisation_id, period_key, scope, subject_id, spent)
SELECT organisation_id, $2, scope, subject_id, credits
FROM ({spent_per_subject("SELECT $1::text", "$3::text[]")}) t
"""

_REBUILD_HELD = f"""
INSERT INTO budget_held (organisation_id, scope, subject_id, held)
{held_per_subject("SELECT $1::text")}
"""


async def set_budget(
    conn: asyncpg.Connection,
    organisation_id: str,
    scope: Scope,
    subject_id: str,
    cap: int | None,
    *,
    by: str,
    now: datetime,
    period_starts: Sequence[str],
) -> None:
    """Set (or, with `cap` None, remove) one budget, and record the change. Run it in a
    transaction. The wallet is created if missing and locked; when this is the organisation's
    first budget, what its members and agents spent this period is counted from the ledger
    and what their active holds reserve (debits and every change of a hold lock the same
    wallet, and keep both from then on)."""
    await create_wallets(conn, [organisation_id], now)
    period_key = await conn.fetchval(
        "SELECT coalesce(period_key, '') FROM wallets WHERE organisation_id = $1 FOR UPDATE",
        organisation_id,
    )
    first = not await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM budgets WHERE organisation_id = $1)", organisation_id
    )
    if cap is None:
        await conn.execute(
            "DELETE FROM budgets WHERE organisation_id = $1 AND scope = $2 AND subject_id = $3",
            organisation_id,
            scope.value,
            subject_id,
        )
    else:
        await conn.execute(
            """INSERT INTO budgets (organisation_id, scope, subject_id, monthly_cap, set_by,
                                    set_at)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (organisation_id, scope, subject_id) DO UPDATE
               SET monthly_cap = excluded.monthly_cap, set_by = excluded.set_by,
                   set_at = excluded.set_at""",
            organisation_id,
            scope.value,
            subject_id,
            cap,
            by,
            now,
        )
        if first:
            await conn.execute(
                "DELETE FROM budget_spend WHERE organisation_id = $1 AND period_key = $2",
                organisation_id,
                period_key,
            )
            await conn.execute(_REBUILD_SPEND, organisation_id, period_key, list(period_starts))
            await conn.execute(
                "DELETE FROM budget_held WHERE organisation_id = $1", organisation_id
            )
            await conn.execute(_REBUILD_HELD, organisation_id)
    await conn.execute(
        """INSERT INTO budget_changes (organisation_id, scope, subject_id, monthly_cap, set_by,
                                       set_at)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        organisation_id,
        scope.value,
        subject_id,
        cap,
        by,
        now,
    )
