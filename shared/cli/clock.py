"""`billing clock`: the stack's now, and moving it forward (development and tests only).

  billing clock                                  # every service's now, next due, idle or not
  billing clock advance 1mo                      # also 15d, 3h, 30m, 1y
  billing clock set 2027-02-28T00:00:00Z

Moving time moves every service (started with `CLOCK_CONTROL=true`, as `make run` does) and
devstripe together, in steps: from one instant at which scheduled work falls due anywhere
(a renewal, a period end in Stripe, a payment retry, a hold's expiry, a webhook's retry) to
the next, so that what falls due runs in time order. At each step the services move first,
then devstripe (whose webhooks are signed with the new time), and the command waits until
every service is idle (nothing in its outbox, its consumers caught up, nothing due) and no
webhook is on its way, before the next step. It returns when the target instant is reached
and all of that has run.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from shared.calendar import add_months

from .client import CliSettings, service_urls

DURATION = re.compile(r"^(\d+)(mo|y|d|h|m|s)$")
"""1mo, 1y, 15d, 3h, 30m, 10s."""
UNITS = {"d": timedelta(days=1), "h": timedelta(hours=1), "m": timedelta(minutes=1)}


def register(commands: Any) -> None:
    p = commands.add_parser("clock", help="the stack's now; move it forward (development only)")
    p.add_argument("action", nargs="?", choices=("advance", "set"))
    p.add_argument("amount", nargs="?", help="advance: 1mo, 15d, 3h, 30m, 1y; set: ISO 8601")
    p.add_argument("--timeout", type=float, default=120, help="seconds to wait at each step")
    p.add_argument(
        "--resolution",
        default="1h",
        help="work due within this of the next due instant runs in the same step (default 1h)",
    )
    p.set_defaults(run=run)


def target_of(action: str, amount: str, now: datetime) -> datetime:
    """The instant `advance <amount>` or `set <amount>` means, from `now`."""
    if action == "set":
        target = datetime.fromisoformat(amount.replace("Z", "+00:00"))
        if target.tzinfo is None:
            raise ValueError("give the instant with its timezone (…Z)")
        return target.astimezone(UTC)
    found = DURATION.match(amount.strip())
    if not found:
        raise ValueError(f"not a duration: {amount!r} (e.g. 1mo, 15d, 3h, 30m, 1y)")
    count, unit = int(found.group(1)), found.group(2)
    if unit == "mo":
        return add_months(now, count)
    if unit == "y":
        return add_months(now, 12 * count)
    if unit == "s":
        return now + timedelta(seconds=count)
    return now + count * UNITS[unit]


@dataclass
class Stack:
    """The services (their `/v1/clock`) and devstripe (`/_devstripe/clock`)."""

    services: dict[str, str]
    devstripe: str | None
    http: httpx.Client

    def states(self) -> dict[str, dict[str, Any]]:
        found = {}
        for name, url in self.services.items():
            response = self.http.get(f"{url}/v1/clock")
            response.raise_for_status()
            found[name] = response.json()
        return found

    def stripe(self) -> dict[str, Any] | None:
        if self.devstripe is None:
            return None
        return self.http.get(f"{self.devstripe}/_devstripe/clock").json()

    def move(self, to: datetime) -> None:
        for name, url in self.services.items():
            response = self.http.post(f"{url}/v1/clock", json={"to": to.isoformat()})
            if response.status_code != 200:
                raise RuntimeError(f"{name}: {response.json().get('detail') or response.text}")
        if self.devstripe is not None:
            self.http.post(
                f"{self.devstripe}/_devstripe/clock", json={"to": to.isoformat()}, timeout=300
            ).raise_for_status()

    def wait_idle(self, timeout: float) -> None:
        """Until every service is idle and no webhook is on its way, twice in a row (what one
        service announces last reaches the others before the second look)."""
        deadline, calm, last = time.monotonic() + timeout, 0, ""
        while calm < 2:
            busy = {n: s["waiting"] for n, s in self.states().items() if not s["idle"]}
            if self.devstripe is not None:
                on_the_way = self.http.get(f"{self.devstripe}/_devstripe/deliveries").json()
                if any(on_the_way.values()):
                    busy["devstripe"] = [f"{sum(on_the_way.values())} webhooks on their way"]
            calm = 0 if busy else calm + 1
            last = "; ".join(f"{n}: {', '.join(w)}" for n, w in busy.items())
            if time.monotonic() > deadline:
                raise TimeoutError(f"not idle after {timeout:g} s: {last}")
            time.sleep(0.15)


def stack_of(settings: CliSettings) -> Stack:
    http = httpx.Client(
        headers={"Authorization": f"Bearer {settings.api_token.get_secret_value()}"}, timeout=30
    )
    devstripe = settings.devstripe_url.rstrip("/")
    try:
        http.get(f"{devstripe}/_devstripe/clock").raise_for_status()
    except httpx.HTTPError:
        devstripe = None  # a real Stripe account: its clock is not ours to move
    return Stack(service_urls(), devstripe, http)


def advance(
    stack: Stack, target: datetime, *, timeout: float, resolution: timedelta = timedelta(hours=1)
) -> int:
    """Step to `target` through the instants where work falls due; returns the steps. What
    falls due within `resolution` of the next instant runs in the same step (each service, and
    devstripe, still runs it in its own time order): a thousand organisations whose renewals
    fall within the same minute are one step, not a thousand."""
    steps = 0
    while True:
        states = stack.states()
        now = max(datetime.fromisoformat(s["now"]) for s in states.values())
        if now >= target:
            return steps
        due = [s["next_due"] for s in states.values() if s["next_due"]]
        stripe = stack.stripe()
        if stripe and stripe.get("next_due"):
            due.append(stripe["next_due"])
        upcoming = [d for d in map(datetime.fromisoformat, due) if d > now]
        step = min([target, *(d + resolution for d in upcoming)])
        stack.move(step)
        stack.wait_idle(timeout)
        steps += 1


def run(args: argparse.Namespace) -> int:
    stack = stack_of(CliSettings())
    try:
        states = stack.states()
    except httpx.HTTPError as exc:
        print(f"cannot reach the services: {exc}", file=sys.stderr)
        return 2
    if args.action is None:
        show(states, stack.stripe())
        return 0
    if not all(s["movable"] for s in states.values()):
        fixed = [n for n, s in states.items() if not s["movable"]]
        print(
            f"refused: the clock of {', '.join(fixed)} cannot be moved (start them with "
            "CLOCK_CONTROL=true: development and tests only)",
            file=sys.stderr,
        )
        return 2
    if not args.amount:
        print("refused: say how far (advance 1mo) or to when (set 2027-02-28T00:00:00Z)")
        return 2
    now = max(datetime.fromisoformat(s["now"]) for s in states.values())
    try:
        target = target_of(args.action, args.amount, now)
    except ValueError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    if target <= now:
        print(f"refused: the clock only moves forward; it is {now.isoformat()}", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        resolution = target_of("advance", args.resolution, now) - now
        steps = advance(stack, target, timeout=args.timeout, resolution=resolution)
    except (TimeoutError, RuntimeError, httpx.HTTPError) as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return 1
    print(
        f"now {target.isoformat()}: {steps} steps, every service idle "
        f"({time.monotonic() - started:.1f} s)"
    )
    show(stack.states(), stack.stripe())
    return 0


def show(states: dict[str, dict[str, Any]], stripe: dict[str, Any] | None) -> None:
    rows = [
        (n, s["now"], s["next_due"] or "-", "idle" if s["idle"] else "busy")
        for n, s in states.items()
    ]
    if stripe is not None:
        rows.append(("devstripe", stripe["now"], stripe.get("next_due") or "-", ""))
    for name, now, due, idle in rows:
        print(f"{name:<16}{now:<34}next due {due:<34}{idle}")
