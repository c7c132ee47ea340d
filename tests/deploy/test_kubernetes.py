"""`deploy/kubernetes/billing.yaml`, without a cluster: it is what the renderer renders, every
object is valid against the Kubernetes API schemas (kubernetes-validate, offline), and every
Deployment would start: its configuration is accepted by its service once the Secret is
filled, and refused while it holds the placeholders."""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import ValidationError

from shared.service import registered
from shared.settings import CommonSettings
from shared.topics import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("render", ROOT / "deploy/kubernetes/render.py")
assert _spec and _spec.loader
render = importlib.util.module_from_spec(_spec)
sys.modules["render"] = render  # its dataclasses look their module up
_spec.loader.exec_module(render)

DOCUMENTS = list(yaml.safe_load_all(render.OUTPUT.read_text()))
SERVICES = {service.name: service for service in registered()}
VERSIONS = ("1.30.0", "1.37.0")


def _of(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in DOCUMENTS if d["kind"] == kind}


DEPLOYMENTS = _of("Deployment")


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _service_of(deployment: dict[str, Any]) -> Any:
    module = _container(deployment)["command"][2]
    return next(s for s in SERVICES.values() if s.module == module)


def test_the_committed_manifests_are_what_the_renderer_renders() -> None:
    assert render.OUTPUT.read_text() == render.render(), "run `make manifests` and commit"


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_is_valid_against_the_kubernetes_schemas(version: str) -> None:
    for document in DOCUMENTS:
        kubernetes_validate.validate(document, version, strict=True)


