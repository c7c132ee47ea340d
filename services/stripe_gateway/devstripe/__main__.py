"""`python -m services.stripe_gateway.devstripe --port 8420`: localstripe (on another port,
started and stopped with this process) behind devstripe."""

from __future__ import annotations

import argparse
import ctypes
import signal
import subprocess
import sys

import uvicorn

from shared.devstack.processes import free_port, stop_process, wait_for_port
from shared.logging import configure_logging

from .app import create_app


def _die_with_parent() -> None:
    """localstripe ends when this process does, however it ends (uvicorn re-raises the signal
    that stopped it, so a `finally` here does not always run)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.stripe_gateway.devstripe")
    parser.add_argument("--port", type=int, default=8420)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--localstripe-port", type=int, default=0, help="default: a free one")
    parser.add_argument(
        "--retry-seconds",
        type=float,
        default=1.0,
        help="first delay before an unacknowledged webhook is sent again (it doubles)",
    )
    parser.add_argument("--retry-attempts", type=int, default=12)
    args = parser.parse_args()
    configure_logging("INFO", service="devstripe")
    port = args.localstripe_port or free_port()
    localstripe = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.stripe_gateway.devstripe.localstripe_in_memory",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=30, process=localstripe)
        uvicorn.run(
            create_app(
                f"http://127.0.0.1:{port}",
                f"http://{args.host}:{args.port}",
                retry_seconds=args.retry_seconds,
                retry_attempts=args.retry_attempts,
            ),
            host=args.host,
            port=args.port,
            log_config=None,
            access_log=False,
        )
    finally:
        stop_process(localstripe, signal.SIGTERM, timeout=5)


if __name__ == "__main__":
    main()
