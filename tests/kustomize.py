"""A small kustomize: renders the overlays under ``deploy/kubernetes`` without kustomize.

CI has no kustomize (nor kubectl), so the deploy tests render the overlays themselves. Only
what our kustomizations use is implemented, in kustomize's order: ``resources`` (files and
directories holding a kustomization, rendered recursively), then ``patches`` (strategic
merge, by kind and name; ``$patch: delete`` removes the object), ``namespace``, ``labels``
(metadata only) and ``images``. Any other field is refused, so a kustomization that starts
using one fails here loudly instead of rendering wrong. Strategic merge is approximated:
mappings merge, lists of named mappings (containers, volumes, env) merge by ``name``, any
other list is replaced. (Checked once against ``kubectl kustomize``
v5.5 by hand: identical objects for every overlay; kubectl is not a peer CI installs.)
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Object = dict[str, Any]

_SUPPORTED = {"apiVersion", "kind", "resources", "patches", "namespace", "labels", "images"}
# Kinds without a namespace (the ones a registry deployment could plausibly contain).
_CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "CustomResourceDefinition",
}
_POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


class KustomizeError(Exception):
    """The kustomization uses something this renderer does not implement, or is wrong."""


def render(directory: Path) -> list[Object]:
    """The objects ``kubectl kustomize directory`` would print (in no particular order)."""
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"{directory} has no kustomization.yaml")
    kustomization = yaml.safe_load(path.read_text())
    unknown = set(kustomization) - _SUPPORTED
    if unknown:
        raise KustomizeError(f"{path}: fields this renderer lacks: {sorted(unknown)}")
    if kustomization.get("kind") != "Kustomization":
        raise KustomizeError(f"{path}: kind must be Kustomization")

    objects: list[Object] = []
    for entry in kustomization.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            objects.extend(render(target))
        else:
            objects.extend(load_objects(target))
    _check_unique(objects, path)

    for patch in kustomization.get("patches", []):
        objects = _apply_patch(objects, _patch_document(directory, patch), path)
    namespace = kustomization.get("namespace")
    if namespace:
        for obj in objects:
            if obj["kind"] not in _CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = namespace
    for label in kustomization.get("labels", []):
        if label.get("includeSelectors") or label.get("includeTemplates"):
            raise KustomizeError(f"{path}: labels apply to metadata only here")
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])
    for image in kustomization.get("images", []):
        for obj in objects:
            for container in pod_containers(obj):
                container["image"] = _retag(container["image"], image)
    return objects


def load_objects(path: Path) -> list[Object]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def pod_spec(obj: Object) -> Object | None:
    """The pod spec of a workload (its template's), or None for other kinds."""
    if obj["kind"] == "Pod":
        spec: Object = obj["spec"]
        return spec
    if obj["kind"] in _POD_TEMPLATE_KINDS:
        template: Object = obj["spec"]["template"]["spec"]
        return template
    if obj["kind"] == "CronJob":
        job: Object = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        return job
    return None


def pod_containers(obj: Object) -> list[Object]:
    """Init containers and containers of a workload (none for other kinds)."""
    spec = pod_spec(obj)
    if spec is None:
        return []
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def _check_unique(objects: list[Object], path: Path) -> None:
    seen = set()
    for obj in objects:
        key = (obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])
        if key in seen:
            raise KustomizeError(f"{path}: {key} appears twice")
        seen.add(key)


def _patch_document(directory: Path, patch: Object) -> Object:
    if set(patch) - {"path", "patch"}:
        raise KustomizeError(f"patch fields this renderer lacks: {sorted(patch)}")
    if "path" in patch:
        docs = load_objects(directory / patch["path"])
    else:
        docs = [doc for doc in yaml.safe_load_all(patch["patch"]) if doc is not None]
    if len(docs) != 1:
        raise KustomizeError(f"a patch must hold one object: {patch}")
    document: Object = docs[0]
    return document


def _apply_patch(objects: list[Object], patch: Object, path: Path) -> list[Object]:
    def matches(obj: Object) -> bool:
        return (
            obj["kind"] == patch["kind"]
            and obj["apiVersion"] == patch["apiVersion"]
            and obj["metadata"]["name"] == patch["metadata"]["name"]
        )

    hits = [obj for obj in objects if matches(obj)]
    if len(hits) != 1:
        what = f"{patch['kind']}/{patch['metadata']['name']}"
        raise KustomizeError(f"{path}: patch {what} matches {len(hits)} objects")
    if patch.get("$patch") == "delete":
        return [obj for obj in objects if obj is not hits[0]]
    merged = _merge(hits[0], patch)
    return [merged if obj is hits[0] else obj for obj in objects]


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        result = copy.deepcopy(base)
        for key, value in patch.items():
            result[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return result
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        result = copy.deepcopy(base)
        index = {item["name"]: i for i, item in enumerate(result)}
        for item in patch:
            if item["name"] in index:
                result[index[item["name"]]] = _merge(result[index[item["name"]]], item)
            else:
                result.append(copy.deepcopy(item))
        return result
    return copy.deepcopy(patch)


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(item, dict) and "name" in item for item in items)


def _retag(image: str, rule: Object) -> str:
    name, tag = image, None
    last = image.rsplit("/", 1)[-1]
    if "@" in image:
        raise KustomizeError(f"digest references are not handled: {image}")
    if ":" in last:
        name, tag = image.rsplit(":", 1)
    if name != rule["name"]:
        return image
    new_name = rule.get("newName", name)
    new_tag = rule.get("newTag", tag)
    return f"{new_name}:{new_tag}" if new_tag else new_name
