"""Usage as the ledger holds it: what metering debited (nothing refused, each message once), by
day, member and agent, between two instants; and where the credit periods began (the ledger's
`plan_start` and `renewal_reset` grants). What the Billing page shows, read from the ledger
itself."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

PERIOD_STARTS = ("plan_start", "renewal_reset")


async def period_end(
    conn: asyncpg.Connection | asyncpg.Pool, organisation_id: str, since: datetime
) -> datetime | None:
    """Where the credit period after `since` began (None: `since` is in the current one)."""
    return await conn.fetchval(
        """SELECT min(occurred_at) FROM ledger
           WHERE organisation_id = $1 AND kind = 'grant' AND reason = ANY($2::text[])
             AND occurred_at > $3""",
        organisation_id,
        list(PERIOD_STARTS),
        since,
    )


@dataclass(frozen=True, slots=True)
class Usage:
    total: int
    messages: int
    by_day: list[tuple[str, int]]
    """ISO dates (UTC), every day of the range, with or without usage."""
    by_member: list[tuple[str, int]]
    by_agent: list[tuple[str, int]]
    recent: list[dict]
    periods: list[datetime]
    """The starts of the latest credit periods, newest first."""


async def usage(
    conn: asyncpg.Connection | asyncpg.Pool,
    organisation_id: str,
    since: datetime,
    until: datetime,
    *,
    recent: int = 20,
    periods: int = 13,
) -> Usage:
    rows = await conn.fetch(
        """WITH debits AS (
               SELECT -amount AS credits, member_id, agent_id, occurred_at
               FROM ledger
               WHERE organisation_id = $1 AND kind = 'debit'
                 AND occurred_at >= $2 AND occurred_at < $3)
           SELECT 'total' AS kind, '' AS name, coalesce(sum(credits), 0)::bigint AS credits,
                  count(*)::bigint AS n FROM debits
           UNION ALL
           SELECT 'member', coalesce(member_id, ''), sum(credits)::bigint, count(*)
           FROM debits GROUP BY member_id
           UNION ALL
           SELECT 'agent', coalesce(agent_id, ''), sum(credits)::bigint, count(*)
           FROM debits GROUP BY agent_id
           UNION ALL
           SELECT 'day', to_char(d, 'YYYY-MM-DD'), coalesce(sum(u.credits), 0)::bigint, count(u.*)
           FROM generate_series(
                    date_trunc('day', $2 AT TIME ZONE 'UTC'),
                    date_trunc('day', ($3 - interval '1 microsecond') AT TIME ZONE 'UTC'),
                    '1 day') AS d
           LEFT JOIN debits u ON date_trunc('day', u.occurred_at AT TIME ZONE 'UTC') = d
           GROUP BY d""",
        organisation_id,
        since,
        until,
    )
    latest = await conn.fetch(
        """SELECT entry_id, member_id, agent_id, -amount AS credits, occurred_at FROM ledger
           WHERE organisation_id = $1 AND kind = 'debit' AND occurred_at >= $2
             AND occurred_at < $3
           ORDER BY occurred_at DESC, seq DESC LIMIT $4""",
        organisation_id,
        since,
        until,
        recent,
    )
    starts = await conn.fetch(
        """SELECT DISTINCT occurred_at FROM ledger
           WHERE organisation_id = $1 AND kind = 'grant' AND reason = ANY($2::text[])
           ORDER BY occurred_at DESC LIMIT $3""",
        organisation_id,
        list(PERIOD_STARTS),
        periods,
    )
    by: dict[str, list[tuple[str, int]]] = {"member": [], "agent": [], "day": []}
    total = messages = 0
    for row in rows:
        if row["kind"] == "total":
            total, messages = row["credits"], row["n"]
        else:
            by[row["kind"]].append((row["name"], row["credits"]))
    return Usage(
        total=total,
        messages=messages,
        by_day=sorted(by["day"]),
        by_member=sorted(by["member"], key=lambda x: (-x[1], x[0])),
        by_agent=sorted(by["agent"], key=lambda x: (-x[1], x[0])),
        recent=[dict(r) for r in latest],
        periods=[r["occurred_at"] for r in starts],
    )
