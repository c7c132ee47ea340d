"""Budgets: monthly caps an owner sets on what members and agents may spend of the
organisation's credits, enforced when a message is authorized.

A budget applies to one member, to every member without one of their own (the default), or to
one agent. Its use in the current credit period is what the period's debits of that member or
agent took plus their active holds; budgets restart with the credit period (the wallet's period
key). A message is allowed only if the organisation and every budget that applies to it cover
its estimate; the hold then counts against all of them at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

MAX_CAP = 10**12


class Scope(StrEnum):
    MEMBER = "member"
    AGENT = "agent"
    MEMBER_DEFAULT = "member_default"
    """Every member without a budget of their own (subject: the empty string)."""


@dataclass(frozen=True, slots=True)
class Budgets:
    """An organisation's caps, and what its members and agents used of this credit period
    (debited plus held). A member or agent not in `used` used nothing."""

    members: Mapping[str, int] = field(default_factory=dict)
    member_default: int | None = None
    agents: Mapping[str, int] = field(default_factory=dict)
    used: Mapping[tuple[Scope, str], int] = field(default_factory=dict)

    def cap(self, scope: Scope, subject: str) -> int | None:
        """The cap that applies to a member or an agent (None: none does)."""
        if scope is Scope.MEMBER:
            return self.members.get(subject, self.member_default)
        return self.agents.get(subject)

    def left(self, scope: Scope, subject: str) -> int | None:
        cap = self.cap(scope, subject)
        return None if cap is None else cap - self.used.get((scope, subject), 0)

    @property
    def empty(self) -> bool:
        return not self.members and self.member_default is None and not self.agents


NO_BUDGETS = Budgets()
