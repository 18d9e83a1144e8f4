"""The mark phase of garbage collection on generated graphs: nothing reachable is ever swept."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from origin.retention.mark import BlobNode, Graph, ManifestKey, ManifestNode, mark, plan

CUTOFF = 1000.0
_times = st.sampled_from([0.0, 500.0, CUTOFF - 1, CUTOFF, CUTOFF + 500])
_BLOBS = [f"sha256:b{i}" for i in range(8)]


@dataclass(frozen=True)
class Case:
    graph: Graph
    extra_roots: tuple[ManifestKey, ...]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """A consistent registry: children exist, referenced blobs are linked, links' blobs exist
    (as pushes leave it); subjects may name anything, even absent manifests."""
    manifests: dict[ManifestKey, ManifestNode] = {}
    links: dict[tuple[int, str], float] = {}
    for repository_id in range(draw(st.integers(1, 3))):
        count = draw(st.integers(0, 8))
        digests = [f"sha256:r{repository_id}m{i}" for i in range(count)]
        for i, digest in enumerate(digests):
            # Children only among earlier manifests: digests cannot form cycles.
            children = draw(st.frozensets(st.sampled_from(digests[:i]))) if i else frozenset()
            blobs = draw(st.frozensets(st.sampled_from(_BLOBS), max_size=3))
            subject = draw(st.none() | st.sampled_from([*digests, "sha256:absent"]))
            if subject == digest:
                subject = None
            manifests[(repository_id, digest)] = ManifestNode(
                draw(_times), subject, children, blobs
            )
            for blob in blobs:
                links.setdefault((repository_id, blob), draw(_times))
        for blob in draw(st.frozensets(st.sampled_from(_BLOBS), max_size=3)):
            links.setdefault((repository_id, blob), draw(_times))
    stored = {digest for _, digest in links} | set(
        draw(st.frozensets(st.sampled_from(_BLOBS), max_size=3))
    )
    nodes = {d: BlobNode(draw(st.integers(0, 10_000)), draw(_times)) for d in sorted(stored)}
    keys = sorted(manifests)
    tags = draw(st.lists(st.sampled_from(keys), max_size=5)) if keys else []
    extra = draw(st.lists(st.sampled_from(keys), max_size=3)) if keys else []
    extra.append((99, "sha256:no-such-build"))
    return Case(Graph(manifests, tags, links, nodes), tuple(extra))


def reachable(graph: Graph, roots: list[ManifestKey]) -> set[ManifestKey]:
    """Naive fixpoint, independent of mark(): add children and referrers until stable."""
    live = {key for key in roots if key in graph.manifests}
    while True:
        grown = set(live)
        for repository_id, digest in live:
            grown.update(
                (repository_id, child)
                for child in graph.manifests[(repository_id, digest)].children
            )
        for key, node in graph.manifests.items():
            if node.subject is not None and (key[0], node.subject) in live:
                grown.add(key)
        if grown == live:
            return live
        live = grown


@settings(max_examples=200, deadline=None)
@given(cases())
def test_nothing_reachable_is_swept_and_unreachable_old_is(case: Case) -> None:
    graph = case.graph
    result = plan(graph, case.extra_roots, CUTOFF)
    young = [key for key, node in graph.manifests.items() if node.created_at >= CUTOFF]
    from_roots = reachable(graph, [*graph.tags, *case.extra_roots])
    live = reachable(graph, [*graph.tags, *case.extra_roots, *young])

    assert result.live == live
    assert not from_roots & set(result.manifests)
    # Unreachable manifests are all swept: they are old (the young ones are roots).
    assert set(result.manifests) == set(graph.manifests) - live
    assert len(result.manifests) == len(set(result.manifests))
    assert all(graph.manifests[key].created_at < CUTOFF for key in result.manifests)

    referenced = {(key[0], blob) for key in live for blob in graph.manifests[key].blobs}
    expected_links = {
        link for link, created in graph.links.items() if link not in referenced and created < CUTOFF
    }
    assert set(result.links) == expected_links
    remaining_links = set(graph.links) - expected_links
    linked = {digest for _, digest in remaining_links}
    expected_blobs = {
        d for d, n in graph.blobs.items() if d not in linked and n.created_at < CUTOFF
    }
    assert set(result.blobs) == expected_blobs
    assert result.freed_bytes == sum(graph.blobs[d].size for d in expected_blobs)


@settings(max_examples=200, deadline=None)
@given(cases())
def test_the_sweep_leaves_no_dangling_reference(case: Case) -> None:
    graph = case.graph
    result = plan(graph, case.extra_roots, CUTOFF)
    manifests = set(graph.manifests) - set(result.manifests)
    links = set(graph.links) - set(result.links)
    blobs = set(graph.blobs) - set(result.blobs)
    assert set(graph.tags) <= manifests
    assert {key for key in case.extra_roots if key in graph.manifests} <= manifests
    for repository_id, digest in manifests:
        node = graph.manifests[(repository_id, digest)]
        assert {(repository_id, child) for child in node.children} <= manifests
        assert {(repository_id, blob) for blob in node.blobs} <= links
    assert {digest for _, digest in links} <= blobs
    # Young things are never swept.
    assert all(graph.links[link] < CUTOFF for link in result.links)
    assert all(graph.blobs[digest].created_at < CUTOFF for digest in result.blobs)


@settings(max_examples=200, deadline=None)
@given(cases())
def test_indexes_are_swept_before_their_children(case: Case) -> None:
    graph = case.graph
    order = {key: n for n, key in enumerate(plan(graph, case.extra_roots, CUTOFF).manifests)}
    for key, n in order.items():
        for child in graph.manifests[key].children:
            if (key[0], child) in order:
                assert n < order[(key[0], child)]


def test_referrers_of_live_manifests_live_and_chains_follow() -> None:
    old = 0.0
    graph = Graph(
        manifests={
            (1, "image"): ManifestNode(old, blobs=frozenset({"layer"})),
            (1, "signature"): ManifestNode(old, subject="image", blobs=frozenset({"sig"})),
            (1, "sig-of-sig"): ManifestNode(old, subject="signature"),
            (1, "orphan-sbom"): ManifestNode(old, subject="gone"),
            (2, "signature"): ManifestNode(old, subject="image"),  # other repository
        },
        tags=[(1, "image")],
        links={(1, "layer"): old, (1, "sig"): old},
        blobs={"layer": BlobNode(5, old), "sig": BlobNode(7, old)},
    )
    assert mark(graph, graph.tags) == {(1, "image"), (1, "signature"), (1, "sig-of-sig")}
    result = plan(graph, [], CUTOFF)
    assert set(result.manifests) == {(1, "orphan-sbom"), (2, "signature")}
    assert result.links == () and result.blobs == ()


def test_a_young_blob_without_manifest_survives_and_an_old_one_goes() -> None:
    graph = Graph(
        manifests={},
        tags=[],
        links={(1, "young"): CUTOFF + 1, (1, "old"): 0.0},
        blobs={"young": BlobNode(3, CUTOFF + 1), "old": BlobNode(4, 0.0)},
    )
    result = plan(graph, [], CUTOFF)
    assert result.links == ((1, "old"),)
    assert result.blobs == ("old",)
    assert result.freed_bytes == 4
