"""The ledger check: every wallet's balance equals the sum of its ledger entries, and what
remains in its buckets less its debt; every bucket's remaining equals what it was granted plus
what entries took from it; and, where an organisation has budgets, what they count for each
member and agent equals its active holds and this credit period's debits.

Balances are derived in the same transaction as every ledger entry, so they never differ; this
check proves it, from one consistent snapshot. A mismatch is reported (the answer, the log and
an `operator_alert.raised.v1` with reason `ledger_mismatch`) and never fixed here: the ledger
is append-only and the cause must be found before anyone adjusts a balance.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from shared import outbox
from shared.clock import Clock
from shared.events.operations import AlertKind, OperatorAlert, OperatorAlertRaisedV1
from shared.logging import get_logger

from . import PRODUCER, usage
from .store.budget_counts import held_per_subject, spent_per_subject

log = get_logger("metering.ledger_check")

_BUDGET_COUNTS = f"""
WITH budgeted AS (
    SELECT DISTINCT b.organisation_id, coalesce(w.period_key, '') AS period_key
    FROM budgets b JOIN wallets w USING (organisation_id)
    WHERE $1::text IS NULL OR b.organisation_id = $1
),
held AS ({held_per_subject("SELECT organisation_id FROM budgeted")}),
spent AS ({spent_per_subject("SELECT organisation_id FROM budgeted", "$2::text[]")}),
kept_held AS (
    SELECT h.organisation_id, h.scope, h.subject_id, h.held AS credits
    FROM budget_held h JOIN budgeted USING (organisation_id) WHERE h.held <> 0
),
kept_spent AS (
    SELECT s.organisation_id, s.scope, s.subject_id, s.spent AS credits
    FROM budget_spend s JOIN budgeted g USING (organisation_id)
    WHERE s.period_key = g.period_key
)
SELECT 'held' AS what, organisation_id, scope, subject_id,
       coalesce(k.credits, 0) AS counted, coalesce(t.credits, 0) AS actual
FROM kept_held k FULL JOIN held t USING (organisation_id, scope, subject_id)
WHERE coalesce(k.credits, 0) <> coalesce(t.credits, 0)
UNION ALL
SELECT 'spent', organisation_id, scope, subject_id, coalesce(k.credits, 0), coalesce(t.credits, 0)
FROM kept_spent k FULL JOIN spent t USING (organisation_id, scope, subject_id)
WHERE coalesce(k.credits, 0) <> coalesce(t.credits, 0)
"""
"""What budgets count (`budget_held`, `budget_spend`) against what the holds and this period's
debits say, for organisations that have a budget."""


class LedgerCheck:
    def __init__(self, pool: asyncpg.Pool, clock: Clock, *, topic_prefix: str) -> None:
        self._pool = pool
        self._clock = clock
        self._prefix = topic_prefix

    async def run(self, organisation: str | None = None) -> dict[str, Any]:
        """Check every wallet (or one). Returns how many were checked and the mismatches."""
        async with self._pool.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                rows = await conn.fetch(
                    """SELECT w.organisation_id, w.balance, coalesce(l.total, 0) AS ledger,
                              coalesce(b.remaining, 0) - w.debt AS buckets
                       FROM wallets w
                       LEFT JOIN (SELECT organisation_id, sum(amount) AS total FROM ledger
                                  WHERE $1::text IS NULL OR organisation_id = $1
                                  GROUP BY organisation_id) l USING (organisation_id)
                       LEFT JOIN (SELECT organisation_id, sum(remaining) AS remaining
                                  FROM buckets
                                  WHERE $1::text IS NULL OR organisation_id = $1
                                  GROUP BY organisation_id) b USING (organisation_id)
                       WHERE $1::text IS NULL OR w.organisation_id = $1""",
                    organisation,
                )
                counted = await conn.fetch(_BUDGET_COUNTS, organisation, list(usage.PERIOD_STARTS))
                drifted = await conn.fetch(
                    """SELECT b.organisation_id, b.bucket_id, b.remaining,
                              b.granted + coalesce(sum(a.amount), 0) AS allocated
                       FROM buckets b LEFT JOIN ledger_buckets a USING (bucket_id)
                       WHERE $1::text IS NULL OR b.organisation_id = $1
                       GROUP BY b.bucket_id
                       HAVING b.remaining <> b.granted + coalesce(sum(a.amount), 0)""",
                    organisation,
                )
            mismatches = (
                [
                    {
                        "organisation_id": r[0],
                        "balance": r[1],
                        "ledger": int(r[2]),
                        "buckets": int(r[3]),
                    }
                    for r in rows
                    if not r[1] == r[2] == r[3]
                ]
                + [
                    {
                        "organisation_id": r[0],
                        "bucket_id": str(r[1]),
                        "remaining": r[2],
                        "allocated": int(r[3]),
                    }
                    for r in drifted
                ]
                + [
                    {
                        "organisation_id": r["organisation_id"],
                        "budget": f"{r['what']}:{r['scope']}:{r['subject_id']}",
                        "counted": int(r["counted"]),
                        "actual": int(r["actual"]),
                    }
                    for r in counted
                ]
            )
            if mismatches:
                async with conn.transaction():
                    await outbox.enqueue(
                        conn,
                        [self._alert(m) for m in mismatches],
                        prefix=self._prefix,
                        clock=self._clock,
                    )
        for found in mismatches:
            log.error("wallet differs from its ledger", **found)
        return {"wallets": len(rows), "mismatches": mismatches}

    def _alert(self, mismatch: dict[str, Any]) -> OperatorAlertRaisedV1:
        return OperatorAlertRaisedV1.new(
            organisation_id=mismatch["organisation_id"],
            producer=PRODUCER,
            occurred_at=self._clock.now(),
            data=OperatorAlert(
                service=PRODUCER,
                kind=AlertKind.LEDGER_MISMATCH,
                reason="ledger_mismatch",
                detail=(
                    f"the wallet's balance is {mismatch['balance']}; its ledger entries add up "
                    f"to {mismatch['ledger']}, its buckets less its debt to {mismatch['buckets']}"
                    if "balance" in mismatch
                    else f"budgets count {mismatch['counted']} for {mismatch['budget']}; the "
                    f"holds or the period's debits say {mismatch['actual']}"
                    if "budget" in mismatch
                    else f"bucket {mismatch['bucket_id']} has {mismatch['remaining']} left; what "
                    f"it was granted less what entries took is {mismatch['allocated']}"
                ),
                subject_id=mismatch["organisation_id"],
            ),
        )
