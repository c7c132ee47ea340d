"""`python -m shared.devstack run` — what `make run` does.

Starts the embedded broker and database (unless KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL point
elsewhere; DEVSTACK_KAFKA_PORT / DEVSTACK_POSTGRES_PORT move them off 9092 / 55432), creates
the topics, applies every service's migrations, starts every service, prints where each
listens, and on Ctrl-C (or SIGTERM) stops all of it, services first.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from services import LOCAL
from shared.settings import DEV_DATABASE_URL, DEV_KAFKA_BOOTSTRAP
from shared.topics import REGISTRY, ensure_topics

from .broker import EmbeddedKafka
from .postgres import EmbeddedPostgres
from .processes import stop_process

ROOT = Path(__file__).resolve().parents[2]


def _say(message: str) -> None:
    print(f"[make run] {message}", file=sys.stderr, flush=True)


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


class _Stop(Exception):
    pass


def _on_signal(signum: int, _frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def run(data_dir: Path) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    with ExitStack() as stack:
        try:
            if "KAFKA_BOOTSTRAP_SERVERS" in env:
                kafka_where = f"{env['KAFKA_BOOTSTRAP_SERVERS']} (external)"
            else:
                kafka = EmbeddedKafka(
                    port=int(env.get("DEVSTACK_KAFKA_PORT", _port_of(DEV_KAFKA_BOOTSTRAP))),
                    log_file=data_dir / "tansu.log",
                )
                env["KAFKA_BOOTSTRAP_SERVERS"] = kafka.start()
                stack.callback(_stopping("broker", kafka.stop))
                kafka_where = (
                    f"{kafka.bootstrap_servers} (Tansu, in-memory; log {data_dir / 'tansu.log'})"
                )
            if "DATABASE_URL" in env:
                db_where = "DATABASE_URL (external)"
            else:
                postgres = EmbeddedPostgres(
                    data_dir / "postgres",
                    port=int(env.get("DEVSTACK_POSTGRES_PORT", _port_of(DEV_DATABASE_URL))),
                )
                postgres.start()
                stack.callback(_stopping("database", postgres.stop))
                env["DATABASE_URL"] = postgres.create_database(DEV_DATABASE_URL.rsplit("/", 1)[1])
                db_where = f"{env['DATABASE_URL']} (PostgreSQL 18, data in {postgres.data_dir})"
            _say(f"broker   {kafka_where}")
            _say(f"database {db_where}")
            topics = asyncio.run(
                ensure_topics(env["KAFKA_BOOTSTRAP_SERVERS"], env.get("TOPIC_PREFIX", ""), REGISTRY)
            )
            _say(f"topics   {', '.join(topics)}")
            for service in LOCAL:
                subprocess.run(
                    [sys.executable, "-m", service.module, "migrate"],
                    env=env,
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
                _say(f"migrated {service.name}")
            for service in LOCAL:
                service_env = {
                    **env,
                    service.port_variable: env.get(service.port_variable, str(service.port)),
                }
                process = subprocess.Popen(
                    [sys.executable, "-m", service.module],
                    env=service_env,
                    cwd=ROOT,
                    start_new_session=True,
                )
                children.append((service.name, process))
                stack.callback(_stopping(service.name, lambda p=process: _terminate(p)))
            lines = []
            for (name, process), service in zip(children, LOCAL, strict=True):
                port = int(env.get(service.port_variable, service.port))
                _wait_ready(name, process, f"http://127.0.0.1:{port}/readyz")
                lines.append(
                    f"{name:<9}http://127.0.0.1:{port}  (API docs: http://127.0.0.1:{port}/docs)"
                )
            print("\nEverything is up. Where things listen:", flush=True)
            print(f"  broker   {kafka_where}")
            print(f"  database {db_where}")
            for line in lines:
                print(f"  {line}")
            print("\nTry:  .venv/bin/billing --help      Stop: Ctrl-C\n", flush=True)
            while True:
                for name, process in children:
                    if process.poll() is not None:
                        _say(f"{name} exited with {process.returncode}; stopping everything")
                        return 1
                time.sleep(0.5)
        except _Stop as stop:
            _say(f"{stop}: stopping")
            return 0


def _stopping(name: str, stop):  # type: ignore[no-untyped-def]
    def callback() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop()
        _say(f"stopped {name}")

    return callback


def _terminate(process: subprocess.Popen[bytes]) -> None:
    stop_process(process, signal.SIGTERM, timeout=15)


def _wait_ready(name: str, process: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode} while starting")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{name} not ready after 60s ({url})")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.devstack")
    parser.add_argument("command", choices=("run",))
    parser.add_argument("--data", type=Path, default=ROOT / ".data")
    args = parser.parse_args()
    return run(args.data)


if __name__ == "__main__":
    sys.exit(main())
