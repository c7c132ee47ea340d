"""Settings shared by every service, validated at start-up.

The defaults are those of the embedded development stack (`make run`), so a service started
without any environment talks to it. `KAFKA_BOOTSTRAP_SERVERS` and `DATABASE_URL` point a
service (or the tests) at other servers; they are read without a service prefix.
"""

from __future__ import annotations

import re

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    kafka_create_topics: bool = Field(
        True,
        validation_alias=AliasChoices("KAFKA_CREATE_TOPICS"),
        description="Create the registry's topics at start (off where topics are provisioned).",
    )
    log_level: str = Field("INFO", validation_alias=AliasChoices("LOG_LEVEL"))

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