def test_the_validation_refuses_what_kubernetes_would() -> None:
    """The schemas have teeth: a misspelt field and a wrong type are refused."""
    deployment = copy.deepcopy(next(iter(DEPLOYMENTS.values())))
    _container(deployment)["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)
    deployment = copy.deepcopy(next(iter(DEPLOYMENTS.values())))
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def test_every_service_has_a_deployment_and_metering_its_api_apart_from_its_consumers() -> None:
    assert {_service_of(d).name for d in DEPLOYMENTS.values()} == set(SERVICES)
    api, consumers = DEPLOYMENTS["metering-api"], DEPLOYMENTS["metering-consumers"]
    env = {e["name"]: e["value"] for e in _container(api).get("env", [])}
    assert env == {"METERING_RUN_CONSUMERS": "false", "METERING_RUN_RELAY": "false"}
    assert "env" not in _container(consumers)
    (metering,) = [s for s in _of("Service").values() if s["metadata"]["name"] == "metering"]
    assert metering["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_probes_resources_and_security_of_each_deployment(name: str) -> None:
    deployment = DEPLOYMENTS[name]
    container, service = _container(deployment), _service_of(deployment)
    assert deployment["spec"]["selector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert container["ports"] == [{"name": "http", "containerPort": service.default_port}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    dockerfile_user = re.findall(r"^USER (\d+)", (ROOT / "deploy/Dockerfile").read_text(), re.M)
    assert pod["runAsNonRoot"] and str(pod["runAsUser"]) == dockerfile_user[-1]
    assert container["securityContext"]["readOnlyRootFilesystem"]
    memory = container["resources"]
    assert _mib(memory["requests"]["memory"]) >= render.PEAK_MIB[service.name]
    assert _mib(memory["limits"]["memory"]) <= 512


def _mib(quantity: str) -> int:
    assert quantity.endswith("Mi"), quantity
    return int(quantity[:-2])


def test_memory_is_set_from_the_peaks_make_bench_measured() -> None:
    """The renderer's table is at least every peak in bench/results: a bench that finds a
    higher peak makes this fail until the manifests follow."""
    measured: dict[str, float] = {}
    for path in (ROOT / "bench" / "results").glob("bench-2*.json"):
        peaks = json.loads(path.read_text()).get("peak_memory_mib") or {}
        for key, value in peaks.items():
            if key.startswith("services.") and isinstance(value, int | float):
                name = key.removeprefix("services.").replace("_", "-")
                measured[name] = max(measured.get(name, 0.0), value)
    assert set(measured) == set(SERVICES)
    for name, peak in measured.items():
        assert render.PEAK_MIB[name] >= peak, (name, peak)


def test_disruption_budgets_and_autoscalers_target_the_deployments() -> None:
    budgets, scalers = _of("PodDisruptionBudget"), _of("HorizontalPodAutoscaler")
    assert set(budgets) == set(scalers) == set(DEPLOYMENTS)
    for name, deployment in DEPLOYMENTS.items():
        assert budgets[name]["spec"]["selector"] == deployment["spec"]["selector"]
        assert budgets[name]["spec"]["minAvailable"] < deployment["spec"]["replicas"]
        scaler = scalers[name]["spec"]
        assert scaler["scaleTargetRef"]["name"] == name
        consumed = [s for s in REGISTRY if _service_of(deployment).name in s.consumers]
        kinds = {m["type"] for m in scaler["metrics"]}
        if name == "metering-api" or not consumed:
            assert kinds == {"Resource"}
        else:  # scaled on lag, never past the partitions its groups can own
            assert kinds == {"Resource", "External"}
            assert scaler["maxReplicas"] <= max(s.partitions for s in consumed)
            (lag,) = [m["external"]["metric"] for m in scaler["metrics"] if "external" in m]
            assert lag["name"] == "billing_consumer_lag"
            assert lag["selector"]["matchLabels"] == {"app_kubernetes_io_name": name}


def test_every_service_is_reachable_where_its_callers_look() -> None:
    config = _of("ConfigMap")[render.CONFIG]["data"]
    services = _of("Service")
    for key, url in config.items():
        if not key.endswith("_URL") or "://" not in url or "stripe.com" in url:
            continue
        host, port = re.match(r"http://([^:/]+):(\d+)", url).groups()  # type: ignore[union-attr]
        target = services[host]
        assert target["spec"]["ports"][0]["port"] == int(port) == SERVICES[host].default_port


def _filled_secret() -> dict[str, str]:
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    key = "front-proxy:" + base64.urlsafe_b64encode(raw).decode().rstrip("=")
    token = {
        scope: f"{scope}-token-from-the-secret-store"
        for scope in ("chat", "reader", "front", "operator", "service")
    }
    filled = {}
    for name in render.SECRET_KEYS:
        if name == "DATABASE_URL":
            filled[name] = "postgresql://billing:s3cret@billing-postgres:5432/billing"
        elif name.endswith("IDENTITY_KEYS"):
            filled[name] = key
        elif name.endswith("API_TOKENS"):
            filled[name] = ",".join(f"{s}:{t}" for s, t in token.items())
        elif name.endswith("API_KEY"):
            filled[name] = "sk_live_from_the_secret_store"
        elif name.endswith("WEBHOOK_SECRET"):
            filled[name] = "whsec_from_the_secret_store"
        else:
            filled[name] = token[
                "front" if "FRONT" in name or "SUBSCRIPTIONS" in name else "reader"
            ]
    return filled


def _environment(deployment: dict[str, Any], secret: dict[str, str]) -> dict[str, str]:
    config = _of("ConfigMap")[render.CONFIG]["data"]
    env = {**config, **secret}
    env.update({e["name"]: e["value"] for e in _container(deployment).get("env", [])})
    return env


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_each_deployment_starts_with_the_secret_filled_and_refuses_the_placeholders(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = DEPLOYMENTS[name]
    service = _service_of(deployment)
    placeholders = _of("Secret")[render.SECRETS]["stringData"]
    assert set(placeholders) == set(render.SECRET_KEYS)
    with monkeypatch.context() as env:
        for key, value in _environment(deployment, _filled_secret()).items():
            env.setenv(key, value)
        settings = service.settings()
    assert settings.http_host == "0.0.0.0" and not settings.accepts_dev_token
    assert not settings.migrate_on_start and not settings.kafka_create_topics
    assert settings.kafka_replication_factor == 3 and settings.kafka_min_insync_replicas == 2
    with monkeypatch.context() as env:
        for key, value in _environment(deployment, placeholders).items():
            env.setenv(key, value)
        with pytest.raises(ValidationError):
            service.settings()


def test_every_variable_configured_is_a_setting_of_some_service() -> None:
    """A misspelt variable is silently ignored by a service: none is."""
    common = {
        alias
        for field in CommonSettings.model_fields.values()
        for alias in getattr(field.validation_alias, "choices", ())
    }
    known = set(common)
    for service in SERVICES.values():
        for field_name, field in service.settings.model_fields.items():
            known.add(f"{service.env_prefix}{field_name}".upper())
            known.update(getattr(field.validation_alias, "choices", ()))
    configured = set(_of("ConfigMap")[render.CONFIG]["data"]) | set(render.SECRET_KEYS)
    for deployment in DEPLOYMENTS.values():
        configured |= {e["name"] for e in _container(deployment).get("env", [])}
    assert configured <= known, sorted(configured - known)


def test_topics_and_migrations_run_as_a_job_before_the_services() -> None:
    (job,) = _of("Job").values()
    (container,) = job["spec"]["template"]["spec"]["containers"]
    script = container["command"][-1]
    assert script.startswith("python -m services.metering topics")
    for service in SERVICES.values():
        assert f"python -m {service.module} migrate" in script
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
