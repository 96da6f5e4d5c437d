"""The Helm chart (helm/spendstream): lint, render and validate offline. Nothing running.

Every manifest is validated against the Kubernetes OpenAPI schemas (kubernetes-validate, strict:
unknown fields fail) for the oldest Kubernetes the chart supports and the newest known. The
environment the chart gives the pods is fed to ``Settings.from_env``, so a renamed or removed
setting breaks this test instead of a deployment.
"""

from __future__ import annotations

import base64
import dataclasses
import inspect
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

import streams
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "spendstream"
PRODUCTION_VALUES = CHART / "ci" / "production-values.yaml"
KUBE_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())
RENDER_KUBE_VERSION = "1.30.0"
NAMESPACE = "spend"
RELEASE = "r"
SETTINGS_ENV = {f.metadata["env"]: f for f in dataclasses.fields(Settings)}
SECRET_VARS = {"SPENDSTREAM_KAFKA_SASL_PASSWORD", "SPENDSTREAM_CLICKHOUSE_PASSWORD"}
# Chart defaults that differ from the application's on purpose (see values.yaml).
CHART_OWN_DEFAULTS = {
    "SPENDSTREAM_KAFKA_BOOTSTRAP",  # the application's default is the embedded local broker
    "SPENDSTREAM_CLICKHOUSE_URL",  # ... and the embedded local server
    "SPENDSTREAM_REPLICATION_FACTOR",  # 3 on a production cluster
    "SPENDSTREAM_METRICS_PORT",  # the sink's metrics are on
}
KAFKA_SASL_PASSWORD = "kafka-S3CRET-pw"
CLICKHOUSE_PASSWORD = "clickhouse-S3CRET-pw"
INSTALL_HELM = (
    "`make setup` installs it (go install helm.sh/helm/v3/cmd/helm@v3.22.0, a few minutes)"
)


# ============================================================================ helpers


def find_helm() -> str:
    """helm on PATH, else where `go install` puts it; a missing helm fails (never skips)."""
    found = shutil.which("helm")
    if found:
        return found
    go = shutil.which("go")
    if go is None:
        pytest.fail(f"helm is not on PATH and Go is not installed to build it: {INSTALL_HELM}")
    gopath = subprocess.run(
        [go, "env", "GOPATH"], capture_output=True, text=True, check=True
    ).stdout.strip()
    candidate = Path(gopath) / "bin" / "helm"
    if not candidate.is_file():
        pytest.fail(f"helm is neither on PATH nor at {candidate}: {INSTALL_HELM}")
    return str(candidate)


@pytest.fixture(scope="module")
def helm() -> str:
    return find_helm()


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=60)


