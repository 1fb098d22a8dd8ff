"""deploy/: the container image's definition and the Kubernetes manifests.

The manifests are validated against the Kubernetes schemas (kubernetes-validate bundles
them: nothing is fetched), and their numbers are checked against each other, the
server's own bounds and the measured figures in BENCHMARKS.md they were sized from.
Building the image and running it in a cluster cannot happen here: the README's
"Scaling out" gives that procedure.
"""

from __future__ import annotations

import copy
import re
import signal
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.processes import free_port, running_serve
from tests.test_serving import tone_args
from voxrelay_server import app, config, healthcheck

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "Dockerfile"
KUBERNETES_VERSIONS = ("1.27.0", "1.37.0")
"""The first release with gRPC probes generally available, and the newest bundled."""
APP_LABELS = {"app.kubernetes.io/name": "voxrelay"}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def manifests() -> list[Path]:
    """Every Kubernetes manifest in deploy/, examples included; not the kustomization."""
    return sorted(path for path in KUBERNETES.rglob("*.yaml") if path.name != "kustomization.yaml")


def resource(kind: str, directory: Path = KUBERNETES) -> dict[str, Any]:
    found = [doc for path in directory.glob("*.yaml") for doc in documents(path)]
    (match,) = [doc for doc in found if doc.get("kind") == kind]
    return match


def container() -> dict[str, Any]:
    containers = resource("Deployment")["spec"]["template"]["spec"]["containers"]
    (voxrelay,) = containers
    result: dict[str, Any] = voxrelay
    return result


