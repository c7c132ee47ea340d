"""The ledger check: every wallet's balance equals the sum of its ledger entries, and what
remains in its buckets less its debt; every bucket's remaining equals what it was granted plus
what entries took from it.

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

from . import PRODUCER

log = get_logger("metering.ledger_check")


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
                drifted = await conn.fetch(
                    """SELECT b.organisation_id, b.bucket_id, b.remaining,
                              b.granted + coalesce(sum(a.amount), 0) AS allocated
                       FROM buckets b LEFT JOIN ledger_buckets a USING (bucket_id)
                       WHERE $1::text IS NULL OR b.organisation_id = $1
                       GROUP BY b.bucket_id
                       HAVING b.remaining <> b.granted + coalesce(sum(a.amount), 0)""",
                    organisation,
                )
            mismatches = [
                {
                    "organisation_id": r[0],
                    "balance": r[1],
                    "ledger": int(r[2]),
                    "buckets": int(r[3]),
                }
                for r in rows
                if not r[1] == r[2] == r[3]
            ] + [
                {
                    "organisation_id": r[0],
                    "bucket_id": str(r[1]),
                    "remaining": r[2],
                    "allocated": int(r[3]),
                }
                for r in drifted
            ]
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
                    else f"bucket {mismatch['bucket_id']} has {mismatch['remaining']} left; what "
                    f"it was granted less what entries took is {mismatch['allocated']}"
                ),
                subject_id=mismatch["organisation_id"],
            ),
        )
