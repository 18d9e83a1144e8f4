"""The Kubernetes manifests (``deploy/kubernetes``), rendered per overlay and checked offline.

Every rendered object must pass ``kubernetes-validate --strict`` (the schemas are bundled, so
unknown or misspelt fields fail without a cluster), and the things a schema cannot know must
hold too: each depot-registry container parses with the real CLI and loads its settings
through the real loader (unknown flags, unknown ``DEPOT_*`` variables and unknown keys in
the mounted settings files fail here as they would fail the pod at start), probes and the
edge's upstream point at ports that exist, the cache fits its volume, secrets come only from
Secrets that are not in the repository, and the pods run locked down.
``tests/integration/test_deploy_start.py`` starts the same containers for real.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from config.settings import EdgeSettings, OriginSettings
from config.units import parse_size
from core.cli import build_parser
from edge import cli as edge_cli
from edge.cache.store import META_SIZE_LIMIT
from origin import cli as origin_cli
from origin.auth.token_format import parse_token
from tests.deploy_local import (
    DEPLOY,
    ENTRYPOINT,
    KUBERNETES,
    OVERLAYS,
    LocalCommand,
    find,
    local_container,
    volume_sources,
)
from tests.kustomize import Object, pod_containers, pod_spec, render

#: The oldest Kubernetes release still commonly run, and the newest the schemas know.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
ROLES = {"origin": ("DEPOT_ORIGIN_", OriginSettings), "edge": ("DEPOT_EDGE_", EdgeSettings)}
#: Stand-ins for the Secrets an operator creates (deploy/README.md): not real values.
SECRETS = {
    "depot-edge-token": {"token": "dpe_" + "0" * 16 + "X" * 32},
    "depot-database": {"url": "postgresql+psycopg://depot:PASSWORD@db.example:5432/depot"},
    "depot-signing-key": {"0000000000001-region.pem": "placeholder"},
}


def rendered(overlay: str) -> list[Object]:
    return render(KUBERNETES / "overlays" / overlay)


def workloads(objects: list[Object]) -> list[Object]:
    return [o for o in objects if pod_spec(o) is not None]


def depot_containers(objects: list[Object]) -> list[tuple[Object, Object]]:
    """(workload, container) for every container that runs the depot-registry CLI."""
    return [
        (obj, c)
        for obj in workloads(objects)
        for c in pod_spec(obj)["containers"]  # type: ignore[index]
        if "command" not in c
    ]


def load_settings(
    command: LocalCommand, monkeypatch: pytest.MonkeyPatch
) -> OriginSettings | EdgeSettings:
    """The settings the container's process starts with: the real parser, the real loader."""
    assert command.argv[0] == ENTRYPOINT
    try:
        args = build_parser().parse_args(command.argv[1:])
    except SystemExit:
        pytest.fail(f"depot-registry refuses its arguments: {command.argv}")
    assert (args.component, args.command) in {("origin", "serve"), ("edge", "serve")}
    prefix, _ = ROLES[args.component]
    for name in os.environ:
        if name.startswith("DEPOT_"):
            monkeypatch.delenv(name)
    for name, value in command.env.items():
        if name.startswith("DEPOT_"):
            assert name.startswith(prefix), f"{name} is not a {args.component} setting"
        monkeypatch.setenv(name, value)
    loader = origin_cli._settings if args.component == "origin" else edge_cli._settings
    return loader(args)


def quantity_bytes(text: str) -> int:
    """A Kubernetes quantity (12Gi, 500M) in bytes."""
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", text)
    assert match, text
    unit = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 10**3}
    unit |= {"M": 10**6, "G": 10**9, "T": 10**12, None: 1}  # type: ignore[dict-item]
    return int(match.group(1)) * unit[match.group(2)]  # type: ignore[index]


def volume_bytes(source: Object, objects: list[Object]) -> int:
    if "emptyDir" in source:
        return quantity_bytes(source["emptyDir"]["sizeLimit"])
    claim = source["persistentVolumeClaim"]
    if "claimName" in claim:
        claim = find(objects, "PersistentVolumeClaim", claim["claimName"])
    return quantity_bytes(claim["spec"]["resources"]["requests"]["storage"])


def prestop_seconds(spec_container: Object) -> int:
    command = spec_container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
    argv = command.get("command", [])
    return int(argv[1]) if argv[:1] == ["sleep"] else 0


