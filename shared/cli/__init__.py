"""`billing`: the operator's command line, for every service.

It talks to the running system the way everyone else does: it publishes to the topics and
calls the services' HTTP APIs. The commands common to every service live here (`dead-letters`,
`topics`, and `org-created` / `member`, a stand-in for the member directory); each service adds
its own through the `billing.cli` entry-point group (a function
that takes the sub-command registry), e.g. metering's `grant`, `usage`, `balance`, `ledger`,
`authorize`, `release`.

Environment: the shared settings (`KAFKA_BOOTSTRAP_SERVERS`, `TOPIC_PREFIX`), and
`BILLING_API_TOKEN` (default: the development token that `make run` accepts).
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

from pydantic import ValidationError

from . import clock, common, directory

ENTRY_POINTS = "billing.cli"


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="billing", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for entry in sorted(entry_points(group=ENTRY_POINTS), key=lambda e: e.name):
        entry.load()(commands)
    common.register(commands)
    directory.register(commands)
    clock.register(commands)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)
        )
        print(f"refused: {problems}", file=sys.stderr)
        return 2