def template(helm: str, *args: str) -> list[dict[str, Any]]:
    """``helm template`` (hooks included) as a list of documents."""
    result = run_helm(
        helm,
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        RENDER_KUBE_VERSION,
        *args,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def template_error(helm: str, *args: str) -> str:
    result = run_helm(
        helm, "template", RELEASE, str(CHART), "--kube-version", RENDER_KUBE_VERSION, *args
    )
    assert result.returncode != 0, f"helm template {args} rendered but should have failed"
    return result.stderr


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"{kind} *{suffix}: {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            yield doc, doc["spec"]["template"]["spec"]


def containers(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for doc, spec in pod_specs(docs):
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            yield doc, container


def is_hook(doc: dict[str, Any]) -> bool:
    return "helm.sh/hook" in doc["metadata"].get("annotations", {})


def container_env(
    docs: list[dict[str, Any]], container: dict[str, Any], secrets: dict[str, str]
) -> dict[str, str]:
    """The environment a container would get: envFrom ConfigMaps, then env (secret refs resolved
    from ``secrets`` by key, else from the rendered Secrets)."""
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in of_kind(docs, "ConfigMap")}
    rendered_secrets = {
        (d["metadata"]["name"], key): base64.b64decode(value).decode()
        for d in of_kind(docs, "Secret")
        for key, value in d.get("data", {}).items()
    }
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        ref = var["valueFrom"]["secretKeyRef"]
        key = (ref["name"], ref["key"])
        env[var["name"]] = rendered_secrets[key] if key in rendered_secrets else secrets[ref["key"]]
    return env


# ============================================================================ scenarios


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stands in for the mounted TLS Secret, so Settings' file checks pass."""
    folder = tmp_path_factory.mktemp("kafka-tls")
    for name in ("ca.crt", "tls.crt", "tls.key"):
        (folder / name).write_text("-----BEGIN PLACEHOLDER-----\n")
    return folder


@pytest.fixture(scope="module")
def scenarios(helm: str, tls_dir: Path) -> dict[str, list[dict[str, Any]]]:
    return {
        "default": template(helm),
        # SASL_SSL + TLS from a referenced Secret, existingSecret, replicas, cluster, web, ...
        "production": template(
            helm, "-f", str(PRODUCTION_VALUES), "--set", f"kafka.tls.mountPath={tls_dir}"
        ),
        # passwords in values: the chart creates the Secret
        "managed-secret": template(
            helm,
            "--set",
            "kafka.securityProtocol=SASL_SSL",
            "--set",
            "kafka.sasl.mechanism=SCRAM-SHA-256",
            "--set",
            "kafka.sasl.username=svc",
            "--set-string",
            f"kafka.sasl.password={KAFKA_SASL_PASSWORD}",
            "--set-string",
            f"clickhouse.password={CLICKHOUSE_PASSWORD}",
            "--set",
            "worker.replicas=1",
            "--set",
            "sink.replicas=5",
        ),
    }


SCENARIOS = ("default", "production", "managed-secret")


# ============================================================================ tests


def test_helm_is_installed() -> None:
    """A machine without helm fails here (and errors every test that renders), never skips."""
    version = run_helm(find_helm(), "version", "--short")
    assert version.returncode == 0 and version.stdout.startswith("v3."), version


def test_helm_lint(helm: str) -> None:
    for args in ([], ["-f", str(PRODUCTION_VALUES)]):
        result = run_helm(helm, "lint", "--strict", str(CHART), *args)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_manifest_is_valid_kubernetes(
    scenarios: dict[str, list[dict[str, Any]]], scenario: str
) -> None:
    docs = scenarios[scenario]
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: checked in test_service_monitor
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{doc['kind']} {doc['metadata']['name']} on {version}: {exc}")


def test_expected_objects(scenarios: dict[str, list[dict[str, Any]]]) -> None:
    kinds = sorted(d["kind"] for d in scenarios["default"])
    expected = ["ConfigMap", "ConfigMap", "Deployment", "Deployment", "Job", "Service"]
    expected += ["PodDisruptionBudget", "PodDisruptionBudget", "ServiceAccount"]
    assert kinds == sorted(expected)  # no Secret: no password given
    assert not of_kind(scenarios["default"], "PersistentVolumeClaim")
    for doc in scenarios["default"] + scenarios["production"]:
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


def test_replicas_and_settings_come_from_values(scenarios: dict[str, list[dict[str, Any]]]) -> None:
    prod = scenarios["production"]
    assert named(prod, "Deployment", "-worker")["spec"]["replicas"] == 4
    assert named(prod, "Deployment", "-sink")["spec"]["replicas"] == 3
    managed = scenarios["managed-secret"]
    assert named(managed, "Deployment", "-worker")["spec"]["replicas"] == 1
    assert named(managed, "Deployment", "-sink")["spec"]["replicas"] == 5
    data = named(prod, "ConfigMap", "spendstream")["data"]
    assert data["SPENDSTREAM_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert data["SPENDSTREAM_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert data["SPENDSTREAM_CLICKHOUSE_CLUSTER"] == "main"
    assert data["SPENDSTREAM_SINK_BATCH_ROWS"] == "100000"
    assert data["SPENDSTREAM_SINK_FLUSH_SECONDS"] == "2.5"
    # the worker's consumer group is the same for every replica and release-independent
    assert data["SPENDSTREAM_WORKER_ID"] == "spendstream-worker"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_spendstream_variable_is_a_setting(
    scenarios: dict[str, list[dict[str, Any]]], scenario: str
) -> None:
    docs = scenarios[scenario]
    names: set[str] = set()
    for doc in of_kind(docs, "ConfigMap"):
        names |= set(doc.get("data", {}))
    for _, container in containers(docs):
        names |= {var["name"] for var in container.get("env", [])}
    text = "\n".join(json.dumps(doc) for doc in docs)
    names |= set(re.findall(r"SPENDSTREAM_[A-Z0-9_]+", text))
    spendstream = {n for n in names if n.startswith("SPENDSTREAM_")}
    assert spendstream, "the chart sets no SPENDSTREAM_* variable?"
    unknown = spendstream - set(SETTINGS_ENV)
    assert not unknown, f"not fields of streams.settings.Settings: {sorted(unknown)}"
    assert names - spendstream <= {"HOME", "F_WEB_PORT"}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_environment_is_accepted_by_settings(
    scenarios: dict[str, list[dict[str, Any]]], scenario: str
) -> None:
    docs = scenarios[scenario]
    existing = {"kafka-password": "from-existing", "clickhouse-password": "from-existing"}
    seen = set()
    for _, container in containers(docs):
        env = container_env(docs, container, existing)
        settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("SPENDSTREAM_")})
        assert not settings.clickhouse_is_local
        # migrate talks to ClickHouse only; the others to both
        assert settings.kafka_is_local == (container["name"] == "migrate")
        seen.add(container["name"])
    assert seen == {"worker", "sink", "migrate"}


