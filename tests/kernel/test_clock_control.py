"""The movable clock: off unless enabled (and never off loopback), forward only, kept across a
restart; what a service reports to `billing clock` (next due, idle), and the command's
refusals."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
from pydantic import ValidationError

from services.seats.app import SERVICE
from services.seats.settings import SeatSettings
from shared import cli
from shared.cli.clock import advance, target_of
from shared.clock import FrozenClock, MovableClock
from shared.testing.plugin import Infrastructure, Isolation
from shared.testing.service import running_service, serving_service

START = datetime(2026, 12, 1, 9, tzinfo=UTC)


def settings(infrastructure: Infrastructure, isolation: Isolation, **env: str) -> SeatSettings:
    with mock.patch.dict(os.environ, {**isolation.env(infrastructure, "SEATS_"), **env}):
        return SeatSettings()


def test_the_clock_moves_forward_only_and_keeps_running() -> None:
    base = FrozenClock(START)
    clock = MovableClock(base)
    clock.move_to(START + timedelta(days=31))
    base.advance(timedelta(seconds=5))
    assert clock.now() == START + timedelta(days=31, seconds=5)
    with pytest.raises(ValueError, match="only moves forward"):
        clock.move_to(START)


OTHER_PUBLIC_KEY = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"


def test_clock_control_is_refused_off_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOCK_CONTROL", "true")
    monkeypatch.setenv("SEATS_HTTP_HOST", "0.0.0.0")
    monkeypatch.setenv("SEATS_API_TOKENS", "reader:a-real-token-1234")
    monkeypatch.setenv("SEATS_IDENTITY_KEYS", f"k1:{OTHER_PUBLIC_KEY}")
    with pytest.raises(ValidationError, match="CLOCK_CONTROL"):
        SeatSettings()


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (("advance", "1mo"), datetime(2027, 2, 28, 9, tzinfo=UTC)),
        (("advance", "1y"), datetime(2028, 1, 31, 9, tzinfo=UTC)),
        (("advance", "15d"), datetime(2027, 2, 15, 9, tzinfo=UTC)),
        (("advance", "3h"), datetime(2027, 1, 31, 12, tzinfo=UTC)),
        (("set", "2027-03-31T00:00:00Z"), datetime(2027, 3, 31, tzinfo=UTC)),
    ],
)
def test_durations_and_instants(words: tuple[str, str], expected: datetime) -> None:
    assert target_of(*words, datetime(2027, 1, 31, 9, tzinfo=UTC)) == expected


class Steps:
    """A stack whose services and devstripe each have work due at given instants."""

    def __init__(self, services: dict[str, list[datetime]], stripe: list[datetime]) -> None:
        self.now, self.due, self.stripe_due, self.moves = START, services, stripe, []

    def _next(self, due: list[datetime]) -> str | None:
        upcoming = sorted(d for d in due if d > self.now)
        return upcoming[0].isoformat() if upcoming else None

    def states(self) -> dict[str, dict[str, object]]:
        return {
            n: {"now": self.now.isoformat(), "next_due": self._next(d)} for n, d in self.due.items()
        }

    def stripe(self) -> dict[str, object]:
        return {"next_due": self._next(self.stripe_due)}

    def move(self, to: datetime) -> None:
        assert to > self.now
        self.now = to
        self.moves.append(to)

    def wait_idle(self, timeout: float) -> None:
        pass


def test_advance_steps_through_what_falls_due_grouping_within_the_resolution() -> None:
    hour = timedelta(hours=1)
    renewals = [START + timedelta(days=30, minutes=m) for m in range(0, 50, 7)]
    retry = START + timedelta(days=33)
    stack = Steps({"subscriptions": renewals, "metering": []}, [renewals[0], retry])

    steps = advance(stack, START + timedelta(days=40), timeout=1, resolution=hour)  # type: ignore[arg-type]

    assert stack.moves == [renewals[0] + hour, retry + hour, START + timedelta(days=40)]
    assert steps == 3
    fine = Steps({"subscriptions": renewals}, [])
    advance(fine, START + timedelta(days=31), timeout=1, resolution=timedelta(0))  # type: ignore[arg-type]
    assert fine.moves == [*renewals, START + timedelta(days=31)]


async def test_a_service_without_clock_control_refuses_to_move(
    infrastructure: Infrastructure, isolation: Isolation
) -> None:
    async with running_service(
        SERVICE, settings(infrastructure, isolation), FrozenClock(START)
    ) as (
        _,
        http,
    ):
        state = (await http.get("/v1/clock")).json()
        moved = await http.post("/v1/clock", json={"to": "2027-01-01T00:00:00Z"})

    assert (state["movable"], state["now"]) == (False, "2026-12-01T09:00:00Z")
    assert moved.status_code == 409
    assert moved.json()["type"].endswith("clock-not-movable")


async def test_a_moved_clock_is_kept_across_a_restart_and_never_goes_back(
    infrastructure: Infrastructure, isolation: Isolation
) -> None:
    movable = settings(infrastructure, isolation, CLOCK_CONTROL="true")
    base = FrozenClock(START)
    async with running_service(SERVICE, movable, base) as (_, http):
        moved = await http.post("/v1/clock", json={"to": "2027-01-31T09:00:00Z"})
        back = await http.post("/v1/clock", json={"to": "2027-01-01T00:00:00Z"})
        assert moved.status_code == 200
        assert (moved.json()["now"], moved.json()["idle"]) == ("2027-01-31T09:00:00Z", True)
        assert back.status_code == 409

    async with running_service(SERVICE, movable, base) as (_, http):
        assert (await http.get("/v1/clock")).json()["now"] == "2027-01-31T09:00:00Z"


async def test_billing_clock_refuses_a_stack_whose_clock_cannot_move(
    infrastructure: Infrastructure, isolation: Isolation, capsys: pytest.CaptureFixture[str]
) -> None:
    fixed = settings(infrastructure, isolation)
    async with serving_service(SERVICE, fixed, FrozenClock(START)) as (_, url):
        env = {"BILLING_SERVICES": "seats", "SEATS_URL": url, "DEVSTRIPE_URL": "http://127.0.0.1:9"}
        with mock.patch.dict(os.environ, env):
            shown = await asyncio.to_thread(cli.main, ["clock"])
            refused = await asyncio.to_thread(cli.main, ["clock", "advance", "1mo"])

    assert (shown, refused) == (0, 2)
    assert "cannot be moved" in capsys.readouterr().err
