"""Suite-wide settings and fixtures. The broker, the database and per-test isolation come
from the `shared.testing.plugin` pytest plugin; each service's fixtures live in its own folder.
devstripe (the Stripe API here: the part of Stripe this project uses, in memory) runs once per
session, for every test that needs Stripe."""

from collections.abc import Iterator

import pytest
from hypothesis import settings

from services.stripe_gateway.devstripe import Devstripe
from shared.devstack import free_port

# Integration examples drive a real broker and database: no per-example deadline.
settings.register_profile("billing", deadline=None, print_blob=True)
settings.load_profile("billing")


@pytest.fixture(scope="session")
def devstripe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devstripe]:
    server = Devstripe(port=free_port(), log_file=tmp_path_factory.mktemp("devstripe") / "log")
    server.start()
    yield server
    server.stop()
