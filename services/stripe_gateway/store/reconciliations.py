"""Each reconciliation run, with what it compared, repaired and raised."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

Db = asyncpg.Connection | asyncpg.Pool

_COLUMNS = """id, organisation_id, started_at, finished_at, subscriptions, checkouts, quantities,
    repaired, alerts, error"""


async def start(
    db: Db, organisation_id: str | None, now: datetime, lease_until: datetime
) -> int | None:
    """Record a new sweep of the scope; None if one is running (a lapsed one is closed)."""
    await db.execute(
        """UPDATE reconciliations SET finished_at = $1, error = 'abandoned'
           WHERE finished_at IS NULL AND lease_until <= $1""",
        now,
    )
    try:
        return await db.fetchval(
            """INSERT INTO reconciliations (organisation_id, started_at, lease_until)
               VALUES ($1, $2, $3) RETURNING id""",
            organisation_id,
            now,
            lease_until,
        )
    except asyncpg.UniqueViolationError:
        return None


async def finish(db: Db, run_id: int, counts: dict[str, int], error: str | None, now: datetime):  # type: ignore[no-untyped-def]
    row = await db.fetchrow(
        f"""UPDATE reconciliations SET finished_at = $2, subscriptions = $3, checkouts = $4,
                quantities = $5, repaired = $6, alerts = $7, error = $8
            WHERE id = $1 RETURNING {_COLUMNS}""",
        run_id,
        now,
        counts.get("subscriptions", 0),
        counts.get("checkouts", 0),
        counts.get("quantities", 0),
        counts.get("repaired", 0),
        counts.get("alerts", 0),
        error,
    )
    return dict(row)


async def recent(db: Db, limit: int) -> list[dict[str, Any]]:
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM reconciliations ORDER BY id DESC LIMIT $1", limit
    )
    return [dict(r) for r in rows]
