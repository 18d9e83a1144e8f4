"""Tag lists and the catalog: lexical order, ``n``/``last`` pagination, RFC 5988 ``Link``."""

from __future__ import annotations

import re

import httpx
import pytest
import trio

from tests.integration.oci import (
    TIMEOUT,
    assert_error,
    guarded,
    new_image,
    push_blob,
    push_manifest,
    put_manifest,
    random_blob,
)

# Byte-wise (lexical) order; note upper case before lower case and "v10" before "v2".
TAGS = ["A1", "Z", "a", "b-1", "b_1", "latest", "v1.0", "v10", "v2"]
LINK = re.compile(r'^<(?P<url>[^>]+)>; rel="next"$')


@pytest.fixture
def http(client: httpx.AsyncClient) -> httpx.AsyncClient:
    return guarded(client)


async def tag_all(http: httpx.AsyncClient, repo: str, tags: list[str]) -> None:
    manifest = new_image()
    await push_manifest(http, repo, manifest)
    for tag in reversed(tags):
        response = await put_manifest(http, repo, tag, manifest)
        assert response.status_code == 201, response.text


async def test_tags_list(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        await tag_all(http, "lib/app", TAGS)
        response = await http.get("/v2/lib/app/tags/list")
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/json"
        assert response.json() == {"name": "lib/app", "tags": TAGS}
        assert "Link" not in response.headers


async def test_tags_pagination(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        await tag_all(http, "lib/app", TAGS)
        url = "/v2/lib/app/tags/list?n=2"
        pages: list[list[str]] = []
        while True:
            response = await http.get(url)
            assert response.status_code == 200
            body = response.json()
            assert body["name"] == "lib/app"
            pages.append(body["tags"])
            link = response.headers.get("Link")
            if link is None:
                break
            match = LINK.match(link)
            assert match is not None, link
            url = match["url"]
            assert url == f"/v2/lib/app/tags/list?n=2&last={body['tags'][-1]}"
        assert pages == [TAGS[i : i + 2] for i in range(0, len(TAGS), 2)]


async def test_tags_pagination_edges(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        await tag_all(http, "lib/app", TAGS)

        async def page(query: str) -> tuple[list[str], str | None]:
            response = await http.get(f"/v2/lib/app/tags/list?{query}")
            assert response.status_code == 200, response.text
            return response.json()["tags"], response.headers.get("Link")

        # Exactly the remaining tags: last page, no Link.
        assert await page(f"n={len(TAGS)}") == (TAGS, None)
        assert await page("n=1000") == (TAGS, None)
        assert await page("n=3&last=v1.0") == (["v10", "v2"], None)
        assert await page("n=2&last=v1.0") == (["v10", "v2"], None)
        # ``last`` need not be an existing tag.
        assert await page("n=2&last=b") == (
            ["b-1", "b_1"],
            '</v2/lib/app/tags/list?n=2&last=b_1>; rel="next"',
        )
        assert await page("last=latest") == (["v1.0", "v10", "v2"], None)
        assert await page("n=5&last=zzz") == ([], None)
        assert (await page("n=0"))[0] == []


async def test_tags_invalid_n(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        await tag_all(http, "lib/app", ["v1"])
        # None is ASCII digits only; the last two pass str.isdigit (superscript two crashed int()).
        for n in ("abc", "-1", "1.5", "0x10", " 1", "1e3", "\u00b2", "\u0661"):
            response = await http.get("/v2/lib/app/tags/list", params={"n": n})
            assert_error(response, 400, "PAGINATION_NUMBER_INVALID")
            response = await http.get("/v2/_catalog", params={"n": n})
            assert_error(response, 400, "PAGINATION_NUMBER_INVALID")


async def test_tags_of_unknown_repository(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        response = await http.get("/v2/lib/unknown/tags/list")
        assert_error(response, 404, "NAME_UNKNOWN")


async def test_tags_of_repository_without_tags(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        await push_blob(http, "lib/app", random_blob(1))
        response = await http.get("/v2/lib/app/tags/list")
        assert response.status_code == 200
        assert response.json() == {"name": "lib/app", "tags": []}


REPOSITORIES = ["alpha", "beta/one", "beta/two", "beta_x", "gamma/a/b", "zeta"]


async def test_catalog(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        response = await http.get("/v2/_catalog")
        assert response.status_code == 200
        assert response.json() == {"repositories": []}

        for name in reversed(REPOSITORIES):
            await push_manifest(http, name, new_image(), "v1")
        response = await http.get("/v2/_catalog")
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/json"
        assert response.json() == {"repositories": REPOSITORIES}
        assert "Link" not in response.headers


async def test_catalog_pagination(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        for name in REPOSITORIES:
            await push_blob(http, name, random_blob(1))
        url = "/v2/_catalog?n=4"
        pages: list[list[str]] = []
        while True:
            response = await http.get(url)
            assert response.status_code == 200
            names = response.json()["repositories"]
            pages.append(names)
            link = response.headers.get("Link")
            if link is None:
                break
            match = LINK.match(link)
            assert match is not None, link
            url = match["url"]
            # Repository names with a slash are percent-encoded in the query.
            assert url in (
                f"/v2/_catalog?n=4&last={names[-1]}",
                f"/v2/_catalog?n=4&last={names[-1].replace('/', '%2F')}",
            )
        assert pages == [REPOSITORIES[:4], REPOSITORIES[4:]]

        response = await http.get("/v2/_catalog", params={"n": "2", "last": "beta/one"})
        assert response.json() == {"repositories": ["beta/two", "beta_x"]}
        assert LINK.match(response.headers["Link"])
        response = await http.get("/v2/_catalog", params={"n": "2", "last": "gamma/a/b"})
        assert response.json() == {"repositories": ["zeta"]}
        assert "Link" not in response.headers


async def test_an_abandoned_upload_does_not_list_a_repository(http: httpx.AsyncClient) -> None:
    with trio.fail_after(TIMEOUT):
        started = await http.post("/v2/only/started/blobs/uploads/")
        assert started.status_code == 202
        await push_blob(http, "has/blob", random_blob(1))
        response = await http.get("/v2/_catalog")
        assert response.json() == {"repositories": ["has/blob"]}
