"""The edge as a registry mirror of upstream registries (Docker Hub, ghcr.io, any OCI
registry), beside its origin.

- ``config.py``: the operator's mirrors, from settings and flags, checked at start;
- ``site.py``: one upstream as served: its registry client, pull-through and routes;
- ``upstream.py``: the upstream's answers as the edge's :class:`~edge.upstream_types.Upstream`;
- ``org_directory.py``: which names are orgs', and the upstreams orgs registered at origin;
- ``routing.py``: which upstream a request is for (``?ns=``, a name prefix, the default);
- ``metrics.py``: per-upstream metrics.

Content is shared by digest with everything else the edge caches (one fill per digest);
names are not: each upstream's tags and repository links live in a cache namespace of its
own, and its access is decided on a :class:`~core.auth.access.Mirror` resource.
"""