def all_yaml_objects() -> list[tuple[Path, Object]]:
    """Every object of every manifest file (parts, examples and patches included)."""
    found = []
    for path in sorted(KUBERNETES.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


# -- rendering and schemas --------------------------------------------------------------------


def test_overlays_exist() -> None:
    assert OVERLAYS == ["region", "region-daemonset", "single-node"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_objects_pass_strict_schema_validation(overlay: str, version: str) -> None:
    objects = rendered(overlay)
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_examples_pass_strict_schema_validation(version: str) -> None:
    examples = sorted((KUBERNETES / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        for obj in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(obj, version, strict=True)


def test_strict_validation_refuses_a_misspelt_field() -> None:
    """The check above can fail: strict mode catches what a typo would silently drop."""
    edge = find(rendered("single-node"), "Deployment", "depot-edge")
    edge["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(edge, K8S_VERSIONS[-1], strict=True)


# -- containers: flags, settings, ports, probes -----------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_start_with_existing_flags_and_settings(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = rendered(overlay)
    roles = []
    for obj, spec_container in depot_containers(objects):
        root = tmp_path / obj["kind"] / spec_container["name"]
        command = local_container(obj, spec_container, objects, root, SECRETS)
        settings = load_settings(command, monkeypatch)
        roles.append(type(settings).__name__)
    assert sorted(set(roles)) == ["EdgeSettings", "OriginSettings"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_probes_and_grace_periods_match_the_settings(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = rendered(overlay)
    for obj, spec_container in depot_containers(objects):
        command = local_container(obj, spec_container, objects, tmp_path / obj["kind"], SECRETS)
        settings = load_settings(command, monkeypatch)
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        port = int(settings.listen.rsplit(":", 1)[1])
        host = settings.listen.rsplit(":", 1)[0]
        assert host == "0.0.0.0", f"{where}: listens on {host}, unreachable from the pod network"
        named = {p["name"]: p["containerPort"] for p in spec_container["ports"]}
        assert named == {"http": port}, where
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = spec_container[kind]
            target = probe.get("httpGet") or probe.get("tcpSocket")
            assert target["port"] in ("http", port), f"{where} {kind}: {target}"
        if isinstance(settings, EdgeSettings):
            assert spec_container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert spec_container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        grace = pod_spec(obj)["terminationGracePeriodSeconds"]  # type: ignore[index]
        needed = settings.graceful_timeout_seconds + prestop_seconds(spec_container)
        assert grace > needed, f"{where}: {grace}s grace < {needed}s to drain"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_edges_reach_the_origin_service(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = rendered(overlay)
    origin_pods = [
        obj for obj, c in depot_containers(objects) if c["args"][:2] == ["origin", "serve"]
    ]
    assert len(origin_pods) == 1
    origin = origin_pods[0]
    origin_labels = origin["spec"]["template"]["metadata"]["labels"]
    origin_ports = {p["name"]: p["containerPort"] for p in pod_containers(origin)[-1]["ports"]}
    edges = 0
    for obj, spec_container in depot_containers(objects):
        if spec_container["args"][:2] != ["edge", "serve"]:
            continue
        edges += 1
        command = local_container(obj, spec_container, objects, tmp_path, SECRETS)
        settings = load_settings(command, monkeypatch)
        assert isinstance(settings, EdgeSettings)
        upstream = urlsplit(settings.upstream)
        service = find(objects, "Service", upstream.hostname or "")
        assert service["spec"]["selector"].items() <= origin_labels.items()
        (port,) = [p for p in service["spec"]["ports"] if p["port"] == upstream.port]
        assert origin_ports[port["targetPort"]] == port["port"]
        if pod_spec(obj).get("hostNetwork"):  # type: ignore[union-attr]
            # Service names resolve on the node's network only with this DNS policy.
            assert pod_spec(obj)["dnsPolicy"] == "ClusterFirstWithHostNet"  # type: ignore[index]
        # The token file is on a Secret volume the (non-root) process can read.
        token_mount = next(
            m
            for m in spec_container["volumeMounts"]
            if str(command.local(m["mountPath"])) in str(settings.upstream_token_file)
        )
        source = volume_sources(obj, objects)[token_mount["name"]]
        assert source["secret"]["secretName"] == "depot-edge-token"
        assert source["secret"]["defaultMode"] & 0o040, "the token must be group-readable"
    assert edges == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_edge_cache_fits_its_volume(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The volume holds the cache, the tag index (META_SIZE_LIMIT) and the spools of fills in
    progress: at least 1 GiB or a tenth of the volume is left for those. Over an emptyDir's
    sizeLimit the kubelet evicts the pod."""
    objects = rendered(overlay)
    for obj, spec_container in depot_containers(objects):
        if spec_container["args"][:2] != ["edge", "serve"]:
            continue
        command = local_container(obj, spec_container, objects, tmp_path, SECRETS)
        settings = load_settings(command, monkeypatch)
        assert isinstance(settings, EdgeSettings)
        (mount,) = [
            m
            for m in spec_container["volumeMounts"]
            if command.local(m["mountPath"]) == settings.cache_dir
        ]
        volume = volume_bytes(volume_sources(obj, objects)[mount["name"]], objects)
        spare = volume - settings.cache_size_bytes - META_SIZE_LIMIT
        assert spare >= max(1 << 30, volume // 10), (volume, settings.cache_size_bytes)
        requested = spec_container["resources"]["requests"].get("ephemeral-storage")
        if "emptyDir" in volume_sources(obj, objects)[mount["name"]]:
            assert requested is not None and quantity_bytes(requested) >= volume


def test_the_cache_rule_refuses_a_cache_as_large_as_its_volume() -> None:
    volume = quantity_bytes("12Gi")
    assert volume - parse_size("10GiB") - META_SIZE_LIMIT >= max(1 << 30, volume // 10)
    assert volume - parse_size("11GiB") - META_SIZE_LIMIT < max(1 << 30, volume // 10)


# -- settings files and placeholders ----------------------------------------------------------


def _config_files() -> list[tuple[str, str, str]]:
    """(where, role, TOML text) for every settings file in a ConfigMap or patch."""
    files = []
    for path, obj in all_yaml_objects():
        if obj["kind"] != "ConfigMap":
            continue
        for key, text in obj.get("data", {}).items():
            role = key.removesuffix(".toml")
            assert role in ROLES, f"{path}: {key}"
            files.append((f"{path.relative_to(DEPLOY)}:{key}", role, text))
    return files


@pytest.mark.parametrize("where,role,text", _config_files())
def test_settings_files_name_real_settings(where: str, role: str, text: str) -> None:
    """Keys are settings; a commented-out assignment is a real setting too (uncommenting it
    must work), unless its comment block is a TODO for a setting that is still being built."""
    fields = ROLES[role][1].__dataclass_fields__
    assert set(tomllib.loads(text)) <= set(fields), where
    block: list[str] = []
    for line in [*text.splitlines(), ""]:
        if not line.lstrip().startswith("#"):
            block = []
            continue
        block.append(line)
        match = re.match(r"\s*#\s*([a-z_]+)\s*=", line)
        if match and match.group(1) not in fields:
            assert any("TODO" in b for b in block), f"{where}: {line.strip()}"


# -- secrets, images, hardening ---------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_is_rendered(overlay: str) -> None:
    """Secrets are created by the operator (deploy/README.md), never applied from git."""
    assert [o for o in rendered(overlay) if o["kind"] == "Secret"] == []


def test_no_secret_material_in_deploy() -> None:
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file():
            continue
        text = path.read_text()
        where = str(path.relative_to(DEPLOY))
        for word in re.findall(r"dp[a-z]_[A-Za-z0-9]+", text):
            assert parse_token(word) is None, f"{where}: a real-looking token"
        assert not re.search(r"BEGIN [A-Z ]*PRIVATE KEY", text), where
        for password in re.findall(r"://[^/\s:@]+:([^@\s]+)@", text):
            assert password == "PASSWORD", f"{where}: a password in a URL"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_depot_images_are_the_project_release(overlay: str) -> None:
    version = importlib.metadata.version("depot-registry")
    images = {
        c["image"]
        for obj in workloads(rendered(overlay))
        for c in pod_containers(obj)
        if "depot-registry" in c["image"]
    }
    assert images == {f"registry.example/depot-registry:{version}"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_locked_down_with_resources(overlay: str) -> None:
    for obj in workloads(rendered(overlay)):
        spec = pod_spec(obj)
        assert spec is not None
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert spec["automountServiceAccountToken"] is False, where
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True, where
        assert pod_security["runAsUser"] != 0, where
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for spec_container in pod_containers(obj):
            security = spec_container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            resources = spec_container["resources"]
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[part]), f"{where} {part}"
        if "depot-registry" in spec["containers"][0]["image"]:
            # The image's user (deploy/Dockerfile) owns its data and cache directories.
            assert pod_security["runAsUser"] == pod_security["fsGroup"] == 10001, where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_replicated_workloads_have_disruption_budgets(overlay: str) -> None:
    objects = rendered(overlay)
    budgets = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    for budget in budgets:
        selector = budget["spec"]["selector"]["matchLabels"]
        selected = [
            o
            for o in workloads(objects)
            if selector.items() <= o["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, budget["metadata"]["name"]
        assert selected[0]["kind"] == "Deployment"
    budgeted = {b["metadata"]["name"] for b in budgets}
    for obj in workloads(objects):
        if obj["kind"] == "Deployment" and obj["spec"].get("replicas", 1) > 1:
            assert obj["metadata"]["name"] in budgeted


# -- what each overlay is -----------------------------------------------------------------------


def test_single_node_runs_one_embedded_origin_on_a_volume() -> None:
    objects = rendered("single-node")
    origin = find(objects, "StatefulSet", "depot-origin")
    assert origin["spec"]["replicas"] == 1
    (claim,) = origin["spec"]["volumeClaimTemplates"]
    (spec_container,) = origin["spec"]["template"]["spec"]["containers"]
    assert "env" not in spec_container  # no database URL: SQLite in the data directory
    data = spec_container["args"][spec_container["args"].index("--data-dir") + 1]
    mounts = {m["mountPath"]: m["name"] for m in spec_container["volumeMounts"]}
    assert mounts[data] == claim["metadata"]["name"]
    assert find(objects, "Deployment", "depot-edge")["spec"]["replicas"] == 1
    assert not [o for o in objects if "redis" in o["metadata"]["name"]]


def test_region_runs_scaled_out_origins_several_edges_and_redis() -> None:
    objects = rendered("region")
    origin = find(objects, "Deployment", "depot-origin")
    assert origin["spec"]["replicas"] >= 2
    (spec_container,) = origin["spec"]["template"]["spec"]["containers"]
    assert spec_container["env"] == [
        {
            "name": "DEPOT_ORIGIN_DATABASE_URL",
            "valueFrom": {"secretKeyRef": {"name": "depot-database", "key": "url"}},
        }
    ]
    volumes = volume_sources(origin, objects)
    claim_name = volumes["data"]["persistentVolumeClaim"]["claimName"]
    claim = find(objects, "PersistentVolumeClaim", claim_name)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # shared by every replica
    assert volumes["signing-key"]["secret"]["secretName"] == "depot-signing-key"
    edges = find(objects, "Deployment", "depot-edge")
    assert edges["spec"]["replicas"] >= 2
    assert volume_sources(edges, objects)["config"]["configMap"]["name"] == "depot-edge-config"
    assert find(objects, "Service", "depot-redis")["spec"]["ports"][0]["port"] == 6379
    find(objects, "Deployment", "depot-redis")


def test_the_region_overlays_edges_form_one_region(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = rendered("region")
    edges = find(objects, "Deployment", "depot-edge")
    (spec_container,) = edges["spec"]["template"]["spec"]["containers"]
    command = local_container(edges, spec_container, objects, tmp_path, SECRETS)
    settings = load_settings(command, monkeypatch)
    assert isinstance(settings, EdgeSettings)
    assert settings.redis_url == "redis://depot-redis:6379/0"
    assert settings.region
    # Peers reach each pod at its own address, on the port the edge listens on.
    port = settings.listen.rsplit(":", 1)[1]
    assert settings.advertise_url == f"http://127.0.0.1:{port}"  # the pod IP, locally


def test_region_daemonset_swaps_the_edge_deployment_for_node_local_edges() -> None:
    objects = rendered("region-daemonset")
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert ("Deployment", "depot-edge") not in names
    assert ("PodDisruptionBudget", "depot-edge") not in names
    edges = find(objects, "DaemonSet", "depot-edge")
    assert edges["spec"]["template"]["spec"]["hostNetwork"] is True
    (port,) = edges["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert port["hostPort"] == port["containerPort"]
    find(objects, "Deployment", "depot-origin")
    find(objects, "Deployment", "depot-redis")