def test_managed_secret_is_read_by_every_pod(scenarios: dict[str, list[dict[str, Any]]]) -> None:
    docs = scenarios["managed-secret"]
    for doc, container in containers(docs):
        env = container_env(docs, container, {})
        assert env["SPENDSTREAM_CLICKHOUSE_PASSWORD"] == CLICKHOUSE_PASSWORD
        settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("SPENDSTREAM_")})
        if doc["kind"] == "Job":  # migrate talks to ClickHouse only
            assert "SPENDSTREAM_KAFKA_SASL_PASSWORD" not in env
            continue
        assert settings.kafka_client_config()["sasl.password"] == KAFKA_SASL_PASSWORD


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_passwords_never_leave_secrets(
    scenarios: dict[str, list[dict[str, Any]]], scenario: str
) -> None:
    docs = scenarios[scenario]
    forbidden = []
    for password in (KAFKA_SASL_PASSWORD, CLICKHOUSE_PASSWORD):
        forbidden += [password, base64.b64encode(password.encode()).decode()]
    for doc in docs:
        if doc["kind"] == "Secret":
            continue
        text = json.dumps(doc)
        for needle in forbidden:
            assert needle not in text, f"a password is in {doc['kind']} {doc['metadata']['name']}"
        if doc["kind"] == "ConfigMap":
            assert not SECRET_VARS & set(doc.get("data", {}))
    for _, container in containers(docs):
        for var in container.get("env", []):
            if var["name"] in SECRET_VARS:
                assert "value" not in var and "secretKeyRef" in var["valueFrom"]


def test_existing_secret_means_no_chart_secret(scenarios: dict[str, list[dict[str, Any]]]) -> None:
    docs = scenarios["production"]
    assert not of_kind(docs, "Secret")
    refs = {
        (var["valueFrom"]["secretKeyRef"]["name"], var["valueFrom"]["secretKeyRef"]["key"])
        for _, container in containers(docs)
        for var in container.get("env", [])
        if "valueFrom" in var
    }
    assert refs == {
        ("spendstream-credentials", "kafka-password"),
        ("spendstream-credentials", "clickhouse-password"),
    }


def test_tls_files_are_mounted_from_the_referenced_secret(
    scenarios: dict[str, list[dict[str, Any]]], tls_dir: Path
) -> None:
    docs = scenarios["production"]
    data = named(docs, "ConfigMap", "spendstream")["data"]
    assert data["SPENDSTREAM_KAFKA_TLS_CA"] == f"{tls_dir}/ca.crt"
    assert data["SPENDSTREAM_KAFKA_TLS_CERT"] == f"{tls_dir}/tls.crt"
    assert data["SPENDSTREAM_KAFKA_TLS_KEY"] == f"{tls_dir}/tls.key"
    for suffix in ("-worker", "-sink"):
        spec = named(docs, "Deployment", suffix)["spec"]["template"]["spec"]
        volume = next(v for v in spec["volumes"] if v["name"] == "kafka-tls")
        assert volume["secret"]["secretName"] == "spendstream-kafka-tls"
        assert {item["path"] for item in volume["secret"]["items"]} == {
            "ca.crt",
            "tls.crt",
            "tls.key",
        }
        mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "kafka-tls")
        assert mount["mountPath"] == str(tls_dir)
        assert mount["readOnly"] is True
    default_data = named(scenarios["default"], "ConfigMap", "spendstream")["data"]
    assert "SPENDSTREAM_KAFKA_TLS_CA" not in default_data


