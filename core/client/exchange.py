"""One registry's HTTP exchanges: authorised (see :mod:`core.client.auth`), retried once
after a 401 challenge, and inside the transport boundary (see :mod:`core.client.failures`).

Request bodies are ``bytes`` or a zero-argument function returning a fresh async iterator of
the bytes: a body must be re-creatable, because the retry after a challenge sends it again.
Answers are streamed; :meth:`Exchange.exchange` reads a bounded body and closes the answer.
A 401 that a retry cannot fix is raised here (``Unauthorized``, or ``Denied`` for valid
credentials lacking scope); every other status is the caller's to judge.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx

from core.client.auth import Authenticator, parse_challenges
from core.client.failures import MAX_ERROR_BYTES, answer_error, transport_boundary
from core.client.http import IDEMPOTENT_METHODS, read_body, send_with_retry
from core.errors import RegistryError

#: A request body: bytes, or a function that starts the byte stream afresh.
Body = bytes | Callable[[], AsyncIterator[bytes]]
Params = httpx.QueryParams | Mapping[str, str] | list[tuple[str, str | int | float | bool | None]]


class Exchange:
    def __init__(self, http: httpx.AsyncClient, auth: Authenticator, host: str) -> None:
        self.http = http
        self.host = host
        self._auth = auth

    async def send(
        self,
        method: str,
        url: str,
        *,
        scope: str | None,
        headers: Mapping[str, str] | None = None,
        params: Params | None = None,
        body: Body | None = None,
    ) -> httpx.Response:
        """Send; the answer's body is unread (the caller closes it). ``scope`` is what the
        request needs (``repository:a/b:pull``), for a token fetched before a challenge.
        GET and HEAD follow redirects (without our credentials to another host) and are
        sent once more after a transport error."""
        with transport_boundary(self.host, f"{method} {_path_of(url)}"):
            sent = await self._auth.authorization(scope)
            response = await self._send_once(method, url, sent, headers, params, body)
            if response.status_code != 401:
                return response
            challenge, error_body = await self._drain(response)
            retry = await self._auth.after_challenge(challenge, scope, sent)
            if retry is not None:
                sent = retry
                response = await self._send_once(method, url, sent, headers, params, body)
                if response.status_code != 401:
                    return response
                challenge, error_body = await self._drain(response)
        insufficient = sent is not None and any(
            c.params.get("error") == "insufficient_scope" for c in parse_challenges(challenge or "")
        )
        raise answer_error(
            401,
            response.headers,
            error_body,
            not_found=RegistryError,
            host=self.host,
            insufficient_scope=insufficient and await self._auth.has_credentials(),
        )

    async def exchange(
        self,
        method: str,
        url: str,
        *,
        scope: str | None,
        limit: int,
        headers: Mapping[str, str] | None = None,
        params: Params | None = None,
        body: Body | None = None,
    ) -> tuple[httpx.Response, bytes]:
        """:meth:`send`, then read the body (at most ``limit`` bytes of a success, 64 KiB of
        an error) and close the answer."""
        response = await self.send(
            method, url, scope=scope, headers=headers, params=params, body=body
        )
        with transport_boundary(self.host, f"reading {method} {_path_of(url)}"):
            try:
                ok = 200 <= response.status_code < 300
                return response, await read_body(response, limit if ok else MAX_ERROR_BYTES)
            finally:
                await response.aclose()

    def error(
        self, response: httpx.Response, body: bytes, not_found: type[RegistryError]
    ) -> RegistryError:
        """What the (non-success) answer means; ``not_found`` for a 404 without a known code."""
        return answer_error(
            response.status_code, response.headers, body, not_found=not_found, host=self.host
        )

    async def error_of_stream(
        self, response: httpx.Response, not_found: type[RegistryError]
    ) -> RegistryError:
        """:meth:`error` for an answer whose body has not been read yet (read and closed here)."""
        with transport_boundary(self.host, "reading an error"):
            try:
                body = await read_body(response, MAX_ERROR_BYTES)
            finally:
                await response.aclose()
        return self.error(response, body, not_found)

    async def _send_once(
        self,
        method: str,
        url: str,
        authorization: str | None,
        headers: Mapping[str, str] | None,
        params: Params | None,
        body: Body | None,
    ) -> httpx.Response:
        content: Any = body() if callable(body) else body
        try:
            # Merged into the URL: httpx would replace a query the registry put in a
            # Location (Distribution signs its upload state into ``_state``).
            target = httpx.URL(url).copy_merge_params(params) if params else url
            request = self.http.build_request(method, target, headers=headers, content=content)
            if authorization is not None:
                request.headers["Authorization"] = authorization
            return await send_with_retry(
                self.http, request, stream=True, follow_redirects=method in IDEMPOTENT_METHODS
            )
        finally:
            # A body stream the send left unfinished (the connection dropped mid-body) is
            # closed here, not by the garbage collector.
            closer = getattr(content, "aclose", None)
            if closer is not None:
                await closer()

    async def _drain(self, response: httpx.Response) -> tuple[str | None, bytes]:
        """The challenge and (bounded) body of a 401; the answer is closed."""
        try:
            body = await read_body(response, MAX_ERROR_BYTES)
        except RegistryError:
            body = b""
        finally:
            await response.aclose()
        return response.headers.get("WWW-Authenticate"), body


def _path_of(url: str) -> str:
    """The path of ``url`` for error details: no query (upload state may be signed into it)."""
    return url.partition("?")[0].partition("#")[0]
