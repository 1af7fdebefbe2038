"""The Helm chart (deploy/helm/forewarn), checked without a cluster or a broker.

- values.yaml validates against values.schema.json (draft-07, as Helm checks it), and the
  schema refuses what an operator gets wrong: a misspelt key, no partitions, an unknown
  security protocol, a password in plain text.
- deploy/helm/rendered-example.yaml (the chart rendered with KEDA, the PodMonitor, the
  PrometheusRule, the dashboard, the feedback plane, the deliverers and SASL on; kept in the
  repository, since helm is not everywhere) validates object by object against the
  Kubernetes 1.37 schemas, strictly,
  and says what the chart promises: each worker's pod name is its instance id, the probes go
  to /healthz and /readyz, the SASL password only ever comes from a Secret, KEDA never scales
  past the partition count, the PDB covers the workers.
- The templates reach the real alert rules and dashboard: files/alerts.yaml and
  files/forewarn.json are symlinks to deploy/prometheus/alerts.yaml and
  deploy/grafana/forewarn.json, read with .Files.Get.
- Where helm is installed, `helm lint` passes and `helm template` renders the same objects as
  the example (the embedded rules and dashboard being the real files).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HELM_DIR = ROOT / "deploy" / "helm"
CHART = HELM_DIR / "forewarn"
TEMPLATES = CHART / "templates"
VALUES = CHART / "values.yaml"
SCHEMA = CHART / "values.schema.json"
EXAMPLE = HELM_DIR / "rendered-example.yaml"
#: written alongside (the alert rules and the dashboard); the chart embeds them
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "forewarn.json"

KUBERNETES_VERSION = "1.37.0"
#: API groups whose kinds are custom resources (KEDA, the Prometheus Operator): no schema in
#: kubernetes-validate, checked field by field below
CUSTOM_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication", "PodMonitor", "PrometheusRule"}

#: how the example was rendered (its header says so too)
RELEASE = "forewarn"
EXAMPLE_FLAGS = [
    "--set", "keda.enabled=true",
    "--set", "podMonitor.enabled=true",
    "--set", "prometheusRule.enabled=true",
    "--set", "dashboard.enabled=true",
    "--set", "feedback.enabled=true",
    "--set", "deliver.enabled=true",
    "--set", "deliver.destinations.existingConfigMap=forewarn-destinations",
    "--set", "deliver.existingSecret=forewarn-destinations",
    "--set", "kafka.securityProtocol=SASL_SSL",
    "--set", "kafka.sasl.username=forewarn",
    "--set", "kafka.sasl.existingSecret=forewarn-kafka",
]  # fmt: skip
SASL_SECRET = "forewarn-kafka"
METRICS_PORT = 9464
FEEDBACK_PORT = 9465

Obj = dict[str, Any]


# ---------------------------------------------------------------------------- helpers


@cache
def values() -> Obj:
    loaded: Obj = yaml.safe_load(VALUES.read_text())
    return loaded


@cache
def schema() -> Obj:
    loaded: Obj = json.loads(SCHEMA.read_text())
    return loaded


def schema_errors(candidate: Obj) -> list[str]:
    validator = jsonschema.Draft7Validator(schema())
    return [
        f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(candidate)
    ]


def with_values(patch: Obj) -> Obj:
    """values.yaml with ``patch`` merged in, as ``helm --set`` or ``-f`` would."""

    def merge(base: Obj, extra: Obj) -> Obj:
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value
        return base

    return merge(copy.deepcopy(values()), patch)


def load_objects(text: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@cache
def example() -> tuple[Obj, ...]:
    return tuple(load_objects(EXAMPLE.read_text()))


def is_custom(obj: Obj) -> bool:
    return str(obj["apiVersion"]).startswith(CUSTOM_GROUPS)


def the(kind: str, name: str | None = None, objects: tuple[Obj, ...] | None = None) -> Obj:
    found = [
        o
        for o in (example() if objects is None else objects)
        if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def workloads() -> list[Obj]:
    return [o for o in example() if o["kind"] in ("StatefulSet", "Deployment")]


def containers(workload: Obj) -> list[Obj]:
    found: list[Obj] = workload["spec"]["template"]["spec"]["containers"]
    return found


def env_of(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


def walk_env_vars(node: Any) -> Iterator[Obj]:
    """Every EnvVar anywhere in ``node`` (containers, init containers, whatever nests them)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                yield from (e for e in value if isinstance(e, dict) and "name" in e)
            else:
                yield from walk_env_vars(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_env_vars(item)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pod_labels(workload: Obj) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def scoring() -> Obj:
    return the("StatefulSet", f"{RELEASE}-scoring")


def scoring_container() -> Obj:
    (container,) = [c for c in containers(scoring()) if c["name"] == "scoring"]
    return container


def validate_core(objects: tuple[Obj, ...] | list[Obj]) -> list[str]:
    """Every object of a core kind against the Kubernetes schemas (strict: unknown fields are
    errors); the problems, one line each."""
    problems = []
    for obj in objects:
        if is_custom(obj):
            assert obj["kind"] in CUSTOM_KINDS, f"unexpected custom resource {obj['kind']}"
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{obj['kind']} {obj['metadata']['name']}: {e.message} at {e.path}")
    return problems


def helm() -> str:
    found = shutil.which("helm")
    if found is None:
        pytest.skip(
            "helm is not installed here: the chart is checked through the rendered "
            "deploy/helm/rendered-example.yaml only (install helm to lint and render it)"
        )
    return found


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip


# ---------------------------------------------------------------------------- values


def test_the_schema_is_draft_7_and_the_default_values_pass_it() -> None:
    assert schema()["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema())
    assert schema_errors(values()) == []


def test_a_production_setup_passes_the_schema() -> None:
    production = with_values(
        {
            "kafka": {
                "bootstrapServers": "b-1.kafka.internal:9096,b-2.kafka.internal:9096",
                "securityProtocol": "SASL_SSL",
                "sasl": {
                    "mechanism": "SCRAM-SHA-256",
                    "username": "forewarn",
                    "existingSecret": "forewarn-kafka",
                    "passwordKey": "pw",
                },
                "tls": {"caSecret": "kafka-ca"},
                "extra": {"client.rack": "eu-west-1a"},
            },
            "topics": {"partitions": 12},
            "extraEnv": [
                {"name": "FOREWARN_EVENT_ALIASES", "value": '{"pay_fail": "payment_failed"}'},
                {
                    "name": "FOREWARN_KAFKA__SSL_KEY_PASSWORD",
                    "valueFrom": {"secretKeyRef": {"name": "k", "key": "p"}},
                },
            ],
            "scoring": {"persistence": {"enabled": True, "size": "50Gi"}},
            "keda": {"enabled": True, "minReplicaCount": 2},
            "feedback": {"enabled": True, "replicas": 3},
            "rulebook": {"inline": 'version: "1"\nrules: []\n'},
        }
    )
    assert schema_errors(production) == []


@pytest.mark.parametrize(
    ("patch", "why"),
    [
        ({"topics": {"partitons": 6}}, "a misspelt key"),
        ({"kafak": {}}, "a misspelt top-level key"),
        ({"scoring": {"persistence": {"enabeld": True}}}, "a misspelt nested key"),
        ({"topics": {"partitions": 0}}, "no partitions"),
        ({"topics": {"partitions": "6"}}, "a partition count as a string"),
        ({"scoring": {"replicas": 0}}, "no scoring workers"),
        ({"feedback": {"replicas": 0}}, "no feedback workers"),
        ({"keda": {"minReplicaCount": 0}}, "KEDA scaling to zero"),
        ({"kafka": {"securityProtocol": "SASL_TLS"}}, "an unknown security protocol"),
        ({"kafka": {"securityProtocol": "sasl_ssl"}}, "a security protocol in lower case"),
        ({"kafka": {"sasl": {"mechanism": "GSSAPI"}}}, "a SASL mechanism KEDA cannot speak"),
        ({"kafka": {"sasl": {"password": "hunter2"}}}, "a SASL password as a value"),
        (
            {"kafka": {"securityProtocol": "SASL_SSL", "sasl": {"username": "forewarn"}}},
            "SASL without the Secret holding the password",
        ),
        (
            {"kafka": {"securityProtocol": "SASL_SSL", "sasl": {"existingSecret": "s"}}},
            "SASL without a username",
        ),
        (
            {"extraEnv": [{"name": "FOREWARN_KAFKA__SASL_PASSWORD", "value": "hunter2"}]},
            "a password in plain text through extraEnv",
        ),
        (
            {"scoring": {"extraEnv": [{"name": "FOREWARN_KAFKA__SSL_KEY_PASSWORD", "value": "x"}]}},
            "a key password in plain text",
        ),
        ({"logLevel": "TRACE"}, "an unknown log level"),
        ({"image": {"pullPolicy": "Sometimes"}}, "an unknown pull policy"),
    ],
)
def test_the_schema_refuses_wrong_values(patch: Obj, why: str) -> None:
    assert schema_errors(with_values(patch)), f"the schema accepts {why}"


def test_every_value_the_templates_read_exists_in_values_yaml() -> None:
    """Helm renders a misspelt .Values path as empty, silently: each one must exist."""
    aliases = {"$scoring": "scoring", "$learner": "learner", "$feedback": "feedback"}
    read = 0
    for template in TEMPLATES.iterdir():
        text = template.read_text()
        paths = [p.split(".")[1:] for p in re.findall(r"\.Values((?:\.\w+)+)", text)]
        for alias, root in aliases.items():
            for p in re.findall(re.escape(alias) + r"((?:\.\w+)+)", text):
                paths.append([root, *p.split(".")[1:]])
        for path in paths:
            node: Any = values()
            for key in path:
                assert isinstance(node, dict) and key in node, f"{template.name}: {'.'.join(path)}"
                node = node[key]
            read += 1
    assert read > 50


def test_the_templates_open_and_close_every_action_and_block() -> None:
    for template in TEMPLATES.iterdir():
        text = template.read_text()
        assert text.count("{{") == text.count("}}"), template.name
        actions = re.findall(r"\{\{-?\s*(/\*.*?\*/|[^}]*?)\s*-?\}\}", text, re.DOTALL)
        opened = sum(1 for a in actions if re.match(r"(if|with|range|define|block)\b", a))
        closed = sum(1 for a in actions if re.fullmatch(r"end", a))
        assert opened == closed, f"{template.name}: {opened} blocks opened, {closed} closed"


# ---------------------------------------------------------------------------- the example


def test_the_example_says_how_it_was_made() -> None:
    header = EXAMPLE.read_text().split("\n---", 1)[0]
    assert "helm template forewarn deploy/helm/forewarn" in header
    assert "by hand" in header.lower() and "placeholder" in header.lower()
    for flag in EXAMPLE_FLAGS[1::2]:
        assert flag in header, flag


def test_every_core_object_of_the_example_is_valid_kubernetes() -> None:
    kinds = {o["kind"] for o in example()}
    assert {"StatefulSet", "Service", "PodDisruptionBudget", "Deployment", "ConfigMap",
            "ServiceAccount"} <= kinds  # fmt: skip
    assert kinds >= CUSTOM_KINDS
    assert validate_core(example()) == []


def test_the_kubernetes_validation_is_strict() -> None:
    """An unknown field is an error, so the check above would catch a misplaced one."""
    broken = copy.deepcopy(scoring())
    broken["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_each_worker_is_a_statefulset_pod_whose_name_is_its_instance_id() -> None:
    sts = scoring()
    headless = the("Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert selects(headless["spec"]["selector"], pod_labels(sts))
    assert selects(sts["spec"]["selector"]["matchLabels"], pod_labels(sts))
    env = env_of(scoring_container())
    assert env["FOREWARN_INSTANCE_ID"] == {
        "name": "FOREWARN_INSTANCE_ID",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    }
    assert scoring_container()["args"] == ["score"]
    # KEDA owns the replica count: a replicas field would fight it on every upgrade
    assert "replicas" not in sts["spec"]
    assert sts["spec"]["podManagementPolicy"] == "Parallel"


def test_the_workers_serve_metrics_and_health_on_9464_with_patient_probes() -> None:
    container = scoring_container()
    env = env_of(container)
    assert env["FOREWARN_HTTP_HOST"]["value"] == "0.0.0.0"
    assert env["FOREWARN_HTTP_PORT"]["value"] == str(METRICS_PORT)
    (port,) = container["ports"]
    assert port == {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}
    probes = {
        kind: container[f"{kind}Probe"]["httpGet"] for kind in ("startup", "liveness", "readiness")
    }
    assert probes["liveness"]["path"] == "/healthz"
    assert probes["startup"]["path"] == "/healthz"
    assert probes["readiness"]["path"] == "/readyz"
    for probe in probes.values():
        assert probe["port"] in ("metrics", METRICS_PORT)
    liveness, readiness = container["livenessProbe"], container["readinessProbe"]
    # /healthz already waits 120 s without a turn of the loop before failing; a restore
    # (minutes) only holds readiness back
    assert liveness["failureThreshold"] * liveness["periodSeconds"] >= 60
    assert 5 <= readiness["periodSeconds"] <= 30
    assert scoring()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60
    assert container["resources"] == values()["scoring"]["resources"]


def test_every_pod_runs_unprivileged_on_a_read_only_root() -> None:
    for workload in workloads():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        # Services would otherwise set FOREWARN_*-looking variables (FOREWARN_HTTP_PORT=tcp://)
        assert pod["enableServiceLinks"] is False
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], workload["metadata"]["name"]
            # the image's home and working directory
            assert "emptyDir" in volumes[mounts["/var/lib/forewarn"]]


def test_the_sasl_password_only_ever_comes_from_the_existing_secret() -> None:
    passwords = [e for e in walk_env_vars(list(example())) if e["name"].endswith("SASL_PASSWORD")]
    assert len(passwords) == len(workloads()) == 4
    for env in passwords:
        assert "value" not in env, env
        assert env["valueFrom"] == {"secretKeyRef": {"name": SASL_SECRET, "key": "password"}}
    for env in walk_env_vars(list(example())):
        if re.search("PASSWORD|SECRET", env["name"]):
            assert "value" not in env, env
    assert not any(o["kind"] == "Secret" for o in example()), "the chart makes no Secret"
    for workload in workloads():
        env = env_of(containers(workload)[0])
        assert env["FOREWARN_KAFKA__SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
        assert env["FOREWARN_KAFKA__SASL_USERNAME"]["value"] == "forewarn"


def test_configuration_comes_from_the_values() -> None:
    topics = values()["topics"]
    expected = {
        "FOREWARN_BOOTSTRAP_SERVERS": values()["kafka"]["bootstrapServers"],
        "FOREWARN_GROUP_ID": values()["kafka"]["groupId"],
        "FOREWARN_TOPICS__PARTITIONS": str(topics["partitions"]),
        "FOREWARN_TOPICS__REPLICATION_FACTOR": str(topics["replicationFactor"]),
        "FOREWARN_TOPICS__JOURNEY_EVENTS": topics["journeyEvents"],
        "FOREWARN_TOPICS__CUSTOMER_PROFILES": topics["customerProfiles"],
        "FOREWARN_TOPICS__STATE": topics["state"],
        "FOREWARN_TOPICS__FEATURE_ROWS": topics["featureRows"],
        "FOREWARN_TOPICS__OUTCOMES_DLQ": topics["outcomesDlq"],
        "FOREWARN_KAFKA__SASL_MECHANISM": values()["kafka"]["sasl"]["mechanism"],
        "FOREWARN_LOG_LEVEL": values()["logLevel"],
    }
    for workload in workloads():
        env = env_of(containers(workload)[0])
        got = {name: env[name].get("value") for name in expected}
        assert got == expected, workload["metadata"]["name"]
        # the shipped rulebook: no ConfigMap unless rulebook.inline or existingConfigMap
        assert "FOREWARN_RULES_PATH" not in env


def test_keda_scales_the_statefulset_on_the_scoring_lag_up_to_the_partition_count() -> None:
    scaled = the("ScaledObject")
    sts = scoring()
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": sts["metadata"]["name"],
    }
    assert scaled["spec"]["maxReplicaCount"] == values()["topics"]["partitions"]
    assert scaled["spec"]["minReplicaCount"] == values()["keda"]["minReplicaCount"] >= 1
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert all(isinstance(v, str) for v in meta.values()), "KEDA's metadata is strings"
    env = env_of(scoring_container())
    assert meta["bootstrapServers"] == env["FOREWARN_BOOTSTRAP_SERVERS"]["value"]
    assert meta["consumerGroup"] == env["FOREWARN_GROUP_ID"]["value"]
    assert meta["topic"] == env["FOREWARN_TOPICS__JOURNEY_EVENTS"]["value"]
    assert meta["lagThreshold"] == str(values()["keda"]["lagThreshold"])
    assert meta["allowIdleConsumers"] == "false"
    assert meta["offsetResetPolicy"] == "earliest"
    assert meta["sasl"] == "scram_sha512"  # SCRAM-SHA-512 in KEDA's words
    assert meta["tls"] == "enable"  # SASL_SSL
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior == values()["keda"]["behavior"]


def test_keda_authenticates_with_the_workers_own_secret_and_username() -> None:
    scaled = the("ScaledObject")
    auth = the("TriggerAuthentication", scaled["spec"]["triggers"][0]["authenticationRef"]["name"])
    (password,) = auth["spec"]["secretTargetRef"]
    worker_secret = env_of(scoring_container())["FOREWARN_KAFKA__SASL_PASSWORD"]["valueFrom"]
    assert password == {
        "parameter": "password",
        "name": worker_secret["secretKeyRef"]["name"],
        "key": worker_secret["secretKeyRef"]["key"],
    }
    (username,) = auth["spec"]["env"]
    assert username["parameter"] == "username"
    assert username["containerName"] == scoring_container()["name"]
    assert username["name"] in env_of(scoring_container())


def test_the_pdb_lets_one_worker_go_at_a_time_and_covers_only_the_workers() -> None:
    pdb = the("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    # a worker that is not ready (restoring, idle) scores nothing: evicting it blocks no drain
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    selector = pdb["spec"]["selector"]["matchLabels"]
    for workload in workloads():
        covered = selects(selector, pod_labels(workload))
        is_scoring = workload["metadata"]["name"] == scoring()["metadata"]["name"]
        assert covered == is_scoring, workload["metadata"]["name"]


def test_the_metrics_service_and_the_headless_service_reach_the_workers() -> None:
    sts = scoring()
    services = [o for o in example() if o["kind"] == "Service"]
    reaching = [s for s in services if selects(s["spec"]["selector"], pod_labels(sts))]
    assert {s["metadata"]["name"] for s in reaching} == {
        sts["spec"]["serviceName"],
        f"{sts['metadata']['name']}-metrics",
    }
    for service in reaching:
        (port,) = service["spec"]["ports"]
        assert port["name"] == "metrics" and port["port"] == METRICS_PORT
        assert port["targetPort"] in ("metrics", METRICS_PORT)


def test_the_learner_is_exactly_one_and_never_two() -> None:
    learner = the("Deployment", f"{RELEASE}-learner")
    assert learner["spec"]["replicas"] == 1
    assert learner["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = containers(learner)
    assert container["args"] == ["learn"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_the_feedback_plane_serves_its_api_on_9465_behind_its_service() -> None:
    feedback = the("Deployment", f"{RELEASE}-feedback")
    (container,) = containers(feedback)
    assert container["args"] == ["feedback"]
    assert feedback["spec"]["replicas"] == values()["feedback"]["replicas"]
    env = env_of(container)
    assert env["FOREWARN_FEEDBACK_HTTP_PORT"]["value"] == str(FEEDBACK_PORT)
    # bound to and advertised as the pod's own address, which the other feedback workers reach
    assert env["FOREWARN_FEEDBACK_HTTP_HOST"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "status.podIP"}
    }
    assert env["FOREWARN_FEEDBACK__GROUP_ID"]["value"] == values()["feedback"]["groupId"]
    (port,) = container["ports"]
    assert port["containerPort"] == FEEDBACK_PORT
    for kind, path in (("liveness", "/healthz"), ("readiness", "/readyz")):
        assert container[f"{kind}Probe"]["httpGet"] == {"path": path, "port": port["name"]}
    service = the("Service", f"{RELEASE}-feedback")
    assert selects(service["spec"]["selector"], pod_labels(feedback))
    assert not selects(service["spec"]["selector"], pod_labels(scoring()))
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == FEEDBACK_PORT
    assert service_port["targetPort"] in (port["name"], FEEDBACK_PORT)


def test_the_deliverers_keep_their_names_and_read_your_destinations_and_secrets() -> None:
    deliver = the("StatefulSet", f"{RELEASE}-deliver")
    (container,) = containers(deliver)
    assert container["args"] == ["deliver"]
    assert deliver["spec"]["replicas"] == values()["deliver"]["replicas"]
    governing = the("Service", deliver["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    assert selects(governing["spec"]["selector"], pod_labels(deliver))
    assert not selects(governing["spec"]["selector"], pod_labels(scoring()))
    env = env_of(container)
    # its transactional id survives a restart, as a scoring worker's does
    assert env["FOREWARN_INSTANCE_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["FOREWARN_DELIVERY__GROUP_ID"]["value"] == values()["deliver"]["groupId"]
    assert env["FOREWARN_TOPICS__DELIVERY_DLQ"]["value"] == values()["topics"]["deliveryDlq"]
    # the destinations file from the ConfigMap named, the secrets it names from the Secret
    path = env["FOREWARN_DELIVERY_PATH"]["value"]
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in deliver["spec"]["template"]["spec"]["volumes"]
                 if v["name"] == mount["name"]]  # fmt: skip
    assert volume["configMap"]["name"] == "forewarn-destinations"
    assert path.endswith(volume["configMap"]["items"][0]["path"])
    assert container["envFrom"] == [{"secretRef": {"name": "forewarn-destinations"}}]
    (port,) = container["ports"]
    assert port["containerPort"] == int(env["FOREWARN_DELIVERY__HTTP_PORT"]["value"]) == 9466
    for kind, path in (("liveness", "/healthz"), ("readiness", "/readyz")):
        assert container[f"{kind}Probe"]["httpGet"] == {"path": path, "port": port["name"]}


def test_the_podmonitor_scrapes_every_forewarn_pod_as_a_forewarn_job() -> None:
    monitor = the("PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    endpoints = {e["port"]: e for e in monitor["spec"]["podMetricsEndpoints"]}
    for workload in workloads():
        labels = pod_labels(workload)
        assert selects(selector, labels), workload["metadata"]["name"]
        # the alert rules find Forewarn's targets by job=~".*forewarn.*"
        assert "forewarn" in labels[monitor["spec"]["jobLabel"]]
        ports = {p["name"] for c in containers(workload) for p in c.get("ports", [])}
        assert ports & set(endpoints), f"{workload['metadata']['name']}: no port is scraped"
    assert endpoints["metrics"]["path"] == "/metrics"


def test_the_alerts_and_the_dashboard_are_shipped_for_the_operator_and_grafana() -> None:
    rule = the("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    groups = rule["spec"]["groups"]
    assert groups and all(g["name"] and g["rules"] for g in groups)
    for r in (r for g in groups for r in g["rules"]):
        assert r["alert"] and r["expr"] and r["labels"]["severity"]
    board = the("ConfigMap", f"{RELEASE}-dashboard")
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    (name,) = board["data"]
    assert name.endswith(".json")
    json.loads(board["data"][name])


# ---------------------------------------------------------------------------- the real files


def test_the_chart_embeds_the_real_alert_rules_and_dashboard_through_symlinks() -> None:
    for real in (ALERTS, DASHBOARD):
        if not real.exists():
            pytest.skip(f"{real.relative_to(ROOT)} is not written yet: nothing to link to")
    for name, real in (("alerts.yaml", ALERTS), ("forewarn.json", DASHBOARD)):
        link = CHART / "files" / name
        assert link.is_symlink(), f"{link} must be a symlink (one source, not a copy)"
        target = os.readlink(link)
        assert not os.path.isabs(target), "a relative link survives a checkout elsewhere"
        assert link.resolve() == real.resolve()
    prometheus_rule = (TEMPLATES / "prometheusrule.yaml").read_text()
    assert '.Files.Get "files/alerts.yaml"' in prometheus_rule
    # read as data: the rules' own {{ $labels }} must not go through Helm's tpl
    assert "fromYaml" in prometheus_rule and not re.search(r"\btpl\b", prometheus_rule)
    dashboard_template = (TEMPLATES / "dashboard-configmap.yaml").read_text()
    assert '.Files.Get "files/forewarn.json"' in dashboard_template
    # what the templates expect of them: a rules file's groups, a dashboard's JSON object
    rules = yaml.safe_load(ALERTS.read_text())
    assert isinstance(rules["groups"], list) and rules["groups"]
    dashboard = json.loads(DASHBOARD.read_text())
    assert isinstance(dashboard, dict) and dashboard["panels"]
    assert the("ConfigMap", f"{RELEASE}-dashboard")["metadata"]["labels"]["grafana_dashboard"]


# ---------------------------------------------------------------------------- with helm


def render(*flags: str) -> list[Obj]:
    result = run_helm("template", RELEASE, str(CHART), *flags)
    assert result.returncode == 0, result.stderr
    return load_objects(result.stdout)


def test_helm_lints_the_chart() -> None:
    result = run_helm("lint", str(CHART), "--strict", *EXAMPLE_FLAGS)
    assert result.returncode == 0, result.stdout + result.stderr
    result = run_helm("lint", str(CHART), "--strict")
    assert result.returncode == 0, result.stdout + result.stderr


def test_helm_renders_what_the_example_shows() -> None:
    rendered = render(*EXAMPLE_FLAGS)
    assert validate_core(rendered) == []
    names = [(o["kind"], o["metadata"]["name"]) for o in rendered]
    assert sorted(names) == sorted((o["kind"], o["metadata"]["name"]) for o in example())
    for obj in rendered:
        shown = copy.deepcopy(the(obj["kind"], obj["metadata"]["name"]))
        got = copy.deepcopy(obj)
        if obj["kind"] == "PrometheusRule":
            assert got["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]
            got["spec"].pop("groups")
            shown["spec"].pop("groups")
        if obj["kind"] == "ConfigMap" and "forewarn.json" in obj.get("data", {}):
            assert json.loads(got["data"].pop("forewarn.json")) == json.loads(DASHBOARD.read_text())
            shown["data"].pop("forewarn.json")
        assert got == shown, f"{obj['kind']} {obj['metadata']['name']} differs from the example"


def test_helm_renders_the_defaults_and_a_full_setup_as_valid_kubernetes() -> None:
    defaults = render()
    assert validate_core(defaults) == []
    assert {o["kind"] for o in defaults} == {
        "StatefulSet", "Service", "PodDisruptionBudget", "Deployment", "ServiceAccount",
    }  # fmt: skip
    full = render(
        *EXAMPLE_FLAGS,
        "--set", "kafka.tls.caSecret=kafka-ca",
        "--set", "scoring.persistence.enabled=true",
        "--set", "rulebook.inline=version: x",
        "--set", "topics.partitions=12",
    )  # fmt: skip
    assert validate_core(full) == []
    sts = the("StatefulSet", f"{RELEASE}-scoring", objects=tuple(full))
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    (container,) = containers(sts)
    env = env_of(container)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert env["FOREWARN_STATE_DIR"]["value"] == mounts[claim["metadata"]["name"]]
    assert env["FOREWARN_RULES_PATH"]["value"].startswith(mounts["rulebook"] + "/")
    assert env["FOREWARN_KAFKA__SSL_CA_LOCATION"]["value"].startswith(mounts["kafka-ca"] + "/")
    assert the("ScaledObject", objects=tuple(full))["spec"]["maxReplicaCount"] == 12


@pytest.mark.parametrize(
    "flags",
    [
        ["--set", "topics.partitions=0"],
        ["--set", "topics.partitons=6"],
        ["--set", "kafka.securityProtocol=SASL_TLS"],
        ["--set", "kafka.sasl.password=hunter2"],
        ["--set", "scoring.replicas=7"],  # above the 6 partitions
        ["--set", "keda.enabled=true", "--set", "keda.minReplicaCount=7"],
    ],
)
def test_helm_refuses_wrong_values(flags: list[str]) -> None:
    result = run_helm("template", RELEASE, str(CHART), *flags)
    assert result.returncode != 0, f"helm rendered {flags}"
