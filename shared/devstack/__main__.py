"""`python -m shared.devstack run` — what `make run` does.

Starts the embedded broker and database (unless KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL point
elsewhere; DEVSTACK_KAFKA_PORT / DEVSTACK_POSTGRES_PORT move them off 9092 / 55432), creates
the topics, applies every service's migrations, starts every service, prints where each
listens, and on Ctrl-C (or SIGTERM, SIGHUP) stops all of it, services first. The services'
JSON log lines are shown readable, prefixed with the service's name, a colour each on a
terminal. A port already taken is said in one line naming the setting that moves it, before
anything starts. Nothing outlives it: killed outright, the kernel stops what it started
(`processes.spawn`).

The services are found through the `billing.services` entry-point group (see pyproject.toml),
so this package never imports them. While running it supervises them as a process supervisor
would: a service that exits is started again after a delay that doubles with each exit in a
row (1 s up to 30 s, back to 1 s once it has run for a minute), and the broker and database
stay up, so nothing published meanwhile is lost.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from shared.failures import Backoff
from shared.service import registered
from shared.settings import DEV_DATABASE_URL, DEV_KAFKA_BOOTSTRAP, CommonSettings
from shared.topics import REGISTRY, ensure_topics

from . import logs
from .broker import EmbeddedKafka
from .postgres import EmbeddedPostgres
from .processes import PortBusy, die_with_parent, ensure_free, spawn, stop_process

ROOT = Path(__file__).resolve().parents[2]
STABLE_SECONDS = 60.0


def _say(message: str) -> None:
    print(f"[make run] {message}", file=sys.stderr, flush=True)


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


class _Stop(Exception):
    pass


def _on_signal(signum: int, _frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


@dataclass
class Supervised:
    """One service process, started again whenever it exits."""

    name: str
    module: str
    port: int
    env: dict[str, str]
    colour: int = 0
    width: int = 0
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    backoff: Backoff = field(default_factory=lambda: Backoff(first=1.0, cap=30.0))

    def start(self) -> None:
        self.process = spawn(
            [sys.executable, "-m", self.module],
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.process.stdout is not None
        logs.pump(self.process.stdout, self.name, width=self.width, code=self.colour)
        self.started_at = time.monotonic()
        self.restart_at = None
        _say(f"started {self.name} (pid {self.process.pid})")

    def watch(self) -> None:
        """Call often: notices an exit, and starts the service again when its delay is over."""
        now = time.monotonic()
        if self.process is not None and self.process.poll() is None:
            if now - self.started_at >= STABLE_SECONDS:
                self.backoff.reset()
            return
        if self.restart_at is None:
            delay = self.backoff.next_delay()
            code = self.process.returncode if self.process is not None else None
            _say(f"{self.name} exited with {code}; starting it again in {delay:.0f} s")
            self.restart_at = now + delay
        elif now >= self.restart_at:
            self.start()

    def stop(self) -> None:
        stop_process(self.process, signal.SIGTERM, timeout=15)


def run(data_dir: Path) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    services = registered()
    for stop_signal in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop_signal, _on_signal)
    die_with_parent(signal.SIGTERM)  # `make` killed: stop in order all the same
    with ExitStack() as stack:
        try:
            _check_ports(env, services)
            if "KAFKA_BOOTSTRAP_SERVERS" in env:
                kafka_where = f"{env['KAFKA_BOOTSTRAP_SERVERS']} (external)"
            else:
                kafka = EmbeddedKafka(
                    port=_embedded_port(env, EmbeddedKafka, DEV_KAFKA_BOOTSTRAP),
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
                    port=_embedded_port(env, EmbeddedPostgres, DEV_DATABASE_URL),
                )
                postgres.start()
                stack.callback(_stopping("database", postgres.stop))
                env["DATABASE_URL"] = postgres.create_database(DEV_DATABASE_URL.rsplit("/", 1)[1])
                db_where = f"{env['DATABASE_URL']} (PostgreSQL 18, data in {postgres.data_dir})"
            _say(f"broker   {kafka_where}")
            _say(f"database {db_where}")
            topics = asyncio.run(
                ensure_topics(
                    env["KAFKA_BOOTSTRAP_SERVERS"],
                    env.get("TOPIC_PREFIX", ""),
                    REGISTRY,
                    CommonSettings().topic_layout,  # KAFKA_REPLICATION_FACTOR, … as services
                )
            )
            _say(f"topics   {', '.join(topics)}")
            for service in services:
                subprocess.run(
                    [sys.executable, "-m", service.module, "migrate"],
                    env=env,
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
                _say(f"migrated {service.name}")
            children = []
            helpers: list[str] = []
            env.setdefault("CLOCK_CONTROL", "true")  # `billing clock` moves the stack's time
            ports = {s.name: int(env.get(s.port_variable, s.default_port)) for s in services}
            for name, port in ports.items():  # where each service is, for the others and the CLI
                env.setdefault(f"{name.upper().replace('-', '_')}_URL", f"http://127.0.0.1:{port}")
            for service in services:
                port = ports[service.name]
                extra: dict[str, str] = {}
                if service.development is not None:
                    resources = stack.enter_context(service.development(data_dir, env, port))
                    extra, helpers = resources.env, [*helpers, *resources.lines]
                    for line in resources.lines:
                        _say(line)
                child = Supervised(
                    service.name,
                    service.module,
                    port,
                    {
                        **env,
                        **extra,
                        service.port_variable: str(port),
                        # One instance per service here: after a crash, the restarted one
                        # takes its partitions back without waiting for the old session.
                        "KAFKA_GROUP_INSTANCE_ID": f"{service.name}-devstack",
                    },
                    colour=logs.colour_of(len(children)),
                    width=max(len(s.name) for s in services),
                )
                child.start()
                children.append(child)
                stack.callback(_stopping(service.name, child.stop))
            for child in children:
                _wait_ready(child)
            print("\nEverything is up. Where things listen:", flush=True)
            print(f"  {'broker':<15}{kafka_where}")
            print(f"  {'database':<15}{db_where}")
            for child in children:
                url = f"http://127.0.0.1:{child.port}"
                print(f"  {child.name:<15}{url}  (API docs: {url}/docs)")
            for line in helpers:
                print(f"  {line}")
            print("\nTry:  .venv/bin/billing --help      Stop: Ctrl-C\n", flush=True)
            while True:
                for child in children:
                    child.watch()
                time.sleep(0.2)
        except _Stop as stop:
            _say(f"{stop}: stopping")
            return 0
        except PortBusy as busy:
            _say(str(busy))
            return 1


def _embedded_port(env: dict[str, str], embedded: Any, default_url: str) -> int:
    return int(env.get(embedded.PORT_SETTING, _port_of(default_url)))


def _check_ports(env: dict[str, str], services: list[Any]) -> None:
    """Before starting anything: every port the stack listens on is free, or one line says
    which is not and which setting moves it (devstripe's is checked where it starts)."""
    wanted = [
        (int(env.get(s.port_variable, s.default_port)), s.name, s.port_variable) for s in services
    ]
    for embedded, external, default in (
        (EmbeddedKafka, "KAFKA_BOOTSTRAP_SERVERS", DEV_KAFKA_BOOTSTRAP),
        (EmbeddedPostgres, "DATABASE_URL", DEV_DATABASE_URL),
    ):
        if external not in env:
            port = _embedded_port(env, embedded, default)
            wanted.append((port, embedded.WHAT, embedded.PORT_SETTING))
    for port, what, setting in wanted:
        ensure_free(port, what, setting)


def _stopping(name: str, stop):  # type: ignore[no-untyped-def]
    def callback() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop()
        _say(f"stopped {name}")

    return callback


def _wait_ready(child: Supervised) -> None:
    """The first start must succeed: a service that cannot start at all is a configuration
    problem to fix, not to retry."""
    url = f"http://127.0.0.1:{child.port}/readyz"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert child.process is not None
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.process.returncode} at start")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{child.name} not ready after 60s ({url})")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.devstack")
    parser.add_argument("command", choices=("run",))
    parser.add_argument("--data", type=Path, default=ROOT / ".data")
    args = parser.parse_args()
    return run(args.data)


if __name__ == "__main__":
    sys.exit(main())
