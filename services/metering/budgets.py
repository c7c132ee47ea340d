"""Budgets, as owners set them and members see them (rule in `domain/budgets.py`, enforced by
the authorizer)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.clock import Clock

from . import usage
from .domain.budgets import Scope
from .store import budgets as store


@dataclass(frozen=True, slots=True)
class BudgetUse:
    scope: Scope
    subject_id: str
    cap: int | None
    """The cap in force (a member without one of their own: the default); None: none."""
    own: bool
    """The cap is set for this member or agent (not the members' default)."""
    spent: int
    held: int

    @property
    def left(self) -> int | None:
        return None if self.cap is None else max(0, self.cap - self.spent - self.held)


@dataclass(frozen=True, slots=True)
class BudgetView:
    period_key: str | None
    renews_at: datetime | None
    member_default: int | None
    members: list[BudgetUse]
    """Members with a budget of their own or credits used this period."""
    agents: list[BudgetUse]

    def of_member(self, member_id: str) -> BudgetView:
        """What one member may see: their own budget (or the default) and what they used."""
        found = next((m for m in self.members if m.subject_id == member_id), None)
        own = found or BudgetUse(Scope.MEMBER, member_id, self.member_default, False, 0, 0)
        return BudgetView(self.period_key, self.renews_at, self.member_default, [own], [])


class BudgetBook:
    def __init__(self, pool: asyncpg.Pool, clock: Clock) -> None:
        self._pool = pool
        self._clock = clock

    async def set(
        self, organisation_id: str, scope: Scope, subject_id: str, cap: int | None, *, by: str
    ) -> None:
        """Set a budget (None: remove it), in force for the very next authorization."""
        async with self._pool.acquire() as conn, conn.transaction():
            await store.set_budget(
                conn,
                organisation_id,
                scope,
                subject_id,
                cap,
                by=by,
                now=self._clock.now(),
                period_starts=usage.PERIOD_STARTS,
            )

    async def view(self, organisation_id: str) -> BudgetView:
        lines = await store.lines(self._pool, organisation_id)
        wallet = await self._pool.fetchrow(
            "SELECT period_key, renews_at FROM wallets WHERE organisation_id = $1",
            organisation_id,
        )
        default = next((ln.cap for ln in lines if ln.scope is Scope.MEMBER_DEFAULT), None)
        members: list[BudgetUse] = []
        agents: list[BudgetUse] = []
        for line in lines:
            if line.scope is Scope.MEMBER_DEFAULT:
                continue
            own = line.cap is not None
            cap = line.cap if own or line.scope is Scope.AGENT else default
            use = BudgetUse(line.scope, line.subject_id, cap, own, line.spent, line.held)
            (members if line.scope is Scope.MEMBER else agents).append(use)
        return BudgetView(
            period_key=wallet["period_key"] if wallet else None,
            renews_at=wallet["renews_at"] if wallet else None,
            member_default=default,
            members=members,
            agents=agents,
        )
