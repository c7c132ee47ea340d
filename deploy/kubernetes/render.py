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
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Plan:
    """One Deployment: which service it runs, as what, and how it scales."""

    name: str
    service: Any
    role: str
    """`api`, `consumers` or `all` (both in one process)."""
    env: dict[str, str] = field(default_factory=dict)
    serves: bool = True
    """Behind a Service (the API); metering's consumers are not."""
    scale_on_lag: bool = False

    @property
    def labels(self) -> dict[str, str]:
        return _labels(self.name, self.role)


def _plans() -> list[Plan]:
    plans = []
    for service in registered():
        if service.name == "metering":
            off = {
                f"{service.env_prefix}{part}": "false" for part in ("RUN_CONSUMERS", "RUN_RELAY")
            }
            plans.append(Plan("metering-api", service, "api", env=off))
            plans.append(
                Plan("metering-consumers", service, "consumers", serves=False, scale_on_lag=True)
            )
        else:
            plans.append(
                Plan(service.name, service, "all", scale_on_lag=bool(CONSUMES[service.name]))
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


POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": UID,
    "runAsGroup": UID,
    "fsGroup": UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
    }


def _container(
    name: str, service: Any, command: list[str], env: dict[str, str], *, listens: bool
) -> dict[str, Any]:
    """A container of the image; `listens`: its HTTP port and the probes on it."""
    memory = PEAK_MIB[service.name]
    listening = {
        "ports": [{"name": "http", "containerPort": service.default_port}],
    }
    probes = {
        "startupProbe": _probe("/healthz", 2, 60),
        "livenessProbe": _probe("/healthz", 10, 3),
        "readinessProbe": _probe("/readyz", 5, 2),
    }
    return {
        "name": name,
        "image": IMAGE,
        "command": command,
        **(listening if listens else {}),
        "envFrom": [{"configMapRef": {"name": CONFIG}}, {"secretRef": {"name": SECRETS}}],
        **({"env": [{"name": k, "value": v} for k, v in env.items()]} if env else {}),
        "resources": {
            "requests": {"cpu": "250m", "memory": _mib(memory)},
            "limits": {"memory": _mib(memory * 1.5)},
        },
        **(probes if listens else {}),
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }


def _pod(labels: dict[str, str], containers: list[dict[str, Any]], **extra: Any) -> dict:
    return {
        "metadata": {
            "labels": labels,
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/path": "/metrics"},
        },
        "spec": {
            "securityContext": POD_SECURITY,
            "containers": containers,
            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
            **extra,
        },
    }


def _deployment(plan: Plan) -> dict[str, Any]:
    labels = plan.labels
    container = _container(
        plan.service.name,
        plan.service,
        ["python", "-m", plan.service.module],
        plan.env,
        listens=True,
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": plan.name, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": _pod(
                labels,
                [container],
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


def _service(plan: Plan) -> dict[str, Any]:
    service = plan.service
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service.name, "namespace": NAMESPACE},
        "spec": {
            "selector": plan.labels,
            "ports": [{"name": "http", "port": service.default_port, "targetPort": "http"}],
        },
    }


def _budget(plan: Plan) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": plan.name, "namespace": NAMESPACE},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": plan.labels}},
    }


def max_replicas(plan: Plan) -> int:
    """Consumers scale to the partitions they can own (more would idle); APIs to 10."""
    if not plan.scale_on_lag:
        return 10
    return max(spec.partitions for spec in CONSUMES[plan.service.name])


def _autoscaler(plan: Plan) -> dict[str, Any]:
    cpu = {
        "type": "Resource",
        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
    }
    lag = {
        "type": "External",
        "external": {
            # billing_consumer_lag (shared/metrics.py) through the Prometheus adapter, of this
            # Deployment's pods: the scrape configuration copies each pod's
            # `app.kubernetes.io/name` onto its series (labelmap), the metric's own labels
            # being consumer, topic and partition.
            "metric": {
                "name": "billing_consumer_lag",
                "selector": {"matchLabels": {"app_kubernetes_io_name": plan.name}},
            },
            "target": {"type": "AverageValue", "averageValue": "5000"},
        },
    }
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": plan.name, "namespace": NAMESPACE},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": plan.name},
            "minReplicas": 2,
            "maxReplicas": max_replicas(plan),
            "metrics": [cpu, lag] if plan.scale_on_lag else [cpu],
        },
    }


def _provision(all_services: list[Any]) -> dict[str, Any]:
    steps = ["python -m services.metering topics"] + [
        f"python -m {service.module} migrate" for service in all_services
    ]
    command = ["sh", "-c", " && ".join(steps)]
    container = _container("provision", all_services[0], command, {}, listens=False)
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
    plans = _plans()
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        _config(all_services),
        _secret(),
        _provision(all_services),
    ]
    for plan in plans:
        docs.append(_deployment(plan))
        if plan.serves:
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
