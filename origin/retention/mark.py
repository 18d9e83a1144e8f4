"""The mark phase of garbage collection: a pure function on a snapshot of the metadata graph.

Nodes are manifests (keyed by repository id and digest), repository↔blob links and blobs.
A manifest is *live* when it is reachable from a root:

* roots: every tag's manifest, the extra roots (live saved builds), and every manifest younger
  than the grace period (pushed by digest a moment ago, an index may be about to name it);
* edges: an index to its child manifests, and a live manifest to its referrers (manifests of
  the same repository whose ``subject`` it is).

The walk is a worklist run to a fixpoint. What is not live is swept: manifests; then links no
live manifest of their repository references, once older than the grace period; then blobs no
remaining link names, once older than the grace period. So a blob uploaded for a manifest not
pushed yet survives: its link and its row are young.

The plan is only a list of candidates: the sweep (``gc.py``, through the registry domain)
re-checks every deletion in SQL, inside its transaction, against what the database holds by
then (``origin/metadata/collection.py``). The graph's types live with the metadata records,
where the registry domain reads it; they are re-exported here for the mark's callers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from origin.metadata.records import BlobNode, Graph, LinkKey, ManifestKey, ManifestNode

__all__ = ["BlobNode", "Graph", "LinkKey", "ManifestKey", "ManifestNode", "Plan", "mark", "plan"]


@dataclass(frozen=True, slots=True)
class Plan:
    live: frozenset[ManifestKey]
    #: Unreachable manifests, every index before the children it names.
    manifests: tuple[ManifestKey, ...] = ()
    links: tuple[LinkKey, ...] = ()
    blobs: tuple[str, ...] = ()
    #: Bytes the blobs to delete hold.
    freed_bytes: int = field(default=0)


def mark(graph: Graph, roots: Iterable[ManifestKey]) -> frozenset[ManifestKey]:
    """Every manifest of ``graph`` reachable from ``roots`` (roots it lacks are ignored)."""
    referrers: dict[ManifestKey, list[ManifestKey]] = defaultdict(list)
    for key, node in graph.manifests.items():
        if node.subject is not None:
            referrers[(key[0], node.subject)].append(key)
    live: set[ManifestKey] = set()
    pending = [key for key in roots if key in graph.manifests]
    while pending:
        key = pending.pop()
        if key in live:
            continue
        live.add(key)
        repository_id = key[0]
        pending.extend(
            child
            for child in ((repository_id, digest) for digest in graph.manifests[key].children)
            if child in graph.manifests and child not in live
        )
        pending.extend(r for r in referrers.get(key, ()) if r not in live)
    return frozenset(live)


def plan(graph: Graph, extra_roots: Iterable[ManifestKey], cutoff: float) -> Plan:
    """What a collection at ``cutoff`` (now minus the grace period) may delete."""
    young = (key for key, node in graph.manifests.items() if node.created_at >= cutoff)
    live = mark(graph, [*graph.tags, *extra_roots, *young])
    doomed = [key for key in graph.manifests if key not in live]

    referenced: set[LinkKey] = set()
    for key in live:
        referenced.update((key[0], digest) for digest in graph.manifests[key].blobs)
    links = sorted(
        link
        for link, created_at in graph.links.items()
        if link not in referenced and created_at < cutoff
    )
    unlinked = set(links)
    linked = {link[1] for link in graph.links if link not in unlinked}
    blobs = sorted(
        digest
        for digest, node in graph.blobs.items()
        if digest not in linked and node.created_at < cutoff
    )
    return Plan(
        live=live,
        manifests=_parents_first(graph, doomed),
        links=tuple(links),
        blobs=tuple(blobs),
        freed_bytes=sum(graph.blobs[digest].size for digest in blobs),
    )


def _parents_first(graph: Graph, doomed: Collection[ManifestKey]) -> tuple[ManifestKey, ...]:
    """``doomed`` ordered so each index comes before the children it names (the sweep
    refuses to delete a manifest another one still names). Digests cannot form cycles; were
    there one, its members would be left out, that is kept."""
    doomed_set = set(doomed)
    parents: dict[ManifestKey, int] = dict.fromkeys(doomed, 0)
    for key in doomed:
        for digest in graph.manifests[key].children:
            child = (key[0], digest)
            if child in doomed_set:
                parents[child] += 1
    ready = sorted((key for key, count in parents.items() if count == 0), reverse=True)
    ordered: list[ManifestKey] = []
    while ready:
        key = ready.pop()
        ordered.append(key)
        for digest in sorted(graph.manifests[key].children, reverse=True):
            child = (key[0], digest)
            if child in parents:
                parents[child] -= 1
                if parents[child] == 0:
                    ready.append(child)
    return tuple(ordered)
