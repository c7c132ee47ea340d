"""Settings shared by every service, validated at start-up.

The defaults are those of the embedded development stack (`make run`), so a service started
without any environment talks to it. `KAFKA_BOOTSTRAP_SERVERS` and `DATABASE_URL` point a
service (or the tests) at other servers; they are read without a service prefix.
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Any, Self

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.access import DEV_API_TOKEN, Credential, parse_credentials
from shared.identity import DEV_IDENTITY_KEYS, parse_keys, uses_development_key
from shared.topics import REGISTRY, TopicLayout

DEV_KAFKA_BOOTSTRAP = "127.0.0.1:9092"
DEV_DATABASE_URL = "postgresql://postgres@127.0.0.1:55432/billing"

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = Field(
        DEV_KAFKA_BOOTSTRAP,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS"),
        min_length=1,
    )
    database_url: SecretStr = Field(
        SecretStr(DEV_DATABASE_URL), validation_alias=AliasChoices("DATABASE_URL")
    )
    topic_prefix: str = Field(
        "",
        validation_alias=AliasChoices("TOPIC_PREFIX"),
        pattern=r"^[A-Za-z0-9._-]{0,64}$",
        description="Prepended to every topic name; isolates tests and environments.",
    )
    kafka_session_timeout_ms: int = Field(
        10_000, ge=1_000, le=300_000, validation_alias=AliasChoices("KAFKA_SESSION_TIMEOUT_MS")
    )
    kafka_group_instance_id: str | None = Field(
        None,
        validation_alias=AliasChoices("KAFKA_GROUP_INSTANCE_ID"),
        pattern=r"^[A-Za-z0-9._-]{1,100}$",
        description="Static group membership (KIP-345): a restarted instance with the same id "
        "takes its partitions back without waiting for its old session to time out. Unique per "
        "running instance (e.g. the pod name); unset, membership is dynamic.",
    )
    kafka_create_topics: bool = Field(
        True,
        validation_alias=AliasChoices("KAFKA_CREATE_TOPICS"),
        description="Create the registry's topics at start (off where topics are provisioned).",
    )
    kafka_replication_factor: int = Field(
        1,
        ge=1,
        le=7,
        validation_alias=AliasChoices("KAFKA_REPLICATION_FACTOR"),
        description="Replicas of each topic created from the registry (3 in production).",
    )
    kafka_min_insync_replicas: int | None = Field(
        None,
        ge=1,
        le=7,
        validation_alias=AliasChoices("KAFKA_MIN_INSYNC_REPLICAS"),
        description="`min.insync.replicas` of the topics created (2 with 3 replicas); unset, "
        "the broker's default.",
    )
    kafka_topic_partitions: dict[str, int] = Field(
        default_factory=dict,
        validation_alias=AliasChoices("KAFKA_TOPIC_PARTITIONS"),
        description='Partitions per topic where not the registry\'s, as JSON: {"agent.usage": 48}.',
    )
    log_level: str = Field("INFO", validation_alias=AliasChoices("LOG_LEVEL"))

    @model_validator(mode="after")
    def _topic_layout(self) -> Self:
        if (self.kafka_min_insync_replicas or 0) > self.kafka_replication_factor:
            raise ValueError("KAFKA_MIN_INSYNC_REPLICAS exceeds KAFKA_REPLICATION_FACTOR")
        known = {spec.name for spec in REGISTRY}
        for name, partitions in self.kafka_topic_partitions.items():
            if name not in known:
                raise ValueError(f"KAFKA_TOPIC_PARTITIONS names {name!r}, not a registry topic")
            if not 1 <= partitions <= 10_000:
                raise ValueError(f"KAFKA_TOPIC_PARTITIONS: {name} needs 1 to 10000 partitions")
        return self

    @property
    def topic_layout(self) -> TopicLayout:
        return TopicLayout(
            self.kafka_replication_factor,
            self.kafka_min_insync_replicas,
            self.kafka_topic_partitions,
        )

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("log level must be DEBUG, INFO, WARNING or ERROR")
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("DATABASE_URL must be a postgresql:// URL")
        return value


def validate_schema_name(value: str) -> str:
    if not _SCHEMA_NAME.match(value):
        raise ValueError("schema names are lower-case identifiers: [a-z_][a-z0-9_]*")
    return value


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class ServiceSettings(CommonSettings):
    """What every service has: its schema, its HTTP listener and tokens, its consumers.

    A service subclasses it with its own `env_prefix` (`METERING_`, …) and its own defaults for
    `db_schema`, `http_port` and `consumer_group`."""

    db_schema: str
    db_pool_size: int = Field(10, ge=2, le=200)
    db_generic_plans: bool = False
    """Plan each prepared statement once (`plan_cache_mode = force_generic_plan`) instead of
    again at every execution: for a service whose hot statements are large (many CTEs,
    lateral subqueries) and look rows up by key, planning costs more than executing."""
    migrate_on_start: bool = True
    http_host: str = "127.0.0.1"
    http_port: int = Field(ge=0, le=65535)
    consumer_group: str = Field(min_length=1, max_length=100)
    run_consumers: bool = True
    """False runs the HTTP API only (e.g. scaled apart from the consumers)."""
    run_relay: bool = True
    """False leaves publishing the outbox to another process of the service (one that runs
    it): an API process kept free for requests."""
    api_tokens: SecretStr = SecretStr(DEV_API_TOKEN)
    """The credentials of internal callers, `scope:token` comma-separated (`shared.access`).
    The development token is refused unless the service listens on loopback only."""
    identity_keys: str = DEV_IDENTITY_KEYS
    """Public keys that verify the acting member's signed identity (`shared.identity`),
    `key-id:key` comma-separated. The development key is refused unless the service listens
    on loopback only."""
    max_request_bytes: int = Field(16 * 1024, ge=1024, le=1024 * 1024)
    max_event_bytes: int = Field(64 * 1024, ge=1024, le=1024 * 1024)
    batch_timeout_ms: int = Field(10, ge=1, le=5_000)
    outbox_batch_size: int = Field(1000, ge=1, le=50_000)
    stall_grace_seconds: float = Field(10.0, ge=0, le=3_600)
    """A partition stalled longer than this makes `/readyz` answer 503."""
    rebalance_flush_seconds: float = Field(5.0, gt=0, le=300)
    """How long a rebalance waits for batches in flight before abandoning them."""
    clock_control: bool = Field(False, validation_alias=AliasChoices("CLOCK_CONTROL"))
    """The stack's clock may be moved forward (`billing clock`): development and tests only,
    refused unless the service listens on loopback."""

    @field_validator("db_schema")
    @classmethod
    def _schema_name(cls, value: str) -> str:
        return validate_schema_name(value)

    @field_validator("api_tokens")
    @classmethod
    def _tokens_scoped(cls, value: SecretStr) -> SecretStr:
        parse_credentials(value.get_secret_value())
        return value

    @field_validator("identity_keys")
    @classmethod
    def _identity_keys(cls, value: str) -> str:
        parse_keys(value)
        return value

    @model_validator(mode="after")
    def _development_only_on_loopback(self) -> Self:
        """The development token and identity key, and a movable clock, only on loopback."""
        if self.http_host in LOOPBACK_HOSTS:
            return self
        prefix, where = self.model_config.get("env_prefix", ""), self.http_host
        for used, refusal in (
            (
                self.accepts_dev_token,
                f"the development token is accepted only on loopback, and this service listens "
                f"on {where}: set {prefix}API_TOKENS",
            ),
            (
                uses_development_key(self.identity_keys),
                f"the development identity key is accepted only on loopback, and this service "
                f"listens on {where}: set {prefix}IDENTITY_KEYS",
            ),
            (
                self.clock_control,
                "CLOCK_CONTROL moves the service's clock: development and tests only, on "
                f"loopback; this service listens on {where}",
            ),
        ):
            if used:
                raise ValueError(refusal)
        return self

    @property
    def accepts_dev_token(self) -> bool:
        return any(c.token == DEV_API_TOKEN.encode() for c in self.credentials)

    @cached_property
    def credentials(self) -> tuple[Credential, ...]:
        return parse_credentials(self.api_tokens.get_secret_value())

    @cached_property
    def identity_public_keys(self) -> dict[str, Any]:
        return parse_keys(self.identity_keys)

    def group_id(self, consumer: str) -> str:
        """One consumer group per subscription, so that subscriptions never rebalance each other."""
        return f"{self.topic_prefix}{self.consumer_group}.{consumer}"
