"""The local Docker engine, through its HTTP API (httpx over the unix socket).

Why the Engine API on httpx and not the Docker SDK for Python: the SDK is blocking
(requests), so every call (and the whole pull's progress stream) would need a thread under
trio; httpx is already the project's HTTP client, speaks to unix sockets natively, and the
five calls ``depot`` makes (ping, create image, tag, untag, inspect, export) are plain
requests with JSON answers.

Where the engine is: ``DOCKER_HOST`` (``unix:///path`` or ``tcp://host:port``, plain HTTP),
else ``unix:///var/run/docker.sock``. An engine that cannot be reached is
:class:`EngineUnreachable` (the caller may fall back to podman); an engine that answers with an
error is :class:`EngineError` carrying the engine's own message.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import trio

from core.errors import BackendError, InputError

DEFAULT_HOST = "unix:///var/run/docker.sock"
#: The engine sends a progress message at least every few seconds while it pulls.
READ_SECONDS = 300.0


class EngineUnreachable(BackendError):
    """No Docker engine answers at the address (no socket, refused, not an engine)."""


class EngineError(BackendError):
    """The engine answered with an error; the message is the engine's own."""


@dataclass(frozen=True, slots=True)
class EngineAddress:
    description: str  # as the user would write it: unix:///var/run/docker.sock
    base_url: str
    socket: str | None  # a unix socket path, or None for TCP


def engine_address(environ: Mapping[str, str]) -> EngineAddress:
    host = environ.get("DOCKER_HOST") or DEFAULT_HOST
    parts = urlsplit(host)
    if parts.scheme == "unix":
        return EngineAddress(host, "http://docker", parts.path)
    if parts.scheme in ("tcp", "http"):
        if environ.get("DOCKER_TLS_VERIFY") or environ.get("DOCKER_CERT_PATH"):
            raise InputError("DOCKER_HOST with TLS (DOCKER_TLS_VERIFY) is not supported by depot")
        return EngineAddress(host, f"http://{parts.netloc}", None)
    raise InputError(f"DOCKER_HOST={host!r}: depot speaks to unix:// and tcp:// engines only")


def registry_auth(username: str, password: str, server: str) -> str:
    """The ``X-Registry-Auth`` header: base64url of the auth config JSON."""
    document = {"username": username, "password": password, "serveraddress": server}
    return base64.urlsafe_b64encode(json.dumps(document).encode()).decode()


def split_name(name: str) -> tuple[str, str]:
    """``repo[:tag]`` → (repo, tag); the tag defaults to ``latest``. Digests are refused."""
    if "@" in name:
        raise InputError(f"{name!r}: a local name takes a tag, not a digest")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        repo, tag = name[:colon], name[colon + 1 :]
    else:
        repo, tag = name, "latest"
    if not repo or not tag:
        raise InputError(f"not an image name: {name!r} (expected NAME[:TAG])")
    return repo, tag


class PullFailed(EngineError):
    """The engine's pull stream ended with an error message."""


class DockerEngine:
    def __init__(self, client: httpx.AsyncClient, address: EngineAddress) -> None:
        self._client = client
        self.address = address

    @classmethod
    @asynccontextmanager
    async def open(cls, environ: Mapping[str, str]) -> AsyncIterator[DockerEngine]:
        address = engine_address(environ)
        transport = httpx.AsyncHTTPTransport(uds=address.socket) if address.socket else None
        async with httpx.AsyncClient(
            base_url=address.base_url,
            transport=transport,
            trust_env=False,
            timeout=httpx.Timeout(30.0, read=READ_SECONDS),
        ) as client:
            yield cls(client, address)

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise EngineUnreachable(
                f"no Docker engine at {self.address.description}: {exc}"
            ) from exc

    async def ping(self) -> None:
        """Returns when an engine answers ``/_ping``; EngineUnreachable otherwise."""
        response = await self._request("GET", "/_ping")
        if response.status_code != 200:
            raise EngineUnreachable(
                f"{self.address.description} is not a Docker engine "
                f"(/_ping answered {response.status_code})"
            )

    async def pull(
        self, image: str, tag: str, auth: str, platform: str | None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """``POST /images/create``: the engine pulls ``image:tag`` itself; yields its progress
        messages. PullFailed when the stream reports an error."""
        params = {"fromImage": image, "tag": tag}
        if platform:
            params["platform"] = platform
        request = self._client.build_request(
            "POST", "/images/create", params=params, headers={"X-Registry-Auth": auth}
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise EngineUnreachable(
                f"no Docker engine at {self.address.description}: {exc}"
            ) from exc
        try:
            if response.status_code != 200:
                await response.aread()
                raise EngineError(f"pulling {image}:{tag}: {_message(response)}")
            try:
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    if not isinstance(event, dict):
                        continue
                    if event.get("error") or event.get("errorDetail"):
                        detail = event.get("errorDetail") or {}
                        message = event.get("error") or detail.get("message") or "unknown error"
                        raise PullFailed(f"pulling {image}:{tag}: {message}")
                    yield event
            except httpx.TransportError as exc:
                raise EngineError(f"the engine stopped answering while pulling: {exc}") from exc
        finally:
            await response.aclose()

    async def tag(self, source: str, name: str) -> None:
        repo, tag = split_name(name)
        response = await self._request(
            "POST", f"/images/{_path(source)}/tag", params={"repo": repo, "tag": tag}
        )
        if response.status_code not in (200, 201):
            raise EngineError(f"tagging {source} as {name}: {_message(response)}")

    async def untag(self, name: str) -> None:
        """Remove the name only (the image stays while other names hold it)."""
        response = await self._request("DELETE", f"/images/{_path(name)}", params={"noprune": "1"})
        if response.status_code not in (200, 404):
            raise EngineError(f"removing the name {name}: {_message(response)}")

    async def inspect(self, name: str) -> dict[str, Any]:
        response = await self._request("GET", f"/images/{_path(name)}/json")
        if response.status_code != 200:
            raise EngineError(f"inspecting {name}: {_message(response)}")
        document = response.json()
        if not isinstance(document, dict):
            raise EngineError(f"inspecting {name}: the engine answered no object")
        return document

    async def export(self, name: str, destination: Path) -> None:
        """``GET /images/{name}/get``: the image as a ``docker save`` tar, into
        ``destination``."""
        request = self._client.build_request("GET", f"/images/{_path(name)}/get")
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise EngineUnreachable(
                f"no Docker engine at {self.address.description}: {exc}"
            ) from exc
        try:
            if response.status_code != 200:
                await response.aread()
                raise EngineError(f"exporting {name}: {_message(response)}")
            async with await trio.open_file(destination, "wb") as file:
                async for chunk in response.aiter_raw():
                    await file.write(chunk)
        except httpx.TransportError as exc:
            raise EngineError(f"the engine stopped answering while exporting: {exc}") from exc
        finally:
            await response.aclose()


def _path(name: str) -> str:
    return quote(name, safe="/:@")


def _message(response: httpx.Response) -> str:
    """The engine's error message (``{"message": ...}``), else the status."""
    try:
        document = response.json()
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("message"), str):
        return str(document["message"])
    return f"HTTP {response.status_code}"
