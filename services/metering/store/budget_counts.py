"""SQL pieces that keep what budgets count (`budget_spend`, `budget_held`) in the same statement
as the debits and holds that change it, for organisations that have a budget. Each takes a
source of rows with `organisation_id`, `member_id`, `agent_id` and an amount."""

from __future__ import annotations


def subjects(row: str) -> str:
    """A lateral join giving each row of `row` twice: as its member's and as its agent's
    (`x.scope`, `x.subject_id`; the agent's is null when the row names none)."""
    return (
        f"LATERAL (VALUES ('member', {row}.member_id), ('agent', {row}.agent_id))"
        " AS x(scope, subject_id)"
    )


_PER_SUBJECT = (
    """(
    SELECT r.organisation_id, x.scope, x.subject_id, sum(r.{amount})::bigint AS amount
    FROM {source} r
    JOIN (SELECT o.organisation_id FROM (SELECT DISTINCT organisation_id FROM {source}) o
          WHERE (SELECT true FROM budgets b WHERE b.organisation_id = o.organisation_id LIMIT 1)
         ) budgeted USING (organisation_id),
         """
    + subjects("r")
    + """
    WHERE x.subject_id IS NOT NULL AND r.{amount} > 0
    GROUP BY 1, 2, 3
) t"""
)
"""Per organisation, member or agent; only organisations with a budget (one index probe per
organisation of the source, never a scan of every budget)."""


def add_held(name: str, source: str, amount: str = "estimate") -> str:
    """A CTE adding the new holds of `source` to their members' and agents' held credits."""
    return f"""{name} AS (
    INSERT INTO budget_held AS h (organisation_id, scope, subject_id, held)
    SELECT t.organisation_id, t.scope, t.subject_id, t.amount
    FROM {_PER_SUBJECT.format(source=source, amount=amount)}
    ORDER BY 1, 2, 3
    ON CONFLICT (organisation_id, scope, subject_id) DO UPDATE SET held = h.held + excluded.held
)"""


def remove_held(name: str, source: str, amount: str = "estimate") -> str:
    """A CTE taking the closed holds of `source` (settled, released, expired) off their
    members' and agents' held credits."""
    return f"""{name} AS (
    UPDATE budget_held h SET held = h.held - t.amount
    FROM (SELECT t.* FROM {_PER_SUBJECT.format(source=source, amount=amount)}) t
    WHERE h.organisation_id = t.organisation_id AND h.scope = t.scope
      AND h.subject_id = t.subject_id
)"""


def add_spent(name: str, source: str, amount: str = "credits") -> str:
    """A CTE adding the debits of `source` to what their members and agents spent in the
    wallet's current credit period."""
    return f"""{name} AS (
    INSERT INTO budget_spend AS s (organisation_id, period_key, scope, subject_id, spent)
    SELECT t.organisation_id,
           coalesce((SELECT w.period_key FROM wallets w
                     WHERE w.organisation_id = t.organisation_id), ''),
           t.scope, t.subject_id, t.amount
    FROM {_PER_SUBJECT.format(source=source, amount=amount)}
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (organisation_id, period_key, scope, subject_id)
    DO UPDATE SET spent = s.spent + excluded.spent
)"""


def held_per_subject(organisations: str) -> str:
    """A query of (`organisation_id`, `scope`, `subject_id`, `credits`): what the active holds
    of `organisations` (a one-column query) reserve per member and agent. What `budget_held`
    must equal; it is rebuilt from it and checked against it."""
    return f"""SELECT a.organisation_id, x.scope, x.subject_id, sum(a.estimate)::bigint AS credits
    FROM authorizations a, {subjects("a")}
    WHERE a.organisation_id IN ({organisations}) AND a.status = 'held'
      AND x.subject_id IS NOT NULL
    GROUP BY 1, 2, 3"""


def spent_per_subject(organisations: str, period_starts: str) -> str:
    """A query of (`organisation_id`, `scope`, `subject_id`, `credits`): what the debits of
    `organisations` (a one-column query) took this credit period per member and agent. What
    `budget_spend` must hold for the wallet's period; rebuilt from it and checked against it."""
    return f"""SELECT d.organisation_id, x.scope, x.subject_id, -sum(d.amount)::bigint AS credits
    FROM ledger d
    JOIN (SELECT o.organisation_id,
                 {period_began("o.organisation_id", period_starts)} AS after
          FROM ({organisations}) AS o(organisation_id)) p USING (organisation_id),
         {subjects("d")}
    WHERE d.kind = 'debit' AND d.seq > p.after AND x.subject_id IS NOT NULL
    GROUP BY 1, 2, 3"""


def period_began(organisation: str, period_starts: str) -> str:
    """An expression: the ledger position (`seq`) of the organisation's latest period-starting
    grant (0: none). A debit after it is in the current credit period."""
    return f"""(SELECT coalesce(max(l.seq), 0) FROM ledger l
            WHERE l.organisation_id = {organisation} AND l.kind = 'grant'
              AND l.reason = ANY({period_starts}))"""
