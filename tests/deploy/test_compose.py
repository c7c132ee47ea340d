"""`docker-compose.yml` and `deploy/Dockerfile`, checked without a Docker engine (this machine
has none): the whole system is there, starts in order, and every service would accept the
configuration compose gives it, with the credentials its callers present."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shared.access import Scope, scopes_of
from shared.service import registered

ROOT = Path(__file__).resolve().parents[2]
SERVICES = registered()
_VARIABLE = re.compile(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}")


def _public_key() -> str:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return "compose:" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}`."""

    def value(match: re.Match[str]) -> str:
        name, kind, rest = match.groups()
        if env.get(name):
            return env[name]
        if kind == ":?":
            raise LookupError(f"{name}: {rest}")
        return rest or ""

    return _VARIABLE.sub(value, text)


def _load(env: dict[str, str]) -> dict[str, Any]:
    return yaml.safe_load(_interpolate((ROOT / "docker-compose.yml").read_text(), env))


COMPOSE = _load({"BILLING_IDENTITY_KEYS": _public_key()})["services"]


def _environment(name: str) -> dict[str, str]:
    return {k: str(v) for k, v in (COMPOSE[name].get("environment") or {}).items()}


def test_without_the_front_proxys_key_compose_refuses_to_start() -> None:
    with pytest.raises(LookupError, match="BILLING_IDENTITY_KEYS"):
        _load({})


def test_kafka_runs_in_kraft_mode_and_postgres_is_18_both_with_health_checks() -> None:
    kafka, postgres = COMPOSE["kafka"], COMPOSE["postgres"]
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "ZOOKEEPER" not in str(kafka)
    assert kafka["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert postgres["image"] == "postgres:18"
    assert kafka["healthcheck"]["test"] and postgres["healthcheck"]["test"]


def test_provisioning_creates_the_topics_and_migrates_every_service_before_any_starts() -> None:
    provision = COMPOSE["provision"]
    script = " ".join(provision["command"])
    assert "python -m services.metering topics" in script
    for service in SERVICES:
        assert f"python -m {service.module} migrate" in script, service.name
    for needed in ("kafka", "postgres"):
        assert provision["depends_on"][needed]["condition"] == "service_healthy"
    assert provision["restart"] == "no"
    env = _environment("provision")
    assert env["KAFKA_REPLICATION_FACTOR"] and env["KAFKA_MIN_INSYNC_REPLICAS"]


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_every_service_runs_from_the_image_after_provisioning_with_a_readiness_check(
    service: Any,
) -> None:
    spec = COMPOSE[service.name]
    assert spec["build"]["dockerfile"] == "deploy/Dockerfile"
    assert spec["command"] == ["python", "-m", service.module]
    assert spec["depends_on"]["provision"]["condition"] == "service_completed_successfully"
    probe = " ".join(spec["healthcheck"]["test"])
    assert f"127.0.0.1:{service.default_port}/readyz" in probe
    assert spec["ports"] == [f"{service.default_port}:{service.default_port}"]


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_every_service_accepts_the_configuration_compose_gives_it(
    service: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Off loopback a service refuses development tokens and keys: so this proves compose
    gives real ones, and that topics and migrations are left to provisioning."""
    for key, value in _environment(service.name).items():
        monkeypatch.setenv(key, value)
    settings = service.settings()
    assert settings.http_host == "0.0.0.0"
    assert not settings.accepts_dev_token
    assert not settings.kafka_create_topics and not settings.migrate_on_start
    assert urlsplit(settings.database_url.get_secret_value()).hostname == "postgres"
    assert settings.kafka_bootstrap_servers == "kafka:9092"


def _settings_of(name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    service = next(s for s in SERVICES if s.name == name)
    with monkeypatch.context() as env:
        for key, value in _environment(name).items():
            env.setenv(key, value)
        return service.settings()


# (caller, its URL setting, its token setting, the scope the callee's routes need)
CALLS = [
    ("subscriptions", "gateway_url", "gateway_token", Scope.SERVICE),
    ("dashboard", "subscriptions_url", "subscriptions_token", Scope.FRONT),
    ("dashboard", "metering_url", "metering_token", Scope.READER),
    ("dashboard", "metering_front_token", None, Scope.FRONT),
    ("dashboard", "gateway_url", "gateway_token", Scope.READER),
]


@pytest.mark.parametrize("caller, url, token, scope", CALLS)
def test_each_call_between_services_reaches_the_callee_with_a_token_it_accepts(
    caller: str, url: str, token: str | None, scope: Scope, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings_of(caller, monkeypatch)
    if token is None:  # the same callee as the previous line (metering), another credential
        url, token = "metering_url", url
    where = urlsplit(str(getattr(settings, url)))
    callee = next(s for s in SERVICES if s.name == where.hostname)
    assert where.port == callee.default_port
    presented = getattr(settings, token).get_secret_value()
    assert scope in scopes_of(_settings_of(callee.name, monkeypatch).credentials, presented)


def test_devstripe_delivers_webhooks_to_the_gateway_signed_with_the_gateways_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    devstripe = COMPOSE["devstripe"]
    gateway = _settings_of("stripe-gateway", monkeypatch)
    assert urlsplit(gateway.api_base_url).hostname == "devstripe"
    env = _environment("devstripe")
    assert env["DEVSTRIPE_WEBHOOK_URL"] == "http://stripe-gateway:8083/stripe/webhook"
    assert env["DEVSTRIPE_WEBHOOK_SECRET"] == gateway.webhook_secret.get_secret_value()
    assert "--port=8420" in devstripe["command"]
    assert COMPOSE["stripe-gateway"]["depends_on"]["devstripe"]["condition"] == "service_healthy"


def test_the_image_is_multi_stage_and_runs_as_an_unprivileged_user() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?", dockerfile, re.MULTILINE)
    assert len(stages) >= 2 and all(image.startswith("python:3.11") for image, _ in stages)
    final = dockerfile[dockerfile.rindex("\nFROM ") :]
    assert "COPY --from=build" in final and "pip install" not in final
    (user,) = re.findall(r"^USER (\S+)", final, re.MULTILINE)
    assert user.split(":")[0] not in {"0", "root"}
    assert "COPY tests" not in dockerfile and "COPY bench" not in dockerfile


@pytest.mark.slow
def test_the_package_the_image_installs_holds_every_migration_catalogue_and_example(
    tmp_path: Path,
) -> None:
    """What `pip install .` puts in the image: a migration left out of the package data would
    only be found at the first production start."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    packaged = set(zipfile.ZipFile(wheel).namelist())
    needed = {
        str(path.relative_to(ROOT))
        for top in ("services", "shared")
        for pattern in ("*.sql", "*.json")
        for path in (ROOT / top).rglob(pattern)
    }
    assert needed and needed <= packaged, sorted(needed - packaged)