def test_migrate_job_is_a_pre_install_hook(scenarios: dict[str, list[dict[str, Any]]]) -> None:
    for scenario in SCENARIOS:
        docs = scenarios[scenario]
        job = named(docs, "Job", "-migrate")
        annotations = job["metadata"]["annotations"]
        assert set(annotations["helm.sh/hook"].split(",")) >= {"pre-install", "pre-upgrade"}
        assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert [*container["command"], *container["args"]] == ["spendstream", "migrate"]
        assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
        # At pre-install nothing else of the release exists yet: whatever the Job reads is a hook
        # created before it (lower weight), or a Secret the user created beforehand.
        weight = int(annotations["helm.sh/hook-weight"])
        earlier = {
            (d["kind"], d["metadata"]["name"])
            for d in docs
            if is_hook(d) and int(d["metadata"]["annotations"]["helm.sh/hook-weight"]) < weight
        }
        spec = job["spec"]["template"]["spec"]
        for source in container.get("envFrom", []):
            assert ("ConfigMap", source["configMapRef"]["name"]) in earlier
        for var in container.get("env", []):
            if "valueFrom" in var:
                name = var["valueFrom"]["secretKeyRef"]["name"]
                assert ("Secret", name) in earlier or name == "spendstream-credentials"
        assert "serviceAccountName" not in spec  # the chart's account does not exist yet
        for volume in spec.get("volumes", []):
            assert "emptyDir" in volume
    # nothing else is a hook
    for doc in scenarios["production"]:
        if is_hook(doc):
            assert doc["metadata"]["name"].endswith("-migrate")


def test_migrate_can_be_disabled(helm: str) -> None:
    docs = template(helm, "--set", "migrate.enabled=false")
    assert not [d for d in docs if is_hook(d)]


def test_nothing_is_exposed_outside_the_cluster_unless_asked(
    helm: str, scenarios: dict[str, list[dict[str, Any]]]
) -> None:
    for scenario in SCENARIOS:
        docs = scenarios[scenario]
        for doc in docs:
            assert doc["kind"] not in ("Ingress", "Route", "Gateway", "HTTPRoute")
            if doc["kind"] == "Service":
                assert doc["spec"].get("type", "ClusterIP") == "ClusterIP"
                assert all("nodePort" not in port for port in doc["spec"]["ports"])
        for _, spec in pod_specs(docs):
            assert not spec.get("hostNetwork") and not spec.get("hostPID")
            for container in spec["containers"]:
                assert all("hostPort" not in port for port in container.get("ports", []))
    asked = template(helm, "--set", "sink.metrics.service.type=NodePort")
    assert named(asked, "Service", "-sink-metrics")["spec"]["type"] == "NodePort"


def test_probes_use_endpoints_that_exist(scenarios: dict[str, list[dict[str, Any]]]) -> None:
    for scenario in SCENARIOS:
        docs = scenarios[scenario]
        metrics_port = named(docs, "ConfigMap", "spendstream")["data"]["SPENDSTREAM_METRICS_PORT"]
        for doc, container in containers(docs):
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe in container:
                    assert container[probe]["httpGet"]["port"] in ports
            if container["name"] == "sink":
                # prometheus_client's server on SPENDSTREAM_METRICS_PORT is the sink's endpoint
                assert ports == {"metrics": int(metrics_port)}
                env = {v["name"]: v.get("value") for v in container["env"]}
                # the application binds loopback by default: the chart opens it to the pod IP
                assert env["SPENDSTREAM_METRICS_HOST"] == "0.0.0.0"
                assert container["livenessProbe"]["httpGet"]["path"] == "/metrics"
                annotations = doc["spec"]["template"]["metadata"]["annotations"]
                assert annotations["prometheus.io/scrape"] == "true"
                assert annotations["prometheus.io/port"] == metrics_port
            if container["name"] == "worker":
                web = "--web" in container["args"]
                env = {v["name"]: v.get("value") for v in container["env"]}
                # the worker's own endpoint: metrics, and the health its liveness probe reads
                assert ports["worker-metrics"] == int(env["SPENDSTREAM_METRICS_PORT"])
                assert env["SPENDSTREAM_METRICS_HOST"] == "0.0.0.0"
                assert container["livenessProbe"]["httpGet"] == {
                    "path": "/healthz",
                    "port": "worker-metrics",
                }
                annotations = doc["spec"]["template"]["metadata"]["annotations"]
                assert annotations["prometheus.io/scrape"] == "true"
                assert annotations["prometheus.io/port"] == env["SPENDSTREAM_METRICS_PORT"]
                assert ("http" in ports) == web
                if web:
                    assert env["F_WEB_PORT"] == str(ports["http"])
            if container["name"] == "migrate":
                assert not ports


