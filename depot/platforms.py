"""Platforms (``os/arch[/variant]``): this machine's, and the manifest of an index that
matches one. Pure."""

from __future__ import annotations

import platform as host
from typing import Any

from core.errors import InputError

#: Python's machine names → OCI (Go) architecture names.
_ARCHITECTURES = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}


def local_platform() -> str:
    """``linux/amd64`` and the like (containers are Linux ones wherever the CLI runs)."""
    arch, variant = _ARCHITECTURES.get(host.machine().lower(), (host.machine().lower(), None))
    return "/".join(p for p in ("linux", arch, variant) if p)


def parse_platform(text: str) -> tuple[str, str, str | None]:
    parts = text.strip().lower().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise InputError(f"not a platform: {text!r} (expected OS/ARCH[/VARIANT], e.g. linux/arm64)")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def describe(platform: Any) -> str:
    """An index entry's ``platform`` object as ``os/arch[/variant]``."""
    if not isinstance(platform, dict):
        return "unknown"
    parts = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
    return "/".join(str(p) for p in parts if p) or "unknown"


def choose(index: dict[str, Any], wanted: str) -> dict[str, Any]:
    """The descriptor of ``index``'s manifest for ``wanted``; a missing variant matches any
    (the first listed), as Docker does. InputError naming what the index has otherwise."""
    os_name, arch, variant = parse_platform(wanted)
    entries = [e for e in index.get("manifests") or [] if isinstance(e, dict)]
    matching = []
    for entry in entries:
        found = entry.get("platform")
        if not isinstance(found, dict):
            continue
        if found.get("os") != os_name or found.get("architecture") != arch:
            continue
        if variant is not None and found.get("variant") not in (variant, None):
            continue
        matching.append(entry)
    if not matching:
        offered = ", ".join(describe(e.get("platform")) for e in entries) or "none"
        raise InputError(f"the build has no image for {wanted} (it has: {offered})")
    exact = [e for e in matching if (e.get("platform") or {}).get("variant") == variant]
    return (exact or matching)[0]
