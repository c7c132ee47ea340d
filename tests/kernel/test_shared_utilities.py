"""Calendar arithmetic, secret masking in logs, settings validated at start-up."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from datetime import UTC, datetime

import pytest
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import ValidationError

from services.metering.app import SERVICE
from services.metering.settings import MeteringSettings
from shared.access import Scope, parse_credentials, scopes_of
from shared.calendar import add_months
from shared.identity import DEV_PUBLIC_KEY
from shared.logging import configure_logging, get_logger, mask_secrets
from shared.outbox import OutboxRelay
from shared.service import load_settings


@pytest.mark.parametrize(
    ("start", "months", "anchor", "expected"),
    [
        (datetime(2026, 1, 31, tzinfo=UTC), 1, None, datetime(2026, 2, 28, tzinfo=UTC)),
        (datetime(2028, 1, 31, tzinfo=UTC), 1, None, datetime(2028, 2, 29, tzinfo=UTC)),
        (datetime(2026, 2, 28, tzinfo=UTC), 1, 31, datetime(2026, 3, 31, tzinfo=UTC)),
        (datetime(2026, 12, 15, tzinfo=UTC), 1, None, datetime(2027, 1, 15, tzinfo=UTC)),
        (datetime(2026, 3, 31, tzinfo=UTC), -1, None, datetime(2026, 2, 28, tzinfo=UTC)),
        (
            datetime(2026, 5, 30, 8, 30, tzinfo=UTC),
            12,
            None,
            datetime(2027, 5, 30, 8, 30, tzinfo=UTC),
        ),
    ],
)
def test_add_months_clamps_to_the_last_day(start, months, anchor, expected) -> None:
    assert add_months(start, months, anchor_day=anchor) == expected


def test_secrets_never_reach_the_log(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", service="test")
    try:
        get_logger("t").info(
            "connecting",
            target="postgresql://billing:hunter2@db:5432/billing",
            authorization="Bearer abc.def",
            database_url="postgresql://u:p@h/d",
            note="header Bearer s3cr3t-token here",
        )
        logging.getLogger("lib").warning("dsn postgresql://svc:pa55@db/x")
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers[:] = []
    text = json.dumps(lines)
    for secret in ("hunter2", "abc.def", "s3cr3t-token", "pa55", "u:p@"):
        assert secret not in text
    assert lines[0]["target"] == "postgresql://billing:***@db:5432/billing"
    assert lines[0]["service"] == "test" and lines[0]["level"] == "info"


def test_mask_secrets_leaves_plain_text_alone() -> None:
    assert mask_secrets("org_acme used 5 credits") == "org_acme used 5 credits"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATABASE_URL", "mysql://x"),
        ("METERING_DB_SCHEMA", "Robert'); DROP"),
        ("METERING_LOW_CREDIT_PERCENT", "0"),
        ("TOPIC_PREFIX", "bad prefix!"),
        ("LOG_LEVEL", "chatty"),
    ],
)
def test_invalid_settings_are_refused_at_start_up(monkeypatch, variable, value) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError):
        MeteringSettings()


def test_defaults_point_at_the_embedded_stack(monkeypatch) -> None:
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "TOPIC_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    settings = MeteringSettings()
    assert settings.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert settings.database_url.get_secret_value().startswith("postgresql://")
    assert "postgres@" not in repr(settings)
    assert settings.group_id("usage") == "metering.usage"


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::"])
def test_the_development_token_is_refused_off_loopback(monkeypatch, host: str) -> None:
    monkeypatch.setenv("METERING_HTTP_HOST", host)
    with pytest.raises(ValidationError, match="development token"):
        MeteringSettings()
    monkeypatch.setenv("METERING_API_TOKENS", "chat:a-real-secret-token,operator:another-secret-1")
    with pytest.raises(ValidationError, match="development identity key"):
        MeteringSettings()
    monkeypatch.setenv("METERING_IDENTITY_KEYS", f"renamed:{DEV_PUBLIC_KEY}")
    with pytest.raises(ValidationError, match="development identity key"):
        MeteringSettings()
    monkeypatch.setenv("METERING_IDENTITY_KEYS", f"k1:{_public_key()}")
    settings = MeteringSettings()
    assert scopes_of(settings.credentials, "a-real-secret-token") == {Scope.CHAT}
    assert scopes_of(settings.credentials, "another-secret-1") == {Scope.OPERATOR}
    assert not scopes_of(settings.credentials, "dev-token")
    assert not scopes_of(settings.credentials, "a-real-secret-token ")


def _public_key() -> str:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_the_development_token_holds_every_scope_on_loopback(monkeypatch) -> None:
    monkeypatch.setenv("METERING_HTTP_HOST", "127.0.0.1")
    assert scopes_of(MeteringSettings().credentials, "dev-token") == set(Scope)


@pytest.mark.parametrize(
    ("tokens", "why"),
    [
        ("s3cret-without-a-scope", "scope:token"),
        ("root:s3cret-unknown-scope", "scope:token"),
        ("chat:s3cret-short", "fewer than 16"),
        (" , ", "at least one"),
    ],
)
def test_credentials_need_a_known_scope_and_length_and_are_never_echoed(
    tokens: str, why: str
) -> None:
    with pytest.raises(ValueError, match=why) as refused:
        parse_credentials(tokens)
    assert "s3cret" not in str(refused.value)


def test_rotation_several_tokens_per_scope_each_compared() -> None:
    found = parse_credentials("front:old-front-token-123,front:new-front-token-456,dev-token")
    assert scopes_of(found, "old-front-token-123") == {Scope.FRONT}
    assert scopes_of(found, "new-front-token-456") == {Scope.FRONT}
    assert scopes_of(found, "new-front-token-45") == frozenset()


def test_a_bad_setting_is_reported_without_echoing_secrets(monkeypatch, capsys) -> None:
    monkeypatch.setenv("METERING_HTTP_HOST", "0.0.0.0")
    monkeypatch.setenv("METERING_API_TOKENS", "dev-token,chat:s3cret-production-token")
    with pytest.raises(SystemExit):
        load_settings(SERVICE)
    err = capsys.readouterr().err
    assert "development token" in err
    assert "s3cret" not in err


async def test_the_outbox_relay_delay_starts_again_small_after_a_success() -> None:
    class EmptyOutbox:
        async def fetch(self, *args: object) -> list:
            return []

    class Producer:
        async def start(self) -> None:
            return None

        async def stop(self) -> None:
            return None

    relay = OutboxRelay(EmptyOutbox(), bootstrap_servers="127.0.0.1:1", dsn="", schema="s")  # type: ignore[arg-type]
    await relay._producer.stop()
    relay._producer = Producer()  # type: ignore[assignment]
    script = iter(["fail", "fail", "fail", "drain", "fail", "stop"])
    delays: list[float] = []

    async def lead() -> None:
        step = next(script)
        if step == "drain":
            await relay.drain_once()
            raise ConnectionError("lost after draining")
        if step == "stop":
            raise asyncio.CancelledError
        raise ConnectionError("broker unreachable")

    async def no_sleep(delay: float) -> None:
        delays.append(delay)

    relay._lead = lead  # type: ignore[method-assign]
    relay._sleep = no_sleep  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        await relay.run()

    assert delays == [0.2, 0.4, 0.8, 0.2, 0.4]


async def test_a_sweep_marked_alone_runs_in_one_replica_at_a_time(infrastructure) -> None:
    """Two replicas' pools on one database: while one runs the step, the other skips it; once
    it is done (or failed), the next round runs again."""
    import asyncpg

    from shared.db import run_alone

    pools = [await asyncpg.create_pool(infrastructure.database_url, min_size=1) for _ in "ab"]
    try:
        inside, leave = asyncio.Event(), asyncio.Event()

        async def long_sweep() -> str:
            inside.set()
            await leave.wait()
            return "first"

        first = asyncio.create_task(run_alone(pools[0], "test.sweep", long_sweep))
        await inside.wait()
        assert await run_alone(pools[1], "test.sweep", lambda: asyncio.sleep(0, "2")) == (
            False,
            None,
        )
        assert await run_alone(pools[1], "test.other", lambda: asyncio.sleep(0, "3")) == (
            True,
            "3",
        )
        leave.set()
        assert await first == (True, "first")

        async def failing() -> None:
            raise RuntimeError("sweep failed")

        with pytest.raises(RuntimeError):
            await run_alone(pools[0], "test.sweep", failing)
        assert await run_alone(pools[1], "test.sweep", lambda: asyncio.sleep(0, "4")) == (
            True,
            "4",
        )
    finally:
        for pool in pools:
            await pool.close()


def test_make_run_shows_json_log_lines_readable_with_the_service_first() -> None:
    from shared.devstack.logs import readable

    line = (
        '{"event": "consumer groups joined", "level": "warning", "logger": "shared.service", '
        '"timestamp": "2026-11-30T10:04:05.123Z", "service": "metering", "seconds": 1.5}\n'
    )
    plain = readable(line, "metering", width=14, code=36, colour=False)
    assert plain == "metering       | 10:04:05 warning  consumer groups joined  seconds=1.5"
    coloured = readable(line, "metering", width=14, code=36, colour=True)
    assert coloured.startswith("\x1b[36mmetering       |\x1b[0m 10:04:05 \x1b[33mwarning ")
    assert readable(
        "Traceback (most recent call last):\n", "seats", width=5, code=1, colour=False
    ) == ("seats | Traceback (most recent call last):")
    assert readable("[1, 2]", "seats", width=5, code=1, colour=False) == "seats | [1, 2]"