def test_sink_without_metrics_has_no_probe_or_service(helm: str) -> None:
    docs = template(
        helm, "--set", "sink.metrics.enabled=false", "--set", "serviceMonitor.enabled=true"
    )
    sink = named(docs, "Deployment", "-sink")["spec"]["template"]
    assert "livenessProbe" not in sink["spec"]["containers"][0]
    env = {v["name"] for v in sink["spec"]["containers"][0]["env"]}
    assert "SPENDSTREAM_METRICS_HOST" not in env
    assert "prometheus.io/scrape" not in sink["metadata"]["annotations"]
    assert not of_kind(docs, "Service") and not of_kind(docs, "ServiceMonitor")
    assert named(docs, "ConfigMap", "spendstream")["data"]["SPENDSTREAM_METRICS_PORT"] == "0"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_pods_are_hardened(scenarios: dict[str, list[dict[str, Any]]], scenario: str) -> None:
    workers = 0
    for doc, spec in pod_specs(scenarios[scenario]):
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["automountServiceAccountToken"] is False
        empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"]["drop"] == ["ALL"]
            assert "resources" in container and container["resources"]["requests"]
            writable = {
                m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty_dirs
            }
            assert "/tmp" in writable
            assert container["workingDir"] in writable, doc["metadata"]["name"]
            # faust creates its data directory under SPENDSTREAM_HOME: it must be writable
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            if container.get("args", [])[:1] == ["worker"]:
                workers += 1
                assert env["SPENDSTREAM_HOME"] in writable, doc["metadata"]["name"]
    assert workers == 1


def test_pod_disruption_budgets_and_service_account(
    helm: str, scenarios: dict[str, list[dict[str, Any]]]
) -> None:
    docs = scenarios["production"]
    for suffix in ("-worker", "-sink"):
        pdb = named(docs, "PodDisruptionBudget", suffix)
        deployment = named(docs, "Deployment", suffix)
        assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    account = of_kind(docs, "ServiceAccount")[0]
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:")
    assert (
        named(docs, "Deployment", "-sink")["spec"]["template"]["spec"]["serviceAccountName"]
        == account["metadata"]["name"]
    )
    none = template(helm, "--set", "worker.pdb.enabled=false", "--set", "sink.pdb.enabled=false")
    assert not of_kind(none, "PodDisruptionBudget")


def test_service_monitor(scenarios: dict[str, list[dict[str, Any]]]) -> None:
    assert not of_kind(scenarios["default"], "ServiceMonitor")  # off by default
    docs = scenarios["production"]
    (monitor,) = of_kind(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    service = named(docs, "Service", "-sink-metrics")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    sink = named(docs, "Deployment", "-sink")
    assert (
        service["spec"]["selector"].items()
        <= sink["spec"]["template"]["metadata"]["labels"].items()
    )


def test_config_changes_roll_the_pods(helm: str) -> None:
    def checksum(*args: str) -> str:
        docs = template(helm, *args)
        pod = named(docs, "Deployment", "-worker")["spec"]["template"]
        return str(pod["metadata"]["annotations"]["checksum/config"])

    assert checksum() != checksum("--set", "logLevel=DEBUG")


def test_chart_defaults_are_the_application_defaults(
    scenarios: dict[str, list[dict[str, Any]]],
) -> None:
    data = named(scenarios["default"], "ConfigMap", "spendstream")["data"]
    defaults = Settings()
    for name, raw in data.items():
        if name in CHART_OWN_DEFAULTS:
            continue
        field = SETTINGS_ENV[name]
        assert field.metadata["parse"](raw) == getattr(defaults, field.name), name


def test_schema_choices_are_the_application_choices() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    props = schema["properties"]

    def allowed(env: str) -> set[str]:
        parse = SETTINGS_ENV[env].metadata["parse"]
        return set(inspect.getclosurevars(parse).nonlocals["allowed"])

    kafka = props["kafka"]["properties"]
    assert set(kafka["securityProtocol"]["enum"]) == allowed("SPENDSTREAM_KAFKA_SECURITY_PROTOCOL")
    mechanisms = set(kafka["sasl"]["properties"]["mechanism"]["enum"]) - {""}
    assert mechanisms == allowed("SPENDSTREAM_KAFKA_SASL_MECHANISM")
    assert set(props["logLevel"]["enum"]) == allowed("SPENDSTREAM_LOG_LEVEL")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "kafka.securityProtocol=SASL_SSL"], "kafka.sasl.mechanism"),
        (
            [
                *("--set", "kafka.securityProtocol=SASL_SSL"),
                *("--set", "kafka.sasl.mechanism=PLAIN", "--set", "kafka.sasl.username=u"),
            ],
            "kafka.sasl.password (or existingSecret)",
        ),
        (["--set", "kafka.securityProtocol=TLS"], "securityProtocol"),
        (["--set", "kafka.tls.existingSecret=tls"], "use SSL or SASL_SSL"),
        (
            [
                *("--set", "kafka.securityProtocol=SSL", "--set", "kafka.tls.existingSecret=tls"),
                *("--set", "kafka.tls.keyKey="),
            ],
            "give both or neither",
        ),
        (["--set", "clickhouse.url=clickhouse:8123"], "clickhouse"),
        (["--set", "kafka.bootstrap="], "/kafka/bootstrap"),
        (
            ["--set", "existingSecret=creds", "--set-string", "clickhouse.password=pw"],
            "leave kafka.sasl.password and clickhouse.password empty",
        ),
        (["--set-string", "extraConfig.SPENDSTREAM_CLICKHOUSE_PASSWORD=pw"], "never into"),
        (["--set-string", "extraConfig.KAFKA_BOOTSTRAP=x"], "'^SPENDSTREAM_[A-Z0-9_]+$'"),
        (["--set", "worker.replica=3"], "replica"),  # a typo is refused by the schema
    ],
)
def test_invalid_values_fail_at_install_time(helm: str, args: list[str], message: str) -> None:
    assert message in template_error(helm, *args)


