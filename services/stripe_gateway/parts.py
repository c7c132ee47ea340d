"""What the gateway's HTTP handlers use, built by `app.build`."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from .commands import Commands, Quantities
from .inbox import Inbox
from .reconcile import Reconciler
from .service import Observer, Reports
from .stripe_api import StripeApi


@dataclass(frozen=True)
class Parts:
    api: StripeApi
    inbox: Inbox
    observer: Observer
    reports: Reports
    commands: Commands
    quantities: Quantities
    reconciler: Reconciler


def parts_of(request: Request) -> Parts:
    return request.app.state.parts
