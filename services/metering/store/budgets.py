"""Budgets and what members and agents spent of them (see `domain.budgets`). Setting one locks
the organisation's wallet first, like every other change of its credits (see the package)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

import asyncpg

from ..domain.budgets import Budgets, Scope
from .wallets import create_wallets

_BUDGET_STATES = """
SELECT 'cap' AS kind, organisation_id, scope, subject_id, monthly_cap AS credits
FROM budgets WHERE organisation_id = ANY($1::text[])
UNION ALL
SELECT 'spent', s.organisation_id, s.scope, s.subject_id, s.spent
FROM budget_spend s JOIN wallets w USING (organisation_id)
WHERE s.organisation_id = ANY($1::text[]) AND s.period_key = coalesce(w.period_key, '')
UNION ALL
SELECT 'held', organisation_id, x.scope, x.subject_id, sum(estimate)::bigint
FROM authorizations a,
     LATERAL (VALUES ('member', a.member_id), ('agent', a.agent_id)) AS x(scope, subject_id)
WHERE organisation_id = ANY($1::text[]) AND status = 'held' AND expires_at > $2
  AND x.subject_id IS NOT NULL
GROUP BY organisation_id, x.scope, x.subject_id
"""


class BudgetLine(NamedTuple):
    scope: Scope
    subject_id: str
    cap: int | None
    spent: int
    held: int


async def budget_states(
    conn: asyncpg.Connection | asyncpg.Pool, organisations: Sequence[str], now: datetime
) -> dict[str, Budgets]:
    """The budgets of `organisations` that have any, with what each member and agent used of
    the current credit period: debited, plus active holds (not past their expiry)."""
    found = await _lines(conn, organisations, now)
    states: dict[str, Budgets] = {}
    for organisation, lines in found.items():
        caps = {(line.scope, line.subject_id): line.cap for line in lines if line.cap is not None}
        if not caps:
            continue
        states[organisation] = Budgets(
            members={s: c for (k, s), c in caps.items() if k is Scope.MEMBER},
            member_default=caps.get((Scope.MEMBER_DEFAULT, "")),
            agents={s: c for (k, s), c in caps.items() if k is Scope.AGENT},
            used={(line.scope, line.subject_id): line.spent + line.held for line in lines},
        )
    return states


async def _lines(
    conn: asyncpg.Connection | asyncpg.Pool, organisations: Sequence[str], now: datetime
) -> dict[str, list[BudgetLine]]:
    rows = await conn.fetch(_BUDGET_STATES, list(organisations), now)
    merged: dict[tuple[str, str, str], dict[str, int]] = {}
    for r in rows:
        line = merged.setdefault((r["organisation_id"], r["scope"], r["subject_id"]), {})
        line[r["kind"]] = r["credits"]
    found: dict[str, list[BudgetLine]] = {}
    for (organisation, scope, subject), amounts in sorted(merged.items()):
        found.setdefault(organisation, []).append(
            BudgetLine(
                Scope(scope),
                subject,
                amounts.get("cap"),
                amounts.get("spent", 0),
                amounts.get("held", 0),
            )
        )
    return found


async def lines(
    conn: asyncpg.Connection | asyncpg.Pool, organisation_id: str, now: datetime
) -> list[BudgetLine]:
    """Every budget of the organisation, and every member and agent who used credits this
    credit period, with what they spent and hold now."""
    return (await _lines(conn, [organisation_id], now)).get(organisation_id, [])


_REBUILD_SPEND = """
WITH period AS (
    SELECT coalesce(max(seq), 0) AS after FROM ledger
    WHERE organisation_id = $1 AND kind = 'grant' AND reason = ANY($3::text[])
)
INSERT INTO budget_spend (organisation_id, period_key, scope, subject_id, spent)
SELECT $1, $2, x.scope, x.subject_id, -sum(l.amount)
FROM ledger l, period p,
     LATERAL (VALUES ('member', l.member_id), ('agent', l.agent_id)) AS x(scope, subject_id)
WHERE l.organisation_id = $1 AND l.kind = 'debit' AND l.seq > p.after
  AND x.subject_id IS NOT NULL
GROUP BY x.scope, x.subject_id
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
    (debits, which lock the same wallet, keep it from then on)."""
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
