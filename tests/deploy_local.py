"""What ``deploy/`` describes, turned into commands that run on this machine.

A Kubernetes container (from a rendered overlay, ``tests/kustomize.py``) or a systemd unit
names paths inside its pod or host (``/var/lib/depot``, ``/etc/depot/config/edge.toml``,
``%d/edge-token``). :func:`local_container` and :func:`local_unit` give each such path a
directory under the test's temporary directory, write the files the pod would see there
(ConfigMap entries, Secret entries supplied by the test), and rewrite the command line and
environment to match. Nothing else changes: the flags, settings files and variables are the
deployed ones, so the tests start exactly what an operator would run.
"""

from __future__ import annotations

import configparser
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.kustomize import Object, pod_spec

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
OVERLAYS = sorted(path.name for path in (KUBERNETES / "overlays").iterdir())
#: What the image's ENTRYPOINT runs (deploy/Dockerfile).
ENTRYPOINT = "depot-registry"


@dataclass
class LocalCommand:
    """A command line and environment rewritten onto local paths."""

    argv: list[str]
    env: dict[str, str]
    #: deployed path -> local path, longest first
    paths: dict[str, Path] = field(default_factory=dict)

    def local(self, deployed: str) -> Path:
        return Path(rewrite(deployed, self.paths))

    def flag(self, name: str) -> str:
        """The value following ``name`` on the command line."""
        return self.argv[self.argv.index(name) + 1]

    def set_flag(self, name: str, value: str) -> None:
        self.argv[self.argv.index(name) + 1] = value


def rewrite(text: str, paths: dict[str, Path]) -> str:
    """``text`` with every deployed path (a whole path or a prefix of one) replaced by its
    local directory, in one pass: a local path is never rewritten again."""
    if not paths:
        return text
    names = "|".join(re.escape(p) for p in sorted(paths, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w./-])({names})(?=/|$|[^\w.-])")
    return pattern.sub(lambda match: str(paths[match.group(1)]), text)


def find(objects: list[Object], kind: str, name: str) -> Object:
    hits = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} objects"
    return hits[0]


def container(obj: Object, name: str, *, init: bool = False) -> Object:
    spec = pod_spec(obj)
    assert spec is not None, obj["kind"]
    candidates = spec["initContainers" if init else "containers"]
    found: Object = next(c for c in candidates if c["name"] == name)
    return found


def volume_sources(obj: Object, objects: list[Object]) -> dict[str, Object]:
    """Volume name -> its source, including a StatefulSet's claim templates."""
    spec = pod_spec(obj)
    assert spec is not None
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for claim in obj["spec"].get("volumeClaimTemplates", []):
        volumes[claim["metadata"]["name"]] = {"persistentVolumeClaim": claim}
    return volumes


def local_container(
    obj: Object,
    spec_container: Object,
    objects: list[Object],
    root: Path,
    secrets: dict[str, dict[str, str]],
) -> LocalCommand:
    """``spec_container`` of workload ``obj`` as a local command: every volume mount becomes a
    directory under ``root`` (ConfigMaps and ``secrets[name]`` written into theirs), and the
    command line and ``env`` name those directories. Secret variables take their value from
    ``secrets`` too."""
    volumes = volume_sources(obj, objects)
    paths: dict[str, Path] = {}
    for mount in spec_container.get("volumeMounts", []):
        local = root / mount["name"]
        local.mkdir(parents=True, exist_ok=True)
        source = volumes[mount["name"]]
        if "configMap" in source:
            config = find(objects, "ConfigMap", source["configMap"]["name"])
            for key, value in config["data"].items():
                (local / key).write_text(value)
        elif "secret" in source:
            for key, value in secrets[source["secret"]["secretName"]].items():
                (local / key).write_text(value)
        paths[mount["mountPath"]] = local
    paths = dict(sorted(paths.items(), key=lambda item: -len(item[0])))

    argv = [*spec_container.get("command", [ENTRYPOINT]), *spec_container.get("args", [])]
    env: dict[str, str] = {}
    for variable in spec_container.get("env", []):
        if "value" in variable:
            # Kubernetes expands $(NAME) from the variables defined before this one.
            value = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: env.get(m.group(1), m.group(0)),
                variable["value"],
            )
            env[variable["name"]] = rewrite(value, paths)
        elif "fieldRef" in variable["valueFrom"]:
            field = variable["valueFrom"]["fieldRef"]["fieldPath"]
            assert field == "status.podIP", f"no local stand-in for {field}"
            env[variable["name"]] = "127.0.0.1"
        else:
            ref = variable["valueFrom"]["secretKeyRef"]
            env[variable["name"]] = secrets[ref["name"]][ref["key"]]
    return LocalCommand([rewrite(arg, paths) for arg in argv], env, paths)


# -- systemd --------------------------------------------------------------------------------


def read_unit(path: Path) -> configparser.RawConfigParser:
    """A unit file's sections; repeated keys (SystemCallFilter=...) keep their last value,
    except ``ExecStart``, which these units set once."""
    parser = configparser.RawConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def unit_values(path: Path, section: str, key: str) -> list[str]:
    """Every value of ``key`` in ``section`` (systemd keys may repeat)."""
    values, current = [], None
    for line in path.read_text().splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and "=" in line and not line.startswith("#"):
            name, _, value = line.partition("=")
            if name.strip() == key:
                values.append(value.strip())
    return values


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of an EnvironmentFile (comments and blank lines skipped)."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value
    return env


def local_unit(path: Path, root: Path, credentials: dict[str, str]) -> LocalCommand:
    """The unit's ``ExecStart`` as a local command: its State/CacheDirectory and the
    credentials directory (``%d``, holding ``credentials``) become directories under
    ``root``; the environment is its EnvironmentFile's ``.example`` beside it."""
    unit = read_unit(path)
    service = unit["Service"]
    paths: dict[str, Path] = {}
    for key, base in (("StateDirectory", "/var/lib/"), ("CacheDirectory", "/var/cache/")):
        if key in service:
            local = root / key
            local.mkdir(parents=True, exist_ok=True)
            paths[base + service[key]] = local
    creds = root / "credentials"
    creds.mkdir(parents=True, exist_ok=True)
    for name, value in credentials.items():
        (creds / name).write_text(value)
    paths["%d"] = creds
    paths = dict(sorted(paths.items(), key=lambda item: -len(item[0])))
    assert re.search(r"%[^d]", service["ExecStart"]) is None, "only %d is expanded here"
    argv = [rewrite(arg, paths) for arg in shlex.split(service["ExecStart"])]
    env: dict[str, Any] = {}
    env_file = service.get("EnvironmentFile", "").lstrip("-")
    if env_file:
        env = read_env_file(SYSTEMD / (Path(env_file).name + ".example"))
    return LocalCommand(argv, env, paths)
