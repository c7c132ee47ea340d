from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from .broker import EmbeddedKafka
from .postgres import EmbeddedPostgres
from .processes import free_port


@contextmanager
def embedded_stack(
    database: str, *, kafka_url: str | None = None, database_url: str | None = None
) -> Iterator[tuple[str, str]]:
    """A broker and a database on free ports in a temporary folder, removed afterwards.
    Given URLs are used as they are instead. Yields (bootstrap servers, database URL)."""
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="billing-"))
        if not os.environ.get("DEVSTACK_KEEP"):
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        if kafka_url is None:
            kafka = EmbeddedKafka(port=free_port(), log_file=workdir / "tansu.log")
            kafka_url = kafka.start()
            stack.callback(kafka.stop)
        if database_url is None:
            postgres = EmbeddedPostgres(workdir / "postgres", port=free_port())
            postgres.start()
            stack.callback(postgres.stop)
            database_url = postgres.create_database(database)
        yield kafka_url, database_url