def test_extra_config_reaches_the_config_map(helm: str) -> None:
    docs = template(helm, "--set-string", "extraConfig.SPENDSTREAM_SINK_INSTANCE_ID=sink-a")
    assert named(docs, "ConfigMap", "spendstream")["data"]["SPENDSTREAM_SINK_INSTANCE_ID"] == (
        "sink-a"
    )
    migrate = named(docs, "ConfigMap", "-migrate")["data"]
    assert "SPENDSTREAM_SINK_INSTANCE_ID" not in migrate


def test_image_defaults_to_the_app_version(
    helm: str, scenarios: dict[str, list[dict[str, Any]]]
) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == streams.__version__
    images = {c["image"] for _, c in containers(scenarios["default"])}
    assert images == {f"ghcr.io/spendstream/spendstream:{streams.__version__}"}
    digest = "sha256:" + "a" * 64
    pinned = template(helm, "--set", f"image.digest={digest}")
    assert {c["image"] for _, c in containers(pinned)} == {
        f"ghcr.io/spendstream/spendstream@{digest}"
    }


def test_dockerfile_builds_what_the_chart_runs() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    uid = re.search(r"^ARG UID=(\d+)$", dockerfile, re.MULTILINE)
    assert uid and int(uid.group(1)) == values["podSecurityContext"]["runAsUser"]
    assert re.search(r'^ENTRYPOINT \["spendstream"\]$', dockerfile, re.MULTILINE)
    assert f"WORKDIR {values['dataVolume']['mountPath']}" in dockerfile
    # the wheel is built from this directory with the server extras, never the local stack
    built = re.search(r"pip wheel .* '\.\[([a-z,]+)\]'$", dockerfile, re.MULTILINE)
    assert built and set(built.group(1).split(",")) == {"worker", "sink"}
    assert "pip install --no-index --find-links /wheels 'spendstream[worker,sink]'" in dockerfile
    # the build context (.dockerignore allow-list) holds everything the wheel is built from
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copied = set()
    for match in re.finditer(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.MULTILINE):
        copied |= set(match.group(1).split())
    pyproject = (ROOT / "pyproject.toml").read_text()
    wheel_inputs = {"pyproject.toml", "README.md", "streams"} | set(
        re.findall(r'^"(\w+)" = "streams/_\w+"$', pyproject, re.MULTILINE)
    )
    assert {"schemas", "clickhouse"} <= wheel_inputs
    assert wheel_inputs <= copied <= allowed
    assert all((ROOT / path).exists() for path in copied)


def test_makefile_test_command_installs_helm() -> None:
    makefile = (ROOT / "Makefile").read_text()
    setup = makefile.split("\nsetup-helm:", 1)[1].split("\n\n", 1)[0]
    assert "go install helm.sh/helm/v3/cmd/helm@v3.22.0" in setup
    assert "command -v helm" in setup  # only when missing
    lint = makefile.split("\nlint:", 1)[1].split("\n", 1)[0]
    assert "setup-helm" in lint  # `make test` runs lint first
