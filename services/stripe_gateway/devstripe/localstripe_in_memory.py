"""`python -m services.stripe_gateway.devstripe.localstripe_in_memory --port N`: localstripe,
in its own process, as devstripe needs it: in memory only, on loopback.

localstripe itself pickles its whole store to `/tmp/localstripe.pickle` after every write: the
cost of a write grows with everything created before (seeding 10,000 subscriptions takes
hours), and every localstripe on the machine shares that file. devstripe keeps nothing across
restarts (as the embedded broker keeps nothing), so the dump is skipped; and it listens on
loopback only (localstripe's own start listens on every interface)."""

from __future__ import annotations

import argparse

from aiohttp import web
from localstripe import resources, server


def main() -> None:
    parser = argparse.ArgumentParser(prog=__doc__.split(":")[0].strip("`"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    resources.Store.dump_to_disk = lambda self: None  # type: ignore[method-assign]
    web.run_app(server.app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