def settings() -> config.ServerSettings:
    """The server's settings as the Deployment's environment sets them."""
    env = {item["name"]: item["value"] for item in container()["env"]}
    return config.from_env(env)


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return float(number) * units[unit]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", manifests(), ids=lambda path: path.name)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(path: Path, version: str) -> None:
    docs = documents(path)
    assert docs, path
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_finds_what_is_wrong_offline() -> None:
    """The check above could fail: a misspelt field and a wrong type are caught."""
    deployment = resource("Deployment")
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["template"]["spec"]["terminationGracePeriod"] = 40
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSIONS[-1], strict=True)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_kustomization_lists_every_manifest_beside_it() -> None:
    (kustomization,) = documents(KUBERNETES / "kustomization.yaml")
    beside = {p.name for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert set(kustomization["resources"]) == beside
    images = {image["name"] for image in kustomization["images"]}
    assert container()["image"] in images


def test_the_termination_grace_period_covers_the_whole_shutdown() -> None:
    pod = resource("Deployment")["spec"]["template"]["spec"]
    served = settings()
    assert served.prestop_delay_s > 0
    whole = served.prestop_delay_s + app.shutdown_bound_s(served.shutdown_grace_s)
    assert pod["terminationGracePeriodSeconds"] >= whole
    # The liveness probe never restarts a replica that is draining (NOT_SERVING).
    liveness = container()["livenessProbe"]
    assert (
        liveness["periodSeconds"] * liveness["failureThreshold"]
        >= pod["terminationGracePeriodSeconds"]
    )
    # Readiness notices NOT_SERVING within the prestop delay.
    readiness = container()["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= served.prestop_delay_s


def test_probes_services_and_metrics_use_the_ports_the_server_listens_on() -> None:
    served = settings()
    ports = {port["name"]: port["containerPort"] for port in container()["ports"]}
    assert ports["grpc"] == port_of(served.listen)
    assert ports["metrics"] == port_of(served.metrics_listen)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container()[probe]["grpc"]["port"] == ports["grpc"], probe
    # The readiness of Speech itself (not only the server's): loading and draining.
    assert container()["readinessProbe"]["grpc"]["service"] == app.SPEECH_SERVICE_NAME
    annotations = resource("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    for path in (KUBERNETES / "service.yaml", KUBERNETES / "service-headless.yaml"):
        (service,) = documents(path)
        assert service["spec"]["selector"] == APP_LABELS
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, path
    (headless,) = documents(KUBERNETES / "service-headless.yaml")
    assert headless["spec"]["clusterIP"] == "None"
    assert not headless["spec"]["publishNotReadyAddresses"]


def test_the_pod_and_the_image_run_as_the_same_non_root_user() -> None:
    pod_security = resource("Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    (user,) = re.findall(r"^USER (\d+):(\d+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert int(user[0]) != 0
    assert (pod_security["runAsUser"], pod_security["runAsGroup"]) == tuple(map(int, user))
    assert container()["securityContext"]["allowPrivilegeEscalation"] is False


def test_the_dockerfile_is_multi_stage_health_checked_and_listens_where_the_pod_says() -> None:
    text = DOCKERFILE.read_text()
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) >= 2
    assert "COPY --from=build" in text
    assert "voxrelay_server.healthcheck" in re.search(r"^HEALTHCHECK .*?$(\n .*$)*", text, re.M)[0]  # type: ignore[index]
    listen = re.search(r"VOXRELAY_LISTEN=(\S+)", text)
    assert listen is not None and listen[1] == settings().listen
    exposed = {int(port) for port in re.findall(r"^EXPOSE (.+)$", text, re.M)[0].split()}
    assert exposed == {port["containerPort"] for port in container()["ports"]}
    # The build context holds only what the image needs.
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "*" in ignored and "!server" in ignored and "!client" in ignored


def _benchmark_figure(pattern: str, section: str = "") -> str:
    """The first group of `pattern` in BENCHMARKS.md, within the `## section` if named."""
    text = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    if section:
        text = text.split(f"\n## {section}", 1)[1].split("\n## ", 1)[0]
    match = re.search(pattern, text, re.M)
    assert match is not None, f"BENCHMARKS.md has no {pattern!r}"
    return match[1]


def test_resources_and_sessions_are_sized_from_the_benchmarks() -> None:
    served = settings()
    limits = container()["resources"]["limits"]
    requests = container()["resources"]["requests"]
    assert requests == limits  # Guaranteed QoS: no other pod takes the cores piper needs
    # One piper run per core the pod may use (os.cpu_count() sees the node's).
    assert served.workers == cores(limits["cpu"])
    # BENCHMARKS.md: the real-time piper sessions the measured throughput allows with a
    # 10 % margin, on its 2 cores; the replica's limit keeps a full replica real-time.
    allowed = int(
        _benchmark_figure(
            r"^\| piper/en_US-joe-medium \|(?:[^|]*\|){6} (\d+) \|",
            "Real voices: throughput, first audio and real-time sessions",
        )
    )
    machine_cores = int(_benchmark_figure(r"^Machine: .*?(\d+) cores"))
    assert served.max_sessions <= allowed / machine_cores * cores(limits["cpu"])
    # The sessions autoscaling example scales before a replica is full.
    example = resource("HorizontalPodAutoscaler", KUBERNETES / "examples")
    target = example["spec"]["metrics"][0]["pods"]["target"]["averageValue"]
    assert example["spec"]["metrics"][0]["pods"]["metric"]["name"] == "voxrelay_active_sessions"
    assert 0 < int(target) < served.max_sessions


async def test_the_memory_limit_holds_the_servers_bound_above_its_idle_level() -> None:
    """The bound the server logs for these settings, with these engines loaded."""
    served = settings()
    service = app.build_service(served, env={})
    try:
        bound = app.settings_memory_bound(served, service)
    finally:
        await service.aclose()
    idle_mib = int(_benchmark_figure(r"Idle RSS (\d+) MiB")) + int(
        _benchmark_figure(r"espeak worker processes \(outside the bound\) (\d+) MiB at idle")
    )
    limit_mib = mebibytes(container()["resources"]["limits"]["memory"])
    assert limit_mib >= bound.total / 2**20 + idle_mib


def test_the_scaling_autoscaler_and_budget_name_this_deployment() -> None:
    deployment = resource("Deployment")
    assert deployment["spec"]["selector"]["matchLabels"] == APP_LABELS
    assert deployment["spec"]["template"]["metadata"]["labels"] == APP_LABELS
    for hpa in (resource("HorizontalPodAutoscaler"),):
        assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert hpa["spec"]["minReplicas"] >= 2  # a drain never leaves no replica
    assert resource("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == APP_LABELS


def test_the_image_health_check_says_serving_then_not_while_stopping(tmp_path: Path) -> None:
    args = [*tone_args(ms_per_char=5, grace_s=1.0), "--prestop-delay", "120"]
    with running_serve(args, tmp_path / "serve.log") as server:
        assert healthcheck.main([server.target]) == 0
        assert healthcheck.main([server.target, "--service", ""]) == 0
        assert healthcheck.main([server.target, "--service", "no.such.Service"]) == 1
        with grpc.insecure_channel(server.target) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=app.SPEECH_SERVICE_NAME), timeout=30
            )
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            server.process.send_signal(signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()
        assert healthcheck.check(server.target) == "NOT_SERVING"
        assert healthcheck.main([server.target]) == 1
    nothing = f"127.0.0.1:{free_port()}"
    assert healthcheck.check(nothing, timeout_s=0.5) == "UNREACHABLE"


def test_the_health_check_finds_the_port_of_voxrelay_listen() -> None:
    assert healthcheck.local_target("0.0.0.0:50051") == "127.0.0.1:50051"
    assert healthcheck.local_target("[::]:7000") == "127.0.0.1:7000"
    assert healthcheck.local_target("10.0.0.5:7000") == "10.0.0.5:7000"
    assert healthcheck.default_target({"VOXRELAY_LISTEN": "0.0.0.0:6000"}) == "127.0.0.1:6000"
    assert healthcheck.default_target({}) == config.ServerSettings.listen
