"""Renders `deploy/kubernetes/billing.yaml`, the Kubernetes manifests of the whole system, from
the registered services (`make manifests`; a test fails when the file differs from what this
renders, and validates every object against the Kubernetes API schemas).

One Deployment per service, and for metering two (the authorization API apart from the
consumers, `METERING_RUN_CONSUMERS=false`); probes on `/healthz` and `/readyz`; memory from the
peaks `make bench` measures; configuration in a ConfigMap, credentials in a Secret; topics and
migrations in a Job run before a rollout; a PodDisruptionBudget per Deployment; autoscaling on
CPU for APIs and on consumer lag for consumers, never past the partitions they can own.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from shared.service import registered  # noqa: E402
from shared.topics import REGISTRY  # noqa: E402

OUTPUT = Path(__file__).with_name("billing.yaml")
NAMESPACE = "billing"
IMAGE = "registry.example.com/billing:1.0.0"
CONFIG = "billing-config"
SECRETS = "billing-secrets"
UID = 10001

PEAK_MIB = {
    "metering": 260,
    "subscriptions": 161,
    "seats": 164,
    "stripe-gateway": 123,
    "dashboard": 113,
}
"""The highest peak resident memory of each service in `make bench` (bench/results, the
`peak_memory_mib` of every run). A pod requests its peak rounded up to 32 MiB and may use half
as much again."""

CONSUMES = {
    service.name: [spec for spec in REGISTRY if service.name in spec.consumers]
    for service in registered()
}


def _mib(value: float) -> str:
    return f"{int(-(-value // 32) * 32)}Mi"


def _deployment_plans() -> list[dict[str, Any]]:
    """(name, service, role, extra env, replicas, autoscaling) per Deployment."""
    plans = []
    for service in registered():
        prefix = service.env_prefix
        if service.name == "metering":
            plans.append(
                {
                    "name": "metering-api",
                    "service": service,
                    "role": "api",
                    "env": {f"{prefix}RUN_CONSUMERS": "false", f"{prefix}RUN_RELAY": "false"},
                    "serves": True,
                    "scale": "cpu",
                }
            )
            plans.append(
                {
                    "name": "metering-consumers",
                    "service": service,
                    "role": "consumers",
                    "env": {},
                    "serves": False,
                    "scale": "lag",
                }
            )
        else:
            plans.append(
                {
                    "name": service.name,
                    "service": service,
                    "role": "all",
                    "env": {},
                    "serves": True,
                    "scale": "lag" if CONSUMES[service.name] else "cpu",
                }
            )
    return plans


def _labels(name: str, role: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/part-of": "billing",
        "billing/role": role,
    }


def _config(all_services: list[Any]) -> dict[str, Any]:
    data = {
        "KAFKA_BOOTSTRAP_SERVERS": "billing-kafka-bootstrap.kafka:9092",
        "KAFKA_CREATE_TOPICS": "false",
        "KAFKA_REPLICATION_FACTOR": "3",
        "KAFKA_MIN_INSYNC_REPLICAS": "2",
        "KAFKA_TOPIC_PARTITIONS": '{"agent.usage": 12}',
        "LOG_LEVEL": "INFO",
        "SUBSCRIPTIONS_GATEWAY_URL": "http://stripe-gateway:8083",
        "DASHBOARD_SUBSCRIPTIONS_URL": "http://subscriptions:8082",
        "DASHBOARD_METERING_URL": "http://metering:8081",
        "DASHBOARD_GATEWAY_URL": "http://stripe-gateway:8083",
        "STRIPE_GATEWAY_API_BASE": "https://api.stripe.com",
    }
    for service in all_services:
        data[f"{service.env_prefix}HTTP_HOST"] = "0.0.0.0"
        data[f"{service.env_prefix}MIGRATE_ON_START"] = "false"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": CONFIG, "namespace": NAMESPACE},
        "data": dict(sorted(data.items())),
    }


SECRET_KEYS = {
    "DATABASE_URL": "postgresql://billing:…@billing-postgres:5432/billing",
    "METERING_API_TOKENS": "chat:…,reader:…,front:…,operator:…",
    "METERING_IDENTITY_KEYS": "front-proxy:<base64url Ed25519 public key>",
    "SUBSCRIPTIONS_API_TOKENS": "front:…,reader:…,operator:…",
    "SUBSCRIPTIONS_IDENTITY_KEYS": "front-proxy:…",
    "SUBSCRIPTIONS_GATEWAY_TOKEN": "the gateway's service token",
    "SEATS_API_TOKENS": "reader:…,operator:…",
    "SEATS_IDENTITY_KEYS": "front-proxy:…",
    "STRIPE_GATEWAY_API_TOKENS": "service:…,reader:…,operator:…",
    "STRIPE_GATEWAY_IDENTITY_KEYS": "front-proxy:…",
    "STRIPE_GATEWAY_API_KEY": "sk_live_…",
    "STRIPE_GATEWAY_WEBHOOK_SECRET": "whsec_…",
    "DASHBOARD_API_TOKENS": "operator:…",
    "DASHBOARD_IDENTITY_KEYS": "front-proxy:…",
    "DASHBOARD_SUBSCRIPTIONS_TOKEN": "a front token of subscriptions",
    "DASHBOARD_METERING_TOKEN": "a reader token of metering",
    "DASHBOARD_METERING_FRONT_TOKEN": "a front token of metering",
    "DASHBOARD_GATEWAY_TOKEN": "a reader token of the gateway",
}
"""What the Secret holds (from the secret store, e.g. an ExternalSecret): every credential.
The rendered Secret carries only these descriptions, which no service accepts as a value:
a cluster given it unchanged refuses to start instead of running with a known token."""


def _secret() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": SECRETS,
            "namespace": NAMESPACE,
            "annotations": {"billing/replace": "every value, from the secret store"},
        },
        "type": "Opaque",
        "stringData": {k: f"REPLACE: {v}" for k, v in SECRET_KEYS.items()},
    }


def _security() -> tuple[dict[str, Any], dict[str, Any]]:
    pod = {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "fsGroup": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    return pod, container


def _container(plan: dict[str, Any], command: list[str]) -> dict[str, Any]:
    service = plan["service"]
    port = service.default_port
    memory = PEAK_MIB[service.name]
    _, security = _security()
    env = [{"name": k, "value": v} for k, v in plan["env"].items()]
    return {
        "name": service.name,
        "image": IMAGE,
        "command": command,
        "ports": [{"name": "http", "containerPort": port}],
        "envFrom": [{"configMapRef": {"name": CONFIG}}, {"secretRef": {"name": SECRETS}}],
        **({"env": env} if env else {}),
        "resources": {
            "requests": {"cpu": "250m", "memory": _mib(memory)},
            "limits": {"memory": _mib(memory * 1.5)},
        },
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 2,
            "failureThreshold": 60,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 2,
        },
        "securityContext": security,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }


def _pod(labels: dict[str, str], containers: list[dict[str, Any]], **extra: Any) -> dict:
    pod, _ = _security()
    return {
        "metadata": {
            "labels": labels,
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/path": "/metrics"},
        },
        "spec": {
            "securityContext": pod,
            "containers": containers,
            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
            **extra,
        },
    }


def _deployment(plan: dict[str, Any]) -> dict[str, Any]:
    service = plan["service"]
    labels = _labels(plan["name"], plan["role"])
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": plan["name"], "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": _pod(
                labels,
                [_container(plan, ["python", "-m", service.module])],
                # The kernel's stop is bounded (15 s a step): let it finish.
                terminationGracePeriodSeconds=45,
                topologySpreadConstraints=[
                    {
                        "maxSkew": 1,
                        "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "ScheduleAnyway",
                        "labelSelector": {"matchLabels": labels},
                    }
                ],
            ),
        },
    }


def _service(plan: dict[str, Any]) -> dict[str, Any]:
    service = plan["service"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service.name, "namespace": NAMESPACE},
        "spec": {
            "selector": _labels(plan["name"], plan["role"]),
            "ports": [{"name": "http", "port": service.default_port, "targetPort": "http"}],
        },
    }


def _budget(plan: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": plan["name"], "namespace": NAMESPACE},
        "spec": {
            "minAvailable": 1,
            "selector": {"matchLabels": _labels(plan["name"], plan["role"])},
        },
    }


def max_replicas(plan: dict[str, Any]) -> int:
    """Consumers scale to the partitions they can own (more would idle); APIs to 10."""
    if plan["scale"] != "lag":
        return 10
    return max(spec.partitions for spec in CONSUMES[plan["service"].name])


def _autoscaler(plan: dict[str, Any]) -> dict[str, Any]:
    cpu = {
        "type": "Resource",
        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
    }
    lag = {
        "type": "External",
        "external": {
            # billing_consumer_lag (shared/metrics.py), summed per consumer group through the
            # Prometheus adapter (or the Kafka Exporter's kafka_consumergroup_lag).
            "metric": {
                "name": "billing_consumer_lag",
                "selector": {"matchLabels": {"service": plan["service"].name}},
            },
            "target": {"type": "AverageValue", "averageValue": "5000"},
        },
    }
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": plan["name"], "namespace": NAMESPACE},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": plan["name"]},
            "minReplicas": 2,
            "maxReplicas": max_replicas(plan),
            "metrics": [cpu, lag] if plan["scale"] == "lag" else [cpu],
        },
    }


def _provision(all_services: list[Any]) -> dict[str, Any]:
    steps = ["python -m services.metering topics"] + [
        f"python -m {service.module} migrate" for service in all_services
    ]
    plan = {"service": all_services[0], "env": {}, "name": "billing-provision"}
    container = _container(plan, ["sh", "-c", " && ".join(steps)])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        container.pop(probe)
    container["name"] = "provision"
    container.pop("ports")
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "billing-provision",
            "namespace": NAMESPACE,
            "labels": _labels("billing-provision", "provision"),
        },
        "spec": {
            "backoffLimit": 6,
            "ttlSecondsAfterFinished": 3600,
            "template": _pod(
                _labels("billing-provision", "provision"), [container], restartPolicy="OnFailure"
            ),
        },
    }


def documents() -> list[dict[str, Any]]:
    all_services = registered()
    plans = _deployment_plans()
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        _config(all_services),
        _secret(),
        _provision(all_services),
    ]
    for plan in plans:
        docs.append(_deployment(plan))
        if plan["serves"]:
            docs.append(_service(plan))
        docs.append(_budget(plan))
        docs.append(_autoscaler(plan))
    return docs


def render() -> str:
    head = (
        "# Rendered by deploy/kubernetes/render.py (`make manifests`); do not edit by hand.\n"
        "# Order of a rollout: the Job billing-provision (topics, migrations), then the rest.\n"
    )
    return head + yaml.safe_dump_all(documents(), sort_keys=False, width=100)


if __name__ == "__main__":
    OUTPUT.write_text(render())
    print(OUTPUT.relative_to(ROOT))
